"""Flags and loading shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ..hub import DEMO_MODEL_DIR, DEMO_NAME, model_display_name
from ..tensor_parallel import apply_tensor_parallel, init_distributed, local_device

DEFAULT_HUB_MODEL = "baichuan-inc/Baichuan-13B-Chat"


def demo_model_dir() -> Path:
    """The shipped demo model's folder; ``ValueError`` saying how to rebuild it when it is missing."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        raise ValueError(
            f"the demo model is missing from {DEMO_MODEL_DIR}: rebuild it with "
            f"`baichuan train-demo --output {DEMO_MODEL_DIR}` or pass --model {DEFAULT_HUB_MODEL} / a folder")
    return DEMO_MODEL_DIR


def model_arg(value: str) -> str:
    """``--model`` values: ``demo`` names the shipped demo model (kept as typed, so that it is shown and served as
    ``demo``; every loader resolves it); anything else is a folder or hub id."""
    if value != DEMO_NAME:
        return value
    try:
        demo_model_dir()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return value


def default_model() -> str:
    """The model used when ``--model`` is not given: the shipped demo model."""
    demo_model_dir()
    return DEMO_NAME


def is_demo(path: str) -> bool:
    return model_display_name(path) == DEMO_NAME and (path == DEMO_NAME or Path(path).resolve() == DEMO_MODEL_DIR)


def display_name(args: argparse.Namespace) -> str:
    """The model's name as shown and served: ``demo``, a folder's name or the hub id the user typed."""
    return model_display_name(args.model or default_model())


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, type=model_arg,
                   help=f"checkpoint folder, Hugging Face hub id (e.g. {DEFAULT_HUB_MODEL}) or 'demo' "
                        "(default: demo, the project's tiny offline model)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder or file (default: the model folder)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16", "fp32", "fp16", "bf16"],
                   help="weight dtype; auto = the checkpoint's torch_dtype")
    g.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto (split layers over the visible GPUs, CPU when none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar while loading")
    g.add_argument("--quantize", default=None, choices=["int8", "int4"],
                   help="quantize the weights while loading (weight-only int8 per channel, or int4 group-wise); "
                        "a folder written by `baichuan quantize` is loaded as saved")
    g.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128, 256], help="int4 group size")
    g.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder (PEFT format: adapter_config.json + adapter_model.safetensors/.bin) "
                        "applied on top of --model")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (default: the checkpoint's generation_config.json)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--do-sample", dest="do_sample", action="store_true", default=None, help="sample")
    mode.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None, help="0 disables")
    g.add_argument("--top-p", type=float, default=None, help="1.0 disables")
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible answers)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when this text appears (repeatable)")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Generation settings given on the command line (flags left unset keep the checkpoint's)."""
    given = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                 stop_strings=args.stop)
    return {k: v for k, v in given.items() if v is not None}


def load(args: argparse.Namespace):
    """Load (model, tokenizer) as the flags say, with a progress bar on stderr."""
    from ..model import BaichuanForCausalLM
    from ..tokenizer import BaichuanTokenizer

    model_path = args.model or default_model()
    adapter = getattr(args, "adapter", None)
    if adapter is None and (Path(model_path) / "adapter_config.json").is_file() \
            and not (Path(model_path) / "config.json").is_file():
        # --model names an adapter folder (e.g. a LoRA fine-tuning output): its base model comes from its config.
        from ..training.lora import read_adapter

        adapter, model_path = model_path, read_adapter(model_path)[0].base_model_name_or_path
        if not model_path:
            raise ValueError(f"{adapter} is a LoRA adapter without base_model_name_or_path: give --model BASE "
                             f"--adapter {adapter}")
    device = args.device
    if device == "auto" and not torch.cuda.is_available():
        device = "cpu"
    rank, world = init_distributed()  # under torchrun: join the group, one device per rank
    if world > 1:
        if getattr(args, "quantize", None):
            raise ValueError("--quantize cannot be combined with tensor parallelism (torchrun) yet")
        device = str(local_device())
    model = BaichuanForCausalLM.from_pretrained(model_path, torch_dtype=args.dtype, device_map=device,
                                                progress=not args.no_progress and rank == 0,
                                                quantize=getattr(args, "quantize", None),
                                                group_size=getattr(args, "group_size", 128))
    if adapter:
        from ..training.lora import load_adapter

        load_adapter(model, adapter)
    if world > 1:
        apply_tensor_parallel(model)
    tokenizer = BaichuanTokenizer.from_pretrained(args.tokenizer or model_path)
    return model, tokenizer


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

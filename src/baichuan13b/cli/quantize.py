"""Quantize a checkpoint (weight-only int8 or int4) and save it: safetensors plus a ``quantization_config`` in
config.json. The output folder loads like any model (chat, generate, serve, ...) without re-quantization.

Weights are quantized one tensor at a time as the input shards are read, on --device (a GPU makes it fast);
the float model is never held in memory. Tokenizer files are copied along.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..files import atomic_write_bytes
from ..hub import resolve_model_path
from ..model import BaichuanForCausalLM
from ..quantization import QuantizationConfig, format_report, memory_report
from ..saving import save_model
from .common import add_dtype_argument, check_flags, default_model, device_arg, err, model_arg

HELP = "quantize a checkpoint to int8 / int4 and save it"

# Files copied from the input folder so that the output is a complete model folder.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, type=model_arg, help="input checkpoint folder or hub id (float weights)")
    p.add_argument("--output", "-o", required=True, type=Path, help="output folder (created)")
    p.add_argument("--bits", type=int, required=True, choices=[8, 4], help="8: int8 per channel; 4: int4 groups")
    p.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128, 256], help="int4 group size")
    add_dtype_argument(p, help="dtype of scales and of the unquantized weights; auto = the checkpoint's torch_dtype")
    p.add_argument("--device", default="cpu", type=device_arg, help="where to quantize: cpu, cuda, cuda:N")
    p.add_argument("--quantize-lm-head", action="store_true", help="also quantize lm_head")
    p.add_argument("--quantize-embeddings", action="store_true", help="also quantize model.embed_tokens")
    p.add_argument("--max-shard-size", default="4GB", help="largest output shard, e.g. 2GB")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    source = resolve_model_path(args.model or default_model())
    out = args.output
    if out.resolve() == source.resolve():
        raise ValueError(f"--output {out} is the input folder; write the quantized model to a new folder")
    qconfig = QuantizationConfig(bits=args.bits, group_size=args.group_size,
                                 quantize_lm_head=args.quantize_lm_head, quantize_embeddings=args.quantize_embeddings)
    model = BaichuanForCausalLM.from_pretrained(source, torch_dtype=args.dtype, device_map=args.device,
                                                progress=not args.no_progress, quantize=qconfig)
    save_model(model, out, max_shard_size=args.max_shard_size, progress=not args.no_progress)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            atomic_write_bytes(out / name, (source / name).read_bytes())
    err(f"wrote {qconfig.describe()} model to {out}")
    err(format_report(memory_report(model)))
    return 0

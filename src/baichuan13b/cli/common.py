"""Flags and loading shared by the subcommands.

Shared mechanisms, so that every subcommand behaves alike:

* :func:`require_extra`: a command that needs an optional extra says which one to install, before any work;
* :func:`normalize_argv` / :func:`typed_flag`: ``--data_dir`` and ``--data-dir`` spell the same flag everywhere,
  and error messages name the spelling the user typed;
* :class:`HelpFormatter`: real defaults only (no ``(default: None)``), examples kept as written;
* :data:`DTYPE_CHOICES`, :func:`dtype_arg`, :func:`device_arg`: one ``--dtype`` choice set, one ``--device`` check;
* :func:`check_flags`: sampling and context flags checked against the model's config.json before the weights
  are read (``load`` calls it first).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..hub import DEMO_MODEL_DIR, DEMO_NAME, model_display_name
from ..tensor_parallel import apply_tensor_parallel, init_distributed, local_device

DEFAULT_HUB_MODEL = "baichuan-inc/Baichuan-13B-Chat"

# Optional extras (pyproject.toml) -> the modules they provide.
EXTRAS = {
    "serve": ("fastapi", "uvicorn"),
    "web": ("streamlit",),
    "train": ("matplotlib",),
    "eval": ("matplotlib",),
    "gguf": ("gguf",),  # export --format gguf checks it itself (export.gguf.require_gguf)
}


def require_extra(extra: str, command: str, purpose: str | None = None) -> None:
    """Raise ``ValueError`` (one line: what is missing and the ``pip install`` that adds it) when a module of the
    optional ``extra`` is not installed. Commands call it before loading anything."""
    missing = [m for m in EXTRAS[extra] if not _installed(m)]
    if missing:
        what = f" ({purpose})" if purpose else ""
        raise ValueError(f"{command}{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                         f"pip install 'baichuan13b[{extra}]'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


# ------------------------------------------------------------------------------------------------ flag spelling
def _long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings if o.startswith("--")}


def normalize_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` with every long flag that ``parser`` only knows in the other spelling (``--data-dir`` for
    ``--data_dir`` and back) rewritten to the known one, and ``{dest: flag as typed}`` for error messages.
    Tokens after ``--`` are left alone."""
    known = _long_options(parser)
    out: list[str] = []
    typed: dict[str, str] = {}
    rest = False
    for token in argv:
        if rest or not token.startswith("--") or token == "--":
            rest = rest or token == "--"
            out.append(token)
            continue
        flag, eq, value = token.partition("=")
        if flag not in known:
            for other in (flag.replace("_", "-"), "--" + flag[2:].replace("-", "_")):
                if other in known:
                    typed.setdefault(known[other].dest, flag)
                    flag = other
                    break
        elif known[flag].dest not in typed:
            typed[known[flag].dest] = flag
        out.append(flag + eq + value)
    return out, typed


def in_typed_spelling(message: str, args: argparse.Namespace) -> str:
    """``message`` with each flag the user typed in the other spelling written as typed (``--cutoff_len`` ->
    ``--cutoff-len`` when that is what the command line said)."""
    for typed in (getattr(args, "_typed_flags", None) or {}).values():
        for other in {"--" + typed[2:].replace("-", "_"), "--" + typed[2:].replace("_", "-")} - {typed}:
            message = re.sub(rf"(?<![\w-]){re.escape(other)}(?![\w-])", typed, message)
    return message


def typed_flag(args: argparse.Namespace, dest: str, default: str | None = None) -> str:
    """The flag for ``dest`` as the user typed it (``--max_new_tokens`` or ``--max-new-tokens``)."""
    typed = getattr(args, "_typed_flags", None) or {}
    return typed.get(dest) or default or "--" + dest.replace("_", "-")


# ------------------------------------------------------------------------------------------------ help
_ROLE_RE = re.compile(r":[a-z]+:`~?([^`]*)`")


def plain_text(text: str | None) -> str | None:
    """Docstring text for a terminal: reStructuredText roles and double backticks removed."""
    if text is None:
        return None
    return _ROLE_RE.sub(r"\1", text).replace("``", "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (examples stay one per line); ``(default: X)`` only for real, non-empty defaults
    that the help text does not already explain, never for on/off switches."""

    _SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                 argparse._AppendConstAction, argparse._CountAction, argparse._HelpAction, argparse._VersionAction)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = plain_text(action.help) or ""
        default = action.default
        if (isinstance(action, self._SWITCHES) or not action.option_strings or "default" in text.lower()
                or default is None or default is argparse.SUPPRESS or default is False or default == []
                or default == ""):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


# ------------------------------------------------------------------------------------------------ dtype, device
# One --dtype choice set for every command; the short spellings are accepted and mean the same.
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def dtype_arg(value: str) -> str:
    """``--dtype`` values: one of :data:`DTYPE_CHOICES` (or fp32 / fp16 / half / bf16), canonical name returned."""
    key = value.strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_CHOICES:
        raise argparse.ArgumentTypeError(f"{value!r} is not a dtype: use {', '.join(DTYPE_CHOICES)} "
                                         "(or fp32, fp16, bf16)")
    return key


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_arg(value: str) -> str:
    """``--device`` values: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (also ``mps``, ``xpu``)."""
    if value == "auto":
        return value
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    return value


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
    """The model's name as shown and served: ``--model-name`` when given, else ``demo``, a folder's name or the
    hub id the user typed."""
    given = getattr(args, "model_name", None)
    if given:
        return given
    return model_display_name(getattr(args, "model", None) or default_model())


def add_weight_layout_arguments(g: Any) -> None:
    """``--group-size``, ``--cpu-layout`` and ``--no-prepack``: how loaded weights are laid out (every loading
    command and bench)."""
    g.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128, 256], help="int4 group size")
    g.add_argument("--cpu-layout", choices=["auto", "streamed", "packed"], default="auto",
                   help="CPU: how bfloat16/float32 linear weights are laid out for decoding: 'streamed' (generated "
                        "kernels, fastest for 1-2 sequences at once), 'packed' (oneDNN, fastest for larger "
                        "batches); auto: packed for the server when --max-batch > 2 (bench: --batch) and for "
                        "models under 64 MiB of weights (the demo), else streamed (docs/performance.md)")
    g.add_argument("--no-prepack", dest="prepack", action="store_false",
                   help="CPU: keep the weights in PyTorch's layout and PyTorch's kernels (slower decoding)")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, type=model_arg,
                   help=f"checkpoint folder, Hugging Face hub id (e.g. {DEFAULT_HUB_MODEL}) or 'demo' "
                        "(default: demo, the project's tiny offline model)")
    g.add_argument("--model-name", "--served-model-name", dest="model_name", default=None, metavar="NAME",
                   help="the name shown for the model (web page, evaluation reports) and served to API clients "
                        "(default: demo, the folder's name or the hub id)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder or file (default: the model folder)")
    add_dtype_argument(g, help="weight dtype; auto = the checkpoint's torch_dtype")
    g.add_argument("--device", default="auto", type=device_arg,
                   help="cpu, cuda, cuda:N, or auto (split layers over the visible GPUs, CPU when none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar while loading")
    g.add_argument("--quantize", default=None, choices=["int8", "int4"],
                   help="quantize the weights while loading (weight-only int8 per channel, or int4 group-wise); "
                        "a folder written by `baichuan quantize` is loaded as saved")
    add_weight_layout_arguments(g)
    g.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder (PEFT format: adapter_config.json + adapter_model.safetensors/.bin) "
                        "applied on top of --model")


def add_dtype_argument(p, default: str = "auto", help: str = "weight dtype; auto = the checkpoint's torch_dtype"):
    """The one ``--dtype`` flag (choices :data:`DTYPE_CHOICES`)."""
    return p.add_argument("--dtype", default=default, type=dtype_arg, choices=DTYPE_CHOICES, help=help)


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (each unset flag keeps the checkpoint's generation_config.json)")
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="most tokens to generate per answer (stops earlier at the end of the model's context)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--do-sample", dest="do_sample", action="store_true", default=None, help="sample")
    mode.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding (argmax)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0)")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens; 0 disables")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling in (0, 1]; 1.0 disables")
    g.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats; 1.0 disables")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible answers)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when this text appears (repeatable)")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Generation settings given on the command line (flags left unset keep the checkpoint's)."""
    given = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                 stop_strings=args.stop)
    return {k: v for k, v in given.items() if v is not None}


# Sampling flags' dest -> the GenerationConfig field they set (the names its messages use).
_SAMPLING_FIELDS = {"max_new_tokens": "max_new_tokens", "temperature": "temperature", "top_k": "top_k",
                    "top_p": "top_p", "repetition_penalty": "repetition_penalty", "stop": "stop_strings"}


def check_sampling(args: argparse.Namespace) -> None:
    """Check the sampling flags given (each alone, as GenerationConfig would); ``ValueError`` naming the flag
    as typed. Needs no model: called before loading."""
    from ..generation import GenerationConfig

    overrides = sampling_overrides(args) if hasattr(args, "do_sample") else {}
    for dest, field in _SAMPLING_FIELDS.items():
        key = "stop_strings" if dest == "stop" else dest
        if key not in overrides:
            continue
        try:
            GenerationConfig().update(**{field: overrides[key]})
        except ValueError as e:
            message = str(e)
            if message.startswith(field):
                message = message[len(field):]
            else:
                message = ": " + message
            raise ValueError(f"{typed_flag(args, dest)}{message}") from e


def check_context_flags(args: argparse.Namespace, config) -> None:
    """Refuse explicit values that cannot fit the model's context (``--max-new-tokens``, ``--max-seq-len``,
    ``--max_length``), before the weights are read; unset flags adapt to the model where they are used."""
    if config.allow_length_extrapolation:
        return
    context = config.max_position
    new = getattr(args, "max_new_tokens", None)
    if new is not None and hasattr(args, "do_sample") and new >= context:
        raise ValueError(f"{typed_flag(args, 'max_new_tokens')} {new} leaves no room for a prompt in the model's "
                         f"context of {context} tokens (give less than {context})")
    for dest in ("max_seq_len", "max_length"):
        value = getattr(args, dest, None)
        if isinstance(value, int) and value > context:
            raise ValueError(f"{typed_flag(args, dest)} {value} exceeds the model's context of {context} tokens "
                             "(leave it unset to use the whole context)")


def check_flags(args: argparse.Namespace, model_path: str | None = None):
    """Every flag check that needs at most the model's config.json: sampling values, the device, flags bounded
    by the context. Returns the config (None when no model is named). Called by :func:`load` before the weights
    are read; commands that load otherwise call it themselves."""
    check_sampling(args)
    device = getattr(args, "device", None)
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{typed_flag(args, 'device')} {device}: no CUDA device is visible (use --device cpu)")
    model_path = model_path or getattr(args, "model", None) or default_model()
    from ..config import ModelConfig

    config = ModelConfig.from_pretrained(model_path)
    check_context_flags(args, config)
    return config


def adapt_generation_defaults(model, args: argparse.Namespace) -> None:
    """An unset ``--max-new-tokens`` whose checkpoint default cannot fit the model's context is lowered to half
    the context (the log says so); an explicit value is never changed (it was checked by :func:`check_flags`)."""
    cfg = getattr(model, "generation_config", None)
    if cfg is None or getattr(args, "max_new_tokens", 0) is not None or model.config.allow_length_extrapolation:
        return
    context = model.config.max_position
    if cfg.max_new_tokens >= context:
        adapted = max(1, context // 2)
        err(f"max new tokens: {adapted} (the checkpoint's max_new_tokens {cfg.max_new_tokens} does not fit the "
            f"model's context of {context} tokens; give --max-new-tokens to choose)")
        model.generation_config = cfg.update(max_new_tokens=adapted)


def load(args: argparse.Namespace, for_inference: bool = True):
    """Load (model, tokenizer) as the flags say, with a progress bar on stderr. The flags are checked first
    (:func:`check_flags`), so a typo costs no loading time.

    ``for_inference``: on CPU, prepack the linear weights for decoding (unless ``--no-prepack``); callers that
    change or save the weights (adapter merging) pass False."""
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
    elif adapter:  # checked now: a wrong folder costs no loading time
        from ..training.lora import read_adapter

        try:
            read_adapter(adapter)
        except ValueError as e:
            raise ValueError(f"{typed_flag(args, 'adapter')} {adapter}: {e}") from e
    check_flags(args, model_path)
    device = args.device
    if device == "auto" and not torch.cuda.is_available():
        device = "cpu"
    rank, world = init_distributed()  # under torchrun: join the group, one device per rank
    # Under torchrun each rank reads only its slices of the checkpoint (and quantizes its own shard); with an
    # adapter the whole model is loaded first, the adapter applied, then the model is sharded.
    sliced = world > 1 and not adapter
    if world > 1:
        if adapter and getattr(args, "quantize", None):
            raise ValueError("--adapter with --quantize cannot run under tensor parallelism (torchrun): merge the "
                             "adapter first (baichuan export) and quantize the merged model")
        device = str(local_device())
    model = BaichuanForCausalLM.from_pretrained(model_path, torch_dtype=args.dtype, device_map=device,
                                                progress=not args.no_progress and rank == 0,
                                                quantize=getattr(args, "quantize", None),
                                                group_size=getattr(args, "group_size", 128),
                                                tensor_parallel=(rank, world) if sliced else None)
    if adapter:
        from ..training.lora import load_adapter

        load_adapter(model, adapter)
    if world > 1 and not sliced:
        apply_tensor_parallel(model)
    if world == 1 and for_inference and getattr(args, "prepack", True) and not adapter:
        from ..cpu_linear import pack_linear_weights, resolve_layout

        # CPU bfloat16 / float32 linears only; a no-op on GPUs. The server decodes up to --max-batch rows at once.
        layout = resolve_layout(getattr(args, "cpu_layout", "auto"), getattr(args, "max_batch", 1), model)
        pack_linear_weights(model, layout=layout,
                            progress=not args.no_progress and rank == 0)
    adapt_generation_defaults(model, args)
    tokenizer = BaichuanTokenizer.from_pretrained(args.tokenizer or model_path)
    return model, tokenizer


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

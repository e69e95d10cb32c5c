"""Show a model's size without loading its weights: parameters, bytes of weights per dtype (quantized or not),
and the memory estimate for a context length and batch (KV cache and prefill activations included).

Only config.json is read (from a folder or the hub) and the model is built on the meta device, so the figures
of a 13B model are exact and instant. --preset gives the shape of a named preset instead (e.g. baichuan-13b).
"""

from __future__ import annotations

import argparse
import json

from ..config import PRESETS, ModelConfig
from ..devices import resolve_dtype
from ..quantization import QuantizationConfig, estimate_memory, format_report
from .common import add_dtype_argument, default_model, model_arg

HELP = "weight bytes per dtype and memory estimate (KV cache included), without loading weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", "-m", default=None, type=model_arg, help="checkpoint folder or hub id (only config.json is read)")
    src.add_argument("--preset", default=None, choices=sorted(PRESETS), help="a named model shape instead")
    add_dtype_argument(p, help="compute dtype; auto = the config's torch_dtype")
    p.add_argument("--quantize", default=None, choices=["int8", "int4"], help="as loaded with --quantize")
    p.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128, 256], help="int4 group size")
    p.add_argument("--context", type=int, default=None, help="positions per row (default: the model's context)")
    p.add_argument("--batch", type=int, default=1, help="rows decoded together")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.preset:
        config = ModelConfig.from_name(args.preset)
    else:
        config = ModelConfig.from_pretrained(args.model or default_model())
    saved = QuantizationConfig.of_model_config(config)
    if saved is not None and args.quantize is not None and args.quantize != saved.name:
        raise ValueError(f"the model is already quantized as {saved.describe()}; --quantize {args.quantize} "
                         "does not apply")
    if args.batch <= 0 or (args.context is not None and args.context <= 0):
        raise ValueError("--context and --batch must be positive")
    dtype = resolve_dtype(args.dtype, config)
    report = estimate_memory(config, dtype=dtype, quantize=args.quantize, group_size=args.group_size,
                             context=args.context, batch=args.batch)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0

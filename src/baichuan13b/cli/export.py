"""Merge a LoRA adapter (PEFT format) into its base model and write a plain checkpoint in the official layout
(safetensors, config, generation config, tokenizer), loadable without any adapter support."""

from __future__ import annotations

import argparse
import sys

HELP = "merge a LoRA adapter into the base model and save a plain checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .common import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("export")
    g.add_argument("--output", "-o", required=True, help="folder for the merged checkpoint")
    g.add_argument("--save-dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="dtype of the saved weights (default: the loading dtype)")
    g.add_argument("--max-shard-size", default="10GB", help="largest weight file, e.g. 2GB")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training.lora import merge_lora
    from .common import load

    if not getattr(args, "adapter", None):
        raise ValueError("--adapter DIR is required: the LoRA adapter to merge into --model")
    model, tokenizer = load(args)
    merged = merge_lora(model)
    if args.save_dtype:
        model.config.torch_dtype = args.save_dtype
    else:
        model.config.torch_dtype = str(model.dtype).removeprefix("torch.")
    out = Path(args.output)
    model.save_pretrained(out, max_shard_size=args.max_shard_size, dtype=args.save_dtype,
                          progress=not args.no_progress)
    tokenizer.save_pretrained(out)
    print(f"merged {merged} LoRA module(s) into {out}", file=sys.stderr)
    return 0

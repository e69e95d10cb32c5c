"""Export a checkpoint.

``--format checkpoint`` (default): merge a LoRA adapter (PEFT format) into its base model and write a plain
checkpoint in the official layout (safetensors, config, generation config, tokenizer), loadable without any
adapter support.

``--format gguf``: write one GGUF file for llama.cpp / ollama / LM Studio in llama.cpp's ``baichuan`` layout,
tokenizer included (``--outtype f32|f16|bf16|q8_0|q4_0``; needs ``pip install 'baichuan13b[gguf]'``). With
``--adapter`` the adapter is merged first. See docs/quantization.md.
"""

from __future__ import annotations

import argparse
import sys

HELP = "merge a LoRA adapter into a plain checkpoint, or export GGUF for llama.cpp"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..export.gguf import OUTTYPES
    from .common import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("export")
    g.add_argument("--format", default="checkpoint", choices=["checkpoint", "gguf"],
                   help="checkpoint: merged official layout (needs --adapter); gguf: one file for llama.cpp")
    g.add_argument("--output", "-o", required=True, help="folder for the merged checkpoint, or the .gguf file")
    g.add_argument("--save-dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="dtype of the saved weights (default: the loading dtype)")
    g.add_argument("--max-shard-size", default="10GB", help="largest weight file, e.g. 2GB")
    g.add_argument("--outtype", default="f16", choices=list(OUTTYPES), help="GGUF tensor type (--format gguf)")
    g.add_argument("--allow-position-mismatch", action="store_true",
                   help="GGUF: write shapes that llama.cpp runs with another position encoding than the model's "
                        "(its baichuan loader uses ALiBi only for 40 layers, RoPE only for 32); for speed tests")


def _merged(args: argparse.Namespace, out) -> None:
    from ..training.lora import merge_lora
    from .common import load

    model, tokenizer = load(args, for_inference=False)
    merged = merge_lora(model)
    model.config.torch_dtype = args.save_dtype or str(model.dtype).removeprefix("torch.")
    model.save_pretrained(out, max_shard_size=args.max_shard_size, dtype=args.save_dtype,
                          progress=not args.no_progress)
    tokenizer.save_pretrained(out)
    print(f"merged {merged} LoRA module(s) into {out}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    if args.format == "checkpoint":
        if not getattr(args, "adapter", None):
            raise ValueError("--adapter DIR is required: the LoRA adapter to merge into --model "
                             "(or --format gguf to export the model for llama.cpp)")
        _merged(args, Path(args.output))
        return 0

    from ..export.gguf import export_gguf, require_gguf
    from .common import default_model, display_name

    require_gguf()  # before any slow merge
    if args.quantize:
        raise ValueError("--quantize does not apply to --format gguf: use --outtype q8_0 or q4_0")
    model = args.model or default_model()
    if args.adapter:
        with tempfile.TemporaryDirectory(prefix="baichuan-merged-") as tmp:
            _merged(args, Path(tmp))
            out = export_gguf(tmp, args.output, args.outtype, allow_position_mismatch=args.allow_position_mismatch,
                              progress=not args.no_progress, name=display_name(args))
    else:
        out = export_gguf(model, args.output, args.outtype, allow_position_mismatch=args.allow_position_mismatch,
                          progress=not args.no_progress)
    print(f"wrote {out} ({args.outtype}, {out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0

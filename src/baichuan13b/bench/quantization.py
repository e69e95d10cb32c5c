"""Weight memory of the 13B shape and decode speed of int8 / int4 against the float model (random weights).

::

    python -m baichuan13b.bench.quantization                     # CPU: 13B memory + baichuan-1b decode
    python -m baichuan13b.bench.quantization --gpu-preset baichuan-13b   # also 13B decode on CUDA, if present

* Memory: the 13B shape is built on the meta device and quantized there, so the bytes are exact and nothing is
  allocated.
* CPU decode: greedy tokens/s at batch 1 (``bench.load.measure_decode``: 32-token prompt, prefill excluded),
  for the float model and its int8 / int4 copies, each measured ``--repeats`` times; the best run is reported
  (other jobs share the CPU), with every run listed. The cosine similarity of last-token logits against the float
  model is printed alongside.
* GPU decode (only when CUDA is available): the same for ``--gpu-preset`` in float16, weights filled directly on
  the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..devices import resolve_dtype
from ..config import PRESETS, ModelConfig
from ..model import BaichuanForCausalLM
from ..quantization import estimate_memory, weight_bytes_by_dtype
from .load import measure_decode
from .speed import random_model


def memory_table(preset: str, dtype: torch.dtype) -> list[dict]:
    """Weight bytes of ``preset`` for float / int8 / int4 (g128) / int4 with embeddings and head too."""
    config = ModelConfig.from_name(preset)
    rows = []
    for label, quantize, flags in (("float", None, {}), ("int8", "int8", {}), ("int4 g128", "int4", {}),
                                   ("int4 g128 + embeddings + lm_head", "int4", {"all": True})):
        if flags:
            from ..quantization import QuantizationConfig

            quantize = QuantizationConfig(bits=4, group_size=128, quantize_embeddings=True, quantize_lm_head=True)
        report = estimate_memory(config, dtype=dtype, quantize=quantize)
        rows.append({"mode": label, "weight_bytes": report.weight_bytes, "by_dtype": report.weights})
    return rows


@torch.inference_mode()
def decode_table(make: Callable[[], BaichuanForCausalLM], new_tokens: int, repeats: int) -> list[dict]:
    """Tokens/s of the float model ``make()`` and of int8 and int4 versions of it (best of ``repeats``), and
    their last-token logits cosine against the float model. One model is alive at a time."""
    reference = None
    rows = []
    for mode in ("float", "int8", "int4"):
        m = make()
        if mode != "float":
            m.quantize(8 if mode == "int8" else 4)
        ids = torch.randint(3, m.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
        ids = ids.to(m.device)
        logits = m(ids, logits_to_keep=1).logits.float()  # also packs int4 weights for the kernel
        reference = logits if reference is None else reference
        runs = [measure_decode(m, new_tokens=new_tokens) for _ in range(repeats)]
        rows.append({"mode": mode, "tokens_per_s": max(runs), "runs": runs,
                     "weight_bytes": sum(weight_bytes_by_dtype(m).values()),
                     "cosine_vs_float": F.cosine_similarity(logits.flatten(), reference.flatten(), dim=0).item()})
        print(f"  {mode:6s} {max(runs):7.2f} tokens/s (runs: {', '.join(f'{r:.2f}' for r in runs)}), "
              f"weights {rows[-1]['weight_bytes'] / 2**30:.2f} GiB, last-token logits cosine vs float "
              f"{rows[-1]['cosine_vs_float']:.4f}", flush=True)
        del m
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory-preset", default="baichuan-13b", choices=sorted(PRESETS))
    p.add_argument("--cpu-preset", default="baichuan-1b", choices=sorted(PRESETS))
    p.add_argument("--cpu-dtype", default="bfloat16")
    p.add_argument("--gpu-preset", default="baichuan-13b", choices=sorted(PRESETS))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-cpu", action="store_true", help="no CPU decode measurement")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    print(f"weight memory, {args.memory_preset} shape (exact, from shapes on the meta device), float16:")
    results["memory"] = memory_table(args.memory_preset, torch.float16)
    for row in results["memory"]:
        n = row["weight_bytes"]
        print(f"  {row['mode']:34s} {n / 2**30:6.2f} GiB = {n / 1e9:6.2f} GB")

    if not args.skip_cpu:
        dtype = resolve_dtype(args.cpu_dtype)
        config = ModelConfig.from_name(args.cpu_preset)
        print(f"CPU decode, {args.cpu_preset} ({config.num_parameters() / 1e9:.2f}B parameters, random), batch 1, "
              f"{args.new_tokens} new tokens, {args.cpu_dtype}, {torch.get_num_threads()} threads, best of "
              f"{args.repeats}:", flush=True)
        results["cpu_decode"] = {"preset": args.cpu_preset, "dtype": args.cpu_dtype,
                                 "rows": decode_table(lambda: random_model(config, dtype, "cpu"), args.new_tokens,
                                                      args.repeats)}

    if torch.cuda.is_available():
        gpu_config = ModelConfig.from_name(args.gpu_preset)
        print(f"GPU decode, {args.gpu_preset} (random), batch 1, float16, {torch.cuda.get_device_name()}:", flush=True)
        results["gpu_decode"] = {"preset": args.gpu_preset, "device": torch.cuda.get_device_name(),
                                 "rows": decode_table(lambda: random_model(gpu_config, torch.float16, "cuda"),
                                                      args.new_tokens, args.repeats)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

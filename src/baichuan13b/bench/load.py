"""Load time, peak host memory and CPU decode speed for a random checkpoint in the official layouts.

::

    python -m baichuan13b.bench.load --preset baichuan-1b --dtype bfloat16 --workdir /tmp/bench-load

writes a random-weight checkpoint of the preset as sharded ``.bin`` and sharded safetensors (once; reused on
later runs), then loads each in a fresh process and reports wall time and peak RSS (``VmHWM``), and the
model's greedy decode speed on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..devices import resolve_dtype
from ..config import PRESETS, ModelConfig
from ..model import BaichuanForCausalLM

_CHILD = r"""
import json, sys, time
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import torch
from baichuan13b import BaichuanForCausalLM
base = rss("VmRSS:")
t0 = time.perf_counter()
model = BaichuanForCausalLM.from_pretrained(sys.argv[1], torch_dtype=sys.argv[2], progress=False)
seconds = time.perf_counter() - t0
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "peak_rss": rss("VmHWM:"), "rss_before": base, "weight_bytes": weights}))
"""


def write_random_checkpoints(config: ModelConfig, dtype: torch.dtype, workdir: Path,
                             max_shard_size: str = "500MB") -> dict[str, Path]:
    """Random weights saved as sharded ``.bin`` and sharded safetensors under ``workdir`` (reused if present)."""
    folders = {"bin": workdir / "bin", "safetensors": workdir / "safetensors"}
    if all((f / "config.json").is_file() for f in folders.values()):
        return folders
    model = BaichuanForCausalLM.from_config(config, seed=0, dtype=dtype)
    for fmt, folder in folders.items():
        model.save_pretrained(folder, safe_serialization=(fmt == "safetensors"), max_shard_size=max_shard_size)
    return folders


def measure_load(folder: Path, dtype: str) -> dict:
    """Load ``folder`` in a fresh Python process; seconds, peak RSS and RSS before loading (bytes)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), dtype], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@torch.inference_mode()
def measure_decode(model: BaichuanForCausalLM, prompt_len: int = 32, new_tokens: int = 64) -> float:
    """Greedy decode tokens/s at batch 1 (prefill excluded)."""
    from ..generation import stream_tokens

    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    steps = stream_tokens(model, ids, max_new_tokens=new_tokens + 1, eos_token_id=None)
    next(steps)  # prefill + first token
    t0 = time.perf_counter()
    n = sum(1 for _ in steps)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="baichuan-1b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    config = ModelConfig.from_name(args.preset)
    dtype = resolve_dtype(args.dtype)
    folders = write_random_checkpoints(config, dtype, args.workdir)
    weight_bytes = config.num_parameters() * torch.tensor([], dtype=dtype).element_size()
    results: dict = {"preset": args.preset, "parameters": config.num_parameters(), "dtype": args.dtype,
                     "weight_bytes": weight_bytes, "torch": torch.__version__, "load": {}}
    print(f"{args.preset}: {config.num_parameters() / 1e9:.2f}B parameters, {weight_bytes / 2**30:.2f} GiB "
          f"in {args.dtype}")
    for fmt, folder in folders.items():
        shards = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))
        r = measure_load(folder, args.dtype)
        results["load"][fmt] = r | {"shards": len(shards)}
        print(f"  load {fmt:12s} ({len(shards)} shards): {r['seconds']:.2f} s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB "
              f"(before loading {r['rss_before'] / 2**30:.2f} GiB)")
    model = BaichuanForCausalLM.from_pretrained(folders["safetensors"], torch_dtype=args.dtype, progress=False)
    tps = measure_decode(model, new_tokens=args.new_tokens)
    results["decode_tokens_per_s"] = tps
    print(f"  CPU decode, batch 1, {args.new_tokens} new tokens: {tps:.1f} tokens/s "
          f"({torch.get_num_threads()} threads)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

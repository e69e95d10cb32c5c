"""Peak host memory per rank when loading a checkpoint for tensor parallelism: every rank loading the whole
checkpoint and then cutting its shard, against every rank reading only its own slices.

::

    python -m baichuan13b.bench.tp_memory --workdir /tmp/tp-memory [--layers 6] [--ranks 2]

writes a random bf16 checkpoint (the ``baichuan-1b`` shape with ``--layers`` decoder layers, ~1.1 GB with 6) as
sharded safetensors and sharded ``.bin`` (once; delete the folder afterwards), then for each layout and each
way of loading starts ``--ranks`` gloo processes that load the model, and prints each rank's peak RSS
(``VmHWM``: anonymous memory plus the pages of memory-mapped files it touched) and peak anonymous memory
(``RssAnon`` sampled every 5 ms: what the process owns, without the page cache) next to the model's own sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import tempfile
from pathlib import Path

import torch

from ..config import ModelConfig


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _worker(rank: int, world: int, port: int, folder: str, mode: str, out: str) -> None:
    import torch.distributed as dist

    from ..loading import load_model
    from ..tensor_parallel import apply_tensor_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # Anonymous memory (what the process owns; file pages of the memory-mapped checkpoint are page cache the
    # kernel can drop) sampled every 5 ms: its peak next to VmHWM (which counts the touched file pages too).
    import threading

    peak_anon = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _rss("RssAnon:"))
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        before = _rss("VmRSS:")
        if mode == "whole":  # the old way: the whole model on every rank, then its shard kept
            model = apply_tensor_parallel(load_model(folder, torch_dtype="bfloat16", progress=False), rank, world)
        else:
            model = load_model(folder, torch_dtype="bfloat16", progress=False, tensor_parallel=(rank, world))
        kept = sum(p.numel() * p.element_size() for p in model.parameters())
        done.set()
        sampler.join()
        Path(out, f"{mode}-{rank}.json").write_text(json.dumps(
            {"rank": rank, "rss_before": before, "peak_rss": _rss("VmHWM:"), "peak_anon": peak_anon[0],
             "kept_bytes": kept}))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(folder: Path, mode: str, ranks: int) -> list[dict]:
    """Peak RSS of each of ``ranks`` gloo processes loading ``folder`` in ``mode`` ("whole" or "sliced")."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(ranks, _free_port(), str(folder), mode, out), nprocs=ranks, join=True)
        return [json.loads(Path(out, f"{mode}-{r}.json").read_text()) for r in range(ranks)]


def main(argv: list[str] | None = None) -> int:
    from ..model import BaichuanForCausalLM
    from ..saving import save_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True, help="where the random checkpoints are written")
    p.add_argument("--layers", type=int, default=6, help="decoder layers of the baichuan-1b shape")
    p.add_argument("--ranks", type=int, default=2, help="gloo processes")
    args = p.parse_args(argv)
    config = dataclasses.replace(ModelConfig.from_name("baichuan-1b"), num_hidden_layers=args.layers)
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    parallel = config.num_hidden_layers * (4 * h * h + 3 * h * i) * 2  # bf16 bytes
    replicated = (2 * v * h + (2 * config.num_hidden_layers + 1) * h) * 2
    print(f"model: {config.num_hidden_layers} layers of hidden {h}, vocab {v}, bf16: parallel weights "
          f"{parallel / 2**20:.0f} MiB, replicated {replicated / 2**20:.0f} MiB, largest tensor "
          f"{v * h * 2 / 2**20:.0f} MiB", flush=True)
    folders = {}
    for layout, safe in (("safetensors", True), ("bin", False)):
        folder = args.workdir / layout
        folders[layout] = folder
        if not (folder / "config.json").is_file():
            model = BaichuanForCausalLM.from_config(config, seed=0).to(torch.bfloat16)
            save_model(model, folder, safe_serialization=safe, max_shard_size="400MB", progress=False)
            del model
    print(f"expected per rank after: parallel / {args.ranks} + replicated = "
          f"{(parallel / args.ranks + replicated) / 2**20:.0f} MiB (+ the interpreter and one tensor)", flush=True)
    for layout, folder in folders.items():
        for mode in ("whole", "sliced"):
            for r in measure(folder, mode, args.ranks):
                print(f"{layout:12s} {mode:7s} rank {r['rank']}: peak RSS {r['peak_rss'] / 2**20:5.0f} MiB, peak "
                      f"anonymous {r['peak_anon'] / 2**20:5.0f} MiB "
                      f"(before loading {r['rss_before'] / 2**20:.0f} MiB; weights kept "
                      f"{r['kept_bytes'] / 2**20:.0f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

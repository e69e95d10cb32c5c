"""The two CPU weight layouts side by side on the same weights: ``streamed`` (generated GEMV kernels,
:mod:`baichuan13b.cpu_gemv`) and ``packed`` (oneDNN; fbgemm for int8), alternating in one run, per precision.

Prints each round's line of ``baichuan bench`` and, per precision, the best of each layout and the ratio
streamed / packed for decode tokens/s and time to first token. The model is laid out again between rounds
(:func:`~baichuan13b.cpu_linear.unpack_linear_weights`, then the other layout), so one copy of the weights
serves both.

Usage::

    python -m baichuan13b.bench.layouts [--random-weights baichuan-232m] [--precisions bf16,fp32,int8]
        [--batch 1] [--prompt-len 32] [--gen-len 128] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch

from ..cpu_linear import pack_linear_weights, unpack_linear_weights
from .speed import SpeedResult, config_from_spec, copy_bandwidth, measure, random_model

PRECISIONS = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "int8": (torch.bfloat16, 8)}


def compare(config, precision: str, *, batch: int, prompt_len: int, gen_len: int, rounds: int,
            bandwidth: float) -> dict[str, SpeedResult]:
    """Best result of each layout over ``rounds`` alternating rounds for one precision."""
    dtype, bits = PRECISIONS[precision]
    model = random_model(config, dtype, "cpu", seed=0)
    if bits:
        model.quantize(bits)
    best: dict[str, SpeedResult] = {}
    for r in range(rounds):
        order = ("streamed", "packed") if r % 2 == 0 else ("packed", "streamed")
        for layout in order:
            unpack_linear_weights(model)
            pack_linear_weights(model, layout=layout)
            res = measure(model, name=f"{precision} {layout}", batch=batch, prompt_len=prompt_len, gen_len=gen_len,
                          bandwidth_gbs=bandwidth, quantize="int8" if bits else None)
            print(f"round {r + 1}: {res.line()}", flush=True)
            if layout not in best or res.tokens_per_s > best[layout].tokens_per_s:
                best[layout] = res
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baichuan13b.bench.layouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--random-weights", default="baichuan-232m", help="preset name or config.json")
    p.add_argument("--precisions", default="bf16,fp32,int8", help=f"comma-separated, of {list(PRECISIONS)}")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    unknown = [s for s in precisions if s not in PRECISIONS]
    if unknown or not precisions:
        p.error(f"--precisions: unknown {unknown or precisions}; choose from {list(PRECISIONS)}")
    if min(args.batch, args.prompt_len, args.gen_len, args.rounds) < 1:
        p.error("--batch, --prompt-len, --gen-len and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_from_spec(args.random_weights)
    bandwidth = copy_bandwidth(torch.device("cpu"))
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, copy bandwidth {bandwidth:.1f} GB/s; {args.random_weights}, batch "
          f"{args.batch}, prompt {args.prompt_len}, {args.gen_len} new tokens, {args.rounds} alternating rounds",
          flush=True)
    summary = []
    with torch.inference_mode():
        for precision in precisions:
            best = compare(config, precision, batch=args.batch, prompt_len=args.prompt_len, gen_len=args.gen_len,
                           rounds=args.rounds, bandwidth=bandwidth)
            s, k = best["streamed"], best["packed"]
            summary.append(f"| {precision} | {args.batch} | {s.tokens_per_s:.1f} | {k.tokens_per_s:.1f} | "
                           f"{s.tokens_per_s / k.tokens_per_s:.2f}x | {s.percent_of_roofline:.0f}% | "
                           f"{s.time_to_first_token_s * 1e3:.0f} / {k.time_to_first_token_s * 1e3:.0f} |")
    print("| precision | batch | streamed tok/s | packed tok/s | streamed / packed | streamed % of roofline | "
          "TTFT ms streamed / packed |\n| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

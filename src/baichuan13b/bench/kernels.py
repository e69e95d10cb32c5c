"""Per-matrix CPU product kernels: time and weight-read rate of each way this project can multiply activations
by one weight matrix, at a few row counts. Decode is 1 row, prefills and large batches are many.

Several matrices of the same shape are used in turn (more bytes than the caches hold), so each product reads its
weight from memory, as in a decode step. Printed per kernel and row count: ms per product and GB/s of weight
bytes read. Kernels this CPU or torch build lacks are reported as such (e.g. bfloat16 packing without AVX-512).

Usage::

    python -m baichuan13b.bench.kernels [--shape 3072x1024] [--rows 1,16,512] [--threads 2] [--matrices 24]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..cpu_gemv import (GEMV_MAX_ROWS, INT4_CPU_BLOCK_N, dense_linear, gemv, gemv_available, int4_cpu_layout_known,
                        int8_gemv)
from ..cpu_linear import WIDEN_ROWS, packing_available
from ..quantization.functional import (
    INT4_DEQUANT_ROWS,
    int4_dequantized_mm,
    int4_kernel_kind,
    int8_fbgemm_available,
    int8_fbgemm_mm,
    int8_linear_reference,
    pack_int4_for_kernel,
    pack_int8_for_fbgemm,
    quantize_int4,
    quantize_int8,
)


def _time(fn: Callable, xs: list, repeats: int) -> float:
    """Best over ``repeats`` of the mean seconds per call of ``fn(x, w)`` over the ``(x, w)`` pairs (a slow
    kernel, over 50 ms a call, is timed once over four pairs)."""
    for x, w in xs[:2]:
        start = time.perf_counter()
        fn(x, w)
    if time.perf_counter() - start > 0.05:
        xs, repeats = xs[:4], 1
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x, w in xs:
            fn(x, w)
        best = min(best, (time.perf_counter() - start) / len(xs))
    return best


def kernels(N: int, K: int, count: int, group_size: int) -> dict[str, tuple[torch.dtype, list, int, Callable]]:
    """name -> (activation dtype, weights, weight bytes each, product(x, w)) for every kernel available here."""
    plain = [torch.randn(N, K, generator=torch.Generator().manual_seed(i)) for i in range(count)]
    bf16 = [w.bfloat16() for w in plain]
    out = {
        "bf16 F.linear": (torch.bfloat16, bf16, N * K * 2, F.linear),
        "bf16 widened to fp32 (StreamedLinear's many-row path without native bf16)": (
            torch.bfloat16, bf16, N * K * 2, lambda x, w: dense_linear(x.float(), w.float()).bfloat16()),
        "fp32 F.linear": (torch.float32, plain, N * K * 4, F.linear),
        "fp32 dense_linear (StreamedLinear's many-row path: oneDNN on the plain weight)": (
            torch.float32, plain, N * K * 4, dense_linear),
    }
    onednn = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")  # noqa: E731
    for dtype, name, ws, nbytes in ((torch.float32, "fp32", plain, 4), (torch.bfloat16, "bf16", bf16, 2)):
        if packing_available(dtype):
            out[f"{name} oneDNN prepacked"] = (dtype, [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in ws],
                                               N * K * nbytes, onednn)
    codes = [quantize_int8(w, torch.bfloat16) for w in plain]
    if hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        out["int8 _weight_int8pack_mm"] = (torch.bfloat16, codes, N * K,
                                           lambda x, w: torch.ops.aten._weight_int8pack_mm(x, w[0], w[1]))
        out["int8 dequantized to fp32 (int8_linear's many-row path)"] = (
            torch.bfloat16, codes, N * K, lambda x, w: int8_linear_reference(x.float(), w[0], w[1]).bfloat16())
    if gemv_available():  # the generated streaming kernels (cpu_gemv); up to GEMV_MAX_ROWS rows
        out["bf16 generated GEMV (streamed layout)"] = (torch.bfloat16, bf16, N * K * 2, gemv)
        out["fp32 generated GEMV (streamed layout)"] = (torch.float32, plain, N * K * 4, gemv)
        out["int8 generated GEMV"] = (torch.bfloat16, codes, N * K, lambda x, w: int8_gemv(x, w[0], w[1]))
    if int8_fbgemm_available():
        out["int8 fbgemm (exact digits)"] = (torch.float32, [pack_int8_for_fbgemm(q, s.float()) for q, s in codes],
                                             N * K, int8_fbgemm_mm)
    if int4_kernel_kind(torch.device("cpu"), N, K, group_size) == "cpu":
        packed = [pack_int4_for_kernel("cpu", *quantize_int4(w, group_size, torch.float32)) for w in plain]
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            ws = [(w, sz.to(dtype)) for w, sz in packed]
            out[f"int4 g{group_size} kernel, {name} activations"] = (  # the op itself, at any row count
                dtype, ws, N * K // 2, lambda x, w: torch.ops.aten._weight_int4pack_mm_for_cpu(
                    x.to(w[1].dtype), w[0], group_size, w[1]))
        if N % INT4_CPU_BLOCK_N == 0 and gemv_available() and int4_cpu_layout_known():
            ws = [(w, sz.to(torch.bfloat16)) for w, sz in packed]
            out[f"int4 g{group_size} dequantized by blocks + oneDNN (int4_kernel_mm from {INT4_DEQUANT_ROWS} "
                "rows), bf16 activations"] = (
                torch.bfloat16, ws, N * K // 2, lambda x, w: int4_dequantized_mm(x, w[0], w[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baichuan13b.bench.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="3072x1024", help="N x K of the weight (default: the 232M preset's W_pack)")
    p.add_argument("--rows", default=f"1,{WIDEN_ROWS},512", help="activation rows per product, comma-separated")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--matrices", type=int, default=24, help="weights used in turn (their bytes should exceed the caches)")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    try:
        N, K = (int(v) for v in args.shape.lower().split("x"))
        rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        p.error(f"--shape must be NxK and --rows a list of integers, got {args.shape!r} and {args.rows!r}")
    if min(N, K, *rows, args.matrices, args.repeats) < 1:
        p.error("shape, rows, matrices and repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, weight {N} x {K}, {args.matrices} matrices in turn")
    print("bfloat16 oneDNN packing: " + ("available" if packing_available(torch.bfloat16)
                                        else "not on this CPU (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)"))
    print(f"| kernel | rows | ms per product | weight GB/s |\n| --- | --- | --- | --- |")
    with torch.inference_mode():
        for name, (dtype, ws, nbytes, fn) in kernels(N, K, args.matrices, args.group_size).items():
            for m in rows:
                if "generated" in name and m > GEMV_MAX_ROWS:  # decode rows only (cpu_gemv.GEMV_MAX_ROWS)
                    print(f"| {name} | {m} | not used above {GEMV_MAX_ROWS} rows | - |")
                    continue
                x = torch.randn(m, K).to(dtype)
                s = _time(fn, [(x, w) for w in ws], args.repeats)
                print(f"| {name} | {m} | {s * 1e3:.3f} | {nbytes / s / 1e9:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

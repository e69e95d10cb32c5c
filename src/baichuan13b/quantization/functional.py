"""Weight-only quantization maths: quantize, pack, dequantize, and the matmul kernels.

Stored formats (device independent; what ``state_dict`` holds and checkpoints contain):

* **int8**, symmetric per output channel: ``weight`` int8 [out, in], ``scales`` [out];
  ``w ~= weight * scales[:, None]``.
* **int4**, asymmetric group-wise along the input dimension (group size ``g`` in 32/64/128/256):
  ``weight`` uint8 [out, in / 2] holding two 4-bit codes per byte (high nibble = even column, low nibble = odd
  column), ``scales`` and ``zeros`` [out, in / g]; ``w ~= (q - 8) * scale + zero`` for code ``q`` in 0..15
  (the "zero in the float domain" convention of the tinygemm kernels, so no conversion is needed for them).

Kernels (chosen per call by the modules and :func:`int8_linear`): int8 on CPU, fbgemm's integer GEMM with the
activations written exactly as three 8-bit digits (:func:`int8_fbgemm_mm`: weight-only results, to float32
rounding); PyTorch's packed weight-only kernels ``aten._weight_int8pack_mm`` (CPU without fbgemm; CUDA where
the installed torch has it), ``aten._weight_int4pack_mm_for_cpu``
(CPU) and ``aten._weight_int4pack_mm`` (CUDA, tinygemm, sm80+, bfloat16 activations). Elsewhere a plain
dequantize-then-matmul over blocks of output rows gives the same results without ever materialising the whole
dequantized weight.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..cpu_gemv import INT4_CPU_BLOCK_N, dense_linear, gemv_available, int4_cpu_layout_known, int4_weight_rows

INT4_GROUP_SIZES = (32, 64, 128, 256)
# Elements of dequantized weight materialised at once by the fallback matmul (16 Mi elements = 32 MiB in bf16).
FALLBACK_BLOCK_ELEMENTS = 1 << 24
# innerKTiles of the CUDA tinygemm layout (largest that divides in_features / 16 is used).
_CUDA_INNER_K_TILES = (8, 4, 2)


class QuantizationError(ValueError):
    """A weight or option that cannot be quantized (the message names the problem)."""


# --------------------------------------------------------------------------------------------- int8
def quantize_int8(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row absmax int8: returns ``(q int8 [N, K], scales dtype [N])``.

    The maths runs in float32 on ``weight``'s device; codes are rounded against the scales as stored in
    ``dtype``, so dequantizing with the stored scales is as close as possible to ``weight``.
    """
    if weight.dim() != 2:
        raise QuantizationError(f"int8 quantization needs a 2-D weight, got shape {list(weight.shape)}")
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127.0).to(dtype)  # [N]
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero (or underflowing) rows
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)  # [N, K]
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scales`` row-wise, in ``dtype`` (float32 maths): [N, K]."""
    return (q.float() * scales.float()[:, None]).to(dtype)


# --------------------------------------------------------------------------------------------- int4
def check_group_size(group_size: int, in_features: int, what: str = "weight") -> None:
    """Raise :class:`QuantizationError` unless ``group_size`` is supported and divides ``in_features``."""
    if group_size not in INT4_GROUP_SIZES:
        raise QuantizationError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise QuantizationError(f"{what}: in_features {in_features} is not divisible by the int4 group size "
                                f"{group_size} (choose a group size that divides it)")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [..., K] (any integer dtype) -> uint8 [..., K / 2], high nibble = even column."""
    if q.shape[-1] % 2:
        raise QuantizationError(f"int4 packing needs an even last dimension, got {list(q.shape)}")
    q = q.to(torch.uint8)
    return (q[..., 0::2] << 4) | q[..., 1::2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K / 2] -> codes uint8 [..., K] (inverse of :func:`pack_int4`)."""
    high = packed >> 4
    low = packed & 0x0F
    return torch.stack((high, low), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)  # [..., K]


def quantize_int4(weight: torch.Tensor, group_size: int,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4 (min/max round to nearest): returns ``(packed uint8 [N, K/2],
    scales dtype [N, K/g], zeros dtype [N, K/g])`` with ``w ~= (q - 8) * scale + zero``."""
    if weight.dim() != 2:
        raise QuantizationError(f"int4 quantization needs a 2-D weight, got shape {list(weight.shape)}")
    N, K = weight.shape
    check_group_size(group_size, K)
    w = weight.float().reshape(N, K // group_size, group_size)  # [N, G, g]
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)  # [N, G]
    scales = ((hi - lo) / 15.0).to(dtype)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # constant groups
    s = scales.float()
    zeros = (lo + 8.0 * s).to(dtype)
    q = torch.round((w - zeros.float()[..., None]) / s[..., None] + 8.0).clamp_(0, 15)  # [N, G, g]
    return pack_int4(q.reshape(N, K)), scales, zeros


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """``(q - 8) * scale + zero`` in ``dtype`` (float32 maths): [N, K] from packed [N, K/2]."""
    N, G = scales.shape
    q = unpack_int4(packed).float().reshape(N, G, -1)  # [N, G, g]
    w = (q - 8.0) * scales.float()[..., None] + zeros.float()[..., None]
    return w.reshape(N, -1).to(dtype)  # [N, K]


# --------------------------------------------------------------------------------------------- matmuls
def _row_blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    step = max(1, FALLBACK_BLOCK_ELEMENTS // max(1, cols))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def int8_linear_reference(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor,
                          linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear) -> torch.Tensor:
    """``x @ dequantize(q, scales).T`` by blocks of output rows (the portable fallback): [..., N]. ``linear`` is
    the product of each block (``F.linear``: differentiable)."""
    outs = [linear(x, dequantize_int8(q[r0:r1], scales[r0:r1], x.dtype)) for r0, r1 in _row_blocks(*q.shape)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


def int4_linear_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                          zeros: torch.Tensor) -> torch.Tensor:
    """``x @ dequantize(packed, scales, zeros).T`` by blocks of output rows (the portable fallback): [..., N]."""
    K = packed.shape[1] * 2
    outs = [F.linear(x, dequantize_int4(packed[r0:r1], scales[r0:r1], zeros[r0:r1], x.dtype))
            for r0, r1 in _row_blocks(packed.shape[0], K)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


_INT8_KERNEL_DEVICES: dict[str, bool] = {}


def int8_kernel_available(device: torch.device) -> bool:
    """Whether ``aten._weight_int8pack_mm`` runs on this device type (CPU: torch >= 2.3; CUDA: newer torch).

    The CUDA answer is found once per process by running the op on a tiny input; only "not implemented for
    this backend" counts as unavailable, any other error propagates.
    """
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    if "cuda" not in _INT8_KERNEL_DEVICES:
        x = torch.zeros(1, 32, dtype=torch.bfloat16, device=device)
        w = torch.zeros(32, 32, dtype=torch.int8, device=device)
        s = torch.ones(32, dtype=torch.bfloat16, device=device)
        try:
            torch.ops.aten._weight_int8pack_mm(x, w, s)
            _INT8_KERNEL_DEVICES["cuda"] = True
        except NotImplementedError:
            _INT8_KERNEL_DEVICES["cuda"] = False
    return _INT8_KERNEL_DEVICES["cuda"]


# ----------------------------------------------------------------- int8 on CPU: fbgemm's integer GEMM, exactly
# fbgemm multiplies uint8 activations by int8 weights with integer accumulation (VNNI), at about twice the speed
# of ``_weight_int8pack_mm`` for the one row of a decode step (it streams the weight near the memory bandwidth,
# where the int8pack kernel is bound by converting weights to floats). Its dynamic linear quantizes activations
# to 8 bits, which on its own would change the numbers (weight-only int8 keeps activations in floating point). So
# each activation row is first written exactly enough in three base-254 digits of at most 127 in magnitude:
#     x / s = hi + mid / 254 + lo / 254**2,   s = max|x| / 127 (per row),
# a 22-bit fixed-point form (its error, max|x| / 16.4e6, is below bfloat16's rounding of any element within
# 2**15 of the row's largest); the three digit rows are multiplied by the weight in one call and recombined. One
# guard row (-127.5 and 127.5) pins fbgemm's own activation scale to exactly 1 (zero point 128), so the digits
# reach the integer GEMM unchanged. The products are exact integers, so the result is the weight-only product
# to float32 rounding, row by row (independent of the other rows of a batch).
_INT8_DIGIT = 254.0
_FBGEMM_STATE: dict[str, bool] = {}


def _fbgemm_ops_present() -> bool:
    quantized = getattr(torch.ops, "quantized", None)
    return (quantized is not None and hasattr(torch, "_make_per_channel_quantized_tensor")
            and "fbgemm" in torch.backends.quantized.supported_engines
            and hasattr(torch.ops.quantized, "linear_prepack") and hasattr(torch.ops.quantized, "linear_dynamic"))


def int8_fbgemm_available() -> bool:
    """Whether the exact fbgemm int8 GEMM (:func:`int8_fbgemm_mm`) works here: the ops exist, the quantized
    engine is fbgemm or x86, and a self-check with the largest digits and weights (where CPUs without VNNI
    saturate 16-bit sums) gives the exact integer products. Checked once per process."""
    if "ok" not in _FBGEMM_STATE:
        ok = _fbgemm_ops_present() and torch.backends.quantized.engine in ("fbgemm", "x86")
        if ok:
            g = torch.Generator().manual_seed(0)
            q = torch.randint(-127, 128, (32, 256), dtype=torch.int8, generator=g)
            q[0] = 127
            q[1] = -127
            scales = torch.ones(32)
            x = torch.randn(3, 256, generator=g)
            x[0] = 1.0  # every digit at +127: the saturating case
            x[1, ::2], x[1, 1::2] = 1.0, -1.0
            y = int8_fbgemm_mm(x, pack_int8_for_fbgemm(q, scales))
            ok = bool(torch.allclose(y.double(), x.double() @ q.double().t(), rtol=1e-5, atol=1e-5))
        _FBGEMM_STATE["ok"] = ok
    return _FBGEMM_STATE["ok"]


def pack_int8_for_fbgemm(q: torch.Tensor, scales: torch.Tensor):
    """int8 codes [N, K] + per-row scales [N] -> fbgemm's packed weight (an opaque ``torch.ScriptObject``
    holding the only copy: :func:`unpack_int8_from_fbgemm` gives the codes back exactly)."""
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch >= 2.10 warns that quantized tensors are deprecated: only this
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        qweight = torch._make_per_channel_quantized_tensor(q.contiguous(), scales.double(), zero_points, 0)
    return torch.ops.quantized.linear_prepack(qweight, None)  # transient argument: packing copies it


def unpack_int8_from_fbgemm(packed) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [N, K], scales float64 [N])`` of a weight packed by :func:`pack_int8_for_fbgemm`."""
    qweight, _ = torch.ops.quantized.linear_unpack(packed)
    return qweight.int_repr(), qweight.q_per_channel_scales()


def int8_digits(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``x2`` [M, K] as integer digits for :func:`int8_fbgemm_mm`: ``(rows [3M + 1, K] float32: hi, mid,
    lo digit rows then the guard row; row scales [M, 1] float32)``."""
    M, K = x2.shape
    a = x2.to(torch.float32, copy=True)  # [M, K], worked on in place
    # max|x| / 127, kept above 0 (an all-zero row then has digits 0); float32 is exact for every digit below.
    scale = torch.linalg.vector_norm(a, float("inf"), dim=-1, keepdim=True).div_(127.0).clamp_min_(1e-38)  # [M, 1]
    a.div_(scale)  # |a| <= 127
    rows = torch.empty(3 * M + 1, K, dtype=torch.float32)
    hi, mid, lo = rows[:M], rows[M:2 * M], rows[2 * M:3 * M]
    torch.round(a, out=hi)
    torch.sub(a, hi, alpha=1, out=a).mul_(_INT8_DIGIT)  # remainder, |a| <= 127 again
    torch.round(a, out=mid)
    torch.sub(a, mid, alpha=1, out=a).mul_(_INT8_DIGIT)
    torch.round(a, out=lo)
    rows[3 * M].copy_(_guard_row(K))
    return rows, scale


_GUARD_ROWS: dict[int, torch.Tensor] = {}


def _guard_row(K: int) -> torch.Tensor:
    if K not in _GUARD_ROWS:
        guard = torch.zeros(K)
        guard[0], guard[1] = -127.5, 127.5
        _GUARD_ROWS[K] = guard
    return _GUARD_ROWS[K]


def int8_fbgemm_mm(x2: torch.Tensor, packed) -> torch.Tensor:
    """``x2 [M, K] @ (q * scales).T`` -> [M, N] float32 through fbgemm, exact to float32 rounding (see above)."""
    M = x2.shape[0]
    rows, scale = int8_digits(x2)
    y = torch.ops.quantized.linear_dynamic(rows, packed, False)  # [3M + 1, N]: digit rows times the weight
    out = torch.add(y[M:2 * M], y[2 * M:3 * M], alpha=1.0 / _INT8_DIGIT)
    out = torch.add(y[:M], out, alpha=1.0 / _INT8_DIGIT)
    return out.mul_(scale)  # [M, N]


# From this many rows (prefills, large batches) a CPU int8 product without fbgemm runs in float32 with the weight
# dequantized by blocks: ``_weight_int8pack_mm``'s time grows with the rows (AVX2 AMD EPYC, 2 threads, 3072 x 1024:
# 16 rows 3.2 ms, 128 rows 14.8, 512 rows 58.6) faster than the float32 product's (6.3 / 12.4 / 48.6 ms including
# the dequantization). Fewer rows (decode) keep the kernel.
INT8_WIDEN_ROWS = 128


def int8_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, use_kernel: bool = True) -> torch.Tensor:
    """``x [..., K] @ (q * scales).T`` -> [..., N], through ``_weight_int8pack_mm`` where available (on CPU, for
    fewer than :data:`INT8_WIDEN_ROWS` rows; more rows are multiplied in float32, dequantized by blocks, through
    :func:`~baichuan13b.cpu_gemv.dense_linear`). Not differentiable (``int8_linear_reference`` is)."""
    if use_kernel and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and int8_kernel_available(x.device):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # [M, K]
        if x.device.type == "cpu" and x2.shape[0] >= INT8_WIDEN_ROWS:
            y = int8_linear_reference(x2.float(), q, scales, linear=dense_linear).to(x.dtype)  # [M, N]
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, q, scales.to(x.dtype))  # [M, N]
        return y.reshape(*x.shape[:-1], q.shape[0])
    return int8_linear_reference(x, q, scales)


# -------------------------------------------------------------------- int4 kernels (device-specific layouts)
def int4_kernel_kind(device: torch.device, out_features: int, in_features: int, group_size: int) -> str | None:
    """``"cpu"`` or ``"cuda"`` when a packed int4 kernel can run this shape on ``device``, else None."""
    if group_size not in INT4_GROUP_SIZES or in_features % group_size:
        return None
    if device.type == "cpu":
        if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and out_features % 16 == 0:
            return "cpu"
        return None
    if device.type == "cuda":
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm") or out_features % 8:
            return None
        if torch.cuda.get_device_capability(device) < (8, 0):
            return None
        if any(in_features % (16 * t) == 0 for t in _CUDA_INNER_K_TILES):
            return "cuda"
    return None


def int4_kernel_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    """Activation / scale dtype of the kernel: the CUDA tinygemm kernel takes bfloat16 only; on CPU float32
    inputs also go through the bfloat16 kernel, whose float32 variant is 15-60x slower (2.6 vs 0.10 ms for one
    row x [2752, 1024], 41 vs 0.66 ms for 16 rows, on an AVX512-BF16 CPU). The result then carries bfloat16
    rounding (about 0.4% relative), well below int4's own quantization error; the stored float32 scales and
    zeros are kept, so saving stays exact."""
    return torch.bfloat16 if kind == "cuda" or dtype == torch.float32 else dtype


def pack_int4_for_kernel(kind: str, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert the stored int4 format to the kernel layout: ``(kernel_weight, scale_and_zeros [K/g, N, 2])``.

    The kernel weight layout is opaque and specific to the device type (and, on CPU, to the vector ISA).
    """
    N, half_k = packed.shape
    K = half_k * 2
    dtype = int4_kernel_dtype(kind, scales.dtype)
    scale_and_zeros = torch.stack((scales.t(), zeros.t()), dim=-1).to(dtype).contiguous()  # [G, N, 2]
    if kind == "cpu":
        codes = unpack_int4(packed).to(torch.int32)  # [N, K]
        weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    else:
        tiles = next(t for t in _CUDA_INNER_K_TILES if K % (16 * t) == 0)
        weight = torch.ops.aten._convert_weight_to_int4pack(packed.contiguous(), tiles)
    return weight, scale_and_zeros


# From this many rows (prefills) a CPU int4 product dequantizes the weight by blocks of INT4_DEQUANT_BLOCK output
# rows into ``scale_and_zeros.dtype`` (bfloat16) and multiplies them with oneDNN's GEMM: the int4 kernel's time
# grows with the rows, while the dequantization is paid once per product. Group 128, 2 threads, AVX-512 AMD EPYC,
# kernel vs dequantized, ms: 13696 x 5120 at 128 / 256 / 512 rows 125 / 255 / 430 vs 113 / 153 / 209; 5120 x
# 13696 111 / 248 / 475 vs 131 / 182 / 294; 3072 x 1024 5.5 / 10.8 / 22.4 vs 6.4 / 9.1 / 13.3 (at 32 rows the
# kernel is 2-3x faster).
INT4_DEQUANT_ROWS = 256
INT4_DEQUANT_BLOCK = 1024


def int4_dequantized_mm(x2: torch.Tensor, weight: torch.Tensor, scale_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x2 [M, K] @ W.T`` -> [M, N] for a weight in PyTorch's CPU int4 kernel layout, dequantized by blocks of
    :data:`INT4_DEQUANT_BLOCK` output rows (:func:`~baichuan13b.cpu_gemv.int4_weight_rows`, float32 maths rounded
    once to ``scale_and_zeros.dtype``), each multiplied with ``F.linear`` (oneDNN). ``x2`` must already be in
    that dtype. Rounding the weight to bfloat16 adds about 0.2% relative error to the product (2.8e-3 against
    float64 vs the kernel's 1.7e-3, 13696 x 5120), two orders below int4's own."""
    N = scale_and_zeros.shape[1]
    outs = []
    for r0 in range(0, N, INT4_DEQUANT_BLOCK):
        r1 = min(N, r0 + INT4_DEQUANT_BLOCK)
        w = int4_weight_rows(weight[r0:r1], scale_and_zeros[:, r0:r1])  # [r1 - r0, K]
        outs.append(F.linear(x2, w))  # [M, r1 - r0]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _int4_dequantizes(x2: torch.Tensor, scale_and_zeros: torch.Tensor) -> bool:
    return (x2.shape[0] >= INT4_DEQUANT_ROWS and x2.device.type == "cpu"
            and scale_and_zeros.shape[1] % INT4_CPU_BLOCK_N == 0 and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and x2.requires_grad) and gemv_available() and int4_cpu_layout_known())


def int4_kernel_mm(kind: str, x2: torch.Tensor, weight: torch.Tensor, group_size: int,
                   scale_and_zeros: torch.Tensor) -> torch.Tensor:
    """``x2 [M, K] @ W.T`` with the packed kernel of ``kind`` -> [M, N] in ``scale_and_zeros.dtype``; on CPU, from
    :data:`INT4_DEQUANT_ROWS` rows, through the dequantized weight (:func:`int4_dequantized_mm`)."""
    x2 = x2.to(scale_and_zeros.dtype).contiguous()
    if kind == "cpu":
        if _int4_dequantizes(x2, scale_and_zeros):
            return int4_dequantized_mm(x2, weight, scale_and_zeros)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, weight, group_size, scale_and_zeros)
    return torch.ops.aten._weight_int4pack_mm(x2, weight, group_size, scale_and_zeros)


def unpack_int4_from_kernel(kind: str, weight: torch.Tensor, group_size: int, out_features: int,
                            in_features: int) -> torch.Tensor:
    """Recover the stored uint8 [N, K/2] codes from a kernel layout, exactly.

    With scale 1 and zero 8 the dequantized weight is the codes themselves (small integers, exact in any float
    dtype): on CPU, where :func:`~baichuan13b.cpu_gemv.int4_cpu_layout_known`, read from the layout directly;
    otherwise the kernel is run on identity rows, in blocks of 1024 input columns.
    """
    dtype = torch.bfloat16 if kind == "cuda" else torch.float32
    G = in_features // group_size
    fake = torch.empty(G, out_features, 2, dtype=dtype, device=weight.device)  # [G, N, 2]
    fake[..., 0] = 1.0
    fake[..., 1] = 8.0
    codes = torch.empty(out_features, in_features, dtype=torch.uint8, device=weight.device)  # [N, K]
    if kind == "cpu" and out_features % INT4_CPU_BLOCK_N == 0 and gemv_available() and int4_cpu_layout_known():
        for r0 in range(0, out_features, INT4_DEQUANT_BLOCK):  # the layout read directly, by blocks of rows
            r1 = min(out_features, r0 + INT4_DEQUANT_BLOCK)
            codes[r0:r1] = int4_weight_rows(weight[r0:r1], fake[:, r0:r1]).to(torch.uint8)  # exact small integers
        return pack_int4(codes)
    for k0 in range(0, in_features, 1024):
        k1 = min(in_features, k0 + 1024)
        eye = torch.zeros(k1 - k0, in_features, dtype=dtype, device=weight.device)  # [k, K]
        eye[:, k0:k1] = torch.eye(k1 - k0, dtype=dtype, device=weight.device)
        block = int4_kernel_mm(kind, eye, weight, group_size, fake)  # [k, N] = codes of columns k0:k1
        codes[:, k0:k1] = block.t().round().to(torch.uint8)
    return pack_int4(codes)

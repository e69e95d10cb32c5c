"""Weight-only quantized replacements for ``nn.Linear`` and ``nn.Embedding``.

They keep the replaced module's name, so parameter paths stay official: a quantized
``model.layers.0.self_attn.W_pack`` holds ``weight`` (int8, or packed int4 uint8) + ``scales`` (+ ``zeros``)
as persistent buffers, exactly what checkpoints store (see :mod:`baichuan13b.quantization.functional`).

``WeightOnlyInt4Linear`` converts its weight to the packed layout of the CPU or CUDA int4 kernel on its first
forward pass, and ``WeightOnlyInt8Linear`` on CPU to fbgemm's, and then drop the stored form (never both in
memory). ``state_dict``, ``load_state_dict`` and
device or dtype moves (``.to``) convert back, exactly, so the module always saves the device-independent form.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ..cpu_gemv import INT8_GEMV_MAX_ROWS, gemv_applies, int8_gemv, int8_gemv_op

from .functional import (
    QuantizationError,
    check_group_size,
    dequantize_int4,
    dequantize_int8,
    int4_kernel_kind,
    int4_kernel_mm,
    int4_linear_reference,
    int8_fbgemm_available,
    int8_fbgemm_mm,
    int8_linear,
    int8_linear_reference,
    pack_int4_for_kernel,
    pack_int8_for_fbgemm,
    quantize_int4,
    quantize_int8,
    unpack_int4_from_kernel,
    unpack_int8_from_fbgemm,
)


def _check_weight(name: str, weight: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(weight.shape) != shape:
        raise QuantizationError(f"{name}: expected a float weight of shape {list(shape)}, got {list(weight.shape)}")
    if not weight.is_floating_point():
        raise QuantizationError(f"{name}: expected a floating-point weight to quantize, got {weight.dtype}")


class _Quantized(nn.Module):
    """Shared parts: byte accounting and the ``use_kernel`` switch (False forces the dequantize fallback)."""

    bits: int
    use_kernel: bool = True

    @property
    def float_shape(self) -> tuple[int, int]:
        """Shape of the float weight this module replaces ([out, in] or [num_embeddings, dim])."""
        if hasattr(self, "in_features"):
            return (self.out_features, self.in_features)
        return (self.num_embeddings, self.embedding_dim)

    def nbytes_by_dtype(self) -> dict[torch.dtype, int]:
        """Bytes held by this module's tensors (stored or kernel layout), by dtype."""
        out: dict[torch.dtype, int] = {}
        for t in self._held_tensors():
            out[t.dtype] = out.get(t.dtype, 0) + t.numel() * t.element_size()
        return out

    def _held_tensors(self) -> list[torch.Tensor]:
        return [b for b in self._buffers.values() if b is not None]


class _KernelLayout(_Quantized):
    """A linear whose weight may be held in a device-specific kernel layout instead of the stored form.

    Subclasses define ``_unpack_kernel`` (back to the stored form, exactly) and ``_stored_state`` (the stored
    tensors by name while in a kernel layout, else None). Moves and casts convert back first (the next forward
    repacks on the new device), ``state_dict`` writes the stored form, ``load_state_dict`` replaces it.
    """

    def _unpack_kernel(self) -> None:
        raise NotImplementedError

    def _stored_state(self) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def _apply(self, fn, recurse: bool = True):
        self._unpack_kernel()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        stored = self._stored_state()
        if stored is None:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in stored.items():
            destination[prefix + name] = tensor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._unpack_kernel()
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class WeightOnlyInt8Linear(_KernelLayout):
    """``y = x @ (weight * scales[:, None]).T``: int8 weight [out, in], per-output-channel ``scales`` [out].

    On CPU the first inference forward pass hands the weight to fbgemm's packed layout (:func:`int8_fbgemm_mm`:
    integer GEMM, exact to float32 rounding, faster decoding) and drops the stored form; inputs that need
    gradients (LoRA over an int8 model) take the differentiable path below instead; ``state_dict``,
    ``load_state_dict`` and device or dtype moves convert back, exactly. Elsewhere forward goes through
    ``aten._weight_int8pack_mm`` where the device has it (CUDA on newer torch) and otherwise through a
    dequantize-matmul over blocks of rows; the full dequantized weight never exists.
    """

    bits = 8
    # Set by ``cpu_linear.pack_linear_weights(layout="streamed")``: on CPU keep the stored codes (no fbgemm layout)
    # and multiply one-row inputs with the generated kernel of ``cpu_gemv.int8_gemv``.
    streamed: bool = False

    def __init__(self, in_features: int, out_features: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))
        self._packed = None  # fbgemm's packed weight while ``weight`` is None (CPU kernel layout)
        self._packed_size: torch.Tensor | None = None  # a meta int8 tensor of its size, for byte accounting

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype, name: str = "weight") -> "WeightOnlyInt8Linear":
        """Quantize a float weight [out, in] on its own device (meta weights give an empty meta module)."""
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, dtype=dtype, device=weight.device)
        if weight.device.type != "meta":
            module.set_float_weight(weight, name)
        return module

    def set_float_weight(self, weight: torch.Tensor, name: str = "weight") -> None:
        """Quantize ``weight`` [out, in] (on its device) into this module's buffers."""
        _check_weight(name, weight, (self.out_features, self.in_features))
        self._unpack_kernel()
        self.weight, self.scales = quantize_int8(weight, self.scales.dtype)

    # ----------------------------------------------------------------- kernel layout <-> stored form
    @property
    def kernel(self) -> str | None:
        """``"fbgemm"`` while the weight is held in fbgemm's packed layout, else None."""
        return "fbgemm" if self._packed is not None else None

    def _pack_kernel(self) -> None:
        self._packed = pack_int8_for_fbgemm(self.weight, self.scales)
        self._packed_size = torch.empty(self.out_features, self.in_features, dtype=torch.int8, device="meta")
        self.weight = None

    def _stored_weight(self) -> torch.Tensor:
        if self._packed is None:
            return self.weight
        return unpack_int8_from_fbgemm(self._packed)[0]

    def _unpack_kernel(self) -> None:
        if self._packed is not None:
            self.weight = self._stored_weight()
            self._packed = self._packed_size = None

    def _held_tensors(self) -> list[torch.Tensor]:
        held = super()._held_tensors()
        return held + [self._packed_size] if self._packed is not None else held

    def _stored_state(self) -> dict[str, torch.Tensor] | None:
        return None if self._packed is None else {"weight": self._stored_weight(), "scales": self.scales}

    # ----------------------------------------------------------------- maths
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight [out, in] these codes stand for."""
        return dequantize_int8(self._stored_weight(), self.scales, dtype or self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():  # no kernel has a derivative: dequantize-matmul
            self._unpack_kernel()
            return int8_linear_reference(x, self.weight, self.scales)
        if self.streamed and self.use_kernel and x.device.type == "cpu":  # the stored codes, streamed at decode
            self._unpack_kernel()
            x2 = x.reshape(-1, self.in_features)  # [M, K]
            decode_row = x2.shape[0] <= INT8_GEMV_MAX_ROWS and x.is_floating_point()
            if decode_row and torch.compiler.is_compiling() and not torch.is_grad_enabled():
                y = int8_gemv_op(x2, self.weight, self.scales)  # compiled decode steps: the kernel as an operator
                return y.reshape(*x.shape[:-1], self.out_features)
            if decode_row and gemv_applies(x2, self.weight):
                return int8_gemv(x2, self.weight, self.scales).reshape(*x.shape[:-1], self.out_features)
            return int8_linear(x, self.weight, self.scales)
        use_fbgemm = self.use_kernel and x.device.type == "cpu" and self.scales.device.type == "cpu" \
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and int8_fbgemm_available()
        if use_fbgemm:
            if self._packed is None:
                self._pack_kernel()
            x2 = x.reshape(-1, self.in_features)  # [M, K]
            y = int8_fbgemm_mm(x2, self._packed)  # [M, N] float32
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        self._unpack_kernel()
        return int8_linear(x, self.weight, self.scales, use_kernel=self.use_kernel)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class WeightOnlyInt4Linear(_KernelLayout):
    """``y = x @ W.T`` with ``W = (q - 8) * scale + zero`` per group of ``group_size`` input columns.

    Stored form: ``weight`` uint8 [out, in / 2], ``scales`` and ``zeros`` [out, in / group_size]. The first
    forward on a device with a packed int4 kernel (CPU: ``_weight_int4pack_mm_for_cpu``; CUDA sm80+:
    ``_weight_int4pack_mm``) repacks ``weight`` into that kernel's layout (the stored form is not kept).
    """

    bits = 4

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        check_group_size(group_size, in_features)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.empty(out_features, groups, dtype=dtype, device=device))
        # (kind, scale_and_zeros [G, N, 2]) once packed for a kernel: ``weight`` then holds the kernel layout, and
        # scales/zeros are None unless the kernel needs them in another dtype (kept: no precision is lost).
        self._kernel: tuple[str, torch.Tensor] | None = None

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype, group_size: int = 128,
                   name: str = "weight") -> "WeightOnlyInt4Linear":
        """Quantize a float weight [out, in] on its own device (meta weights give an empty meta module)."""
        out_features, in_features = weight.shape
        check_group_size(group_size, in_features, name)
        module = cls(in_features, out_features, group_size, dtype=dtype, device=weight.device)
        if weight.device.type != "meta":
            module.set_float_weight(weight, name)
        return module

    def set_float_weight(self, weight: torch.Tensor, name: str = "weight") -> None:
        """Quantize ``weight`` [out, in] (on its device) into this module's buffers."""
        _check_weight(name, weight, (self.out_features, self.in_features))
        self._unpack_kernel()
        self.weight, self.scales, self.zeros = quantize_int4(weight, self.group_size, self.scales.dtype)

    # ----------------------------------------------------------------- kernel layout <-> stored form
    @property
    def kernel(self) -> str | None:
        """``"cpu"`` / ``"cuda"`` while the weight is held in that kernel's layout, else None."""
        return self._kernel[0] if self._kernel is not None else None

    def _pack_kernel(self, kind: str) -> None:
        weight, scale_and_zeros = pack_int4_for_kernel(kind, self.weight, self.scales, self.zeros)
        lossless = scale_and_zeros.dtype == self.scales.dtype
        self._kernel = (kind, scale_and_zeros)
        self.weight = weight
        if lossless:
            self.scales = self.zeros = None

    def _stored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight, scales, zeros)`` in the stored form (converted back from a kernel layout if needed)."""
        if self._kernel is None:
            return self.weight, self.scales, self.zeros
        kind, scale_and_zeros = self._kernel
        weight = unpack_int4_from_kernel(kind, self.weight, self.group_size, self.out_features, self.in_features)
        scales = self.scales if self.scales is not None else scale_and_zeros[..., 0].t().contiguous()  # [N, G]
        zeros = self.zeros if self.zeros is not None else scale_and_zeros[..., 1].t().contiguous()
        return weight, scales, zeros

    def _unpack_kernel(self) -> None:
        if self._kernel is not None:
            weight, scales, zeros = self._stored()
            self._kernel = None
            self.weight, self.scales, self.zeros = weight, scales, zeros

    def _held_tensors(self) -> list[torch.Tensor]:
        held = super()._held_tensors()
        return held + [self._kernel[1]] if self._kernel is not None else held

    def _stored_state(self) -> dict[str, torch.Tensor] | None:
        return None if self._kernel is None else dict(zip(("weight", "scales", "zeros"), self._stored()))

    # ----------------------------------------------------------------- maths
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight [out, in] these codes stand for."""
        self._unpack_kernel()
        return dequantize_int4(self.weight, self.scales, self.zeros, dtype or self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is None and self.use_kernel:
            kind = int4_kernel_kind(self.weight.device, self.out_features, self.in_features, self.group_size)
            if kind is not None:
                self._pack_kernel(kind)
        if self._kernel is not None and self.use_kernel:
            kind, scale_and_zeros = self._kernel
            x2 = x.reshape(-1, self.in_features)  # [M, K]
            y = int4_kernel_mm(kind, x2, self.weight, self.group_size, scale_and_zeros)  # [M, N]
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        self._unpack_kernel()
        return int4_linear_reference(x, self.weight, self.scales, self.zeros)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
                f"group_size={self.group_size}" + (f", kernel={self.kernel}" if self.kernel else ""))


class WeightOnlyInt8Embedding(_Quantized):
    """An embedding table stored as int8 rows with one scale per row (token); looked-up rows are dequantized."""

    bits = 8

    def __init__(self, num_embeddings: int, embedding_dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(num_embeddings, dtype=dtype, device=device))

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype, name: str = "weight") -> "WeightOnlyInt8Embedding":
        module = cls(*weight.shape, dtype=dtype, device=weight.device)
        if weight.device.type != "meta":
            module.set_float_weight(weight, name)
        return module

    def set_float_weight(self, weight: torch.Tensor, name: str = "weight") -> None:
        _check_weight(name, weight, (self.num_embeddings, self.embedding_dim))
        self.weight, self.scales = quantize_int8(weight, self.scales.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight)  # [..., dim] int8
        return (rows.float() * self.scales.float()[ids][..., None]).to(self.scales.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=8"


class WeightOnlyInt4Embedding(_Quantized):
    """An embedding table stored as group-wise int4 rows (same format as :class:`WeightOnlyInt4Linear`)."""

    bits = 4

    def __init__(self, num_embeddings: int, embedding_dim: int, group_size: int = 128, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        check_group_size(group_size, embedding_dim, "embedding")
        self.num_embeddings, self.embedding_dim, self.group_size = num_embeddings, embedding_dim, group_size
        groups = embedding_dim // group_size
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim // 2, dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales", torch.empty(num_embeddings, groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.empty(num_embeddings, groups, dtype=dtype, device=device))

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype, group_size: int = 128,
                   name: str = "weight") -> "WeightOnlyInt4Embedding":
        check_group_size(group_size, weight.shape[1], name)
        module = cls(*weight.shape, group_size, dtype=dtype, device=weight.device)
        if weight.device.type != "meta":
            module.set_float_weight(weight, name)
        return module

    def set_float_weight(self, weight: torch.Tensor, name: str = "weight") -> None:
        _check_weight(name, weight, (self.num_embeddings, self.embedding_dim))
        self.weight, self.scales, self.zeros = quantize_int4(weight, self.group_size, self.scales.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize_int4(self.weight[flat], self.scales[flat], self.zeros[flat], self.scales.dtype)  # [n, dim]
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=4, group_size={self.group_size}"


QUANTIZED_MODULES = (WeightOnlyInt8Linear, WeightOnlyInt4Linear, WeightOnlyInt8Embedding, WeightOnlyInt4Embedding)

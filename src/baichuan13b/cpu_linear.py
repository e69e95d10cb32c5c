"""Linear layers with weights prepacked for oneDNN: the CPU decode fast path.

Decoding one token multiplies a single activation row by every weight matrix (a GEMV), so its speed is how fast
the weights stream from memory. The profile of ``baichuan bench --random-weights baichuan-232m`` on CPU puts
93% of a decode step in ``aten::mm``; plain ``F.linear`` on CPU hands oneDNN a weight in PyTorch's layout, which
it re-lays out (reads and writes the whole matrix) on every call before the product. Prepacking the weight once
into oneDNN's own layout (``mkldnn._reorder_linear_weight``, what ``torch.compile``'s CPU weight prepacking
uses) removes that: the same numbers (bfloat16 bit-identical, float32 to accumulation order); whole bfloat16
decode steps 1.28x faster (median of paired runs) on this kind of machine (see docs/performance.md).

:func:`pack_linear_weights` swaps the model's plain ``nn.Linear`` modules (bfloat16 and float32 by default;
on CPU) for
:class:`PackedLinear` in place; the packed weight *replaces* the plain one (no second copy in memory).
``state_dict`` still holds the plain weights under the official names, so saving works unchanged.
:func:`unpack_linear_weights` restores ``nn.Linear`` (e.g. before training, moving the model to a GPU, or
``torch.compile``, which cannot trace the packed layout: compiled decoding refuses packed models).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_gemv import (GEMV_MAX_ROWS, INT8_GEMV_MAX_IN, compile_for, dense_linear, gemv, gemv_applies,
                       gemv_available, gemv_op)

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)

logger = logging.getLogger(__name__)


@functools.cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build and this CPU can pack ``dtype`` weights for oneDNN.

    The ops must exist, and oneDNN must accept the dtype here: bfloat16 packing needs AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT, so on AVX2-only CPUs (many AMD EPYC and older Intel parts) bfloat16 linears stay plain.
    Checked once per dtype by packing and multiplying a small matrix.
    """
    if dtype not in PACKABLE_DTYPES:
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    w = torch.ones(16, 16, dtype=dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 16, dtype=dtype), packed, None, "none", [], "")
    except RuntimeError as e:  # oneDNN refuses this dtype on this CPU: "bf16 path needs the cpu support ..."
        logger.info("oneDNN cannot pack %s weights on this CPU (%s); those linears stay plain", dtype, e)
        return False
    return bool((y == 16).all())


def _bias_free(cls: type[nn.Linear], weight: nn.Parameter) -> nn.Linear:
    """A bias-free ``cls`` (``nn.Linear`` or a subclass) holding ``weight`` [out, in] itself (no initialisation,
    no copy)."""
    with torch.device("meta"):
        linear = cls(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = weight
    return linear


class PackedLinear(nn.Module):
    """``y = x @ W.T`` (no bias) with ``W`` stored in oneDNN's layout for single-row products.

    ``weight`` is a frozen parameter in the ``torch._mkldnn`` layout (``weight.to_dense()`` gives the plain
    matrix); ``state_dict`` writes and reads the plain matrix.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("PackedLinear packs bias-free linears only (every Baichuan projection)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        plain = linear.weight.detach()
        if not packing_available(plain.dtype):
            raise ValueError(f"PackedLinear: {plain.dtype} weights cannot be packed for oneDNN with this torch build "
                             f"and CPU (packing_available({plain.dtype}) is False)")
        self.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(plain, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if x2.dtype == self.weight.dtype and not x2.requires_grad:
            # Any row count: the one-row layout is as fast as PyTorch's for prefills too (512 rows: equal).
            y = torch.ops.mkldnn._linear_pointwise(x2, self.weight, None, "none", [], "")
        else:  # another input dtype, or autograd: a dense copy (slow: a full reorder per call)
            y = F.linear(x2.to(self.weight.dtype), self.weight.to_dense()).to(x2.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)  # [..., N]

    def to_linear(self) -> nn.Linear:
        """The equivalent plain ``nn.Linear`` (a new module; its weight is a fresh dense copy)."""
        return _bias_free(nn.Linear, nn.Parameter(self.weight.to_dense(), requires_grad=True))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight.to_dense()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        w = state_dict[key]
        if tuple(w.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {key}: {list(w.shape)} vs "
                              f"{[self.out_features, self.in_features]}")
            return
        w = w.to(dtype=self.weight.dtype, device="cpu")
        self.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1), requires_grad=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


# From this many rows up, a bfloat16 product on a CPU without native bfloat16 runs in float32 (see StreamedLinear).
WIDEN_ROWS = 16


class StreamedLinear(nn.Linear):
    """A bias-free ``nn.Linear`` on CPU whose decode products stream the weight once: the streamed layout of
    :func:`pack_linear_weights`, and bfloat16 in the packed layout on CPUs where oneDNN cannot pack it (AVX2 only).

    By the rows of the input (all rows of a call share one product):

    * up to :data:`~baichuan13b.cpu_gemv.GEMV_MAX_ROWS` rows (decode steps of one or two sequences): the
      generated kernel of :func:`baichuan13b.cpu_gemv.gemv`, float32 accumulation in registers (2752 x 1024,
      bfloat16, 2 threads: 0.18 vs 0.39 ms for ``F.linear``);
    * from :data:`WIDEN_ROWS` rows (prefills, large batches) in bfloat16 on CPUs where oneDNN has no bfloat16
      (:func:`packing_available` is False): the product in float32, rounded back, since PyTorch then multiplies
      bfloat16 one row at a time
      (``python -m baichuan13b.bench.kernels --threads 2``, 3072 x 1024: 512 rows 160 ms vs 21.6 in float32
      including the weight's conversion);
    * in between, or where the kernels cannot be compiled: :func:`~baichuan13b.cpu_gemv.dense_linear` (float32
      through oneDNN on the plain weight, 1.1-3.7x faster than ``F.linear`` here; other dtypes ``F.linear``);
    * autograd: ``F.linear``;
    * inside a ``torch.compile`` trace (``compile=True`` decoding), up to ``GEMV_MAX_ROWS`` rows: the same kernel
      as an operator (:func:`~baichuan13b.cpu_gemv.gemv_op`), with Inductor fusing what lies between.

    All paths accumulate in float32, so results agree to accumulation order. The weight stays the one plain
    parameter (no second copy); everything else, ``state_dict`` included, is ``nn.Linear``'s.
    """

    use_gemv: bool = False  # whether the generated kernels compile here (decided once, when the layer is made)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if self.use_gemv and x2.dtype == self.weight.dtype and x2.shape[0] <= GEMV_MAX_ROWS \
                and torch.compiler.is_compiling() and not torch.is_grad_enabled():  # compiled decode steps
            return gemv_op(x2, self.weight).reshape(*x.shape[:-1], self.out_features)  # [..., N]
        if x2.dtype == self.weight.dtype and gemv_applies(x2, self.weight):
            return gemv(x2, self.weight).reshape(*x.shape[:-1], self.out_features)  # [..., N]
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):  # autograd: F.linear's
            return F.linear(x, self.weight)
        if x2.shape[0] >= WIDEN_ROWS and x.dtype == torch.bfloat16 and not packing_available(torch.bfloat16):
            y = dense_linear(x2.float(), self.weight.float()).to(x.dtype)  # [M, N]
        else:
            y = dense_linear(x2, self.weight)  # [M, N]
        return y.reshape(*x.shape[:-1], self.out_features)  # [..., N]

    @classmethod
    def wrap(cls, linear: nn.Linear) -> "StreamedLinear":
        """The same layer, sharing ``linear``'s weight parameter."""
        layer = _bias_free(cls, linear.weight)
        layer.use_gemv = gemv_available()
        return layer


def _linears(model: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is kind]


# What the loaders lay out for fast CPU products by default: bfloat16 and float32.
DEFAULT_DTYPES = (torch.bfloat16, torch.float32)
LAYOUTS = ("streamed", "packed")


# Below this many bytes of float linear weights a model's decode step is not bound by streaming them from memory
# (they largely stay in the caches), so ``auto`` keeps the packed layout and skips compiling kernels: the demo
# model (16.7 MB) saves about a tenth of a millisecond per token streamed, against 14 s of compilation the first
# time on a machine and 3 s in every later process (`printf '你好\n' | baichuan chat`: 18.2 / 6.8 s vs 3.6 s).
STREAM_MIN_BYTES = 64 << 20


def streamable_bytes(model: nn.Module) -> int:
    """Bytes of the weights a CPU decode step reads that the layout choice is about: bfloat16 / float32 plain
    ``nn.Linear`` weights and int8 codes (all of them, including those whose layers keep fbgemm's kernel in the
    streamed layout: the threshold asks whether decoding is bound by memory at all)."""
    from .quantization.modules import WeightOnlyInt8Linear

    total = sum(m.weight.numel() * m.weight.element_size() for _, _, m in _linears(model, nn.Linear)
                if m.weight.device.type == "cpu" and m.weight.dtype in DEFAULT_DTYPES)
    return total + sum(m.out_features * m.in_features for m in model.modules()
                       if isinstance(m, WeightOnlyInt8Linear) and m.scales.device.type == "cpu")


def choose_layout(max_rows: int, weight_bytes: int | None = None) -> str:
    """The faster layout for decode steps of up to ``max_rows`` sequences together: ``"streamed"`` (plain
    weights, the generated kernels of :mod:`baichuan13b.cpu_gemv`) for at most
    :data:`~baichuan13b.cpu_gemv.GEMV_MAX_ROWS` where those compile here and the model's streamable weights
    (``weight_bytes``, :func:`streamable_bytes`, when given) reach :data:`STREAM_MIN_BYTES`, else ``"packed"``
    (oneDNN).

    Measured per matrix (2752 x 1024, 2 threads, AVX-512 AMD EPYC, 2026-12-07): bfloat16 1 row 0.167 ms streamed
    vs 0.244 packed, 2 rows 0.209 vs 0.269, but 4 rows 0.384 vs 0.245 and 16 rows plain ``F.linear`` 0.523 vs
    packed 0.328; float32 1 row 0.346 vs 0.445. Prefills (512 rows) cost the same in either layout.
    """
    if weight_bytes is not None and weight_bytes < STREAM_MIN_BYTES:
        return "packed"
    return "streamed" if max_rows <= GEMV_MAX_ROWS and gemv_available() else "packed"


def resolve_layout(layout: str, max_rows: int, model: nn.Module) -> str:
    """``layout`` as given (``"streamed"`` or ``"packed"``), or for ``"auto"`` :func:`choose_layout` for ``model``
    decoding up to ``max_rows`` sequences at once (what ``--cpu-layout`` means)."""
    return choose_layout(max_rows, streamable_bytes(model)) if layout == "auto" else layout


def pack_linear_weights(model: nn.Module, dtypes: tuple[torch.dtype, ...] = DEFAULT_DTYPES, *,
                        layout: str = "streamed", progress: bool = False) -> int:
    """Lay out every plain ``nn.Linear`` on CPU whose weight dtype is in ``dtypes`` (bfloat16 and float32 by
    default) for fast products, in place.

    ``layout="streamed"`` (for decoding one or two sequences: chat, generate, the web page): the linears become
    :class:`StreamedLinear` (same weight tensor; decode rows through generated kernels that stream it once);
    where those kernels cannot be compiled here (:func:`~baichuan13b.cpu_gemv.gemv_available`) this falls
    back to ``"packed"``. ``layout="packed"`` (for batches of several sequences: the server): :class:`PackedLinear`
    (oneDNN's layout, replacing the plain weight); where this CPU cannot pack bfloat16 (:func:`packing_available`:
    AVX2-only CPUs) bfloat16 linears become :class:`StreamedLinear` anyway. Skipped: other dtypes and devices,
    quantized or LoRA-wrapped modules (not plain ``nn.Linear``), linears with a bias, and a ``lm_head`` tied to
    the embeddings; int8 layers (``WeightOnlyInt8Linear``) are not replaced, but in the streamed layout those with
    a short input dimension keep their stored codes and multiply one-row inputs with
    :func:`~baichuan13b.cpu_gemv.int8_gemv` (:func:`stream_int8_layers`); longer ones keep fbgemm's kernel. Returns the
    number of modules replaced. Inference only: :func:`unpack_linear_weights`
    before training. The streamed kernels are compiled here, for each weight shape (about a second each the
    first time on this machine, cached on disk after), not during the first answer; ``progress`` shows a bar.
    """
    unsupported = [d for d in dtypes if d not in PACKABLE_DTYPES]
    if unsupported:
        raise ValueError(f"pack_linear_weights: {unsupported} cannot be packed; supported: {list(PACKABLE_DTYPES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"pack_linear_weights: unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    stream_all = layout == "streamed" and gemv_available()
    packable = () if stream_all else tuple(d for d in dtypes if packing_available(d))
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    count, streamed = 0, []
    for parent, name, child in _linears(model, nn.Linear):
        w = child.weight
        if w.device.type != "cpu" or child.bias is not None or (tied and name == "lm_head") or w.dtype not in dtypes:
            continue
        if w.dtype in packable:
            setattr(parent, name, PackedLinear(child))
            child.weight = None  # the plain copy is freed now, not when the loop ends: peak memory stays one model
        elif stream_all or w.dtype == torch.bfloat16:
            setattr(parent, name, StreamedLinear.wrap(child))
            streamed.append(child.weight)
        else:
            continue
        count += 1
    if streamed:  # their decode kernels now, not during the first answer
        for dtype in {w.dtype for w in streamed}:
            compile_for([tuple(w.shape) for w in streamed if w.dtype == dtype], dtype, progress=progress)
    if stream_all:  # int8 layers with a short input dimension keep their stored codes, streamed one row at a time
        stream_int8_layers(model, max_in_features=INT8_GEMV_MAX_IN, progress=progress)
    return count


def stream_int8_layers(model: nn.Module, max_in_features: int | None = None, progress: bool = False) -> int:
    """Flag the CPU int8 layers (``WeightOnlyInt8Linear``) of ``model`` with at most ``max_in_features`` inputs (all
    of them when None) to keep their stored codes and multiply one-row inputs with the generated kernel
    (:func:`~baichuan13b.cpu_gemv.int8_gemv`), compiling it for their shapes now; a layer held in fbgemm's layout
    gets its codes back. Returns the number of layers flagged (0 where the kernels are unavailable here).

    :func:`pack_linear_weights` streams those up to :data:`~baichuan13b.cpu_gemv.INT8_GEMV_MAX_IN` inputs; compiled
    decode steps stream all (fbgemm's packed weight cannot be traced)."""
    from .quantization.modules import WeightOnlyInt8Linear

    if not gemv_available():
        return 0
    int8 = [m for m in model.modules() if isinstance(m, WeightOnlyInt8Linear) and m.scales.device.type == "cpu"
            and (max_in_features is None or m.in_features <= max_in_features)]
    for m in int8:
        m._unpack_kernel()
        m.streamed = True
    for dtype in {m.scales.dtype for m in int8}:
        compile_for([m.float_shape for m in int8 if m.scales.dtype == dtype], dtype, codes=True, progress=progress)
    return len(int8)


def has_packed_weights(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a :class:`PackedLinear` (``torch.compile`` cannot trace those)."""
    return any(isinstance(m, PackedLinear) for m in model.modules())


def has_cpu_layout(model: nn.Module) -> bool:
    """Whether :func:`pack_linear_weights` laid out any linear of ``model`` (packed or streamed)."""
    return any(isinstance(m, (PackedLinear, StreamedLinear)) for m in model.modules())


def unpack_linear_weights(model: nn.Module) -> int:
    """Undo :func:`pack_linear_weights`: every :class:`PackedLinear` and :class:`StreamedLinear` becomes a plain
    ``nn.Linear`` again."""
    found = _linears(model, PackedLinear)
    for parent, name, child in found:
        setattr(parent, name, child.to_linear())
    widened = _linears(model, StreamedLinear)
    for parent, name, child in widened:
        setattr(parent, name, _bias_free(nn.Linear, child.weight))
    for m in model.modules():
        if getattr(m, "streamed", False):  # int8 layers back to their default kernels
            m.streamed = False
    return len(found) + len(widened)

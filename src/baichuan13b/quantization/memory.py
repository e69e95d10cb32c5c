"""Memory report: bytes of weights per dtype (quantized or not) and an estimate for a context length and batch.

Everything here also works on a ``meta``-device model, so the figures of the 13B shape are computed exactly from
shapes without allocating 13B weights::

    report = estimate_memory(ModelConfig.from_name("baichuan-13b"), dtype=torch.float16, quantize="int4",
                             context=4096, batch=1)
    print(format_report(report))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .convert import QuantizationConfig, quantize_model
from .modules import QUANTIZED_MODULES

ATTENTION_QUERY_BLOCK = 1024  # as in model.py: the attention bias is built per block of queries


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weight_bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's weights by dtype name (``"bfloat16"``, ``"int8"``, ``"uint8"``, ...).

    Parameters and persistent buffers are counted once each (tied weights once); quantized modules count what
    they hold (stored or kernel layout: scales and zeros included). Non-persistent buffers (position tables)
    are not weights and are left out.
    """
    out: dict[str, int] = {}
    seen: set[int] = set()

    def add(t: torch.Tensor | None) -> None:
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        key = dtype_name(t.dtype)
        out[key] = out.get(key, 0) + t.numel() * t.element_size()

    for module in model.modules():
        if isinstance(module, QUANTIZED_MODULES):
            for t in module._held_tensors():
                add(t)
            continue
        for p in module._parameters.values():
            add(p)
        for name, b in module._buffers.items():
            if name not in module._non_persistent_buffers_set:
                add(b)
    return dict(sorted(out.items()))


def kv_cache_bytes(config, batch: int, context: int, dtype: torch.dtype) -> int:
    """Bytes of the static KV cache: keys and values, every layer, ``[batch, heads, context, head_dim]``."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * batch * config.num_attention_heads * context * config.head_dim * elem


def activation_bytes(config, batch: int, context: int, dtype: torch.dtype) -> int:
    """Rough peak working set of a prefill of ``context`` tokens (one layer's temporaries at a time).

    Counted: residual and normed hidden states, the fused qkv output, attention output (``4 * hidden``), the
    MLP's gate, up and product (``3 * intermediate``) per token, one attention block's bias (float32 and
    ``dtype``) and scores ``[batch, heads, min(context, 1024), context]``, and the float32 last-token logits.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    h, i, H, V = config.hidden_size, config.intermediate_size, config.num_attention_heads, config.vocab_size
    per_token = (4 * h + 3 * i) * elem
    block = min(context, ATTENTION_QUERY_BLOCK)
    attention = batch * H * block * context * (4 + 2 * elem)
    return batch * context * per_token + attention + batch * V * 4


@dataclass
class MemoryReport:
    """Weights by dtype and the estimated total for ``context`` positions x ``batch`` rows (bytes)."""

    parameters: int
    weights: dict[str, int]
    quantization: str
    dtype: str
    context: int
    batch: int
    kv_cache: int
    activations: int
    notes: list[str] = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv_cache + self.activations

    def to_dict(self) -> dict:
        return {"parameters": self.parameters, "weights_by_dtype": self.weights, "weight_bytes": self.weight_bytes,
                "quantization": self.quantization, "dtype": self.dtype, "context": self.context,
                "batch": self.batch, "kv_cache_bytes": self.kv_cache, "activation_bytes": self.activations,
                "total_bytes": self.total}


def memory_report(model: nn.Module, *, context: int | None = None, batch: int = 1,
                  cache_dtype: torch.dtype | None = None) -> MemoryReport:
    """Report for an existing model (any device, meta included); ``context`` defaults to the model's."""
    config = model.config
    context = context or config.max_position
    if context <= 0 or batch <= 0:
        raise ValueError(f"context and batch must be positive, got context={context}, batch={batch}")
    dtype = cache_dtype or model.model.norm.weight.dtype
    qconfig = QuantizationConfig.of_model_config(config)
    return MemoryReport(
        parameters=config.num_parameters(), weights=weight_bytes_by_dtype(model),
        quantization=qconfig.describe() if qconfig else "none", dtype=dtype_name(dtype), context=context,
        batch=batch, kv_cache=kv_cache_bytes(config, batch, context, dtype),
        activations=activation_bytes(config, batch, context, dtype))


def estimate_memory(config, *, dtype: torch.dtype = torch.bfloat16,
                    quantize: "str | int | QuantizationConfig | None" = None, group_size: int = 128,
                    context: int | None = None, batch: int = 1) -> MemoryReport:
    """Report for ``config`` built on the meta device (nothing allocated), optionally quantized.

    A config that already records a ``quantization_config`` (a pre-quantized folder) is counted as such.
    """
    import copy

    from ..model import BaichuanForCausalLM

    config = copy.deepcopy(config)
    recorded = QuantizationConfig.of_model_config(config)
    config.extra.pop("quantization_config", None)
    with torch.device("meta"):
        model = BaichuanForCausalLM(config).to(dtype)
    qconfig = recorded or (QuantizationConfig.from_option(quantize, group_size) if quantize is not None else None)
    if qconfig is not None:
        quantize_model(model, qconfig, dtype=dtype)
    return memory_report(model, context=context, batch=batch, cache_dtype=dtype)


def _gib(n: int) -> str:
    return f"{n / 2**30:8.2f} GiB ({n / 1e9:.2f} GB)"


def format_report(report: MemoryReport) -> str:
    """A small human-readable table of :class:`MemoryReport`."""
    lines = [f"parameters:      {report.parameters / 1e9:.3f} B", f"quantization:    {report.quantization}",
             "weights by dtype:"]
    lines += [f"  {name:13s}{_gib(n)}" for name, n in report.weights.items()]
    lines += [f"  {'total':13s}{_gib(report.weight_bytes)}",
              f"KV cache ({report.dtype}, batch {report.batch} x {report.context} positions):",
              f"  {'':13s}{_gib(report.kv_cache)}",
              f"prefill activations (estimate): {_gib(report.activations).strip()}",
              f"estimated total: {_gib(report.total).strip()}"]
    return "\n".join(lines)

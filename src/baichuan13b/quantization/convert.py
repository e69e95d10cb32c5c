"""Which modules are quantized and how: :class:`QuantizationConfig`, :func:`quantize_model`, and the tensor sink
that :func:`baichuan13b.checkpoint.load_model` uses to quantize weights as their shards arrive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .functional import INT4_GROUP_SIZES, QuantizationError, check_group_size
from .modules import (
    QUANTIZED_MODULES,
    WeightOnlyInt4Embedding,
    WeightOnlyInt4Linear,
    WeightOnlyInt8Embedding,
    WeightOnlyInt8Linear,
)

QUANT_METHOD = "baichuan13b-weight-only"
FORMAT_VERSION = 1
CONFIG_KEY = "quantization_config"  # the key in config.json


@dataclass(frozen=True)
class QuantizationConfig:
    """How a model's weights are quantized; written to ``config.json`` as ``quantization_config``.

    ``bits`` 8: symmetric int8 per output channel. ``bits`` 4: asymmetric group-wise int4 (``group_size``
    input columns per scale/zero). The decoder layers' linear layers are always quantized; the input
    embeddings and ``lm_head`` stay in the compute dtype unless ``quantize_embeddings`` / ``quantize_lm_head``.
    """

    bits: int
    group_size: int | None = 128
    quantize_embeddings: bool = False
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise QuantizationError(f"quantization bits must be 8 or 4, got {self.bits!r}")
        if self.bits == 8:
            object.__setattr__(self, "group_size", None)
        elif self.group_size not in INT4_GROUP_SIZES:
            raise QuantizationError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")

    @property
    def name(self) -> str:
        """``"int8"`` or ``"int4"``."""
        return f"int{self.bits}"

    def describe(self) -> str:
        return "int8 (per channel)" if self.bits == 8 else f"int4 (group {self.group_size})"

    @classmethod
    def from_option(cls, quantize: "str | int | QuantizationConfig", group_size: int = 128,
                    **flags: bool) -> "QuantizationConfig":
        """From ``"int8"`` / ``"int4"`` / ``8`` / ``4`` (or a config, returned as is)."""
        if isinstance(quantize, QuantizationConfig):
            return quantize
        names = {"int8": 8, "int4": 4, "8": 8, "4": 4}
        key = str(quantize).strip().lower()
        if key not in names:
            raise QuantizationError(f"unknown quantization {quantize!r}: use 'int8' or 'int4'")
        return cls(bits=names[key], group_size=group_size, **flags)

    def to_dict(self) -> dict[str, Any]:
        """The ``quantization_config`` object of ``config.json``."""
        skipped = ([] if self.quantize_embeddings else ["model.embed_tokens"]) + \
                  ([] if self.quantize_lm_head else ["lm_head"])
        d: dict[str, Any] = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "bits": self.bits,
                             "symmetric": self.bits == 8, "modules_not_to_convert": skipped}
        if self.bits == 4:
            d.update(group_size=self.group_size, zero_point_domain="float")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantizationConfig":
        """Read a ``quantization_config`` written by :meth:`to_dict` (other methods are refused by name)."""
        if not isinstance(d, Mapping):
            raise QuantizationError(f"quantization_config must be an object, got {type(d).__name__}")
        method = d.get("quant_method")
        if method != QUANT_METHOD:
            raise QuantizationError(f"quantization_config has quant_method {method!r}; only {QUANT_METHOD!r} "
                                    "(written by `baichuan quantize`) can be loaded")
        if d.get("format_version") != FORMAT_VERSION:
            raise QuantizationError(f"quantization_config format_version {d.get('format_version')!r} is not "
                                    f"supported (expected {FORMAT_VERSION})")
        skipped = d.get("modules_not_to_convert", [])
        unknown = set(skipped) - {"model.embed_tokens", "lm_head"}
        if unknown:
            raise QuantizationError(f"quantization_config.modules_not_to_convert names unknown modules: "
                                    f"{sorted(unknown)}")
        return cls(bits=d.get("bits"), group_size=d.get("group_size", 128),
                   quantize_embeddings="model.embed_tokens" not in skipped,
                   quantize_lm_head="lm_head" not in skipped)

    @classmethod
    def of_model_config(cls, config) -> "QuantizationConfig | None":
        """The quantization recorded in a :class:`~baichuan13b.config.ModelConfig` (None when float)."""
        d = config.extra.get(CONFIG_KEY)
        return None if d is None else cls.from_dict(d)


def _targets(model: nn.Module, qconfig: QuantizationConfig) -> list[str]:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("model.layers.")]
    if qconfig.quantize_lm_head:
        names.append("lm_head")
    if qconfig.quantize_embeddings:
        names.append("model.embed_tokens")
    return names


def _quantized_module(name: str, module: nn.Module, qconfig: QuantizationConfig, dtype: torch.dtype) -> nn.Module:
    weight = module.weight.detach()
    if isinstance(module, nn.Embedding):
        if qconfig.bits == 8:
            return WeightOnlyInt8Embedding.from_float(weight, dtype, name=f"{name}.weight")
        return WeightOnlyInt4Embedding.from_float(weight, dtype, qconfig.group_size, name=f"{name}.weight")
    if getattr(module, "bias", None) is not None:
        raise QuantizationError(f"{name} has a bias; the weight-only modules have none")
    if qconfig.bits == 8:
        return WeightOnlyInt8Linear.from_float(weight, dtype, name=f"{name}.weight")
    return WeightOnlyInt4Linear.from_float(weight, dtype, qconfig.group_size, name=f"{name}.weight")


def check_quantizable(model: nn.Module, qconfig: QuantizationConfig) -> None:
    """Raise :class:`QuantizationError` (naming the module) if ``model`` cannot be quantized as asked."""
    config = getattr(model, "config", None)
    if any(isinstance(m, QUANTIZED_MODULES) for m in model.modules()):
        raise QuantizationError("the model is already quantized; load the float checkpoint to quantize it "
                                "differently")
    if config is not None and config.tie_word_embeddings and (qconfig.quantize_embeddings or qconfig.quantize_lm_head):
        raise QuantizationError("tied embeddings (tie_word_embeddings) cannot be quantized: lm_head and "
                                "model.embed_tokens share one float weight")
    if qconfig.bits == 4:
        for name in _targets(model, qconfig):
            module = model.get_submodule(name)
            check_group_size(qconfig.group_size, module.weight.shape[1], f"{name}.weight")


def quantize_model(model: nn.Module, qconfig: QuantizationConfig, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace the target modules of ``model`` in place by weight-only quantized ones and return it.

    Each weight is quantized on its own device, one module at a time (the float weight is released as soon as its
    module is replaced); meta-device modules become empty meta quantized modules (used to load checkpoints and
    to count bytes without allocating). Scales/zeros take ``dtype`` (default: the replaced weight's). The model's config
    records ``quantization_config``, so :func:`~baichuan13b.checkpoint.save_model` writes it.
    """
    check_quantizable(model, qconfig)
    for name in _targets(model, qconfig):
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, leaf)
        with torch.no_grad():
            new = _quantized_module(name, old, qconfig, dtype or old.weight.dtype)
        setattr(parent, leaf, new)
        del old
    config = getattr(model, "config", None)
    if config is not None:
        config.extra[CONFIG_KEY] = qconfig.to_dict()
    return model


class QuantizedTensorSink:
    """Receives checkpoint tensors for the quantized modules of a meta-device model (used by ``load_model``).

    With ``prequantized`` False a float ``<module>.weight`` arrives and is quantized on the target device;
    with True the stored ``weight`` / ``scales`` / ``zeros`` arrive and are installed as they are (floating
    tensors cast to ``dtype``), with no re-quantization.
    """

    def __init__(self, model: nn.Module, qconfig: QuantizationConfig, prequantized: bool, dtype: torch.dtype):
        self.qconfig, self.prequantized, self.dtype = qconfig, prequantized, dtype
        self.modules: dict[str, nn.Module] = {n: m for n, m in model.named_modules() if isinstance(m, QUANTIZED_MODULES)}
        self.expected: dict[str, tuple[str, str]] = {}  # tensor name -> (module name, leaf)
        for mname, module in self.modules.items():
            leaves = [n for n, b in module._buffers.items() if n not in module._non_persistent_buffers_set] \
                if prequantized else ["weight"]
            for leaf in leaves:
                self.expected[f"{mname}.{leaf}"] = (mname, leaf)
        self.received: set[str] = set()

    def handles(self, name: str) -> bool:
        """Whether tensor ``name`` belongs to a quantized module."""
        return name in self.expected

    def missing(self) -> list[str]:
        """Expected tensors not received yet."""
        return [n for n in self.expected if n not in self.received]

    def nbytes(self) -> int:
        """Bytes the quantized modules will hold once loaded."""
        return sum(sum(m.nbytes_by_dtype().values()) for m in self.modules.values())

    def put(self, name: str, tensor: torch.Tensor, device: torch.device, where: str) -> int:
        """Install (or quantize and install) one tensor on ``device``; returns the bytes now held for it.

        Raises:
            QuantizationError: wrong shape or dtype (named with ``where``, the file it came from).
        """
        mname, leaf = self.expected[name]
        module = self.modules[mname]
        if not self.prequantized:
            if not tensor.is_floating_point():
                raise QuantizationError(f"tensor {name} in {where} has dtype {tensor.dtype}, but config.json has no "
                                        "quantization_config: expected a float weight to quantize")
            weight = tensor.to(device=device)
            module.set_float_weight(weight, f"{name} in {where}")
            self.received.add(name)
            return sum(module.nbytes_by_dtype().values())
        slot = module._buffers[leaf]
        if tuple(tensor.shape) != tuple(slot.shape):
            raise QuantizationError(f"tensor {name} in {where} has shape {list(tensor.shape)}, the {self.qconfig.name} "
                                    f"model expects {list(slot.shape)} (does quantization_config match the weights?)")
        if slot.dtype.is_floating_point:
            if not tensor.is_floating_point():
                raise QuantizationError(f"tensor {name} in {where} has dtype {tensor.dtype}, expected floating point")
            dtype = self.dtype
        else:
            if tensor.dtype != slot.dtype:
                raise QuantizationError(f"tensor {name} in {where} has dtype {tensor.dtype}, the {self.qconfig.name} "
                                        f"format stores {slot.dtype}")
            dtype = slot.dtype
        value = torch.empty(tensor.shape, dtype=dtype, device=device)  # own memory, never an alias of the file
        value.copy_(tensor)
        module._buffers[leaf] = value
        self.received.add(name)
        return value.numel() * value.element_size()

    def put_random(self, name: str, device: torch.device, initializer_range: float) -> None:
        """Fill a missing tensor as ``from_config`` would (random normal weight, then quantized)."""
        if name in self.received:
            return
        mname, _ = self.expected[name]
        module = self.modules[mname]
        module.set_float_weight((torch.randn(module.float_shape) * initializer_range).to(device), name)
        self.received.update(n for n, (m, _) in self.expected.items() if m == mname)


def prepare_quantized_load(model: nn.Module, folder_qconfig: QuantizationConfig | None,
                           quantize: "str | int | QuantizationConfig | None", group_size: int,
                           dtype: torch.dtype) -> QuantizedTensorSink | None:
    """Turn the meta model's target modules into quantized ones for loading; None for a float load.

    ``folder_qconfig`` is the checkpoint's own ``quantization_config`` (a pre-quantized folder): it is loaded as
    is, and asking for a different ``quantize`` is an error.
    """
    if folder_qconfig is not None:
        if quantize is not None:
            asked = QuantizationConfig.from_option(quantize, group_size)
            if (asked.bits, asked.group_size) != (folder_qconfig.bits, folder_qconfig.group_size):
                raise QuantizationError(f"the checkpoint is already quantized as {folder_qconfig.describe()}; it "
                                        f"cannot be re-quantized as {asked.describe()} (load the float checkpoint)")
        qconfig = folder_qconfig
    elif quantize is not None:
        qconfig = QuantizationConfig.from_option(quantize, group_size)
    else:
        return None
    quantize_model(model, qconfig, dtype=dtype)
    return QuantizedTensorSink(model, qconfig, prequantized=folder_qconfig is not None, dtype=dtype)

"""Which dtype and which device each part of the model is loaded into (pure functions of the config).

Placement units are ``model.embed_tokens``, each ``model.layers.N``, ``model.norm`` and ``lm_head``: a decoder
layer is never split across devices.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .config import ModelConfig
from .errors import CheckpointError

__all__ = ["check_devices", "plan_devices", "resolve_dtype", "unit_of"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(torch_dtype: torch.dtype | str | None, config: ModelConfig | None = None) -> torch.dtype:
    """The floating dtype to load into.

    ``None`` means float32 (safe everywhere, twice the memory of the official bf16 weights); ``"auto"`` means
    the config's ``torch_dtype`` (float32 when it has none); strings such as ``"bf16"``/``"half"`` are accepted.
    """
    if torch_dtype is None:
        return torch.float32
    if isinstance(torch_dtype, torch.dtype):
        dtype = torch_dtype
    elif isinstance(torch_dtype, str):
        key = torch_dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return resolve_dtype(config.torch_dtype if config is not None and config.torch_dtype else None)
        if key not in _DTYPES:
            raise CheckpointError(f"unknown torch_dtype {torch_dtype!r}: use float32, float16 or bfloat16 "
                                  "(or fp32/fp16/half/bf16, or 'auto' for the config's torch_dtype)")
        dtype = _DTYPES[key]
    else:
        raise CheckpointError(f"torch_dtype must be a torch.dtype, a string or None, got {type(torch_dtype).__name__}")
    if not dtype.is_floating_point:
        raise CheckpointError(f"torch_dtype must be a floating dtype, got {dtype}")
    return dtype


def _module_units(config: ModelConfig) -> list[str]:
    """The placement units of a model, in forward order."""
    return (["model.embed_tokens"] + [f"model.layers.{i}" for i in range(config.num_hidden_layers)]
            + ["model.norm", "lm_head"])


def _unit_params(config: ModelConfig, unit: str) -> int:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    if unit == "model.embed_tokens":
        return v * h
    if unit == "lm_head":
        return 0 if config.tie_word_embeddings else v * h
    if unit == "model.norm":
        return h
    return 4 * h * h + 3 * h * i + 2 * h  # a decoder layer


def _as_device(value: Any, key: str) -> torch.device:
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, int) and not isinstance(value, bool):
        device = torch.device("cuda", value)
    elif isinstance(value, str):
        try:
            device = torch.device(value)
        except RuntimeError as e:
            raise CheckpointError(f"device_map entry {key!r}: {value!r} is not a device") from e
    else:
        raise CheckpointError(f"device_map entry {key!r}: {value!r} is not a device (use 'cpu', 'cuda:N' or an int)")
    if device.type in ("meta", "disk"):
        raise CheckpointError(f"device_map entry {key!r}: device {device.type!r} is not supported (no offloading)")
    return device


def plan_devices(config: ModelConfig, device_map: str | torch.device | int | Mapping[str, Any] | None,
                 num_gpus: int | None = None) -> dict[str, torch.device]:
    """The device of every placement unit: ``model.embed_tokens``, ``model.layers.N``, ``model.norm``,
    ``lm_head`` (a pure function; ``num_gpus`` defaults to ``torch.cuda.device_count()`` and is only used by
    ``"auto"``).

    * ``None`` / ``"cpu"``: everything on CPU; ``"cuda"``, ``"cuda:N"``, an int or a ``torch.device``: all there.
    * ``"auto"``: contiguous runs of decoder layers balanced by parameter bytes over ``cuda:0..num_gpus-1``, the
      embeddings on the first GPU and ``norm`` + ``lm_head`` on the last; all on CPU when there is no GPU.
    * a dict from module-name prefixes to devices, e.g. ``{"model.embed_tokens": 0, "model.layers": 0,
      "model.layers.39": 1, "model.norm": 1, "lm_head": 1}``; the longest prefix wins, ``""`` or ``"model"``
      cover many units at once.  Keys must name whole units or groups of them (a decoder layer cannot be split).

    With tied embeddings ``lm_head`` shares the embedding weight and so lives on the embedding's device.

    Raises:
        CheckpointError: an unknown or over-specific key, a unit no key covers (named), or a bad device.
    """
    units = _module_units(config)
    if device_map is None:
        device_map = "cpu"
    if isinstance(device_map, str) and device_map == "auto":
        gpus = torch.cuda.device_count() if num_gpus is None else int(num_gpus)
        if gpus <= 0:
            plan = {u: torch.device("cpu") for u in units}
        else:
            plan = _balance(config, units, gpus)
    elif isinstance(device_map, (str, torch.device, int)) and not isinstance(device_map, bool):
        device = _as_device(device_map, "device_map")
        plan = {u: device for u in units}
    elif isinstance(device_map, Mapping):
        plan = _plan_from_dict(units, device_map)
    else:
        raise CheckpointError(f"device_map must be None, 'auto', a device or a dict, got {device_map!r}")
    if config.tie_word_embeddings:
        if isinstance(device_map, Mapping) and plan["lm_head"] != plan["model.embed_tokens"]:
            raise CheckpointError(
                f"tied embeddings: lm_head ({plan['lm_head']}) must be on the device of model.embed_tokens "
                f"({plan['model.embed_tokens']}) since they share one weight"
            )
        plan["lm_head"] = plan["model.embed_tokens"]
    return plan


def _balance(config: ModelConfig, units: list[str], gpus: int) -> dict[str, torch.device]:
    sizes = [_unit_params(config, u) for u in units]
    total = sum(sizes) or 1
    plan: dict[str, torch.device] = {}
    cumulative = 0
    for unit, size in zip(units, sizes):
        middle = cumulative + size / 2  # a unit goes to the GPU whose share holds its middle
        plan[unit] = torch.device("cuda", min(gpus - 1, int(middle * gpus / total)))
        cumulative += size
    plan["model.embed_tokens"] = torch.device("cuda", 0)
    plan["model.norm"] = plan["lm_head"] = torch.device("cuda", gpus - 1)
    return plan


def _plan_from_dict(units: list[str], device_map: Mapping[str, Any]) -> dict[str, torch.device]:
    devices = {str(k): _as_device(v, str(k)) for k, v in device_map.items()}
    for key in devices:
        if not key:
            continue
        if not any(u == key or u.startswith(key + ".") for u in units):
            inside = [u for u in units if key.startswith(u + ".")]
            if inside:
                raise CheckpointError(f"device_map key {key!r} splits {inside[0]!r}: place whole modules "
                                      f"({', '.join(units[:2])}, ..., model.norm, lm_head)")
            raise CheckpointError(f"device_map key {key!r} names no module of this model; use prefixes of "
                                  f"model.embed_tokens, model.layers.N (0..{len(units) - 4}), model.norm, lm_head")
    plan: dict[str, torch.device] = {}
    uncovered: list[str] = []
    for unit in units:
        keys = [k for k in devices if k == "" or unit == k or unit.startswith(k + ".")]
        if not keys:
            uncovered.append(unit)
            continue
        plan[unit] = devices[max(keys, key=len)]
    if uncovered:
        shown = ", ".join(uncovered[:8]) + (f" and {len(uncovered) - 8} more" if len(uncovered) > 8 else "")
        raise CheckpointError(f"device_map does not place {len(uncovered)} module(s): {shown}")
    return plan


def unit_of(name: str) -> str:
    """The placement unit a parameter or tensor name belongs to (``model.layers.3.mlp.up_proj.weight`` ->
    ``model.layers.3``)."""
    parts = name.split(".")
    if parts[0] == "model" and len(parts) > 2 and parts[1] == "layers":
        return ".".join(parts[:3])
    if parts[0] == "model":
        return ".".join(parts[:2])
    return parts[0]


def check_devices(plan: Mapping[str, torch.device]) -> None:
    """Raise :class:`CheckpointError` when the plan names a CUDA device that is not visible."""
    for device in sorted(set(plan.values()), key=str):
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise CheckpointError(f"device_map places weights on {device} but no CUDA device is visible")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise CheckpointError(f"device_map places weights on {device} but only "
                                      f"{torch.cuda.device_count()} CUDA device(s) are visible")

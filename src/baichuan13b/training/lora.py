"""LoRA adapters in the PEFT format, on the official module names.

:class:`LoraLinear` *is* an ``nn.Linear`` (it keeps the frozen base ``weight`` under the same name, so the base
state dict and every ``isinstance(m, nn.Linear)`` check are unchanged) with two extra sub-modules::

    y = x @ W.T + (dropout(x) @ A.T @ B.T) * alpha / r        A: [r, in], B: [out, r]

Saved files are exactly what PEFT writes for a Baichuan model: ``adapter_config.json`` and
``adapter_model.safetensors`` with keys ``base_model.model.<module path>.lora_A.weight`` / ``lora_B.weight``
(e.g. ``base_model.model.model.layers.0.self_attn.W_pack.lora_A.weight``). Adapters trained with PEFT or
LLaMA-Factory on Baichuan-13B (``adapter_model.safetensors`` or the older ``adapter_model.bin``) load here.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..files import atomic_write, atomic_write_text

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFE = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
# "all" = every linear layer of the decoder (lm_head excluded, as LLaMA-Factory does).
ALL_LINEAR = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")


class AdapterError(ValueError):
    """An adapter folder or setting that cannot be used (the message names the file or module)."""


@dataclass
class LoraSettings:
    """Rank, scaling and targets of a LoRA adapter (the fields of PEFT's ``LoraConfig`` that matter here)."""

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["W_pack"])
    use_rslora: bool = False
    base_model_name_or_path: str | None = None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft_config(self) -> dict[str, Any]:
        """The ``adapter_config.json`` PEFT writes for this adapter."""
        return {
            "alpha_pattern": {},
            "auto_mapping": None,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "layers_pattern": None,
            "layers_to_transform": None,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": None,
            "target_modules": sorted(self.target_modules),
            "task_type": "CAUSAL_LM",
            "use_rslora": self.use_rslora,
        }


def parse_targets(spec: str | Iterable[str]) -> list[str]:
    """``"W_pack"``, ``"all"`` or ``"a,b"`` as a list of module names."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise AdapterError("--lora_target is empty")
    if "all" in names:
        return list(ALL_LINEAR)
    return names


class LoraLinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                 use_rslora: bool = False, seed: int | None = None):
        with torch.device("meta"):  # the base weight is reused, not allocated again
            super().__init__(base.in_features, base.out_features, bias=base.bias is not None)
        self.weight = base.weight
        self.bias = base.bias
        self.r = r
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=torch.float32)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        with torch.no_grad():  # PEFT's default init: A ~ kaiming_uniform(a=sqrt(5)), B = 0 (a no-op at start)
            bound = 1.0 / math.sqrt(base.in_features)  # what kaiming_uniform_(a=sqrt(5)) gives
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            self.lora_A.weight.copy_(torch.rand(self.lora_A.weight.shape, generator=gen) * 2 * bound - bound)
            self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        a = self.lora_A.weight
        update = self.lora_B(self.lora_A(self.lora_dropout(x).to(a.dtype)))  # [..., out]
        return y + (update * self.scaling).to(y.dtype)

    def merged_weight(self) -> torch.Tensor:
        """``W + scaling * B @ A`` in the base weight's dtype."""
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling  # [out, in]
        return (self.weight.float() + delta.to(self.weight.device)).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, scaling={self.scaling:g}"


def _matches(name: str, targets: Iterable[str]) -> bool:
    # PEFT's rule for a list of names: the module's full name equals a target or ends with "." + target.
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, settings: LoraSettings, *, seed: int | None = None,
             modules: Iterable[str] | None = None) -> list[str]:
    """Replace the targeted ``nn.Linear`` modules of ``model`` by :class:`LoraLinear`, freeze everything else and
    return the wrapped module names. ``modules`` (full names) overrides ``settings.target_modules``."""
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoraLinear)
              and n != "lm_head"}
    if modules is not None:
        chosen = list(modules)
        unknown = [n for n in chosen if n not in linear]
        if unknown:
            raise AdapterError(f"adapter modules not in the model: {', '.join(unknown[:5])}")
    else:
        chosen = [n for n in linear if _matches(n, settings.target_modules)]
        for t in settings.target_modules:
            if not any(_matches(n, [t]) for n in linear):
                kinds = sorted({n.rsplit(".", 1)[-1] for n in linear})
                raise AdapterError(f"LoRA target {t!r} matches no linear layer; the model has {', '.join(kinds)} "
                                   f"(or use 'all')")
    for p in model.parameters():  # loaded weights may have requires_grad=True: only adapters train
        p.requires_grad_(False)
    for k, name in enumerate(chosen):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = LoraLinear(linear[name], settings.r, settings.lora_alpha, settings.lora_dropout,
                             settings.use_rslora, seed=None if seed is None else seed + k)
        setattr(parent, child, wrapped)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_A." in n or ".lora_B." in n)
    return chosen


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's saved names (CPU, contiguous)."""
    out = {}
    for name, m in lora_modules(model).items():
        for part in ("lora_A", "lora_B"):
            w = getattr(m, part).weight.detach()
            out[f"{PEFT_PREFIX}{name}.{part}.weight"] = w.to("cpu").contiguous().clone()
    if not out:
        raise AdapterError("the model has no LoRA modules to save")
    return out


def save_adapter(model: nn.Module, folder: str | os.PathLike, settings: LoraSettings,
                 state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT format, each file atomic).
    ``state`` is a precomputed :func:`adapter_state_dict` (e.g. gathered from another process)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = state if state is not None else adapter_state_dict(model)
    atomic_write(folder / ADAPTER_SAFE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(settings.to_peft_config(), indent=2) + "\n")
    return folder


def read_adapter(folder: str | os.PathLike) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    """Settings and tensors (PEFT names stripped to our module names: ``<module>.lora_A.weight``)."""
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterError(f"no {ADAPTER_CONFIG} in {folder}: not a PEFT/LoRA adapter folder")
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_path} is not valid JSON: {e}") from e
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{config_path}: peft_type {cfg.get('peft_type')!r} is not supported (LORA only)")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError(f"{config_path}: fan_in_fan_out=true (Conv1D models) does not apply to Baichuan")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{config_path}: bias={cfg['bias']!r} is not supported (only 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise AdapterError(f"{config_path}: per-module {key} is not supported")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{config_path}: modules_to_save={cfg['modules_to_save']} (full copies of modules) is "
                           f"not supported")
    if cfg.get("use_dora"):
        raise AdapterError(f"{config_path}: DoRA adapters are not supported")
    targets = cfg.get("target_modules") or []
    settings = LoraSettings(r=int(cfg["r"]), lora_alpha=float(cfg["lora_alpha"]),
                            lora_dropout=float(cfg.get("lora_dropout") or 0.0),
                            target_modules=[targets] if isinstance(targets, str) else list(targets),
                            use_rslora=bool(cfg.get("use_rslora", False)),
                            base_model_name_or_path=cfg.get("base_model_name_or_path"))
    if (folder / ADAPTER_SAFE).is_file():
        from safetensors.torch import load_file

        raw = load_file(str(folder / ADAPTER_SAFE))
    elif (folder / ADAPTER_BIN).is_file():
        raw = torch.load(folder / ADAPTER_BIN, map_location="cpu", weights_only=True)
    else:
        raise AdapterError(f"no {ADAPTER_SAFE} or {ADAPTER_BIN} in {folder}")
    tensors = {}
    pattern = re.compile(r"^(?:base_model\.model\.)?(.+)\.(lora_[AB])(?:\.[^.]+)?\.weight$")
    for key, value in raw.items():
        m = pattern.match(key)
        if not m:
            raise AdapterError(f"{folder}: unexpected tensor {key!r} (only lora_A / lora_B weights are supported)")
        tensors[f"{m.group(1)}.{m.group(2)}.weight"] = value
    return settings, tensors


def load_adapter(model: nn.Module, folder: str | os.PathLike, *, trainable: bool = False) -> LoraSettings:
    """Add the adapter saved in ``folder`` (PEFT format) to ``model``; its weights are copied in and checked
    against the module shapes. Returns the adapter's settings."""
    settings, tensors = read_adapter(folder)
    modules = sorted({k.rsplit(".", 2)[0] for k in tensors})
    existing = lora_modules(model)
    if existing:
        if sorted(existing) != modules:
            raise AdapterError(f"{folder}: adapter modules differ from the model's LoRA modules")
    else:
        add_lora(model, settings, modules=modules)
    for name, m in lora_modules(model).items():
        for part in ("lora_A", "lora_B"):
            key = f"{name}.{part}.weight"
            if key not in tensors:
                raise AdapterError(f"{folder}: tensor {PEFT_PREFIX}{key} is missing")
            param = getattr(m, part).weight
            if tuple(tensors[key].shape) != tuple(param.shape):
                raise AdapterError(f"{folder}: {PEFT_PREFIX}{key} has shape {list(tensors[key].shape)}, the model "
                                   f"needs {list(param.shape)} (adapter for another model shape?)")
            with torch.no_grad():
                param.copy_(tensors[key])
            param.requires_grad_(trainable)
    return settings


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put plain ``nn.Linear`` modules back; returns the count."""
    count = 0
    for name, m in list(lora_modules(model).items()):
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        with torch.no_grad():
            plain.weight = nn.Parameter(m.merged_weight(), requires_grad=False)
        plain.bias = m.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
        count += 1
    return count

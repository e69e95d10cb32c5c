"""Model configuration: read the official ``config.json`` and named presets.

The position encoding is decided by the ``architectures`` field of the official config, never by shapes or
file names:

* ``BaichuanForCausalLM`` (Baichuan-13B): ALiBi, context length from ``model_max_length``.
* ``BaiChuanForCausalLM`` (Baichuan-7B): rotary embeddings (base 10000), context from
  ``max_position_embeddings``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALIBI_ARCHITECTURE = "BaichuanForCausalLM"
ROPE_ARCHITECTURE = "BaiChuanForCausalLM"
# LLaMA checkpoints share the layout except for the split q/k/v projections; the preset below only borrows
# the LLaMA-13B *shape* (RoPE, vocab 32000) for speed comparisons and is built with the fused W_pack.
_ARCHITECTURE_TO_POSITION = {ALIBI_ARCHITECTURE: "alibi", ROPE_ARCHITECTURE: "rope"}


class ConfigError(ValueError):
    """A config.json that cannot describe a Baichuan model."""


@dataclass
class ModelConfig:
    """Shape and behaviour of a Baichuan model.

    Field names follow the official ``config.json`` so that reading and writing it needs no name map.
    ``position_embedding`` and ``max_position`` are derived from ``architectures`` (see module docstring).
    """

    architectures: list[str] = field(default_factory=lambda: [ALIBI_ARCHITECTURE])
    vocab_size: int = 64000
    hidden_size: int = 5120
    intermediate_size: int = 13696
    num_hidden_layers: int = 40
    num_attention_heads: int = 40
    max_position: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    torch_dtype: str | None = "bfloat16"
    # Opt-in: let ALiBi models run past ``max_position`` (ALiBi extrapolates, quality degrades slowly).
    # Runtime setting only: never written to config.json.
    allow_length_extrapolation: bool = False
    # Keys of the original file that we do not interpret, written back unchanged by ``to_dict``.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.architectures:
            raise ConfigError("config.json has an empty 'architectures' list: cannot tell ALiBi from RoPE")
        arch = self.architectures[0]
        if arch not in _ARCHITECTURE_TO_POSITION:
            raise ConfigError(
                f"unsupported architecture {arch!r} in config.json: expected {ALIBI_ARCHITECTURE!r} "
                f"(Baichuan-13B, ALiBi) or {ROPE_ARCHITECTURE!r} (Baichuan-7B, RoPE)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported (Baichuan uses 'silu')")
        if self.allow_length_extrapolation and self.position_embedding != "alibi":
            raise ConfigError("allow_length_extrapolation needs ALiBi; RoPE models cannot run past their context")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"config field {name} must be positive, got {getattr(self, name)}")

    # ------------------------------------------------------------------ derived
    @property
    def architecture(self) -> str:
        return self.architectures[0]

    @property
    def position_embedding(self) -> str:
        """``"alibi"`` or ``"rope"``, from ``architectures``."""
        return _ARCHITECTURE_TO_POSITION[self.architecture]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def model_max_length(self) -> int:
        """Context length (the official 13B name; also valid for the 7B)."""
        return self.max_position

    def num_parameters(self) -> int:
        h, i, v, n = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        per_layer = 4 * h * h + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + n * per_layer + h + head

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from the contents of an official ``config.json``."""
        d = dict(d)
        archs = d.pop("architectures", None)
        if not archs:
            raise ConfigError(
                "config.json has no 'architectures' field: it decides the position encoding "
                f"({ALIBI_ARCHITECTURE} = ALiBi, {ROPE_ARCHITECTURE} = RoPE)"
            )
        if isinstance(archs, str):
            archs = [archs]
        arch = archs[0]
        if arch not in _ARCHITECTURE_TO_POSITION:
            raise ConfigError(
                f"unsupported architecture {arch!r} in config.json: expected {ALIBI_ARCHITECTURE!r} "
                f"(Baichuan-13B, ALiBi) or {ROPE_ARCHITECTURE!r} (Baichuan-7B, RoPE)"
            )
        context_key = "model_max_length" if arch == ALIBI_ARCHITECTURE else "max_position_embeddings"
        if context_key not in d:
            raise ConfigError(f"config.json for {arch} must give the context length as {context_key!r}")
        kwargs: dict[str, Any] = {"architectures": list(archs), "max_position": int(d.pop(context_key))}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "architectures", "max_position",
                                                             "allow_length_extrapolation"}
        for name in list(d):
            if name in names:
                kwargs[name] = d.pop(name)
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in kwargs]
        if missing:
            raise ConfigError(f"config.json is missing required field(s): {', '.join(missing)}")
        kwargs["extra"] = d
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The official ``config.json`` layout for this config."""
        d: dict[str, Any] = dict(self.extra)
        d["architectures"] = list(self.architectures)
        for f in dataclasses.fields(self):
            if f.name in ("extra", "architectures", "max_position", "rope_theta", "allow_length_extrapolation"):
                continue
            d[f.name] = getattr(self, f.name)
        if self.position_embedding == "alibi":
            d["model_max_length"] = self.max_position
        else:
            d["max_position_embeddings"] = self.max_position
            if self.rope_theta != 10000.0:
                d["rope_theta"] = self.rope_theta
        d.setdefault("model_type", "baichuan")
        return dict(sorted(d.items()))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "ModelConfig":
        from .files import read_json_object

        try:
            data = read_json_object(path)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint folder or hub id (see :func:`checkpoint.resolve_model_path`)."""
        from .hub import resolve_model_path

        folder = resolve_model_path(path_or_id, allow_patterns=["*.json"])
        file = folder / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in {folder}")
        return cls.from_json_file(file)

    def save(self, folder: str | os.PathLike) -> Path:
        from .files import atomic_write_text

        path = Path(folder) / "config.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset (see :data:`PRESETS`) with optional field overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        kwargs = dict(PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)


PRESETS: dict[str, dict[str, Any]] = {
    # The real Baichuan-13B shape (official config.json).
    "baichuan-13b": dict(architectures=[ALIBI_ARCHITECTURE], vocab_size=64000, hidden_size=5120,
                         intermediate_size=13696, num_hidden_layers=40, num_attention_heads=40, max_position=4096,
                         torch_dtype="bfloat16"),
    # The real Baichuan-7B shape.
    "baichuan-7b": dict(architectures=[ROPE_ARCHITECTURE], vocab_size=64000, hidden_size=4096,
                        intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, max_position=4096,
                        torch_dtype="float32"),
    # LLaMA-13B's shape (RoPE, vocab 32000), the seed's speed comparison.
    "llama-13b": dict(architectures=[ROPE_ARCHITECTURE], vocab_size=32000, hidden_size=5120,
                      intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, max_position=2048,
                      torch_dtype="float16"),
    # The 232M-parameter CPU comparison shape of ANCHORS.md.
    "baichuan-232m": dict(architectures=[ALIBI_ARCHITECTURE], vocab_size=64000, hidden_size=1024,
                          intermediate_size=2752, num_hidden_layers=8, num_attention_heads=8, max_position=4096,
                          torch_dtype="bfloat16"),
    # About one billion parameters, for load-time and CPU-decode measurements.
    "baichuan-1b": dict(architectures=[ALIBI_ARCHITECTURE], vocab_size=64000, hidden_size=2048,
                        intermediate_size=5504, num_hidden_layers=14, num_attention_heads=16, max_position=4096,
                        torch_dtype="bfloat16"),
}

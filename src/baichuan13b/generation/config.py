"""``GenerationConfig``: decoding settings, read from and written to the official ``generation_config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig

GREEDY_TEMPERATURE = 1e-6


@dataclass
class GenerationConfig:
    """How to decode. Field names and meanings follow ``generation_config.json`` (Hugging Face semantics).

    Baichuan-13B-Chat ships ``temperature=0.3, top_k=5, top_p=0.85, repetition_penalty=1.1,
    max_new_tokens=2048, user_token_id=195, assistant_token_id=196``.

    ``do_sample=False`` (or ``temperature <= 1e-6``) is greedy decoding. ``top_k=0`` and ``top_p=1.0`` disable those
    filters. ``stop_strings`` end a sequence when its decoded text contains one of them (needs a tokenizer);
    ``seed`` makes sampling reproducible.
    """

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    user_token_id: int = 195
    assistant_token_id: int = 196
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None
    # Keys of the original file that we do not interpret, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that is out of range."""
        if self.max_new_tokens is None or int(self.max_new_tokens) < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature is None or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is None or int(self.top_k) < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.top_p is None or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty is None or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if any(not s for s in self.stop_strings):
            raise ValueError("stop_strings must not contain empty strings")

    @property
    def greedy(self) -> bool:
        """Argmax decoding: ``do_sample`` off, or a temperature so small (<= 1e-6) that sampling is its limit,
        argmax (dividing logits by it would overflow float32)."""
        return not self.do_sample or self.temperature <= GREEDY_TEMPERATURE

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)

    def update(self, **kwargs: Any) -> "GenerationConfig":
        """A validated copy with ``kwargs`` applied (``eos_token_id=None`` disables the eos stop)."""
        names = {f.name for f in dataclasses.fields(self)} - {"extra"}
        unknown = set(kwargs) - names
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **kwargs)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in names}
        if "max_new_tokens" not in kwargs and isinstance(d.get("max_length"), int):
            kwargs["max_new_tokens"] = d["max_length"]
        kwargs["extra"] = d
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in ("stop_strings",) and not value or f.name == "seed" and value is None:
                continue
            d[f.name] = value
        return dict(sorted(d.items()))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> "GenerationConfig":
        """Read ``generation_config.json`` from a folder (or hub id), or a path to the file itself."""
        path = Path(path_or_id)
        if not path.exists():
            from ..hub import resolve_model_path

            path = resolve_model_path(path_or_id)
        if path.is_dir():
            path = path / "generation_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no generation_config.json at {path.parent}")
        from ..files import read_json_object

        return cls.from_dict(read_json_object(path))

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> "GenerationConfig":
        """Defaults for a checkpoint without ``generation_config.json`` (greedy; ids from config.json)."""
        return cls(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                   pad_token_id=config.pad_token_id)

    def save(self, folder: str | os.PathLike) -> Path:
        from ..files import atomic_write_text

        path = Path(folder) / "generation_config.json"
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

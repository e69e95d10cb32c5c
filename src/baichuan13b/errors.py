"""The project's error types, shared by every layer (checkpoint handling, the model, generation).

This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ContextLengthError", "first_line"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or matched to the model (the message says which file/tensor)."""


class ContextLengthError(ValueError):
    """The input (plus the cache) is longer than the model's context (also importable from :mod:`baichuan13b.model`)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its class name when empty), cut to ``limit`` characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

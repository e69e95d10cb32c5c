"""Generation: decoding settings, logits processing, the decode loop and text streaming."""

from .config import GenerationConfig
from .decode import StopStringMatcher, TextStream, generate, stream_text, stream_tokens
from .sampling import (
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
    select_next,
)

__all__ = [
    "GenerationConfig",
    "StopStringMatcher",
    "TextStream",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "generate",
    "process_logits",
    "select_next",
    "stream_text",
    "stream_tokens",
]

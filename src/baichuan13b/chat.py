"""Chat prompts exactly as the official Baichuan-13B-Chat builds them, and the ``chat()`` entry point.

Official format: walking the messages newest first, a user turn is ``[user_token_id] + content`` and an
assistant turn ``[assistant_token_id] + content + [eos]``. Whole rounds (a user turn and the answers after it)
are kept while they fit in ``max(model_max_length // 2, model_max_length - max_new_tokens)`` tokens; the result
is truncated from the left and ``assistant_token_id`` appended. The answer still gets ``max_new_tokens``
(unless the ``model_max_length // 2`` floor applies): its last token is never fed back to the model, so a prompt
of ``n`` tokens leaves room for ``model_max_length - n + 1`` (``generation.decode.tokens_that_fit``).

Extension (not in the official model): a leading ``{"role": "system", ...}`` message is encoded as plain tokens
at the very start of the prompt, before the kept rounds, and its length is taken from the history budget (the
convention later adopted by Baichuan2). A system message anywhere else, or an unknown role, is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch

from .generation import GenerationConfig, stream_text
from .generation.decode import resolve_config
from .tokenizer import check_text

if TYPE_CHECKING:
    from .model import BaichuanForCausalLM

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` naming the first malformed message (an :class:`~baichuan13b.tokenizer.InvalidTextError`
    for content that is not valid Unicode)."""
    if not messages:
        raise ValueError("messages is empty: a chat needs at least one user message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} content must be a string, got {type(m['content']).__name__}")
        check_text(m["content"], f"message {i} content")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message is only allowed first")


def turn_ids(role: str, content_ids: list[int], *, user_token_id: int, assistant_token_id: int,
             eos_token_id: int) -> list[int]:
    """One turn in the official layout: ``[user_token_id] + content`` for a user turn,
    ``[assistant_token_id] + content + [eos_token_id]`` for an assistant turn (shared by chat and training)."""
    if role == "user":
        return [user_token_id] + content_ids
    if role == "assistant":
        return [assistant_token_id] + content_ids + [eos_token_id]
    raise ValueError(f"turn_ids: role must be 'user' or 'assistant', got {role!r}")


def max_input_tokens(model_max_length: int, max_new_tokens: int) -> int:
    """Prompt tokens a chat may use: the context less the answer's ``max_new_tokens``, but at least half the
    context (the official rule; older turns beyond it are dropped, oldest first)."""
    return max(model_max_length // 2, model_max_length - max_new_tokens)


def build_chat_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    model_max_length: int,
    max_new_tokens: int,
    user_token_id: int,
    assistant_token_id: int,
    eos_token_id: int,
) -> list[int]:
    """Prompt ids for ``messages`` (see the module docstring for the format). Pure function."""
    validate_messages(messages)
    budget = max_input_tokens(model_max_length, max_new_tokens)
    system_tokens: list[int] = []
    if messages[0]["role"] == "system":
        system_tokens = tokenizer.encode(messages[0]["content"], add_special_tokens=False)
        messages = messages[1:]
        budget = max(0, budget - len(system_tokens))
    ids = dict(user_token_id=user_token_id, assistant_token_id=assistant_token_id, eos_token_id=eos_token_id)
    total: list[int] = []
    round_input: list[int] = []
    for message in reversed(messages):
        content = tokenizer.encode(message["content"], add_special_tokens=False)
        if message["role"] == "user":
            round_input = turn_ids("user", content, **ids) + round_input
            if total and len(total) + len(round_input) > budget:
                break
            total = round_input + total
            if len(total) >= budget:
                break
            round_input = []
        else:  # assistant
            round_input = turn_ids("assistant", content, **ids) + round_input
    total = total[-budget:] if budget > 0 else []  # truncate from the left
    return system_tokens + total + [assistant_token_id]


def build_chat_input(
    model: "BaichuanForCausalLM",
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    max_new_tokens: int | None = None,
    generation_config: GenerationConfig | None = None,
) -> torch.Tensor:
    """Prompt ids as a LongTensor [1, n] on the model's device, as the official ``_build_chat_input``."""
    cfg = resolve_config(model, generation_config, {})
    eos = cfg.eos_token_ids[0] if cfg.eos_token_ids else model.config.eos_token_id
    ids = build_chat_ids(
        tokenizer,
        messages,
        model_max_length=model.config.max_position,
        max_new_tokens=max_new_tokens or cfg.max_new_tokens,
        user_token_id=cfg.user_token_id,
        assistant_token_id=cfg.assistant_token_id,
        eos_token_id=eos,
    )
    return torch.tensor([ids], dtype=torch.long, device=model.device)


def chat(
    model: "BaichuanForCausalLM",
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    stream: bool = False,
    generation_config: GenerationConfig | None = None,
    **overrides: Any,
) -> str | Iterator[str]:
    """Answer the conversation ``messages`` (newest last).

    Returns the answer text, or with ``stream=True`` an iterator yielding the cumulative answer after each new
    piece of text (as the official model does). ``overrides`` update the generation settings
    (``temperature=0.7, max_new_tokens=256, seed=0, ...``).
    """
    cfg = resolve_config(model, generation_config, overrides)
    input_ids = build_chat_input(model, tokenizer, messages, generation_config=cfg)
    pieces = stream_text(model, tokenizer, input_ids, cfg)
    if stream:
        return _cumulative(pieces)
    return "".join(pieces)


def _cumulative(pieces: Iterator[str]) -> Iterator[str]:
    text = ""
    try:
        for piece in pieces:
            text += piece
            yield text
    finally:
        pieces.close()

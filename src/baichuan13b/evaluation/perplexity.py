"""Perplexity of a text with a sliding window.

The text is tokenized once. Windows of ``window`` tokens start every ``stride`` tokens; each window scores only
the tokens no earlier window scored, so every token after the first is predicted once, with at least
``window - stride`` tokens of context (all preceding tokens in the first window). ``stride == window`` gives
disjoint chunks, whose first tokens (no context) are not scored; a smaller stride gives more context per token
at more cost. The default stride is half the window.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

# Positions turned into vocabulary logits at a time: bounds the [positions, vocab] float32 tensor.
LOGITS_CHUNK = 512


@torch.inference_mode()
def sequence_nll(model: Any, ids: Sequence[int], window: int | None = None, stride: int | None = None
                 ) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods in nats, number of tokens scored) for ``ids``."""
    context = model.config.max_position
    window = window or context
    stride = stride or max(1, window // 2)
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if window > context and not model.config.allow_length_extrapolation:
        raise ValueError(f"window {window} exceeds the model's context of {context} tokens")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, the text has {len(ids)}")
    all_ids = torch.tensor(list(ids), dtype=torch.long)
    total, count, scored_until = 0.0, 0, 1  # token 0 is never predicted
    begin = 0
    while scored_until < len(ids):
        end = min(begin + window, len(ids))
        chunk = all_ids[begin:end][None].to(model.device)  # [1, T]
        hidden = model.model(chunk)  # [1, T, hidden]
        # First position (in the chunk) whose token is scored; position 0 has no context inside the chunk.
        first = max(1, scored_until - begin)
        for s in range(first, end - begin, LOGITS_CHUNK):
            e = min(s + LOGITS_CHUNK, end - begin)
            h = hidden[0, s - 1: e - 1].to(model.logits_device)  # [n, hidden] predicts tokens s..e-1
            logits = model.lm_head(h).float()  # [n, vocab]
            total += F.cross_entropy(logits, all_ids[begin + s: begin + e].to(logits.device), reduction="sum").item()
            count += e - s
        scored_until = end
        begin += stride
    return total, count


def perplexity(model: Any, tokenizer: Any, text: str, window: int | None = None, stride: int | None = None
               ) -> dict[str, Any]:
    """Perplexity of ``text`` (see the module docstring): ``exp(mean NLL)`` with the counts behind it."""
    ids = tokenizer.encode(text)
    total, count = sequence_nll(model, ids, window, stride)
    window = window or model.config.max_position
    mean = total / count
    ppl = math.exp(mean) if mean < 709.0 else math.inf  # exp overflows a float past ~709.78
    return {"tokens": len(ids), "scored_tokens": count, "nll_sum": total, "mean_nll": mean,
            "perplexity": ppl, "window": window, "stride": stride or max(1, window // 2)}


def perplexity_of_file(model: Any, tokenizer: Any, path: str | Path, window: int | None = None,
                       stride: int | None = None) -> dict[str, Any]:
    """:func:`perplexity` of a UTF-8 text file; the result names the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text: {e}") from e
    return {"file": str(p), **perplexity(model, tokenizer, text, window, stride)}

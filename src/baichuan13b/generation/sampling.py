"""Logits processing and token selection as small pure functions (Hugging Face semantics).

Order, as in ``transformers``: repetition penalty, then temperature, top-k, top-p, then sample (or argmax).
All functions take float logits [B, V] and return new tensors.

Numerically safe for every setting the config accepts: a scaling that would overflow (a repetition penalty of
1e-300 divides positive logits by almost zero, a small temperature multiplies them) saturates at the dtype's
largest finite value instead of reaching ``inf`` (and ``0 / tiny`` is 0, never NaN), so the softmax in
:func:`select_next` only ever sees finite logits or the ``-inf`` of filtered tokens. Saturated tokens tie.
"""

from __future__ import annotations

import torch

from .config import GenerationConfig


def _scaled(logits: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """``scaled`` (a scaling of ``logits``) with overflow saturated at the dtype's finite range and ``0 / tiny``
    (NaN when the divisor rounds to 0 in the logits' dtype) as 0. Entries that are not finite in ``logits`` (the
    ``-inf`` of filtered tokens) stay as they are: a positive factor leaves an infinity unchanged."""
    limit = torch.finfo(scaled.dtype).max
    safe = torch.nan_to_num(scaled, nan=0.0, posinf=limit, neginf=-limit)
    return torch.where(torch.isfinite(logits), safe, logits)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalise every token already present (``seen`` [B, V] bool, prompt and output).

    A positive logit is divided by ``penalty``, a negative one multiplied by it (CTRL / HF semantics); the result
    saturates at the dtype's finite range (see the module docstring).
    """
    if penalty == 1.0:
        return logits
    penalised = _scaled(logits, torch.where(logits < 0, logits * penalty, logits / penalty))
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``, saturating at the dtype's finite range (see the module docstring)."""
    if temperature == 1.0:
        return logits
    return _scaled(logits, logits / temperature)


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits per row (ties at the threshold kept); 0 disables."""
    if top_k <= 0 or top_k >= logits.size(-1):
        return logits
    threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability mass reaches ``top_p``."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, config: GenerationConfig) -> torch.Tensor:
    """Apply the repetition penalty and, when sampling, temperature / top-k / top-p. Float32 [B, V] out."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits
    logits = apply_temperature(logits, config.temperature)
    logits = apply_top_k(logits, config.top_k)
    return apply_top_p(logits, config.top_p)


def select_next(logits: torch.Tensor, config: GenerationConfig,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row [B] from processed logits: argmax when greedy, else a multinomial draw."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def seen_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """[B, V] bool: which tokens occur in each (unpadded) row of ``input_ids``."""
    counts = torch.zeros(input_ids.size(0), vocab_size, dtype=torch.int32, device=input_ids.device)
    valid = torch.ones_like(input_ids, dtype=torch.int32) if attention_mask is None else attention_mask.int()
    counts.scatter_add_(1, input_ids.clamp(0, vocab_size - 1), valid)  # padding adds 0
    return counts > 0

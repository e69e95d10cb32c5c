"""Token log-probabilities in OpenAI's legacy ``/v1/completions`` shape (pure functions).

``logprobs: k`` asks for the log-probability of every returned token and the ``k`` most likely tokens at each
position; ``echo: true`` returns the prompt too, scored the same way (its first token has no prediction, hence
``null``). The answer's ``choices[i].logprobs`` is::

    {"tokens": ["The", " cat", ...],             # the text of each token
     "token_logprobs": [null, -3.2, ...],        # log p(token | everything before it)
     "top_logprobs": [null, {" cat": -3.2, " dog": -2.9}, ...],   # the k most likely tokens
     "text_offset": [0, 3, ...]}                 # where each token starts in the choice's text

Log-probabilities are of the model's own distribution (log-softmax of the logits, before temperature, top-k or
top-p), computed in float32, as vLLM reports them by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

MAX_LOGPROBS = 5  # OpenAI's limit for the legacy completions API


@dataclass(frozen=True)
class TokenLogprob:
    """One scored position: the token there, its log-probability and the ``k`` most likely (id, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def score_positions(logits: torch.Tensor, targets: Sequence[int], top: int) -> list[TokenLogprob]:
    """Score ``targets[i]`` under ``logits[i]`` ([n, vocab], n >= len(targets); extra rows are ignored).

    Each entry has the target's log-probability and the ``top`` most likely tokens (most likely first).
    """
    n = len(targets)
    if n == 0:
        return []
    logp = torch.log_softmax(logits[:n].float(), dim=-1)  # [n, vocab]
    ids = torch.tensor(list(targets), dtype=torch.long, device=logp.device)
    chosen = logp.gather(1, ids[:, None])[:, 0].tolist()  # [n]
    if top > 0:
        values, indices = logp.topk(min(top, logp.shape[-1]), dim=-1)  # [n, top] each
        tops = [tuple(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
    else:
        tops = [() for _ in range(n)]
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(ids.tolist(), chosen, tops)]


def piece_text(tokenizer: Any, token: int) -> str:
    """A token's text on its own, for the keys of ``top_logprobs``: the SentencePiece piece with ``▁`` as a space;
    a byte piece as its character when ASCII, else ``bytes:\\xNN`` (as OpenAI writes partial characters)."""
    sp = tokenizer.sp_model
    piece = sp.id_to_piece(int(token))
    if sp.is_byte(int(token)):
        value = int(piece[3:-1], 16)
        return chr(value) if value < 0x80 else f"bytes:\\x{value:02x}"
    if sp.is_control(int(token)):
        return piece
    return piece.replace("\u2581", " ")


def legacy_logprobs(tokenizer: Any, segments: Sequence[tuple[Sequence[int], Sequence[TokenLogprob | None]]],
                    ) -> tuple[str, dict[str, list]]:
    """The choice's text and its ``logprobs`` object for consecutive token ``segments``.

    Each segment is (token ids, one entry per id; None where a token has no prediction, the prompt's first). Each
    segment is detokenised on its own, as the server writes it (the echoed prompt, then the completion; special
    tokens are dropped from the completion as from its text). ``tokens[i]`` is the text token ``i`` adds, so
    ``text[text_offset[i]:].startswith(tokens[i])`` (a token holding part of a UTF-8 character adds ``""``; the
    token completing it carries the character).
    """
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    text = ""
    for index, (ids, entries) in enumerate(segments):
        if len(ids) != len(entries):
            raise ValueError(f"segment {index}: {len(ids)} tokens but {len(entries)} log-prob entries")
        decoder = tokenizer.stream_decoder(skip_special_tokens=index > 0)
        for token, entry in zip(ids, entries):
            piece = decoder.put(int(token))
            out["text_offset"].append(len(text))
            out["tokens"].append(piece)
            text += piece
            if entry is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
            else:
                out["token_logprobs"].append(entry.logprob)
                top: dict[str, float] = {}
                for tid, lp in entry.top:
                    top.setdefault(piece_text(tokenizer, tid), lp)  # two ids with one text: the likelier kept
                out["top_logprobs"].append(top)
        rest = decoder.flush()
        if rest and out["tokens"]:
            out["tokens"][-1] += rest
            text += rest
    return text, out

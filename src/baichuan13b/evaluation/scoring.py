"""Which token ids stand for the answer letters, and reading a letter out of generated text.

Two schemes, as the official harnesses differ:

* ``"encode"``: the ids of ``tokenizer.encode("A")`` (C-Eval's and MMLU's harnesses). SentencePiece adds its
  dummy prefix, so with the Baichuan vocabulary this is the piece ``▁A`` (id 703; B 731, C 702, D 743).
* ``"piece"``: the piece ``"A"`` itself, ``convert_tokens_to_ids("A")`` (CMMLU's harness; Baichuan: 31132,
  31139, 31133, 31140). In the Chinese prompts the answer after ``：`` is tokenized as this piece.

A letter that a scheme maps to several pieces, or to no piece of the vocabulary, is an error (the argmax over four
single-token logits would not be what the harness computes).
"""

from __future__ import annotations

import re
from typing import Any

from .benchmarks import LETTERS

SCHEMES = ("encode", "piece")


def letter_token_ids(tokenizer: Any, scheme: str) -> list[int]:
    """Token ids of A, B, C, D under ``scheme`` (``"encode"`` or ``"piece"``); see the module docstring."""
    sp = tokenizer.sp_model
    ids = []
    for letter in LETTERS:
        if scheme == "encode":
            pieces = sp.encode(letter)
            if len(pieces) != 1:
                shown = sp.encode(letter, out_type=str)
                raise ValueError(f"letter {letter!r} encodes to {len(pieces)} pieces {shown} with this tokenizer; "
                                 f"the 'encode' scheme needs one piece per letter (try --letter_scheme piece)")
            ids.append(pieces[0])
        elif scheme == "piece":
            idx = sp.piece_to_id(letter)
            if idx == sp.unk_id() or sp.id_to_piece(idx) != letter:
                raise ValueError(f"{letter!r} is not a piece of this tokenizer's vocabulary; the 'piece' scheme "
                                 f"needs it (try --letter_scheme encode)")
            ids.append(idx)
        else:
            raise ValueError(f"unknown letter scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"letters A-D map to repeated token ids {ids} under the {scheme!r} scheme")
    return ids


# Patterns tried in order on generated text; the first match wins. Written for the answers chat models give
# ("答案是 B", "正确答案：C", "The answer is (D)", "选A"...).
_PATTERNS = [
    re.compile(r"答案(?:选项)?(?:应该|应)?(?:是|为|选)?\s*[:：]?\s*(?:选项)?\s*\(?([ABCD])(?![A-Za-z])"),
    re.compile(r"(?i:answer)\s*(?:is|:)?\s*[:：]?\s*(?:option\s*)?\(?([ABCD])(?![A-Za-z])"),
    re.compile(r"(?:选择|选)\s*(?:项)?\s*[:：]?\s*\(?([ABCD])(?![A-Za-z])"),
    re.compile(r"(?<![A-Za-z])([ABCD])\s*(?:选项|项)?\s*(?:是|为)?\s*(?:正确|对的)"),
]


def extract_letter(text: str) -> str | None:
    """The answer letter in a generated ``text``, or None when it cannot be told.

    Order: the text starts with a letter marked as the answer (``"B"``, ``"B."``, ``"(B)"``, or a leading letter
    that is the only one in the text); then explicit phrases (答案是 B,
    answer: B, 选B, B 正确); then the only letter A-D standing alone in the text. Never guesses: no letter is
    None (scored wrong and counted as unparsed).
    """
    s = text.strip()
    alone = set(re.findall(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])", s))
    m = re.match(r"^\(?([ABCD])(?:$|[.．、:：)）]|(?![A-Za-z]))", s)
    if m and (len(alone) == 1 or re.match(r"^\(?[ABCD](?:$|[.．、:：)）])", s)):
        return m.group(1)
    for pattern in _PATTERNS:
        m = pattern.search(s)
        if m:
            return m.group(1)
    if len(alone) == 1:
        return alone.pop()
    return None

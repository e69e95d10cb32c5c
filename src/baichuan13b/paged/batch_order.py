"""The order in which to run a set of prompts known in advance (offline scoring: ``baichuan eval``) through the
prefix cache, so that every block several prompts share is computed once. Pure Python: no tensors.

1. :func:`shared_blocks`: per prompt, how many of its leading full blocks another prompt has too. In
   lexicographic order a prompt's longest common prefix with any other prompt is the one with a neighbour, so
   one sort gives them all.
2. Rounds of *leaders*. The prompts still missing one of their shared blocks are grouped by the first block they
   miss (its chained hash: a group has the same tokens up to and including that block); of each group the one
   sharing the most blocks runs (all of it but its cached prefix) and registers its shared blocks. Each round
   gives every waiting prompt at least one more cached block, so the rounds end (on CMMLU: a few per subject).
3. Every other prompt, each now finding all of its shared blocks cached, sorted by the tokens it still computes
   (its length less its shared blocks): the rows of a batch have similar lengths, so little padding.

Which prompts share with which does not depend on the order, so neither do the prompts or the scores: only which
tokens are computed once instead of many times. Only the shared blocks need a place in the cache
(:attr:`PrefixPlan.keep`), so a pool of ``num_shared + batch_size * blocks per prompt`` blocks never evicts a block
that a later prompt asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence as Seq

from .block_manager import chain_hash


@dataclass
class PrefixPlan:
    """``batches``: prompt indices, in running order; ``keep[i]``: leading full blocks of prompt ``i`` that other
    prompts reuse (the ones to register in the prefix cache); ``num_shared``: distinct such blocks over all
    prompts (what the cache holds at most); ``reused[i]``: positions of prompt ``i`` found in the cache when
    it runs."""

    batches: list[list[int]]
    keep: list[int]
    num_shared: int
    reused: list[int]


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (binary search over slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # invariant: a[:lo] == b[:lo]
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_blocks(rows: Seq[Seq[int]], block_size: int) -> list[int]:
    """Per row: the number of its leading full blocks (``block_size`` tokens each) that some other row also
    starts with."""
    rows = [list(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    lcp = [0] + [common_prefix(rows[a], rows[b]) for a, b in zip(order, order[1:])] + [0]  # with the row before
    keep = [0] * len(rows)
    for k, i in enumerate(order):
        keep[i] = max(lcp[k], lcp[k + 1]) // block_size
    return keep


def _chain(row: Seq[int], blocks: int, block_size: int) -> list[bytes]:
    hashes: list[bytes] = []
    for i in range(blocks):
        hashes.append(chain_hash(hashes[-1] if hashes else None, row[i * block_size: (i + 1) * block_size]))
    return hashes


def _batches(indices: list[int], pending: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(indices, key=lambda i: pending[i])
    return [order[b: b + batch_size] for b in range(0, len(order), batch_size)]


def prefix_plan(rows: Seq[Seq[int]], block_size: int, batch_size: int) -> PrefixPlan:
    """The running order of ``rows`` (token ids) for a prefix cache of ``block_size`` blocks, ``batch_size``
    rows per forward pass; see the module docstring. A row's last token is never taken from the cache."""
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size} and {batch_size}")
    keep = shared_blocks(rows, block_size)
    need = [min(k, (len(r) - 1) // block_size) for k, r in zip(keep, rows)]  # the last token is computed
    chains = [_chain(r, k, block_size) for r, k in zip(rows, keep)]
    have = [0] * len(rows)  # leading blocks already registered by the leaders run so far
    registered: set[bytes] = set()
    batches: list[list[int]] = []
    leaders: set[int] = set()
    waiting = [i for i in range(len(rows)) if need[i] > 0]
    while True:
        unready = []
        for i in waiting:
            while have[i] < need[i] and chains[i][have[i]] in registered:
                have[i] += 1
            if have[i] < need[i]:
                unready.append(i)
        if not unready:
            break
        groups: dict[bytes, list[int]] = {}
        for i in unready:
            groups.setdefault(chains[i][have[i]], []).append(i)
        chosen = [max(g, key=lambda i: (keep[i], -i)) for g in groups.values()]
        pending = [len(r) - h * block_size for r, h in zip(rows, have)]
        batches += _batches(chosen, pending, batch_size)
        for i in chosen:
            registered.update(chains[i])
        leaders.update(chosen)
        waiting = [i for i in unready if i not in leaders]
    reused = [h * block_size for h in have]  # a leader: what was cached in its round; any other row: need
    rest = [i for i in range(len(rows)) if i not in leaders]
    batches += _batches(rest, [len(r) - n for r, n in zip(rows, reused)], batch_size)
    return PrefixPlan(batches, keep, len(registered), reused)

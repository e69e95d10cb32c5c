"""The state of one sequence in the paged cache: its tokens and the blocks holding their keys and values."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

_arrival = itertools.count()


@dataclass(eq=False, kw_only=True)
class Sequence:
    """One sequence: ``token_ids`` (prompt, then the generated tokens) and its place in the KV pool.

    ``block_table[i]`` is the pool block holding positions ``i * block_size .. (i + 1) * block_size - 1``;
    ``num_computed`` positions have their keys and values in the pool (``num_cached`` of them were found in the
    prefix cache when the sequence was admitted). The tokens still to run through the model are
    ``token_ids[num_computed:]``: a whole prompt at first, then one token per decode step (the last sampled one).
    ``block_hashes`` are the chained hashes of the sequence's full, computed blocks (see :class:`BlockManager`).
    ``order`` is the arrival order: the scheduler preempts the newest sequence first. ``prefix_cache=False``
    keeps this sequence out of the prefix cache (it neither reuses nor registers blocks).
    """

    token_ids: list[int]
    num_prompt: int = -1
    order: int = field(default_factory=lambda: next(_arrival))
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.num_prompt < 0:
            self.num_prompt = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet run through the model (their keys and values are not in the pool)."""
        return len(self.token_ids) - self.num_computed

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    def append(self, token: int) -> None:
        """Add a sampled token; its keys and values are computed by the next step."""
        self.token_ids.append(int(token))

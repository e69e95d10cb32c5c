"""Fixed-size KV blocks with reference counts, prefix hashing and LRU eviction. Pure Python: no tensors.

A block holds ``block_size`` consecutive positions of one or more sequences. A *full* block whose keys and values
have been computed is identified by a chained hash: ``hash(previous block's hash, its token ids)``, so equal hashes
mean equal tokens at equal positions after an equal prefix, i.e. equal keys and values. Such a block is registered
in a table ``hash -> block``; a later sequence starting with the same tokens takes the block (its reference count
goes up) instead of recomputing it. When no sequence references a registered block any more it stays cached, in
least-recently-used order, and is only evicted (its hash forgotten) when a free block is needed. Blocks are shared
only when full and computed, and a sequence writes only after its own computed positions, so a shared block is
never written again (no copy-on-write).

The last prompt token is never taken from the cache: its logits are needed to sample the first new token, so a
prefix match covers at most ``len(tokens) - 1`` positions.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Sequence as Seq

from .sequence import Sequence


class OutOfBlocksError(RuntimeError):
    """Not enough free blocks for what was asked (callers check with ``can_*`` first)."""


def chain_hash(previous: bytes | None, token_ids: Seq[int]) -> bytes:
    """The hash of a full block: of the hash of everything before it and of its token ids (16-byte blake2b over
    the ids as little-endian int64)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(previous or b"")
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


@dataclass
class Block:
    """One pool block: how many sequences use it and, once registered, its hash and token ids."""

    id: int
    ref_count: int = 0
    hash: bytes | None = None
    token_ids: tuple[int, ...] = ()


class BlockManager:
    """Hands out blocks ``0 .. num_blocks - 1`` of a KV pool to sequences.

    Args:
        num_blocks: blocks in the pool.
        block_size: positions per block.
        prefix_cache: reuse registered full blocks (False: every sequence computes all of its positions, and a
            freed block is free at once; the results are the same, only slower).
    """

    def __init__(self, num_blocks: int, block_size: int, prefix_cache: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_cache = prefix_cache
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))  # unreferenced, not registered
        self._cached: OrderedDict[int, None] = OrderedDict()  # unreferenced, registered; oldest first (LRU)
        self._by_hash: dict[bytes, int] = {}
        self.hit_tokens = 0  # positions taken from the cache so far (for metrics)
        self.evictions = 0

    # ------------------------------------------------------------------ counts
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out: free ones and unreferenced cached ones (evicted on demand)."""
        return len(self._free) + len(self._cached)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Unreferenced blocks still holding a registered prefix."""
        return len(self._cached)

    def blocks_for(self, positions: int) -> int:
        return -(-positions // self.block_size)

    # ------------------------------------------------------------------ prefix lookup
    def match_prefix(self, token_ids: Seq[int]) -> list[int]:
        """Registered blocks holding the longest cached prefix of ``token_ids`` (never its last token)."""
        if not self.prefix_cache or not token_ids:
            return []
        bs, found, previous = self.block_size, [], None
        for i in range((len(token_ids) - 1) // bs):
            chunk = tuple(int(t) for t in token_ids[i * bs: (i + 1) * bs])
            previous = chain_hash(previous, chunk)
            bid = self._by_hash.get(previous)
            if bid is None or self.blocks[bid].token_ids != chunk:
                break
            found.append(bid)
        return found

    def _admission_cost(self, seq: Sequence) -> tuple[list[int], int]:
        """(the prefix blocks ``seq`` would reuse, the free blocks its admission would consume)."""
        hits = self.match_prefix(seq.token_ids) if seq.prefix_cache else []
        new = self.blocks_for(len(seq.token_ids)) - len(hits)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # leave the LRU list: no longer free
        return hits, new + revived

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether blocks for all of ``seq``'s known tokens (less its cached prefix) are free."""
        return self._admission_cost(seq)[1] <= self.num_free

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` (holding no blocks) its cached prefix blocks and new blocks for the rest of its tokens."""
        if seq.block_table:
            raise ValueError("allocate: the sequence already holds blocks")
        hits, cost = self._admission_cost(seq)
        if cost > self.num_free:
            raise OutOfBlocksError(f"{cost} free blocks needed, {self.num_free} free")
        for bid in hits:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self._cached[bid]
            block.ref_count += 1
            seq.block_table.append(bid)
            seq.block_hashes.append(block.hash)
        seq.num_computed = seq.num_cached = len(hits) * self.block_size
        self.hit_tokens += seq.num_cached
        self._grow(seq, len(seq.token_ids))

    # ------------------------------------------------------------------ growth
    def can_append(self, seq: Sequence, positions: int | None = None) -> bool:
        """Whether ``seq``'s blocks can be extended to ``positions`` (default: all its known tokens)."""
        need = self.blocks_for(len(seq.token_ids) if positions is None else positions) - len(seq.block_table)
        return need <= self.num_free

    def append(self, seq: Sequence, positions: int | None = None) -> None:
        """Extend ``seq``'s block table to hold ``positions`` (default: all its known tokens)."""
        if not self.can_append(seq, positions):
            raise OutOfBlocksError(f"no free block to extend a sequence of {len(seq.token_ids)} tokens")
        self._grow(seq, len(seq.token_ids) if positions is None else positions)

    def _grow(self, seq: Sequence, positions: int) -> None:
        while len(seq.block_table) < self.blocks_for(positions):
            seq.block_table.append(self._take())

    def _take(self) -> int:
        if self._free:
            bid = self._free.popleft()
        else:
            if not self._cached:
                raise OutOfBlocksError("no free block")
            bid, _ = self._cached.popitem(last=False)  # evict the least recently used cached block
            block = self.blocks[bid]
            if self._by_hash.get(block.hash) == bid:
                del self._by_hash[block.hash]
            block.hash, block.token_ids = None, ()
            self.evictions += 1
        self.blocks[bid].ref_count = 1
        return bid

    # ------------------------------------------------------------------ registration and release
    def commit(self, seq: Sequence, max_blocks: int | None = None) -> None:
        """Register ``seq``'s blocks that became full and computed (call after each forward pass); with
        ``max_blocks`` only its first ``max_blocks`` blocks (a caller that knows which blocks later sequences
        ask for keeps the others out of the cache, so they never push out one that is still needed)."""
        if not (self.prefix_cache and seq.prefix_cache):
            return
        bs = self.block_size
        full = seq.num_computed // bs
        for i in range(len(seq.block_hashes), full if max_blocks is None else min(full, max_blocks)):
            chunk = tuple(int(t) for t in seq.token_ids[i * bs: (i + 1) * bs])
            h = chain_hash(seq.block_hashes[-1] if seq.block_hashes else None, chunk)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if h not in self._by_hash:  # a duplicate of a registered block stays private and unregistered
                block.hash, block.token_ids = h, chunk
                self._by_hash[h] = block.id

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks (last block first, so the tail of a prefix is evicted before its head) and
        reset it to "nothing computed" (a preempted sequence is recomputed from its cached prefix)."""
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count > 0:
                continue
            if block.hash is not None and self._by_hash.get(block.hash) == bid:
                self._cached[bid] = None  # most recently used at the end
            else:
                block.hash, block.token_ids = None, ()
                self._free.append(bid)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed = 0
        seq.num_cached = 0

    def clear_cache(self) -> None:
        """Forget every unreferenced cached block (e.g. when the weights change)."""
        while self._cached:
            bid, _ = self._cached.popitem(last=False)
            block = self.blocks[bid]
            self._by_hash.pop(block.hash, None)
            block.hash, block.token_ids = None, ()
            self._free.append(bid)

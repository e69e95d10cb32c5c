"""Decode steps at fixed shapes, captured as CUDA graphs and replayed.

A decode step runs one token per sequence: hundreds of small kernels per layer, whose launch overhead dominates
on a GPU at small batches. As in vLLM and nano-vllm, the step is captured once per shape as a CUDA graph and
replayed. Shapes are kept few by padding: the batch to a bucket (1, 2, 4, 8, then multiples of 8 up to the batch
cap) and the block tables to a width bucket (powers of two up to a full context's blocks; keys beyond a row's
length are masked, as in any paged batch). Every input of the step lives in a static buffer that is written
before each replay; padded rows read and write only the pool's scratch block.

Without CUDA (and with ``capture=False``) the same fixed-shape step runs eagerly on the same buffers: that is how
the tests on a CPU check it, and what is left when a capture fails.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from typing import Sequence as Seq

import torch

from ..cache import PagedBatch, PagedKVCache

if TYPE_CHECKING:
    from ..model import BaichuanForCausalLM

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes with a graph: 1, 2, 4, 8, 16, 24, ... (multiples of 8), and ``max_batch`` itself."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 8))
    return sizes + [max_batch]


def width_buckets(max_blocks: int) -> list[int]:
    """Block-table widths with a graph: powers of two below ``max_blocks``, and ``max_blocks`` itself."""
    widths, w = [], 1
    while w < max_blocks:
        widths.append(w)
        w *= 2
    return widths + [max_blocks]


def bucket(n: int, buckets: Seq[int]) -> int:
    """The smallest bucket that holds ``n``."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket, {buckets[-1]}")


class DecodeGraphs:
    """Fixed-shape decode steps of one model over one KV pool, captured lazily as CUDA graphs, one per
    (batch bucket, width bucket) the engine meets.

    Args:
        model: the model; its forward is what is captured.
        cache: the KV pool the steps read and write.
        max_batch: rows per step at most.
        max_blocks: blocks per row at most (a full context).
        capture: capture CUDA graphs (default: when the pool is on a CUDA device); False runs the same steps
            eagerly.
    """

    def __init__(self, model: "BaichuanForCausalLM", cache: PagedKVCache, max_batch: int, max_blocks: int,
                 capture: bool | None = None):
        if max_batch < 1 or max_blocks < 1:
            raise ValueError(f"max_batch and max_blocks must be >= 1, got {max_batch}, {max_blocks}")
        self.model, self.cache = model, cache
        self.capture = cache.device.type == "cuda" if capture is None else capture
        if self.capture and cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the KV pool on a CUDA device, it is on {cache.device}")
        self.batch_sizes = batch_buckets(max_batch)
        self.widths = width_buckets(max_blocks)
        device = cache.device
        zeros = dict(dtype=torch.long, device=device)
        # The static inputs, written before every step (shapes [max_batch, ...]; a step uses the first B rows).
        self.input_ids = torch.zeros(max_batch, 1, **zeros)  # [Bmax, 1]
        self.positions = torch.zeros(max_batch, 1, **zeros)  # [Bmax, 1]
        self.write_slots = torch.zeros(max_batch, 1, **zeros)  # [Bmax, 1]
        self.key_lengths = torch.ones(max_batch, **zeros)  # [Bmax]
        self.last = torch.zeros(max_batch, **zeros)  # [Bmax], 0: one query per row
        self.tables: dict[int, torch.Tensor] = {}  # width -> [Bmax, width], contiguous per width
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None  # the memory pool all graphs share (they never run at the same time)
        self.capture_error: str | None = None  # why capturing was given up, if it was

    def shape(self, n: int, longest_row_blocks: int) -> tuple[int, int]:
        """The padded (batch, table width) of a step of ``n`` rows whose longest row needs that many blocks."""
        return bucket(n, self.batch_sizes), bucket(longest_row_blocks, self.widths)

    def run(self, tokens: Seq[int], block_tables: Seq[Seq[int]], starts: Seq[int]) -> torch.Tensor:
        """Logits [len(tokens), vocab] of one decode step: row ``b`` runs ``tokens[b]`` at position ``starts[b]``
        through ``block_tables[b]``."""
        n, bs = len(tokens), self.cache.block_size
        B, W = self.shape(n, max(-(-(s + 1) // bs) for s in starts))
        pad = B - n
        scratch = [self.cache.scratch]
        host = self.cache.batch(list(block_tables) + [scratch] * pad, list(starts) + [0] * pad, [1] * B,
                                table_width=W)  # the addressing, on the host
        self.input_ids[:B, 0].copy_(torch.tensor(list(tokens) + [0] * pad), non_blocking=True)
        self.positions[:B].copy_(host.positions, non_blocking=True)
        self.write_slots[:B].copy_(host.write_slots, non_blocking=True)
        self.key_lengths[:B].copy_(host.key_lengths, non_blocking=True)
        if W not in self.tables:
            self.tables[W] = torch.full((len(self.input_ids), W), self.cache.scratch, dtype=torch.long,
                                        device=self.cache.device)
        self.tables[W][:B].copy_(host.block_table, non_blocking=True)
        if not self.capture:
            return self._step(B, W, host.max_key_length)[:n]
        if (B, W) not in self.graphs:
            try:
                self.graphs[B, W] = self._capture(B, W, host.max_key_length)
            except RuntimeError as e:  # e.g. a kernel that cannot be captured: decode eagerly from now on
                self.capture, self.capture_error = False, f"{type(e).__name__}: {e}"
                logger.warning("CUDA graph capture failed (%s); decoding without CUDA graphs", self.capture_error)
                return self._step(B, W, host.max_key_length)[:n]
        graph, logits = self.graphs[B, W]
        graph.replay()
        return logits[:n].clone()  # the next replay of any graph may reuse this memory

    def _step(self, B: int, W: int, max_key_length: int) -> torch.Tensor:
        """The forward pass of a (B, W) step on the static buffers: logits [B, vocab]."""
        batch = PagedBatch(self.cache, self.positions[:B], self.write_slots[:B], self.tables[W][:B],
                           self.key_lengths[:B], self.last[:B], max_key_length=max_key_length)
        return self.model(self.input_ids[:B], cache=batch, logits_to_keep=1).logits[:, -1]

    def _capture(self, B: int, W: int, max_key_length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm up on a side stream (allocator and library workspaces), then capture into the shared pool. Both
        # run on the step's real inputs, so what they write to the KV pool is what the step writes anyway.
        stream = torch.cuda.Stream(self.cache.device)
        stream.wait_stream(torch.cuda.current_stream(self.cache.device))
        with torch.cuda.stream(stream):
            self._step(B, W, max_key_length)
        torch.cuda.current_stream(self.cache.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._step(B, W, max_key_length)
        self._pool = graph.pool()
        return graph, logits

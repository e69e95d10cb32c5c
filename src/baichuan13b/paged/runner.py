"""The model runner: the KV pool of a model and one forward pass over a batch of sequences.

A batch is a list of ``(sequence, n)``: run the next ``n`` pending tokens of each sequence, at its own positions,
through its block table. Rows of different ``n`` are padded on the right (padded queries write to the pool's
scratch block and their outputs are dropped). Returns the logits of each row's last token, which sample the
next token when the row finished its pending tokens. Decode steps (one token per row) can run at fixed shapes,
as CUDA graphs on a GPU (:class:`~.graphs.DecodeGraphs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Sequence as Seq

import torch

from ..cache import PagedKVCache
from .graphs import DecodeGraphs
from .sequence import Sequence

if TYPE_CHECKING:
    from ..model import BaichuanForCausalLM


class ModelRunner:
    """Owns the :class:`~baichuan13b.cache.PagedKVCache` of ``model``.

    Args:
        model: the model (its forward is the only compute path).
        num_blocks: blocks in the pool.
        block_size: positions per block.
        decode_graphs: run decode steps at fixed shapes through :class:`~.graphs.DecodeGraphs` (captured as CUDA
            graphs when the model is on a CUDA device, eagerly otherwise); needs ``max_batch`` and
            ``max_blocks``. Default: on for a model on one CUDA device, off otherwise (the CPU gains nothing).
        max_batch: rows per decode step at most (for the graphs' buffers).
        max_blocks: blocks per sequence at most (for the graphs' buffers).
    """

    def __init__(self, model: "BaichuanForCausalLM", num_blocks: int, block_size: int,
                 decode_graphs: bool | None = None, max_batch: int | None = None, max_blocks: int | None = None):
        self.model = model
        self.cache: PagedKVCache = model.new_paged_cache(num_blocks, block_size)
        self.block_size = block_size
        self.device = model.device
        if decode_graphs is None:  # one CUDA device, no collectives (tensor parallel ranks decode eagerly)
            one_device = len({p.device for p in model.parameters()}) == 1
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            decode_graphs = self.device.type == "cuda" and one_device and not distributed and max_batch is not None
        self.graphs: DecodeGraphs | None = None
        if decode_graphs:
            if max_batch is None or max_blocks is None:
                raise ValueError("decode_graphs needs max_batch and max_blocks")
            self.graphs = DecodeGraphs(model, self.cache, max_batch, max_blocks)

    @torch.inference_mode()
    def run(self, rows: Seq[tuple[Sequence, int]], every_position: bool = False) -> torch.Tensor:
        """Logits [len(rows), vocab] after each row's last token of this pass, or with ``every_position`` those of
        every token [len(rows), T, vocab] (``seq.num_computed`` is not advanced here: see
        :meth:`~baichuan13b.paged.Scheduler.advance`)."""
        lengths = [n for _, n in rows]
        T = max(lengths)
        if T == 1 and self.graphs is not None and not every_position:
            return self.graphs.run([s.token_ids[s.num_computed] for s, _ in rows], [s.block_table for s, _ in rows],
                                   [s.num_computed for s, _ in rows])
        ids = torch.zeros(len(rows), T, dtype=torch.long)  # [B, T], right padded
        for b, (seq, n) in enumerate(rows):
            ids[b, :n] = torch.tensor(seq.token_ids[seq.num_computed: seq.num_computed + n], dtype=torch.long)
        batch = self.cache.batch([s.block_table for s, _ in rows], [s.num_computed for s, _ in rows], lengths)
        if every_position:
            return self.model(ids.to(self.device), cache=batch).logits  # [B, T, V]
        return self.model(ids.to(self.device), cache=batch, logits_to_keep=1).logits[:, -1]  # [B, V]

"""The model runner: the KV pool of a model and one forward pass over a batch of sequences.

A batch is a list of ``(sequence, n)``: run the next ``n`` pending tokens of each sequence, at its own positions,
through its block table. Rows of different ``n`` are padded on the right (padded queries write to the pool's
scratch block and their outputs are dropped). Returns the logits of each row's last token, which sample the
next token when the row finished its pending tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Sequence as Seq

import torch

from ..cache import PagedKVCache
from .sequence import Sequence

if TYPE_CHECKING:
    from ..model import BaichuanForCausalLM


class ModelRunner:
    """Owns the :class:`~baichuan13b.cache.PagedKVCache` of ``model``.

    Args:
        model: the model (its forward is the only compute path).
        num_blocks: blocks in the pool.
        block_size: positions per block.
        static_table_width: pad every block table to this many blocks and attend over all of them (fixed
            decode shapes for CUDA-graph capture); None: keys span the longest row of each batch (CPU).
    """

    def __init__(self, model: "BaichuanForCausalLM", num_blocks: int, block_size: int,
                 static_table_width: int | None = None):
        self.model = model
        self.cache: PagedKVCache = model.new_paged_cache(num_blocks, block_size)
        self.block_size = block_size
        self.static_table_width = static_table_width
        self.device = model.device

    @torch.inference_mode()
    def run(self, rows: Seq[tuple[Sequence, int]], every_position: bool = False) -> torch.Tensor:
        """Logits [len(rows), vocab] after each row's last token of this pass, or with ``every_position`` those of
        every token [len(rows), T, vocab] (``seq.num_computed`` is not advanced here: see
        :meth:`~baichuan13b.paged.Scheduler.advance`)."""
        lengths = [n for _, n in rows]
        T = max(lengths)
        ids = torch.zeros(len(rows), T, dtype=torch.long)  # [B, T], right padded
        for b, (seq, n) in enumerate(rows):
            ids[b, :n] = torch.tensor(seq.token_ids[seq.num_computed: seq.num_computed + n], dtype=torch.long)
        width = self.static_table_width if T == 1 else None  # decode steps only
        batch = self.cache.batch([s.block_table for s, _ in rows], [s.num_computed for s, _ in rows], lengths,
                                 table_width=width)
        if every_position:
            return self.model(ids.to(self.device), cache=batch).logits  # [B, T, V]
        return self.model(ids.to(self.device), cache=batch, logits_to_keep=1).logits[:, -1]  # [B, V]

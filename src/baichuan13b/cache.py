"""The two key/value caches of the project.

* :class:`KVCache`: a static contiguous cache, one preallocated buffer pair per layer of shape
  [batch, heads, max_length, head_dim], for ``model.generate`` / ``stream_tokens`` (one batch, left padded, rows
  sharing positions) and its compiled (CUDA-graph) decode step, where fixed shapes matter more than sharing;
* :class:`PagedKVCache`: a pool of fixed-size blocks per layer, read and written through each sequence's block
  table (:class:`PagedBatch`), with rows of different lengths: the serving engine, ``model.chat`` and
  ``baichuan eval``, with prefix reuse (see :mod:`baichuan13b.paged`).
"""

from __future__ import annotations

from typing import Sequence

import torch


def _layer_devices(devices, num_layers: int) -> list:
    if isinstance(devices, (str, torch.device)):
        devices = [devices] * num_layers
    if len(devices) != num_layers:
        raise ValueError(f"need one device per layer ({num_layers}), got {len(devices)}")
    return list(devices)


class KVCache:
    """Keys and values for every layer: ``k[i]``, ``v[i]`` of shape [batch, heads, max_length, head_dim].

    Allocated once at full size (no ``torch.cat`` per token); ``length`` is the number of filled positions,
    shared by the rows of the batch (prompts are left padded; padding is excluded by the attention mask).
    Each layer's buffers live on that layer's device, so a model split with ``device_map`` works unchanged.
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, max_length: int,
                 dtype: torch.dtype, devices: Sequence[torch.device | str] | torch.device | str = "cpu"):
        devices = _layer_devices(devices, num_layers)
        shape = (batch_size, num_heads, max_length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.v = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    def reset(self) -> None:
        """Forget the cached positions (buffers are reused, not freed)."""
        self.length = 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch ``rows`` (e.g. after some sequences finished)."""
        self.k = [k[rows.to(k.device)] for k in self.k]
        self.v = [v[rows.to(v.device)] for v in self.v]
        self.batch_size = int(rows.numel())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class PagedKVCache:
    """A pool of KV blocks: ``k[i]``, ``v[i]`` of shape [num_blocks + 1, block_size, heads, head_dim] per layer,
    each on its layer's device.

    Blocks ``0 .. num_blocks - 1`` are handed out by a :class:`~baichuan13b.paged.BlockManager`; the extra last
    block is scratch: padded query positions write there and padded block-table entries point there (their keys
    are masked), so a batch keeps rectangular shapes without touching real blocks.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype, devices: Sequence[torch.device | str] | torch.device | str = "cpu"):
        devices = _layer_devices(devices, num_layers)
        shape = (num_blocks + 1, block_size, num_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.v = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch = num_blocks
        self.device = torch.device(devices[0]) if devices else torch.device("cpu")

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    def nbytes(self) -> int:
        """Bytes of the usable blocks (the scratch block not counted)."""
        return sum(t[: self.num_blocks].numel() * t.element_size() for t in self.k + self.v)

    def batch(self, block_tables: Sequence[Sequence[int]], starts: Sequence[int], lengths: Sequence[int],
              table_width: int | None = None) -> "PagedBatch":
        """The addressing of one forward pass: row ``b`` runs ``lengths[b]`` tokens at positions
        ``starts[b] ..`` through ``block_tables[b]`` (which must cover them).

        ``table_width`` pads every block table to that many entries and makes attention span all of them (fixed
        shapes from step to step, as a captured CUDA graph needs); by default keys span the blocks of the longest row.
        """
        B, bs = len(block_tables), self.block_size
        if not (B == len(starts) == len(lengths)) or B == 0:
            raise ValueError("batch: one block table, start and length per row, at least one row")
        T = max(lengths)
        ends = [s + n for s, n in zip(starts, lengths)]
        if any(len(t) * bs < e for t, e in zip(block_tables, ends)):
            raise ValueError("batch: a block table does not cover its row's positions")
        width = table_width or -(-max(ends) // bs)  # keys span whole blocks; those beyond a row's end are masked
        if table_width and any(-(-e // bs) > width for e in ends):
            raise ValueError(f"batch: a row needs more than table_width={table_width} blocks")
        table = torch.full((B, width), self.scratch, dtype=torch.long)  # [B, width]
        for b, (t, e) in enumerate(zip(block_tables, ends)):
            used = list(t[: min(len(t), width)])
            table[b, : len(used)] = torch.tensor(used, dtype=torch.long)
        start = torch.tensor(list(starts), dtype=torch.long)[:, None]  # [B, 1]
        n = torch.tensor(list(lengths), dtype=torch.long)[:, None]  # [B, 1]
        t = torch.arange(T)[None, :]  # [1, T]
        real = t < n  # [B, T]
        positions = start + torch.minimum(t, n - 1)  # [B, T]; padded queries repeat the row's last position
        write = table.gather(1, positions // bs) * bs + positions % bs  # [B, T] flat pool slots
        write = torch.where(real, write, self.scratch * bs + t % bs)
        batch = PagedBatch(self, positions, write, table, start[:, 0] + n[:, 0], n[:, 0] - 1, max(ends))
        row = table[0].tolist()
        if B == 1 and row == list(range(row[0], row[0] + width)):  # one row in consecutive blocks: no gather
            batch.first_block = row[0]
        return batch


class PagedBatch:
    """Addressing of one forward pass over a :class:`PagedKVCache`, shared by all layers.

    ``positions`` [B, T] token positions of the queries, ``write_slots`` [B, T] flat slots of the pool
    (``block * block_size + offset``) where their keys/values go, ``block_table`` [B, W] the blocks each row reads
    (padded with the scratch block; keys span ``W * block_size`` positions), ``key_lengths`` [B]: keys
    ``0 .. key_lengths[b] - 1`` are valid for row ``b``; ``last`` [B]: index of each row's last real query (its
    logits sample the next token); ``max_key_length``: the largest key length, on the host.
    """

    def __init__(self, cache: PagedKVCache, positions: torch.Tensor, write_slots: torch.Tensor,
                 block_table: torch.Tensor, key_lengths: torch.Tensor, last: torch.Tensor,
                 max_key_length: int | None = None):
        self.cache = cache
        self.positions, self.write_slots, self.block_table = positions, write_slots, block_table
        self.key_lengths, self.last = key_lengths, last
        # known on the host, so that checking it never waits for a device (nor breaks a CUDA-graph capture)
        self.max_key_length = int(key_lengths.max()) if max_key_length is None else max_key_length
        self.num_keys = block_table.shape[1] * cache.block_size
        self.first_block: int | None = None  # set when one row reads consecutive blocks (a view, no copy)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.layer(i)

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:  # once per device of a split model
            self._on[device] = (self.write_slots.reshape(-1).to(device), self.block_table.reshape(-1).to(device))
        return self._on[device]

    def write_and_read(self, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor,
                       v_pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values ``k``, ``v`` [B, H, T, D] into their slots of one layer's pool, then
        gather every row's blocks: keys/values [B, H, S, D] with ``S = W * block_size``."""
        B, H, T, D = k.shape
        write, blocks = self._indices(k.device)
        k_pool.view(-1, H, D).index_copy_(0, write, k.transpose(1, 2).reshape(B * T, H, D))
        v_pool.view(-1, H, D).index_copy_(0, write, v.transpose(1, 2).reshape(B * T, H, D))
        S, W = self.num_keys, self.block_table.shape[1]
        if self.first_block is not None:
            b0 = self.first_block
            return (k_pool[b0: b0 + W].view(1, S, H, D).transpose(1, 2),
                    v_pool[b0: b0 + W].view(1, S, H, D).transpose(1, 2))
        # whole blocks at a time (contiguous block_size * H * D chunks): [B * W, bs, H, D] -> [B, H, S, D]
        keys = k_pool.index_select(0, blocks).view(B, S, H, D).transpose(1, 2)
        values = v_pool.index_select(0, blocks).view(B, S, H, D).transpose(1, 2)
        return keys, values

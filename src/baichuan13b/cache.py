"""A static key/value cache: one preallocated buffer pair per layer, written in place.

Two modes:

* shared length (generation): rows of a batch share positions (prompts are left padded), so one ``length``
  counts the filled positions of every row; padding is excluded by the attention mask, not by the cache;
* per-row lengths (``per_row=True``, the serving engine): ``row_lengths[b]`` counts the filled slots of row
  ``b``; each row writes after its own length, so sequences join and leave the batch independently.
"""

from __future__ import annotations

from typing import Sequence

import torch


class KVCache:
    """Keys and values for every layer: ``k[i]``, ``v[i]`` of shape [batch, heads, max_length, head_dim].

    Allocated once at full size (no ``torch.cat`` per token); ``length`` is the number of filled positions.
    Each layer's buffers live on that layer's device, so a model split with ``device_map`` works unchanged.
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, head_dim: int, max_length: int,
                 dtype: torch.dtype, devices: Sequence[torch.device | str] | torch.device | str = "cpu",
                 per_row: bool = False):
        if isinstance(devices, (str, torch.device)):
            devices = [devices] * num_layers
        if len(devices) != num_layers:
            raise ValueError(f"need one device per layer ({num_layers}), got {len(devices)}")
        shape = (batch_size, num_heads, max_length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.v = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0
        # [B] filled slots per row (per-row mode), on the first layer's device; None in shared-length mode.
        self.row_lengths: torch.Tensor | None = (
            torch.zeros(batch_size, dtype=torch.long, device=devices[0]) if per_row else None
        )

    def row(self, b: int) -> "KVCache":
        """A one-row cache sharing storage with row ``b`` of this per-row cache (e.g. to prefill one request).

        Writes through the view land in this cache, and its ``row_lengths`` is a view of ``row_lengths[b]``.
        """
        return self.rows(b, b + 1)

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache of rows ``start:stop`` sharing storage with this per-row cache (e.g. the occupied rows of a
        serving batch, so that a decode step skips the free ones)."""
        if self.row_lengths is None:
            raise ValueError("row() / rows() need a cache created with per_row=True")
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"rows {start}:{stop} out of range for a cache of {self.batch_size} rows")
        view = object.__new__(KVCache)
        view.k = [k[start:stop] for k in self.k]
        view.v = [v[start:stop] for v in self.v]
        view.batch_size, view.max_length, view.length = stop - start, self.max_length, 0
        view.row_lengths = self.row_lengths[start:stop]
        return view

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]

    def reset(self) -> None:
        """Forget the cached positions (buffers are reused, not freed)."""
        self.length = 0
        if self.row_lengths is not None:
            self.row_lengths.zero_()

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch ``rows`` (e.g. after some sequences finished)."""
        self.k = [k[rows.to(k.device)] for k in self.k]
        self.v = [v[rows.to(v.device)] for v in self.v]
        if self.row_lengths is not None:
            self.row_lengths = self.row_lengths[rows.to(self.row_lengths.device)]
        self.batch_size = int(rows.numel())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

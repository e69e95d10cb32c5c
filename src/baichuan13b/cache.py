"""A static key/value cache: one preallocated buffer pair per layer, written in place.

Rows of a batch share positions (prompts are left padded), so one ``length`` counts the filled positions of
every row; padding is excluded by the attention mask, not by the cache.
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
                 dtype: torch.dtype, devices: Sequence[torch.device | str] | torch.device | str = "cpu"):
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

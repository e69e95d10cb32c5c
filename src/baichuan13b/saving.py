"""Save a model in the official Baichuan layout (config, generation config, sharded safetensors or ``.bin``).

Each file is written atomically (see :mod:`baichuan13b.files`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .devices import resolve_dtype
from .errors import CheckpointError
from .files import atomic_write, atomic_write_text
from .weights import BIN_INDEX, BIN_SINGLE, SAFE_INDEX, SAFE_SINGLE, is_official_weight_file

if TYPE_CHECKING:
    from .model import BaichuanForCausalLM

__all__ = ["parse_size", "save_model"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9,
               "T": 10**12}


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"200MB"``, ``"10GB"`` (decimal) or ``"2GiB"`` (binary)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str) and (m := _SIZE_RE.match(size)) and m.group(2).upper() in _SIZE_UNITS:
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    else:
        raise CheckpointError(f"cannot read size {size!r}: use bytes (int) or a string like '200MB' or '10GB'")
    if value <= 0:
        raise CheckpointError(f"size must be positive, got {size!r}")
    return value


def _weights_to_save(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    state = model.state_dict()
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shares the embedding weight: saved once
    return [(name, tensor.detach()) for name, tensor in state.items()]


def _saved_nbytes(tensor: torch.Tensor, dtype: torch.dtype | None) -> int:
    if dtype is not None and tensor.is_floating_point():
        return tensor.numel() * torch.empty((), dtype=dtype).element_size()
    return tensor.numel() * tensor.element_size()


def _shards(items: list[tuple[str, torch.Tensor]], max_bytes: int,
            dtype: torch.dtype | None) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most ``max_bytes`` (a bigger tensor gets a group of its own)."""
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, tensor in items:
        nbytes = _saved_nbytes(tensor, dtype)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tensor))
        size += nbytes
    return shards


def _cpu_copy(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The tensor to write: on CPU, cast to ``dtype``, owning exactly its data (torch.save would otherwise write
    a whole shared storage, safetensors refuses shared or strided tensors).  No copy when none is needed."""
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype=dtype)
    tensor = tensor.to("cpu")
    if (not tensor.is_contiguous() or tensor.storage_offset() != 0
            or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()):
        tensor = tensor.contiguous().clone()
    return tensor


def save_model(
    model: "BaichuanForCausalLM",
    folder: str | os.PathLike,
    *,
    safe_serialization: bool = True,
    max_shard_size: int | str = "10GB",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
) -> Path:
    """Write ``model`` to ``folder`` in the official layout and return the folder.

    Writes ``config.json``, ``generation_config.json`` (when ``model.generation_config`` is set) and the weights:
    ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``
    (``safe_serialization=True``), else ``pytorch_model.bin`` or ``pytorch_model-0000k-of-0000n.bin`` +
    ``pytorch_model.bin.index.json``.  Shards hold at most ``max_shard_size`` bytes (int or ``"200MB"``,
    ``"10GB"``; a larger single tensor gets a shard of its own).  ``dtype`` casts the saved tensors (the model
    is unchanged).  Tied embeddings are saved once.  Each file is written atomically; weight files of the
    official names that the new save does not produce (an earlier save in another layout) are removed afterwards,
    so that loading cannot pick up stale weights.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_dtype = resolve_dtype(dtype) if dtype is not None else None
    items = _weights_to_save(model)
    shards = _shards(items, parse_size(max_shard_size), save_dtype)
    ext, stem, single, index_name = (("safetensors", "model", SAFE_SINGLE, SAFE_INDEX) if safe_serialization
                                     else ("bin", "pytorch_model", BIN_SINGLE, BIN_INDEX))
    n = len(shards)
    names = [single] if n == 1 else [f"{stem}-{k:05d}-of-{n:05d}.{ext}" for k in range(1, n + 1)]

    model.config.save(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save(folder)

    weight_map: dict[str, str] = {}
    total_size = 0
    bar = tqdm(total=sum(_saved_nbytes(t, save_dtype) for _, t in items), unit="B", unit_scale=True,
               desc=f"Saving {folder.name or folder}", disable=not progress)
    try:
        for file_name, shard in zip(names, shards):
            # One shard at a time on the host: at most one shard's worth of copies (GPU models, dtype casts).
            tensors = {name: _cpu_copy(t, save_dtype) for name, t in shard}
            if safe_serialization:
                from safetensors.torch import save_file

                atomic_write(folder / file_name,
                              lambda tmp, tensors=tensors: save_file(tensors, str(tmp), metadata={"format": "pt"}))
            else:
                atomic_write(folder / file_name, lambda tmp, tensors=tensors: torch.save(tensors, tmp))
            for name, t in tensors.items():
                weight_map[name] = file_name
                nbytes = t.numel() * t.element_size()
                total_size += nbytes
                bar.update(nbytes)
            del tensors
    finally:
        bar.close()
    written = set(names)
    if n > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(folder / index_name, json.dumps(index, indent=2) + "\n")
        written.add(index_name)
    for stale in folder.iterdir():
        if stale.is_file() and is_official_weight_file(stale.name) and stale.name not in written:
            stale.unlink()
    return folder

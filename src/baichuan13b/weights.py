"""The weight files of a checkpoint folder in the official Baichuan layouts, and the tensors in them.

Layouts recognised (first match wins, in this order):

* ``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors`` (sharded safetensors)
* ``model.safetensors``
* ``pytorch_model.bin.index.json`` + ``pytorch_model-0000k-of-0000n.bin`` (the official Baichuan-13B layout)
* ``pytorch_model.bin``

``.bin`` files are read with ``torch.load(mmap=True, weights_only=True)``: a pickle that holds anything but
tensors and plain containers is refused, never executed.  Tensors are read one at a time, whole or (with
:func:`iter_tensors`'s ``select``) only the slice the caller asks for.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .errors import CheckpointError, first_line

# select(name, shape) -> the (dim, start, stop) ranges of the tensor to read, concatenated along dim; None: all.
Selector = Callable[[str, tuple[int, ...]], "Sequence[tuple[int, int, int]] | None"]

__all__ = [
    "BIN_INDEX", "BIN_SINGLE", "SAFE_INDEX", "SAFE_SINGLE", "SKIPPED_SUFFIXES", "WeightFiles",
    "find_weight_files", "has_weights", "is_official_weight_file", "iter_tensors",
]

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# Official shard names, e.g. pytorch_model-00001-of-00003.bin / model-00002-of-00005.safetensors.
_SHARD_RE = re.compile(r"^(?:model|pytorch_model)-\d{5}-of-\d{5}\.(?:safetensors|bin)$")

# Persistent buffers saved by the era's RoPE checkpoints (Baichuan-7B) that this implementation recomputes from
# the config instead: they are skipped when loading.
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def has_weights(folder: Path) -> bool:
    """True when ``folder`` holds weights under one of the official names."""
    return any((folder / n).is_file() for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))


def is_official_weight_file(name: str) -> bool:
    """True for the official weight and index file names (single files, shards, indexes)."""
    return name in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE) or bool(_SHARD_RE.match(name))


class WeightFiles(tuple):
    """``(format, files)`` as returned by :func:`find_weight_files`, plus the index details.

    Unpacks as a pair (``fmt, files = find_weight_files(folder)``).  Attributes: ``format`` (``"safetensors"``
    or ``"bin"``), ``files`` (list of paths, in shard order), ``index`` (path of the index file or None) and
    ``weight_map`` (tensor name -> shard file name from the index, or None for a single file).
    """

    format: str
    files: list[Path]
    index: Path | None
    weight_map: dict[str, str] | None

    def __new__(cls, format: str, files: list[Path], index: Path | None = None,
                weight_map: dict[str, str] | None = None) -> "WeightFiles":
        self = super().__new__(cls, (format, files))
        self.format, self.files, self.index, self.weight_map = format, files, index, weight_map
        return self


def _read_index(folder: Path, index: Path) -> tuple[list[Path], dict[str, str]]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint index {index} is not valid JSON: {e}") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"checkpoint index {index} has no 'weight_map' object mapping tensor names to shards")
    files: list[Path] = []
    seen: set[str] = set()
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"checkpoint index {index} maps {name!r} to {shard!r}, not a file name")
        if shard in seen:
            continue
        seen.add(shard)
        # Checked by name, not by resolving: in the Hugging Face cache every file is a symlink into ../blobs.
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CheckpointError(f"checkpoint index {index} names shard {shard!r} outside the checkpoint folder")
        file = folder / shard
        if not file.is_file():
            raise CheckpointError(f"checkpoint index {index.name} names shard {shard}, which is missing from {folder}")
        files.append(file)
    return sorted(files, key=lambda p: p.name), dict(weight_map)


def find_weight_files(folder: str | os.PathLike) -> WeightFiles:
    """The weight files of a checkpoint folder, by the official names (see the module docstring for the order).

    Returns a :class:`WeightFiles`: ``(format, files)`` with ``format`` in ``{"safetensors", "bin"}``, plus
    ``.weight_map`` (from the index, None for a single file).

    Raises:
        CheckpointError: no weights (the message lists the names looked for), an unreadable index, or an index
            naming a shard that is missing (named).
    """
    folder = Path(folder)
    for index_name, single_name, fmt in ((SAFE_INDEX, SAFE_SINGLE, "safetensors"), (BIN_INDEX, BIN_SINGLE, "bin")):
        index = folder / index_name
        if index.is_file():
            files, weight_map = _read_index(folder, index)
            return WeightFiles(fmt, files, index, weight_map)
        single = folder / single_name
        if single.is_file():
            return WeightFiles(fmt, [single])
    raise CheckpointError(
        f"no model weights in {folder}: looked for {SAFE_INDEX}, {SAFE_SINGLE}, {BIN_INDEX} and {BIN_SINGLE}"
    )


def _corrupt(file: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {file} is truncated or corrupt: {reason}")


def _load_bin(file: Path) -> Any:
    size = file.stat().st_size
    if size == 0:
        raise _corrupt(file, "the file is empty (0 bytes)")
    with open(file, "rb") as f:
        head = f.read(4)
    is_zip = zipfile.is_zipfile(file)
    if not is_zip and head.startswith(b"PK"):
        raise _corrupt(file, f"zip archive without its central directory ({size} bytes; cut short?)")
    if not is_zip and not head.startswith(b"\x80"):
        raise _corrupt(file, "neither a torch zip archive nor a legacy torch pickle")
    try:
        # The zip format (torch >= 1.6) is memory-mapped; the legacy pickle format cannot be.
        return torch.load(file, map_location="cpu", mmap=is_zip, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised as CheckpointError below
        message = str(e)
        match = re.search(r"Unsupported (?:global|class):?\s*(?:GLOBAL\s+)?([\w.<>]+)", message)
        if match:
            raise CheckpointError(
                f"refusing to unpickle {file}: it holds Python objects other than tensors ({match.group(1)}); "
                "only plain state dicts of tensors are loaded"
            ) from e
        # The weights-only unpickler buries the actual reason after a generic preamble.
        _, marker, rest = message.partition("WeightsUnpickler error:")
        reason = next((line.strip() for line in rest.splitlines() if line.strip()), "") if marker else ""
        raise _corrupt(file, f"bad pickle data ({reason})" if reason else first_line(e)) from e


def iter_tensors(file: str | os.PathLike, select: Selector | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for each tensor of a ``.safetensors`` or ``.bin`` file, on CPU.

    ``.bin`` files are read with ``torch.load(mmap=True, weights_only=True)``: the tensors may alias the
    memory-mapped file, so copy them before the file changes.  ``.safetensors`` files are read tensor by tensor.

    ``select(name, shape)`` may return ``(dim, start, stop)`` ranges: only those parts of the tensor are read
    (safetensors slices; views of the memory-mapped ``.bin``), concatenated along ``dim``. Tensor parallelism
    uses it so that each rank reads just its own slices.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt ("checkpoint file X is truncated or corrupt:
            <reason>"), a pickle holds non-tensor objects (refused, never executed), or the file is not a flat
            name -> tensor mapping.
    """
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {file} does not exist")
    if file.suffix == ".safetensors":
        yield from _iter_safetensors(file, select)
    elif file.suffix == ".bin":
        state = _load_bin(file)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"checkpoint file {file} holds a {type(state).__name__}, not a state dict of tensors")
        names = list(state.keys())
        for name in names:
            tensor = state[name]
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"checkpoint file {file} holds {name!r} = {type(tensor).__name__}, not a tensor "
                                      "(only flat state dicts of tensors are supported)")
            ranges = select(name, tuple(tensor.shape)) if select is not None else None
            if ranges:
                pieces = [tensor.narrow(dim, start, stop - start) for dim, start, stop in ranges]
                tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=ranges[0][0])
            yield name, tensor
        del state
    else:
        raise CheckpointError(f"checkpoint file {file} is neither .safetensors nor .bin")


def _iter_safetensors(file: Path, select: Selector | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except SafetensorError as e:
        raise _corrupt(file, first_line(e)) from e
    with handle as f:
        for name in f.keys():
            try:
                tensor = f.get_tensor(name) if select is None else _read_selected(f, name, select)
            except SafetensorError as e:
                raise _corrupt(file, f"tensor {name}: {first_line(e)}") from e
            yield name, tensor


def _read_selected(f: Any, name: str, select: Selector) -> torch.Tensor:
    """Tensor ``name`` of an open safetensors file, or only the ranges ``select`` asks for (read from disk)."""
    part = f.get_slice(name)
    ranges = select(name, tuple(part.get_shape()))
    if not ranges:
        return f.get_tensor(name)
    pieces = [part[start:stop] if dim == 0 else part[:, start:stop] for dim, start, stop in ranges]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=ranges[0][0])

"""Read and write checkpoints in the official Baichuan layouts, without ``transformers`` or remote code.

This module gathers the checkpoint API in one place; each part lives in a module about one thing, from the
lowest layer up (none imports a layer above it):

* :mod:`baichuan13b.errors`: :class:`CheckpointError`;
* :mod:`baichuan13b.files`: atomic writes (temp name, fsync, ``os.replace``) and :func:`read_json_object`;
* :mod:`baichuan13b.weights`: the official weight-file layouts, :func:`find_weight_files`, :func:`iter_tensors`;
* :mod:`baichuan13b.hub`: ``demo``, folders and hub ids to a local folder (:func:`resolve_model_path`), and
  :func:`model_display_name`;
* :mod:`baichuan13b.devices`: :func:`resolve_dtype`, :func:`plan_devices`;
* :mod:`baichuan13b.loading`: :func:`load_model` (streams the weights into a model built on ``meta``);
* :mod:`baichuan13b.saving`: :func:`save_model`, :func:`parse_size`.

Code inside the package imports from those modules; ``from baichuan13b.checkpoint import ...`` keeps working
for every name listed here.
"""

from __future__ import annotations

from .devices import check_devices as _check_devices
from .devices import plan_devices, resolve_dtype
from .devices import unit_of as _unit_of
from .errors import CheckpointError
from .files import atomic_write as _atomic_write
from .files import atomic_write_bytes, atomic_write_text, read_json_object
from .files import fsync_dir as _fsync_dir
from .hub import DEMO_MODEL_DIR, DEMO_NAME, model_display_name, resolve_model_path
from .loading import load_model
from .saving import parse_size, save_model
from .weights import (
    BIN_INDEX,
    BIN_SINGLE,
    SAFE_INDEX,
    SAFE_SINGLE,
    SKIPPED_SUFFIXES,
    WeightFiles,
    find_weight_files,
    iter_tensors,
)

__all__ = [
    "BIN_INDEX",
    "BIN_SINGLE",
    "CheckpointError",
    "DEMO_MODEL_DIR",
    "DEMO_NAME",
    "SAFE_INDEX",
    "SAFE_SINGLE",
    "SKIPPED_SUFFIXES",
    "WeightFiles",
    "atomic_write_bytes",
    "atomic_write_text",
    "find_weight_files",
    "iter_tensors",
    "load_model",
    "model_display_name",
    "parse_size",
    "plan_devices",
    "read_json_object",
    "resolve_dtype",
    "resolve_model_path",
    "save_model",
]

# Private names that code outside this module used before the split (kept so that it keeps importing).
_PRIVATE_ALIASES = (_atomic_write, _check_devices, _fsync_dir, _unit_of)

"""Read and write checkpoints in the official Baichuan layouts, without ``transformers`` or remote code.

Layouts recognised (first match wins, in this order):

* ``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors`` (sharded safetensors)
* ``model.safetensors``
* ``pytorch_model.bin.index.json`` + ``pytorch_model-0000k-of-0000n.bin`` (the official Baichuan-13B layout)
* ``pytorch_model.bin``

Loading builds the model on the ``meta`` device and streams the weights shard by shard, tensor by tensor,
straight into the target dtype and device, so that peak host memory is about the model in its target dtype
plus one (memory-mapped) shard.  ``.bin`` files are read with ``torch.load(weights_only=True)``: a pickle that
holds anything but tensors and plain containers is refused, never executed.

Every file written here goes through a temporary name in the destination folder and ``os.replace``, so a
crash never leaves a half-written ``config.json`` or weight file under its final name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .config import ModelConfig

if TYPE_CHECKING:
    from .model import BaichuanForCausalLM

__all__ = [
    "CheckpointError",
    "WeightFiles",
    "atomic_write_bytes",
    "atomic_write_text",
    "find_weight_files",
    "iter_tensors",
    "load_model",
    "model_display_name",
    "parse_size",
    "plan_devices",
    "resolve_dtype",
    "resolve_model_path",
    "save_model",
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

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The project's own tiny chat model, shipped in the package (built by `baichuan train-demo`): the name ``demo``
# stands for it wherever a model folder or hub id is accepted (``./demo`` names a folder called demo instead).
DEMO_NAME = "demo"
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo" / "model"


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or matched to the model (the message says which file/tensor)."""


# ------------------------------------------------------------------------------------------------ atomic writes
def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` then move the result to ``path`` in one step; the temp file never survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""

    def write(tmp: Path) -> None:
        # O_EXCL on a fresh random name; mode 0o666 so the usual umask applies (mkstemp would give 0o600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    return _atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` naming the file when it is not valid JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must contain a JSON object, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------------ locating
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, in the environment now or when ``huggingface_hub`` was imported."""
    if _env_flag("HF_HUB_OFFLINE"):
        return True
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hub_unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exception classes meaning "the hub cannot be reached" for the installed ``huggingface_hub``."""
    from huggingface_hub import errors

    classes: list[type[BaseException]] = [errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled]
    # The HTTP client differs between huggingface_hub versions (requests, httpx, httpx2): collect what exists.
    for module_name, names in (("httpx2", ("TransportError", "TimeoutException")),
                               ("httpx", ("TransportError", "TimeoutException")),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in names:
            cls = getattr(module, name, None) or getattr(getattr(module, "exceptions", None), name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                classes.append(cls)
    return tuple(classes)


def _download_hint(repo_id: str) -> str:
    name = repo_id.split("/")[-1]
    return (f"download it elsewhere with `hf download {repo_id} --local-dir {name}` (or `huggingface-cli download` "
            "with an older huggingface_hub), copy the folder here and pass its path")


def _weight_patterns(repo_files: Iterable[str] | None) -> list[str]:
    """Files to fetch: configs, the tokenizer and one weight format (safetensors when the repo has it)."""
    base = ["*.json", "*.model"]
    if repo_files is not None and not any(f.endswith(".safetensors") for f in repo_files):
        return base + ["*.bin"]
    return base + ["*.safetensors"]


def resolve_model_path(path_or_id: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """The local folder of a checkpoint given as a folder path or a Hugging Face hub id (``owner/name``).

    An existing folder is returned as is.  A hub id is looked up in the local Hugging Face cache first and only
    then downloaded (configs, ``*.model`` and the weights: safetensors when the repo has them, else ``*.bin``;
    ``allow_patterns`` overrides that choice).  Remote code (``*.py``) is never fetched.

    Raises:
        CheckpointError: no such folder (and not a hub id), the hub is unreachable or offline
            (``HF_HUB_OFFLINE``) and the repo is not cached (one line saying what to download and where),
            or the repo does not exist / is gated.
    """
    text = os.fspath(path_or_id)
    if text == DEMO_NAME:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(f"the demo model is missing from {DEMO_MODEL_DIR}: rebuild it with "
                                  f"`baichuan train-demo --output {DEMO_MODEL_DIR}` or pass a folder / hub id")
        return DEMO_MODEL_DIR
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{text} is a file, not a checkpoint folder: pass the folder that holds config.json "
                              "and the weights")
    if not _HUB_ID_RE.match(text):
        raise CheckpointError(f"no such folder: {text} (and it is not a hub id of the form owner/name)")
    return _snapshot(text, allow_patterns)


def model_display_name(path_or_id: str | os.PathLike) -> str:
    """The name to show and serve for a model given as ``demo``, a folder or a hub id.

    ``demo`` (or the shipped demo folder itself) is ``demo``; a folder is its own name (``./ckpt/`` -> ``ckpt``);
    a hub id is shown as typed (``baichuan-inc/Baichuan-13B-Chat``).
    """
    text = os.fspath(path_or_id)
    if text == DEMO_NAME:
        return DEMO_NAME
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        return DEMO_NAME if resolved == DEMO_MODEL_DIR else resolved.name
    return text.rstrip("/")


def _snapshot(repo_id: str, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import errors

    try:
        return _snapshot_or_raise(repo_id, allow_patterns)
    except errors.HFValidationError as e:
        raise CheckpointError(f"no such folder: {repo_id} (and it is not a valid hub id: {_first_line(e)})") from e


def _snapshot_or_raise(repo_id: str, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import HfApi, errors, snapshot_download

    # Hub-side failures (5xx, ...) count as "unreachable" too; repo-not-found and gated are told apart below.
    unreachable = _hub_unreachable_errors() + (errors.HfHubHTTPError,)
    not_cached = (errors.LocalEntryNotFoundError,
                  getattr(errors, "IncompleteSnapshotError", errors.LocalEntryNotFoundError))

    # 1. The local cache, without touching the network: safetensors first, then .bin.
    candidates = [allow_patterns] if allow_patterns is not None else [_weight_patterns(None), _weight_patterns([])]
    for patterns in candidates:
        try:
            folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except not_cached:
            continue  # not in the cache (or only partly): try the next pattern, then the network
        if allow_patterns is not None or _has_weights(folder):
            return folder

    if _hub_offline():
        raise CheckpointError(f"cannot reach the Hugging Face hub for {repo_id!r} (offline: HF_HUB_OFFLINE is set) "
                              f"and it is not in the local cache: {_download_hint(repo_id)}")

    # 2. The network.
    try:
        patterns = allow_patterns
        if patterns is None:
            siblings = HfApi().repo_info(repo_id).siblings
            patterns = _weight_patterns([s.rfilename for s in siblings] if siblings is not None else None)
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
        kind = ("is gated (accept its terms on the hub, then log in with `hf auth login`)"
                if isinstance(e, errors.GatedRepoError) else "does not exist on the Hugging Face hub (or is private)")
        raise CheckpointError(f"no such folder: {repo_id}, and {repo_id!r} {kind}") from e
    except unreachable as e:
        raise CheckpointError(f"cannot reach the Hugging Face hub for {repo_id!r} ({type(e).__name__}) and it is "
                              f"not in the local cache: {_download_hint(repo_id)}") from e


def _has_weights(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))


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


# ------------------------------------------------------------------------------------------------ reading tensors
def _corrupt(file: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {file} is truncated or corrupt: {reason}")


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise _corrupt(file, f"bad pickle data ({reason})" if reason else _first_line(e)) from e


def iter_tensors(file: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for each tensor of a ``.safetensors`` or ``.bin`` file, on CPU.

    ``.bin`` files are read with ``torch.load(mmap=True, weights_only=True)``: the tensors may alias the
    memory-mapped file, so copy them before the file changes.  ``.safetensors`` files are read tensor by tensor.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt ("checkpoint file X is truncated or corrupt:
            <reason>"), a pickle holds non-tensor objects (refused, never executed), or the file is not a flat
            name -> tensor mapping.
    """
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {file} does not exist")
    if file.suffix == ".safetensors":
        yield from _iter_safetensors(file)
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
            yield name, tensor
        del state
    else:
        raise CheckpointError(f"checkpoint file {file} is neither .safetensors nor .bin")


def _iter_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except SafetensorError as e:
        raise _corrupt(file, _first_line(e)) from e
    with handle as f:
        for name in f.keys():
            try:
                tensor = f.get_tensor(name)
            except SafetensorError as e:
                raise _corrupt(file, f"tensor {name}: {_first_line(e)}") from e
            yield name, tensor


# ------------------------------------------------------------------------------------------------ dtypes, devices
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(torch_dtype: torch.dtype | str | None, config: ModelConfig | None = None) -> torch.dtype:
    """The floating dtype to load into.

    ``None`` means float32 (safe everywhere, twice the memory of the official bf16 weights); ``"auto"`` means
    the config's ``torch_dtype`` (float32 when it has none); strings such as ``"bf16"``/``"half"`` are accepted.
    """
    if torch_dtype is None:
        return torch.float32
    if isinstance(torch_dtype, torch.dtype):
        dtype = torch_dtype
    elif isinstance(torch_dtype, str):
        key = torch_dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return resolve_dtype(config.torch_dtype if config is not None and config.torch_dtype else None)
        if key not in _DTYPES:
            raise CheckpointError(f"unknown torch_dtype {torch_dtype!r}: use float32, float16 or bfloat16 "
                                  "(or fp32/fp16/half/bf16, or 'auto' for the config's torch_dtype)")
        dtype = _DTYPES[key]
    else:
        raise CheckpointError(f"torch_dtype must be a torch.dtype, a string or None, got {type(torch_dtype).__name__}")
    if not dtype.is_floating_point:
        raise CheckpointError(f"torch_dtype must be a floating dtype, got {dtype}")
    return dtype


def _module_units(config: ModelConfig) -> list[str]:
    """The placement units of a model, in forward order."""
    return (["model.embed_tokens"] + [f"model.layers.{i}" for i in range(config.num_hidden_layers)]
            + ["model.norm", "lm_head"])


def _unit_params(config: ModelConfig, unit: str) -> int:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    if unit == "model.embed_tokens":
        return v * h
    if unit == "lm_head":
        return 0 if config.tie_word_embeddings else v * h
    if unit == "model.norm":
        return h
    return 4 * h * h + 3 * h * i + 2 * h  # a decoder layer


def _as_device(value: Any, key: str) -> torch.device:
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, int) and not isinstance(value, bool):
        device = torch.device("cuda", value)
    elif isinstance(value, str):
        try:
            device = torch.device(value)
        except RuntimeError as e:
            raise CheckpointError(f"device_map entry {key!r}: {value!r} is not a device") from e
    else:
        raise CheckpointError(f"device_map entry {key!r}: {value!r} is not a device (use 'cpu', 'cuda:N' or an int)")
    if device.type in ("meta", "disk"):
        raise CheckpointError(f"device_map entry {key!r}: device {device.type!r} is not supported (no offloading)")
    return device


def plan_devices(config: ModelConfig, device_map: str | torch.device | int | Mapping[str, Any] | None,
                 num_gpus: int | None = None) -> dict[str, torch.device]:
    """The device of every placement unit: ``model.embed_tokens``, ``model.layers.N``, ``model.norm``,
    ``lm_head`` (a pure function; ``num_gpus`` defaults to ``torch.cuda.device_count()`` and is only used by
    ``"auto"``).

    * ``None`` / ``"cpu"``: everything on CPU; ``"cuda"``, ``"cuda:N"``, an int or a ``torch.device``: all there.
    * ``"auto"``: contiguous runs of decoder layers balanced by parameter bytes over ``cuda:0..num_gpus-1``, the
      embeddings on the first GPU and ``norm`` + ``lm_head`` on the last; all on CPU when there is no GPU.
    * a dict from module-name prefixes to devices, e.g. ``{"model.embed_tokens": 0, "model.layers": 0,
      "model.layers.39": 1, "model.norm": 1, "lm_head": 1}``; the longest prefix wins, ``""`` or ``"model"``
      cover many units at once.  Keys must name whole units or groups of them (a decoder layer cannot be split).

    With tied embeddings ``lm_head`` shares the embedding weight and so lives on the embedding's device.

    Raises:
        CheckpointError: an unknown or over-specific key, a unit no key covers (named), or a bad device.
    """
    units = _module_units(config)
    if device_map is None:
        device_map = "cpu"
    if isinstance(device_map, str) and device_map == "auto":
        gpus = torch.cuda.device_count() if num_gpus is None else int(num_gpus)
        if gpus <= 0:
            plan = {u: torch.device("cpu") for u in units}
        else:
            plan = _balance(config, units, gpus)
    elif isinstance(device_map, (str, torch.device, int)) and not isinstance(device_map, bool):
        device = _as_device(device_map, "device_map")
        plan = {u: device for u in units}
    elif isinstance(device_map, Mapping):
        plan = _plan_from_dict(units, device_map)
    else:
        raise CheckpointError(f"device_map must be None, 'auto', a device or a dict, got {device_map!r}")
    if config.tie_word_embeddings:
        if isinstance(device_map, Mapping) and plan["lm_head"] != plan["model.embed_tokens"]:
            raise CheckpointError(
                f"tied embeddings: lm_head ({plan['lm_head']}) must be on the device of model.embed_tokens "
                f"({plan['model.embed_tokens']}) since they share one weight"
            )
        plan["lm_head"] = plan["model.embed_tokens"]
    return plan


def _balance(config: ModelConfig, units: list[str], gpus: int) -> dict[str, torch.device]:
    sizes = [_unit_params(config, u) for u in units]
    total = sum(sizes) or 1
    plan: dict[str, torch.device] = {}
    cumulative = 0
    for unit, size in zip(units, sizes):
        middle = cumulative + size / 2  # a unit goes to the GPU whose share holds its middle
        plan[unit] = torch.device("cuda", min(gpus - 1, int(middle * gpus / total)))
        cumulative += size
    plan["model.embed_tokens"] = torch.device("cuda", 0)
    plan["model.norm"] = plan["lm_head"] = torch.device("cuda", gpus - 1)
    return plan


def _plan_from_dict(units: list[str], device_map: Mapping[str, Any]) -> dict[str, torch.device]:
    devices = {str(k): _as_device(v, str(k)) for k, v in device_map.items()}
    for key in devices:
        if not key:
            continue
        if not any(u == key or u.startswith(key + ".") for u in units):
            inside = [u for u in units if key.startswith(u + ".")]
            if inside:
                raise CheckpointError(f"device_map key {key!r} splits {inside[0]!r}: place whole modules "
                                      f"({', '.join(units[:2])}, ..., model.norm, lm_head)")
            raise CheckpointError(f"device_map key {key!r} names no module of this model; use prefixes of "
                                  f"model.embed_tokens, model.layers.N (0..{len(units) - 4}), model.norm, lm_head")
    plan: dict[str, torch.device] = {}
    uncovered: list[str] = []
    for unit in units:
        keys = [k for k in devices if k == "" or unit == k or unit.startswith(k + ".")]
        if not keys:
            uncovered.append(unit)
            continue
        plan[unit] = devices[max(keys, key=len)]
    if uncovered:
        shown = ", ".join(uncovered[:8]) + (f" and {len(uncovered) - 8} more" if len(uncovered) > 8 else "")
        raise CheckpointError(f"device_map does not place {len(uncovered)} module(s): {shown}")
    return plan


def _unit_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "model" and len(parts) > 2 and parts[1] == "layers":
        return ".".join(parts[:3])
    if parts[0] == "model":
        return ".".join(parts[:2])
    return parts[0]


def _check_devices(plan: Mapping[str, torch.device]) -> None:
    for device in sorted(set(plan.values()), key=str):
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise CheckpointError(f"device_map places weights on {device} but no CUDA device is visible")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise CheckpointError(f"device_map places weights on {device} but only "
                                      f"{torch.cuda.device_count()} CUDA device(s) are visible")


# ------------------------------------------------------------------------------------------------ loading
def _shown(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def load_model(
    path_or_id: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | str | None = None,
    device_map: str | torch.device | int | Mapping[str, Any] | None = None,
    progress: bool = True,
    config: ModelConfig | None = None,
    strict: bool = True,
    quantize: str | int | None = None,
    group_size: int = 128,
) -> "BaichuanForCausalLM":
    """Load an official Baichuan checkpoint (folder or hub id) into a :class:`BaichuanForCausalLM`.

    The model is built on the ``meta`` device, then the weight files are streamed one at a time, each tensor
    copied straight into ``torch_dtype`` on its device (see :func:`plan_devices` for ``device_map``); a file is
    released before the next is opened, so peak host memory is about the model in the target dtype plus one
    shard.  Tensors named ``*.rotary_emb.inv_freq`` (persistent buffers of the Baichuan-7B checkpoints) are
    skipped: the position tables are recomputed from the config.  With an index, every tensor must sit in the
    shard the index names.  The model is returned in eval mode with ``generation_config`` read from
    ``generation_config.json`` (or derived from the config when that file is absent).

    Args:
        path_or_id: checkpoint folder or hub id (see :func:`resolve_model_path`).
        torch_dtype: see :func:`resolve_dtype`; None means float32, ``"auto"`` the config's ``torch_dtype``.
        device_map: see :func:`plan_devices`; None means CPU.
        progress: show a tqdm bar (stderr) over the bytes loaded.
        config: use this config instead of the folder's ``config.json``.
        strict: when False, unexpected tensors are skipped and missing parameters are initialised as
            :meth:`BaichuanForCausalLM.from_config` would, with a warning naming them; shape mismatches are
            always errors.
        quantize: ``"int8"`` or ``"int4"`` to quantize the decoder's linear weights as they arrive, on their
            target device (the float model never exists; see :mod:`baichuan13b.quantization`), with int4
            groups of ``group_size``. A folder whose config.json has a ``quantization_config`` is loaded as
            saved, without re-quantization (asking for another quantization is an error).

    Raises:
        CheckpointError: missing, unexpected (strict) or mis-shaped tensors (named, with both shapes), corrupt
            or non-tensor files, an index that disagrees with its shards, a bad ``device_map``/``torch_dtype``.
    """
    from tqdm.auto import tqdm

    from .generation import GenerationConfig
    from .model import BaichuanForCausalLM

    folder = resolve_model_path(path_or_id)
    if config is None:
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"no config.json in {folder}")
        config = ModelConfig.from_json_file(config_file)
    dtype = resolve_dtype(torch_dtype, config)
    plan = plan_devices(config, device_map)
    _check_devices(plan)
    weights = find_weight_files(folder)

    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
    quant = None  # receives the tensors of quantized modules
    if quantize is not None or "quantization_config" in config.extra:
        from .quantization import QuantizationConfig, QuantizationError, prepare_quantized_load

        try:
            saved = config.extra.get("quantization_config")
            saved = QuantizationConfig.from_dict(saved) if saved is not None else None
            quant = prepare_quantized_load(model, saved, quantize, group_size, dtype)
        except QuantizationError as e:
            raise CheckpointError(f"{folder}: {e}") from e
    params: dict[str, nn.Parameter] = dict(model.named_parameters())  # tied lm_head.weight appears once
    all_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied_aliases = all_names - set(params)  # e.g. lm_head.weight when tie_word_embeddings
    loaded: set[str] = set()
    unexpected: list[str] = []
    seen_in: dict[str, str] = {}
    total_bytes = sum(p.numel() for p in params.values()) * torch.empty((), dtype=dtype).element_size()
    total_bytes += quant.nbytes() if quant is not None else 0

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"Loading {folder.name or folder}",
               disable=not progress)
    try:
        for file in weights.files:
            expected_here = ({n for n, s in weights.weight_map.items() if s == file.name}
                             if weights.weight_map is not None else None)
            for name, tensor in iter_tensors(file):
                if name in seen_in:
                    raise CheckpointError(f"tensor {name} appears in both {seen_in[name]} and {file.name}")
                seen_in[name] = file.name
                if name.endswith(SKIPPED_SUFFIXES):
                    continue
                if weights.weight_map is not None and weights.weight_map.get(name) != file.name:
                    listed = weights.weight_map.get(name)
                    raise CheckpointError(
                        f"tensor {name} is in shard {file.name} but the index {weights.index.name} "
                        + (f"puts it in {listed}" if listed else "does not list it")
                    )
                if name in tied_aliases:
                    _check_shape(name, tensor, params["model.embed_tokens.weight"], file)
                    continue  # the tied head shares the embedding weight
                if quant is not None and quant.handles(name):
                    try:
                        nbytes = quant.put(name, tensor, plan[_unit_of(name)], file.name)
                    except QuantizationError as e:
                        raise CheckpointError(str(e)) from e
                    loaded.add(name)
                    bar.update(nbytes)
                    del tensor
                    continue
                param = params.get(name)
                if param is None:
                    if strict:
                        raise CheckpointError(
                            f"unexpected tensor {name} in {file.name}: this model (architecture "
                            f"{config.architecture}) has no such parameter"
                        )
                    unexpected.append(name)
                    continue
                _check_shape(name, tensor, param, file)
                if not tensor.is_floating_point():
                    raise CheckpointError(f"tensor {name} in {file.name} has dtype {tensor.dtype}; integer "
                                          "tensors need a quantization_config in config.json")
                device = plan[_unit_of(name)]
                # A fresh tensor: never an alias of the memory-mapped file, always contiguous.
                value = torch.empty(tensor.shape, dtype=dtype, device=device)
                value.copy_(tensor)
                _install(model, name, value)
                loaded.add(name)
                bar.update(value.numel() * value.element_size())
                del tensor, value
            if expected_here is not None:
                absent = sorted(expected_here - {n for n, s in seen_in.items() if s == file.name})
                if absent:
                    raise CheckpointError(f"tensor {absent[0]} is listed in {weights.index.name} for shard "
                                          f"{file.name} but is not in that file"
                                          + (f" ({len(absent) - 1} more missing)" if len(absent) > 1 else ""))
    finally:
        bar.close()

    missing = [n for n in params if n not in loaded] + (quant.missing() if quant is not None else [])
    if missing and strict:
        raise CheckpointError(f"checkpoint {folder} is missing {len(missing)} tensor(s): {_shown(missing)}")
    if missing:
        warnings.warn(f"checkpoint {folder} is missing {len(missing)} tensor(s), initialised randomly: "
                      f"{_shown(missing)}", stacklevel=2)
        _init_missing(model, [n for n in missing if n in params], config, dtype, plan)
        for name in quant.missing() if quant is not None else []:
            quant.put_random(name, plan[_unit_of(name)], config.initializer_range)
    if unexpected:
        warnings.warn(f"checkpoint {folder} has {len(unexpected)} tensor(s) this model does not use, skipped: "
                      f"{_shown(unexpected)}", stacklevel=2)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.init_position_buffers(model.model.embed_tokens.weight.device)
    model.eval()
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    else:
        model.generation_config = GenerationConfig.from_model_config(config)
    return model


def _check_shape(name: str, tensor: torch.Tensor, param: torch.Tensor, file: Path) -> None:
    if tuple(tensor.shape) != tuple(param.shape):
        raise CheckpointError(f"tensor {name} in {file.name} has shape {list(tensor.shape)}, the model expects "
                              f"{list(param.shape)} (does config.json match the weights?)")


def _install(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=True)


def _init_missing(model: nn.Module, names: list[str], config: ModelConfig, dtype: torch.dtype,
                  plan: Mapping[str, torch.device]) -> None:
    params = dict(model.named_parameters())
    for name in names:
        shape = params[name].shape
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            value = torch.ones(shape, dtype=dtype)
        else:
            value = (torch.randn(shape) * config.initializer_range).to(dtype)
        _install(model, name, value.to(plan[_unit_of(name)]))


# ------------------------------------------------------------------------------------------------ saving
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


def _official_weight_file(name: str) -> bool:
    return name in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE) or bool(_SHARD_RE.match(name))


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

                _atomic_write(folder / file_name,
                              lambda tmp, tensors=tensors: save_file(tensors, str(tmp), metadata={"format": "pt"}))
            else:
                _atomic_write(folder / file_name, lambda tmp, tensors=tensors: torch.save(tensors, tmp))
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
        if stale.is_file() and _official_weight_file(stale.name) and stale.name not in written:
            stale.unlink()
    return folder

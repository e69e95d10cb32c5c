"""Where a model lives: ``demo``, a local folder or a Hugging Face hub id, resolved to a local folder; and the
name to show for it.

Hub ids are looked up in the local Hugging Face cache first, downloaded only when missing, and remote code
(``*.py``) is never fetched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from .errors import CheckpointError, first_line
from .weights import has_weights

__all__ = ["DEMO_MODEL_DIR", "DEMO_NAME", "model_display_name", "resolve_model_path"]

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The project's own tiny chat model, shipped in the package (built by `baichuan train-demo`): the name ``demo``
# stands for it wherever a model folder or hub id is accepted (``./demo`` names a folder called demo instead).
DEMO_NAME = "demo"
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo" / "model"


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
        raise CheckpointError(f"no such folder: {repo_id} (and it is not a valid hub id: {first_line(e)})") from e


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
        if allow_patterns is not None or has_weights(folder):
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

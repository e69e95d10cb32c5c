"""The benchmarks from the Hugging Face hub, converted to the official local layouts.

``ceval/ceval-exam``, ``cais/mmlu`` and ``haonan-li/cmmlu`` are downloaded with ``huggingface_hub`` (the usual
cache and ``HF_HUB_OFFLINE`` apply). A snapshot that ships the original CSV layout (directly or in a zip file) is
used as is; one that ships Parquet files (``{subject}/{split}-*.parquet``) is written out as the official CSV
layout (needs ``pyarrow``). The converted copy lives under ``$BAICHUAN_EVAL_CACHE`` (default
``~/.cache/baichuan13b/eval``).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

from ..files import atomic_write_text
from .benchmarks import LETTERS, Benchmark, get_benchmark

_SPLIT_NAMES = {"dev": "dev", "val": "val", "validation": "val", "test": "test"}


def cache_root() -> Path:
    """Where converted hub datasets are kept."""
    return Path(os.environ.get("BAICHUAN_EVAL_CACHE", Path.home() / ".cache" / "baichuan13b" / "eval"))


def download_benchmark(name: str) -> Path:
    """A folder with ``name``'s official layout, from the hub dataset (downloaded or cached)."""
    from huggingface_hub import snapshot_download

    bench = get_benchmark(name)
    try:
        snapshot = Path(snapshot_download(bench.hub_id, repo_type="dataset"))
    except Exception as e:  # huggingface_hub raises many types (offline, HTTP, missing repo): re-raised with advice
        raise FileNotFoundError(f"cannot get the {bench.title} dataset {bench.hub_id} from the hub "
                                f"({type(e).__name__}: {e}); download it and pass --data_dir") from e
    return official_layout(bench, snapshot, cache_root() / bench.name)


def _has_layout(folder: Path) -> bool:
    return (folder / "dev").is_dir() and any((folder / "dev").glob("*.csv"))


def _find_layout(root: Path) -> Path | None:
    if _has_layout(root):
        return root
    for dev in sorted(root.rglob("dev")):
        if _has_layout(dev.parent):
            return dev.parent
    return None


def official_layout(bench: Benchmark | str, snapshot: str | Path, dest: str | Path) -> Path:
    """The folder holding ``bench``'s official layout, found in ``snapshot`` or built in ``dest`` from it.

    Tried in order: CSV layout inside the snapshot; zip files in it (extracted to ``dest``); Parquet files
    (converted into ``dest``). Raises ValueError when the snapshot has none of these.
    """
    bench = get_benchmark(bench) if isinstance(bench, str) else bench
    snapshot, dest = Path(snapshot), Path(dest)
    found = _find_layout(snapshot) or (_find_layout(dest) if dest.is_dir() else None)
    if found:
        return found
    zips = sorted(snapshot.rglob("*.zip"))
    if zips:
        for z in zips:
            with zipfile.ZipFile(z) as archive:
                archive.extractall(dest)
        found = _find_layout(dest)
        if found:
            return found
    parquets = sorted(snapshot.rglob("*.parquet"))
    if parquets:
        _convert_parquet(bench, parquets, snapshot, dest)
        return dest
    raise ValueError(f"{snapshot} holds neither the {bench.title} CSV layout, nor a zip of it, nor Parquet files")


def _convert_parquet(bench: Benchmark, files: list[Path], snapshot: Path, dest: Path) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"the hub's {bench.title} files are Parquet: install pyarrow to read them") from e
    written = 0
    for f in files:
        subject = f.parent.name
        split = _SPLIT_NAMES.get(f.name.split("-")[0])
        if split is None or subject not in bench.subjects or split not in bench.splits:
            continue  # e.g. MMLU's auxiliary_train, or the "all" configuration
        rows = pq.read_table(f).to_pylist()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if bench.name == "mmlu":  # columns question, subject, choices (list), answer (0-3); no header
            for r in rows:
                w.writerow([r["question"], *r["choices"], LETTERS[int(r["answer"])]])
        elif bench.name == "ceval":
            w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
            for r in rows:
                w.writerow([r["id"], r["question"], r["A"], r["B"], r["C"], r["D"], r.get("answer") or "",
                            r.get("explanation") or ""])
        else:
            w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
            for i, r in enumerate(rows):
                w.writerow([i, r["Question"], r["A"], r["B"], r["C"], r["D"], r["Answer"]])
        atomic_write_text(bench.file(dest, subject, split), buf.getvalue())
        written += 1
    if not written:
        raise ValueError(f"no {bench.title} subject files among the Parquet files of {snapshot}")

"""Loss curves as PNG files (matplotlib, optional dependency ``baichuan13b[train]``), written atomically."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Sequence

from ..files import atomic_write_bytes


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Exponential moving average (TensorBoard style, debiased); the weight grows with the number of points."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


def plot_curve(steps: Sequence[int], values: Sequence[float], path: str | os.PathLike, title: str,
               ylabel: str) -> Path:
    """Plot ``values`` against ``steps`` (raw and smoothed) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
    if len(values) > 1:
        ax.plot(steps, smooth(values), color="#1f77b4", label="smoothed")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_log(records: Sequence[dict], output_dir: str | os.PathLike) -> list[Path]:
    """``training_loss.png`` (and ``training_eval_loss.png`` when evaluated) from trainer_log.jsonl records."""
    out = Path(output_dir)
    written = []
    for key, name, title in (("loss", "training_loss.png", "training loss"),
                             ("eval_loss", "training_eval_loss.png", "evaluation loss")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            steps, values = zip(*points)
            written.append(plot_curve(steps, values, out / name, f"{title} of {out.name}", key))
    return written

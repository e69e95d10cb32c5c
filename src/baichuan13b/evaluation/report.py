"""Aggregate subject results into the seed's tables: JSON, Markdown, a bar chart, and a comparison of runs.

Accuracies are percentages. Each task's ``average`` and ``categories`` are averaged the way its own harness does
(``averaging``): MMLU over questions (hendrycks' ``evaluate.py``: a category is the accuracy over all its questions),
C-Eval and CMMLU over subjects (a category is the mean of its subjects' accuracies). Both kinds are always given
too: ``micro_average`` / ``micro_categories`` over questions, ``macro_average`` / ``macro_categories`` over subjects.
CMMLU's "China Specific" overlaps the other four categories, as in the official tables.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..files import atomic_write_bytes, atomic_write_text, read_json_object
from .benchmarks import BENCHMARKS, Benchmark, get_benchmark

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _averages(subjects: dict[str, dict[str, Any]]) -> tuple[float | None, float | None]:
    """(over subjects, over questions) of the given subject results."""
    if not subjects:
        return None, None
    macro = _mean([s["accuracy"] for s in subjects.values()])
    questions = sum(s["questions"] for s in subjects.values())
    micro = 100.0 * sum(s["correct"] for s in subjects.values()) / questions if questions else None
    return macro, micro


def task_report(bench: Benchmark, results: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The task's summary: per-subject accuracy, category and overall averages (both kinds, and the harness's
    own as ``average`` / ``categories``), shot-drop counts."""
    labelled = bool(results) and all(r["labelled"] for r in results.values())
    subjects = {}
    for key, r in results.items():
        subjects[key] = {"accuracy": r["accuracy"], "correct": r["correct"], "questions": r["questions"],
                         "categories": list(bench.subject(key).categories), "fewer_shots": r["fewer_shots"],
                         "truncated": r["truncated"], "unparsed": r["unparsed"]}
    by_kind: dict[str, tuple[dict[str, float] | None, float | None]] = {"subjects": (None, None),
                                                                          "questions": (None, None)}
    if labelled:
        macro_cats, micro_cats = {}, {}
        for cat in bench.categories:
            members = {k: s for k, s in subjects.items() if cat in s["categories"]}
            if members:
                macro_cats[cat], micro_cats[cat] = _averages(members)
        macro, micro = _averages(subjects)
        by_kind = {"subjects": (macro_cats, macro), "questions": (micro_cats, micro)}
    categories, average = by_kind[bench.averaging]
    return {
        "task": bench.name, "title": bench.title, "settings": settings, "labelled": labelled,
        "subjects": subjects, "averaging": bench.averaging, "categories": categories, "average": average,
        "macro_average": by_kind["subjects"][1], "micro_average": by_kind["questions"][1],
        "macro_categories": by_kind["subjects"][0], "micro_categories": by_kind["questions"][0],
        "questions": sum(s["questions"] for s in subjects.values()),
        "fewer_shots": sum(s["fewer_shots"] for s in subjects.values()),
        "truncated": sum(s["truncated"] for s in subjects.values()),
        "unparsed": sum(s["unparsed"] for s in subjects.values()),
    }


_AVERAGE_WORDS = {"questions": "over questions", "subjects": "over subjects"}


def averaging_line(t: dict[str, Any]) -> str:
    """What the table's numbers average, and the other kind of average beside it."""
    kind = t.get("averaging", "subjects")
    other = "subjects" if kind == "questions" else "questions"
    value = t["macro_average"] if other == "subjects" else t["micro_average"]
    why = ("as hendrycks' evaluate.py and Baichuan-7B's evaluate_mmlu.py" if kind == "questions"
           else f"as {t['title']}'s own harness")
    return (f"Averages {_AVERAGE_WORDS[kind]} ({why}); average {_AVERAGE_WORDS[other]}: "
            f"{_pct(value)}.")


# ------------------------------------------------------------------------------------------------ Markdown
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _scoring_line(tokenizer_pieces: list[str] | None, t: dict[str, Any]) -> str:
    s = t["settings"]
    if s["mode"] == "generate":
        kind = "chat prompt" if s["chat"] else "raw prompt"
        return (f"Scoring: greedy generation of up to {s['max_new_tokens']} tokens ({kind}), answer letter "
                f"extracted from the text; {t['unparsed']} answers had no letter (scored wrong).")
    pieces = f" ({', '.join(tokenizer_pieces)})" if tokenizer_pieces else ""
    return (f"Scoring: argmax of the next-token logits of the letter ids {s['letter_ids']}{pieces}, letter "
            f"scheme `{s['letter_scheme']}`.")


def markdown_task(t: dict[str, Any], label: str, pieces: list[str] | None = None) -> str:
    """The seed-style table of one task, then its settings and the per-subject table."""
    bench = get_benchmark(t["task"])
    s = t["settings"]
    cats = bench.categories
    lines = [f"## {t['title']} ({s['shots']}-shot, {s['split']} split)", ""]
    if not t["labelled"]:
        lines += [f"No labels in this split: no accuracy is claimed. {t['questions']} predictions written"
                  + (f" to `{t['submission']}` for submission." if t.get("submission") else "."), ""]
    else:
        lines += ["| Model | " + " | ".join(cats) + " | Average |",
                  "| --- | " + " | ".join("---:" for _ in cats) + " | ---: |",
                  f"| {label} | " + " | ".join(_pct(t["categories"].get(c)) for c in cats)
                  + f" | {_pct(t['average'])} |", ""]
    lines += [_scoring_line(pieces, t),
              f"Questions: {t['questions']}; prompts with fewer than {s['shots']} shots: {t['fewer_shots']}; "
              f"prompts cut from the left: {t['truncated']}; prompt limit {s['prompt_max_tokens']} tokens"
              + (f" ({t['prompt_limit']})" if t.get("prompt_limit") else "") + "."
              + ("" if t["average"] is None else " " + averaging_line(t)), "",
              "<details><summary>Per subject</summary>", "",
              "| Subject | Categories | Questions | Accuracy | Fewer shots |", "| --- | --- | ---: | ---: | ---: |"]
    for key, sub in t["subjects"].items():
        info = bench.subject(key)
        name = f"{info.name} ({info.name_zh})" if info.name_zh else info.name
        lines.append(f"| {name} | {', '.join(sub['categories'])} | {sub['questions']} | "
                     f"{'-' if sub['accuracy'] is None else format(sub['accuracy'], '.2f')} | {sub['fewer_shots']} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def markdown_report(report: dict[str, Any]) -> str:
    """The whole report as Markdown: one seed-style table per task."""
    label = report.get("label") or report.get("model", "model")
    head = [f"# Evaluation: {label}", "", f"Model: `{report.get('model')}`"
            + (f", dtype {report['dtype']}" if report.get("dtype") else "")
            + (f", weights quantized {report['quantize']}" if report.get("quantize") else ""), ""]
    body = [markdown_task(t, label, report.get("letter_pieces", {}).get(name))
            for name, t in report["tasks"].items()]
    return "\n".join(head + body)


# ------------------------------------------------------------------------------------------------ charts
def _bar_chart(groups: list[tuple[str, list[str], dict[str, list[float | None]]]], path: Path) -> None:
    """One panel per (title, category labels, {run label: values}) group, grouped bars, written as PNG."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the report chart needs matplotlib: pip install 'baichuan13b[eval]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (title, cats, runs) in zip(axes[0], groups):
        n = len(runs)
        width = 0.8 / max(n, 1)
        for k, (label, values) in enumerate(runs.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(cats))]
            ys = [0.0 if v is None else v for v in values]
            bars = ax.bar(xs, ys, width, label=label)
            for bar, v in zip(bars, values):
                if v is not None:
                    ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.axhline(25, color="grey", linewidth=0.8, linestyle="--")  # chance with four options
        if n > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _groups(reports: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, list[str], dict[str, list]]]:
    groups = []
    for name in BENCHMARKS:
        runs = {label: r["tasks"][name] for label, r in reports if name in r["tasks"] and r["tasks"][name]["labelled"]}
        if not runs:
            continue
        cats = get_benchmark(name).categories + ["Average"]
        values = {label: [t["categories"].get(c) for c in cats[:-1]] + [t["average"]] for label, t in runs.items()}
        first = next(iter(runs.values()))
        groups.append((f"{first['title']} ({first['settings']['shots']}-shot, {first['settings']['split']})",
                       cats, values))
    return groups


def write_report(report: dict[str, Any], output_dir: str | Path) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``report.png`` (when a task has labels) into ``output_dir``.

    Tasks already in an existing ``report.json`` there and not in ``report`` are kept, so running the benchmarks
    one at a time into one folder gives one report. Returns the merged report.
    """
    out = Path(output_dir)
    path = out / REPORT_JSON
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("model") == report.get("model"):
            tasks = {k: v for k, v in old.get("tasks", {}).items() if k not in report["tasks"]}
            pieces = {k: v for k, v in old.get("letter_pieces", {}).items() if k in tasks}
            report = {**report, "tasks": {**tasks, **report["tasks"]},
                      "letter_pieces": {**pieces, **report.get("letter_pieces", {})}}
    order = [n for n in BENCHMARKS if n in report["tasks"]]
    report["tasks"] = {n: report["tasks"][n] for n in order}
    atomic_write_text(path, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    atomic_write_text(out / REPORT_MD, markdown_report(report))
    groups = _groups([(report.get("label") or report.get("model") or "model", report)])
    if groups:
        _bar_chart(groups, out / REPORT_PNG)
    return report


# ------------------------------------------------------------------------------------------------ compare
def load_report(path: str | Path) -> dict[str, Any]:
    """Read a ``report.json`` (or the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    if not p.is_file():
        raise FileNotFoundError(f"no evaluation report at {p}")
    data = read_json_object(p)
    if "tasks" not in data:
        raise ValueError(f"{p} is not an evaluation report (no 'tasks')")
    return data


_SETTING_KEYS = ("split", "shots", "limit", "mode", "chat", "letter_scheme", "prompt_max_tokens", "official_text")


def compare_reports(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> str:
    """Markdown tables comparing runs (e.g. base vs int8 vs fine-tuned): one row per run per task, then the
    difference of each run from the first. Settings that differ between runs are listed under each table."""
    if len(paths) < 2:
        raise ValueError("--compare needs at least two report.json files")
    if labels and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels given for {len(paths)} reports")
    reports = [load_report(p) for p in paths]
    names = list(labels) if labels else [r.get("label") or Path(p).parent.name or str(p)
                                         for r, p in zip(reports, paths)]
    if len(set(names)) != len(names):
        names = [f"{n} [{i + 1}]" for i, n in enumerate(names)]
    lines = ["# Comparison", ""]
    for task in BENCHMARKS:
        runs = [(n, r["tasks"][task]) for n, r in zip(names, reports) if task in r["tasks"]]
        runs = [(n, t) for n, t in runs if t["labelled"]]
        if len(runs) < 1:
            continue
        cats = get_benchmark(task).categories
        first_name, first = runs[0]
        lines += [f"## {first['title']}", "", "| Model | " + " | ".join(cats) + " | Average |",
                  "| --- | " + " | ".join("---:" for _ in cats) + " | ---: |"]
        for n, t in runs:
            lines.append(f"| {n} | " + " | ".join(_pct(t["categories"].get(c)) for c in cats)
                         + f" | {_pct(t['average'])} |")
        for n, t in runs[1:]:
            def delta(a, b):
                return "-" if a is None or b is None else f"{a - b:+.1f}"
            lines.append(f"| {n} − {first_name} | "
                         + " | ".join(delta(t["categories"].get(c), first["categories"].get(c)) for c in cats)
                         + f" | {delta(t['average'], first['average'])} |")
        differ = [k for k in _SETTING_KEYS if len({json.dumps(t["settings"].get(k)) for _, t in runs}) > 1]
        if len({frozenset(t["subjects"]) for _, t in runs}) > 1:
            differ.append("subjects")
        lines.append("")
        if differ:
            lines += ["Not comparable as is: the runs differ in " + ", ".join(differ) + ".", ""]
    if len(lines) == 2:
        raise ValueError("the reports share no labelled task to compare")
    return "\n".join(lines)


def compare_chart(paths: Sequence[str | Path], labels: Sequence[str] | None, path: str | Path) -> None:
    """Grouped bar chart of several reports (categories and average per task) as PNG."""
    reports = [load_report(p) for p in paths]
    names = list(labels) if labels else [r.get("label") or str(p) for r, p in zip(reports, paths)]
    groups = _groups(list(zip(names, reports)))
    if not groups:
        raise ValueError("the reports have no labelled task to chart")
    _bar_chart(groups, Path(path))

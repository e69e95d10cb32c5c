"""The three multiple-choice benchmarks: subject tables, file layouts and question loading.

Local layouts (the official releases):

* C-Eval: ``{dev,val,test}/{subject}_{split}.csv``, header ``id,question,A,B,C,D,answer,explanation``
  (``answer`` empty in ``test``).
* MMLU: ``{dev,val,test}/{subject}_{split}.csv``, no header: question, A, B, C, D, answer.
* CMMLU: ``{dev,test}/{subject}.csv``, header ``,Question,A,B,C,D,Answer``.

The official scripts read these files with pandas, which turns the texts pandas treats as missing (``None``,
``NA``, ``nan``, an empty field, ...) into ``nan`` and all-numeric columns into numbers; their prompts therefore
contain ``nan`` (12 MMLU questions have an option ``None``) and numbers as pandas prints them. With
``official_text=True`` (the default) the loader reproduces that; ``official_text=False`` keeps the file text.

Subject names and categories are the project's own copy of the official mappings, shipped as package data in
``subjects/{ceval,mmlu,cmmlu}.json`` (categories renamed to the seed's table headings).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

LETTERS = ("A", "B", "C", "D")
CATEGORY_ORDER = ("STEM", "Social Sciences", "Humanities", "Others", "China specific")

# Strings pandas.read_csv reads as NaN by default (its STR_NA_VALUES), plus the empty field.
_PANDAS_NA = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: ``choices`` are the texts of A-D; ``answer`` is a letter or None (unlabelled)."""

    id: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str | None


@dataclass(frozen=True)
class Subject:
    """A subject of a benchmark: its key (file name stem), display names and categories."""

    key: str
    name: str
    name_zh: str | None
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's constants: splits, hub dataset, default letter scheme and its subjects table."""

    name: str
    title: str
    splits: tuple[str, ...]
    hub_id: str
    letter_scheme: str  # what the benchmark's own harness scores (see evaluation.scoring)

    @property
    def subjects(self) -> dict[str, Subject]:
        """All subjects of the benchmark by key (the shipped table), sorted by key."""
        return _subjects(self.name)

    @property
    def categories(self) -> list[str]:
        """The categories of this benchmark, in the seed's table order."""
        present = {c for s in self.subjects.values() for c in s.categories}
        return [c for c in CATEGORY_ORDER if c in present]

    def subject(self, key: str) -> Subject:
        """The subject ``key``; ValueError listing the known keys when there is none."""
        try:
            return self.subjects[key]
        except KeyError:
            raise ValueError(f"unknown {self.title} subject {key!r}; known subjects: "
                             f"{', '.join(sorted(self.subjects))}") from None

    def file(self, data_dir: str | Path, subject: str, split: str) -> Path:
        """Path of a subject's CSV file for ``split`` in the official layout under ``data_dir``."""
        if split not in self.splits:
            raise ValueError(f"{self.title} has no {split!r} split (it has {', '.join(self.splits)})")
        name = f"{subject}.csv" if self.name == "cmmlu" else f"{subject}_{split}.csv"
        return Path(data_dir) / split / name


BENCHMARKS: dict[str, Benchmark] = {
    # C-Eval's evaluator scores tokenizer.encode("A")[0]; hendrycks' MMLU scores the token " A" (GPT-3 logprobs;
    # tokenizer("A").input_ids[-1] in the Hugging Face port): both "▁A" for SentencePiece. CMMLU's harness
    # scores tokenizer.convert_tokens_to_ids("A"): the piece "A" itself.
    "ceval": Benchmark("ceval", "C-Eval", ("dev", "val", "test"), "ceval/ceval-exam", "encode"),
    "mmlu": Benchmark("mmlu", "MMLU", ("dev", "val", "test"), "cais/mmlu", "encode"),
    "cmmlu": Benchmark("cmmlu", "CMMLU", ("dev", "test"), "haonan-li/cmmlu", "piece"),
}


def get_benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` called ``name`` (ceval, mmlu or cmmlu)."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}") from None


@lru_cache(maxsize=None)
def _subjects(name: str) -> dict[str, Subject]:
    text = resources.files(__package__).joinpath("subjects", f"{name}.json").read_text(encoding="utf-8")
    return {key: Subject(key, v["name"], v.get("name_zh"), tuple(v["categories"]))
            for key, v in json.loads(text).items()}


# ------------------------------------------------------------------------------------------------ reading CSV
def _pandas_column(values: list[str]) -> list[str]:
    """Render one column's cells as ``str(df.iloc[i, j])`` would after ``pandas.read_csv`` type inference."""
    present = [v for v in values if v not in _PANDAS_NA]
    has_na = len(present) < len(values)

    def number(v: str, kind):
        try:
            return kind(v)
        except ValueError:
            return None

    if present and all(number(v, int) is not None and "_" not in v for v in present) and not has_na:
        return [str(int(v)) for v in values]
    if present and all(number(v, float) is not None and "_" not in v for v in present):
        out = []
        for v in values:
            if v in _PANDAS_NA:
                out.append("nan")
            else:
                x = float(v)
                out.append("nan" if math.isnan(x) else str(x))
        return out
    if present and all(v in ("True", "False", "TRUE", "FALSE", "true", "false") for v in present) and not has_na:
        return [str(v.lower() == "true") for v in values]
    return ["nan" if v in _PANDAS_NA else v for v in values]


def read_csv_rows(path: Path, header: bool, official_text: bool = True) -> list[list[str]]:
    """Rows of a CSV file (header dropped); with ``official_text`` cells are rendered as pandas would."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if header:
        if not rows:
            raise ValueError(f"{path} is empty: expected a header row")
        rows = rows[1:]
    rows = [r for r in rows if r]  # csv gives [] for blank lines; pandas skips them too
    if not rows:
        return rows
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(f"{path}: row {i + 1 + header} has {len(r)} fields, expected {width}")
    if official_text:
        columns = [_pandas_column([r[j] for r in rows]) for j in range(width)]
        rows = [[columns[j][i] for j in range(width)] for i in range(len(rows))]
    return rows


def load_questions(benchmark: Benchmark | str, data_dir: str | Path, subject: str, split: str,
                   official_text: bool = True) -> list[Question]:
    """The questions of one subject and split, in file order.

    Raises FileNotFoundError for a missing file and ValueError (naming file and row) for a malformed one: wrong
    number of fields, or an answer that is not one of A-D (an empty answer is allowed and means unlabelled).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    bench.subject(subject)
    path = bench.file(data_dir, subject, split)
    if bench.name == "mmlu":
        rows, first, expected = read_csv_rows(path, header=False, official_text=official_text), 1, 6
    else:
        rows, first, expected = read_csv_rows(path, header=True, official_text=official_text), 2, 8 if (
            bench.name == "ceval") else 7
    questions = []
    for i, r in enumerate(rows):
        if len(r) != expected:
            raise ValueError(f"{path}: row {i + first} has {len(r)} fields, expected {expected} for the "
                             f"{bench.title} layout")
        if bench.name == "mmlu":
            qid, fields = str(i), r
        else:
            qid, fields = r[0], r[1:7]
        question, a, b, c, d, answer = fields
        raw = answer.strip()
        if raw in ("", "nan"):
            label = None
        elif raw.upper() in LETTERS:
            label = raw.upper()
        else:
            raise ValueError(f"{path}: row {i + first} has answer {answer!r}; expected one of A, B, C, D")
        questions.append(Question(qid, question, (a, b, c, d), label))
    return questions


def available_subjects(benchmark: Benchmark | str, data_dir: str | Path, split: str) -> list[str]:
    """Subjects of the benchmark table that have a file for ``split`` under ``data_dir`` (sorted)."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    return sorted(s for s in bench.subjects if bench.file(data_dir, s, split).is_file())


def select_subjects(benchmark: Benchmark, data_dir: str | Path, split: str,
                    subjects: Sequence[str] | None = None) -> list[str]:
    """The subjects to run: the given ones (validated) or all with a file for ``split``; error when none."""
    if subjects:
        for s in subjects:
            benchmark.subject(s)
            if not benchmark.file(data_dir, s, split).is_file():
                raise FileNotFoundError(f"no {benchmark.title} file for subject {s!r}: "
                                        f"{benchmark.file(data_dir, s, split)}")
        return list(dict.fromkeys(subjects))
    found = available_subjects(benchmark, data_dir, split)
    if not found:
        example = benchmark.file(data_dir, "SUBJECT", split)
        raise FileNotFoundError(f"no {benchmark.title} {split} files under {data_dir} (expected e.g. {example})")
    return found

"""The three multiple-choice benchmarks: subject tables, file layouts and question loading.

Local layouts (the official releases):

* C-Eval: ``{dev,val,test}/{subject}_{split}.csv``, with a header whose columns differ per split in the release:
  dev ``id,question,A,B,C,D,answer,explanation``, val ``id,question,A,B,C,D,answer``, test ``id,question,A,B,C,D``
  (the hub's Parquet copy has all eight, empty where absent). Columns are read by header name.
* MMLU: ``{dev,val,test}/{subject}_{split}.csv``, no header: question, A, B, C, D, answer.
* CMMLU: ``{dev,test}/{subject}.csv``, header ``,Question,A,B,C,D,Answer`` (read by header name too).

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
# The seed's table columns: C-Eval and MMLU put Social Sciences before Humanities, CMMLU the other way round.
CATEGORY_ORDER = ("STEM", "Social Sciences", "Humanities", "Others")
CMMLU_CATEGORY_ORDER = ("STEM", "Humanities", "Social Sciences", "Others", "China Specific")
AVERAGING = ("questions", "subjects")

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
    category_order: tuple[str, ...]  # the seed's table columns
    averaging: str  # "questions" (hendrycks: average over all questions) or "subjects" (macro, C-Eval / CMMLU)
    max_length: int | None  # the harness's prompt limit in tokens (shots dropped to fit); None: no limit of its own

    @property
    def subjects(self) -> dict[str, Subject]:
        """All subjects of the benchmark by key (the shipped table), sorted by key."""
        return _subjects(self.name)

    @property
    def categories(self) -> list[str]:
        """The categories of this benchmark, in the seed's table order."""
        present = {c for s in self.subjects.values() for c in s.categories}
        return [c for c in self.category_order if c in present]

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
    # Averages: hendrycks' evaluate.py (and Baichuan-7B's evaluate_mmlu.py) average over the questions, overall and
    # per category; C-Eval and CMMLU average the subjects' accuracies. Prompt limits: hendrycks' crop to 2048 tokens
    # and CMMLU's gen_prompt(max_length=2048) drop shots to fit; C-Eval's evaluator never shortens a prompt.
    "ceval": Benchmark("ceval", "C-Eval", ("dev", "val", "test"), "ceval/ceval-exam", "encode", CATEGORY_ORDER,
                       "subjects", None),
    "mmlu": Benchmark("mmlu", "MMLU", ("dev", "val", "test"), "cais/mmlu", "encode", CATEGORY_ORDER, "questions",
                      2048),
    "cmmlu": Benchmark("cmmlu", "CMMLU", ("dev", "test"), "haonan-li/cmmlu", "piece", CMMLU_CATEGORY_ORDER,
                       "subjects", 2048),
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


def read_header(path: Path) -> list[str]:
    """The first row of a CSV file (its header)."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        first = next(csv.reader(f), None)
    if not first:
        raise ValueError(f"{path} is empty: expected a header row")
    return first


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


# Header names of the columns of the C-Eval and CMMLU files (compared case-insensitively); the id column of CMMLU
# has an empty name (pandas' index column).
_COLUMNS = {"id": ("id", ""), "question": ("question",), "A": ("a",), "B": ("b",), "C": ("c",), "D": ("d",),
            "answer": ("answer",)}


def _header_columns(path: Path, header: list[str], title: str) -> dict[str, int | None]:
    """Index of each needed column in ``header``; ``answer`` (and the id) may be absent (unlabelled split)."""
    names = [h.strip().lower() for h in header]
    found: dict[str, int | None] = {}
    for key, aliases in _COLUMNS.items():
        found[key] = next((names.index(a) for a in aliases if a in names), None)
    missing = [k for k in ("question", "A", "B", "C", "D") if found[k] is None]
    if missing:
        raise ValueError(f"{path}: the header {','.join(header)!r} has no column {', '.join(missing)} (a {title} "
                         f"file needs question, A, B, C, D and optionally id, answer, explanation)")
    return found


def load_questions(benchmark: Benchmark | str, data_dir: str | Path, subject: str, split: str,
                   official_text: bool = True) -> list[Question]:
    """The questions of one subject and split, in file order.

    MMLU files have no header (question, A, B, C, D, answer); C-Eval and CMMLU files are read by header name, so
    each C-Eval split's layout (with or without ``answer`` and ``explanation``) loads. Raises FileNotFoundError for
    a missing file and ValueError (naming file and row) for a malformed one: wrong number of fields, a header
    without the question or option columns, or an answer that is not one of A-D (an empty answer, or no answer
    column, means unlabelled).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    bench.subject(subject)
    path = bench.file(data_dir, subject, split)
    if bench.name == "mmlu":
        rows, first = read_csv_rows(path, header=False, official_text=official_text), 1
        for i, r in enumerate(rows):
            if len(r) != 6:
                raise ValueError(f"{path}: row {i + first} has {len(r)} fields, expected 6 for the MMLU layout "
                                 f"(question, A, B, C, D, answer)")
        records = [(str(i), *r) for i, r in enumerate(rows)]
    else:
        head = read_header(path)
        cols = _header_columns(path, head, bench.title)
        rows, first = read_csv_rows(path, header=True, official_text=official_text), 2
        if rows and len(rows[0]) != len(head):
            raise ValueError(f"{path}: row 2 has {len(rows[0])} fields but the header has {len(head)}")

        def cell(r: list[str], key: str, i: int) -> str:
            j = cols[key]
            return str(i) if j is None and key == "id" else ("" if j is None else r[j])

        records = [tuple(cell(r, k, i) for k in ("id", "question", "A", "B", "C", "D", "answer"))
                   for i, r in enumerate(rows)]
    questions = []
    for i, (qid, question, a, b, c, d, answer) in enumerate(records):
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

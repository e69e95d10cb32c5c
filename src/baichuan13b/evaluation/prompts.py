"""Each benchmark's official k-shot prompt, and the official way of dropping shots when it does not fit.

C-Eval (the C-Eval authors' evaluator)::

    以下是中国关于{科目中文名}考试的单项选择题，请选出其中的正确答案。\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n        (each shot)
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：

MMLU (hendrycks/test ``evaluate.py``; the subject's words each preceded by a space, hence two spaces after
"about")::

    The following are multiple choice questions (with answers) about  abstract algebra.\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer: {answer}\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:

CMMLU (``src/mp_utils.py``)::

    以下是关于{科目中文名}的单项选择题，请直接给出正确答案的选项。\\n\\n
    题目：{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：{answer}\\n\\n
    题目：{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：

Shots are the first k rows of the dev file. Fitting into ``max_length`` tokens:

* MMLU (``while`` the prompt's token count exceeds the limit: ``k -= 1``): the last shot is dropped until the
  whole prompt fits.
* CMMLU: with ``n`` = tokens of the header + tokens of the question (each encoded separately), the question is
  sent alone, without header, when ``n > max_length``; otherwise, while the shots' tokens (each encoded
  separately) sum to ``>= max_length - n``, every shot of the greatest length is removed.
* C-Eval: the official evaluator never shortens its prompt; here the MMLU rule (drop the last shot) applies.

A prompt that is still too long with no shots is cut from the left to its last ``max_length`` tokens (counted as
``truncated``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .benchmarks import LETTERS, Benchmark, Question, get_benchmark


@dataclass
class Prompt:
    """A built prompt: ``text``, its ``ids`` (what the model reads), the number of shots kept and whether it was cut
    from the left to fit."""

    text: str
    ids: list[int]
    shots: int
    truncated: bool


def mmlu_subject_text(subject: str) -> str:
    """hendrycks ``format_subject``: each ``_``-separated word preceded by a space (``" abstract algebra"``)."""
    return "".join(" " + word for word in subject.split("_"))


def header(benchmark: Benchmark | str, subject: str) -> str:
    """The instruction line that opens every prompt of ``subject`` (ends with a blank line)."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    info = bench.subject(subject)
    if bench.name == "ceval":
        return f"以下是中国关于{info.name_zh}考试的单项选择题，请选出其中的正确答案。\n\n"
    if bench.name == "mmlu":
        return f"The following are multiple choice questions (with answers) about {mmlu_subject_text(subject)}.\n\n"
    return f"以下是关于{info.name_zh}的单项选择题，请直接给出正确答案的选项。\n\n"


def format_question(benchmark: Benchmark | str, q: Question, with_answer: bool) -> str:
    """One question block: a shot (``with_answer``, ending in a blank line) or the question asked (ending in the
    answer cue)."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    body = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, q.choices))
    if with_answer and q.answer is None:
        raise ValueError(f"question {q.id!r} has no answer and cannot be used as a shot")
    if bench.name == "ceval":
        return f"{q.question}{body}\n答案：" + (f"{q.answer}\n\n" if with_answer else "")
    if bench.name == "mmlu":
        return f"{q.question}{body}\nAnswer:" + (f" {q.answer}\n\n" if with_answer else "")
    return f"题目：{q.question}{body}\n答案是：" + (f"{q.answer}\n\n" if with_answer else "")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text))


def _fit_ids(ids: list[int], max_length: int) -> tuple[list[int], bool]:
    if len(ids) > max_length:
        return ids[-max_length:], True
    return ids, False


def build_prompt(benchmark: Benchmark | str, subject: str, shots: Sequence[Question], question: Question,
                 tokenizer: Any, max_length: int) -> Prompt:
    """The official prompt for ``question`` with up to ``len(shots)`` shots, fitted into ``max_length`` tokens as
    the benchmark's own script does (see the module docstring). ``tokenizer.encode`` gives the token ids (with
    bos/eos as the tokenizer is configured to add them)."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    head = header(bench, subject)
    end = format_question(bench, question, with_answer=False)
    blocks = [format_question(bench, s, with_answer=True) for s in shots]
    if bench.name == "cmmlu":
        fixed = len(_encode(tokenizer, head)) + len(_encode(tokenizer, end))
        if fixed > max_length:
            ids, cut = _fit_ids(_encode(tokenizer, end), max_length)
            return Prompt(end, ids, 0, cut)
        kept = [(b, len(_encode(tokenizer, b))) for b in blocks]
        while kept and sum(n for _, n in kept) >= max_length - fixed:
            longest = max(n for _, n in kept)
            kept = [(b, n) for b, n in kept if n != longest]
        text = head + "".join(b for b, _ in kept) + end
        ids, cut = _fit_ids(_encode(tokenizer, text), max_length)
        return Prompt(text, ids, len(kept), cut)
    k = len(blocks)
    while True:
        text = head + "".join(blocks[:k]) + end
        ids = _encode(tokenizer, text)
        if len(ids) <= max_length or k == 0:
            break
        k -= 1
    ids, cut = _fit_ids(ids, max_length)
    return Prompt(text, ids, k, cut)

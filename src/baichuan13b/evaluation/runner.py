"""Run a benchmark: build the prompts, score them in left-padded batches, write results subject by subject.

Output folder layout (``output_dir``)::

    report.json  report.md  report.png        all tasks run into this folder (see evaluation.report)
    {task}/subjects/{subject}.json            one subject's predictions and accuracy (written atomically, when
                                              the subject is complete; an existing one is reused on a rerun)
    {task}/prompts/{subject}.jsonl            the exact prompts (with ``save_prompts``)
    {task}/predictions.csv                    every question: answer, prediction, letter scores
    ceval/submission.json                     C-Eval without labels (test split): the official submission format

A subject file records the settings that decide its results; rerunning into the same folder with different
settings is an error rather than a silent mix.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..files import atomic_write_text, read_json_object
from .benchmarks import LETTERS, Benchmark, Question, get_benchmark, load_questions, select_subjects
from .prompts import Prompt, build_prompt
from .scoring import extract_letter, letter_token_ids

MODES = ("logits", "generate")


@dataclass
class EvalSettings:
    """How a benchmark is run. ``letter_scheme`` None means the benchmark's own harness's choice;
    ``max_length`` None means the harness's own prompt limit (2048 tokens for MMLU and CMMLU), capped by the
    model's context, or the model's context where the harness has none (C-Eval)."""

    split: str = "test"
    shots: int = 5
    subjects: Sequence[str] | None = None
    limit: int | None = None
    batch_size: int = 1
    letter_scheme: str | None = None
    mode: str = "logits"
    chat: bool = False
    max_new_tokens: int = 32
    max_length: int | None = None
    official_text: bool = True
    save_prompts: bool = False
    prefix_cache: bool = True  # logits mode: prompts reuse the cached k-shot prefix (the same scores)

    def validate(self) -> None:
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be positive, got {self.limit}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.chat and self.mode != "generate":
            raise ValueError("chat prompts need mode='generate' (the answer is read from the chat reply)")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.max_length is not None and self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}")


def prompt_budget(model: Any, bench: Benchmark, settings: EvalSettings) -> tuple[int, str]:
    """Tokens a prompt may have, and where that limit comes from (recorded in the report).

    The limit is ``settings.max_length`` when given, else the benchmark harness's own (``bench.max_length``)
    capped by the model's context, else the context; generate mode takes the new tokens (and the chat role
    tokens) off it.
    """
    context = model.config.max_position
    if settings.max_length:
        if settings.max_length > context and not model.config.allow_length_extrapolation:
            raise ValueError(f"max_length {settings.max_length} exceeds the model's context of {context} tokens")
        limit, source = settings.max_length, "--max_length"
    elif bench.max_length is not None and bench.max_length <= context:
        limit, source = bench.max_length, f"{bench.title} harness limit"
    elif bench.max_length is not None:
        limit, source = context, f"model context (under the {bench.title} harness limit of {bench.max_length})"
    else:
        limit, source = context, "model context"
    budget = limit
    if settings.mode == "generate":
        budget -= settings.max_new_tokens + (2 if settings.chat else 0)  # + user and assistant tokens
        source += f" less {limit - budget} tokens for generation"
    if budget <= 0:
        raise ValueError(f"no room for a prompt: limit {limit} tokens ({source}), max_new_tokens "
                         f"{settings.max_new_tokens}")
    return budget, source


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, T] ids left padded with ``pad_id`` and the [B, T] mask (None when no row needed padding)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)  # [B, T]
    if all(len(r) == width for r in rows):
        return ids, None
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)  # [B, T]
    return ids, mask


def _chat_ids(model: Any, tokenizer: Any, text: str, max_new_tokens: int) -> list[int]:
    from ..chat import build_chat_input

    messages = [{"role": "user", "content": text}]
    return build_chat_input(model, tokenizer, messages, max_new_tokens=max_new_tokens)[0].tolist()


def pad_token_id(tokenizer: Any) -> int:
    """The id left padding uses: the tokenizer's pad id, else its unk id (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id


def forward_batches(model: Any, tokenizer: Any, rows: Sequence[Sequence[int]], batch_size: int,
                    logits_to_keep: Callable[[list[int]], int]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The forward pass of ``baichuan eval``: ``rows`` (token ids) sorted by length, run ``batch_size`` at a time,
    left padded with the tokenizer's pad id and an attention mask. Yields (the rows' indices, their logits
    [B, k, vocab] for the last ``k = logits_to_keep(indices)`` positions)."""
    pad_id = pad_token_id(tokenizer)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for b in range(0, len(order), batch_size):
        chunk = order[b: b + batch_size]
        ids, mask = pad_left([list(rows[i]) for i in chunk], pad_id)
        ids = ids.to(model.device)
        mask = mask.to(model.device) if mask is not None else None
        yield chunk, model(ids, attention_mask=mask, logits_to_keep=logits_to_keep(chunk)).logits


SCORING_BLOCK_SIZE = 16


@torch.inference_mode()
def score_prompts(model: Any, tokenizer: Any, prompts: Sequence[Prompt], letter_ids: Sequence[int],
                  batch_size: int = 1, progress: Any = None, prefix_cache: bool = True) -> list[list[float]]:
    """Next-token logits of the four letters after each prompt, [len(prompts)][4] floats.

    Prompts run ``batch_size`` at a time through a paged KV cache (:mod:`baichuan13b.paged`), keeping the logits
    of each prompt's last token. With ``prefix_cache`` every block of tokens that several prompts start with (the
    header and shots that the questions of a subject share) is computed once, in the order of
    :func:`baichuan13b.paged.batch_order.prefix_plan`, and each prompt computes only the rest; without it
    prompts are sorted by length and computed whole. The scores are the same either way (up to rounding).
    """
    from ..paged import BlockManager, ModelRunner, Sequence as PagedSequence
    from ..paged.batch_order import prefix_plan

    if not prompts:
        return []
    letters = torch.tensor(list(letter_ids), dtype=torch.long)
    out: list[list[float]] = [[] for _ in prompts]
    bs = SCORING_BLOCK_SIZE
    per_prompt = -(-max(len(p.ids) for p in prompts) // bs)
    rows = min(batch_size, len(prompts))
    if prefix_cache:
        plan = prefix_plan([p.ids for p in prompts], bs, batch_size)
        batches, keep = plan.batches, plan.keep
        # a batch, and the shared blocks up to one prompt's worth (more are rare; the least recently used of
        # them are then evicted and recomputed when asked for again)
        num_blocks = per_prompt * rows + min(plan.num_shared, per_prompt)
    else:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].ids))
        batches = [order[b: b + batch_size] for b in range(0, len(order), batch_size)]
        keep, num_blocks = None, per_prompt * rows
    runner = ModelRunner(model, num_blocks, bs)
    blocks = BlockManager(num_blocks, bs, prefix_cache=prefix_cache)
    for chunk in batches:
        seqs = [PagedSequence(token_ids=list(prompts[i].ids)) for i in chunk]
        for seq in seqs:
            blocks.allocate(seq)  # the longest cached prefix, new blocks for the rest
        logits = runner.run([(seq, seq.num_pending) for seq in seqs])  # [B, vocab]
        for i, seq in zip(chunk, seqs):
            seq.num_computed = len(seq.token_ids)
            blocks.commit(seq, max_blocks=keep[i] if keep is not None else None)  # only what others reuse
            blocks.free(seq)
        scores = logits[:, letters.to(logits.device)].float().cpu()  # [B, 4]
        for row, i in enumerate(chunk):
            out[i] = scores[row].tolist()
        if progress is not None:
            progress.update(len(chunk))
    return out


@torch.inference_mode()
def score_continuations(model: Any, tokenizer: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                        batch_size: int = 1, max_length: int | None = None,
                        progress: Any = None) -> list[tuple[float, bool]]:
    """Log-likelihood of each continuation after its context: ``pairs`` of (context ids, continuation ids).

    Returns, per pair, the summed log-probability (float32 log-softmax) of the continuation's tokens and whether
    each of them is the argmax at its position (greedy). The model reads context + continuation less its last
    token, through :func:`forward_batches`; a sequence longer than ``max_length`` (default the model's context)
    + 1 loses the start of its context (as lm-eval's own models do).
    """
    limit = max_length or model.config.max_position
    inputs, targets = [], []
    for k, (context, continuation) in enumerate(pairs):
        if not continuation:
            raise ValueError(f"pair {k}: the continuation is empty")
        if not context:
            raise ValueError(f"pair {k}: the context is empty (give at least one token, e.g. bos)")
        if len(continuation) > limit:
            raise ValueError(f"pair {k}: a continuation of {len(continuation)} tokens does not fit in {limit}")
        whole = (list(context) + list(continuation))[-(limit + 1):]
        inputs.append(whole[:-1])
        targets.append(whole[-len(continuation):])
    out: list[tuple[float, bool]] = [(0.0, False)] * len(inputs)
    for chunk, logits in forward_batches(model, tokenizer, inputs, batch_size,
                                         lambda c: max(len(targets[i]) for i in c)):
        keep = logits.shape[1]
        for row, i in enumerate(chunk):
            n = len(targets[i])
            # the last n positions predict the n continuation tokens (every row ends at the last position)
            logp = torch.log_softmax(logits[row, keep - n:].float(), dim=-1)  # [n, vocab]
            target = torch.tensor(targets[i], device=logp.device)
            total = logp.gather(1, target[:, None]).sum().item()
            out[i] = (total, bool((logp.argmax(-1) == target).all()))
        if progress is not None:
            progress.update(len(chunk))
    return out


@torch.inference_mode()
def generate_answers(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                     batch_size: int = 1, progress: Any = None) -> list[str]:
    """Greedy continuations (repetition penalty 1.0) of each prompt, as text up to the first eos."""
    from ..generation import generate
    from ..generation.decode import resolve_config

    cfg = resolve_config(model, None, dict(do_sample=False, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
                                           stop_strings=[]))
    eos = set(cfg.eos_token_ids)
    pad_id = pad_token_id(tokenizer)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    texts = [""] * len(prompt_ids)
    for b in range(0, len(order), batch_size):
        chunk = order[b: b + batch_size]
        ids, mask = pad_left([list(prompt_ids[i]) for i in chunk], pad_id)
        out = generate(model, ids.to(model.device), attention_mask=None if mask is None else mask.to(model.device),
                       generation_config=cfg)
        for row, i in enumerate(chunk):
            new = out[row, ids.shape[1]:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            texts[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
        if progress is not None:
            progress.update(len(chunk))
    return texts


def _fingerprint(bench: Benchmark, settings: EvalSettings, letter_ids: list[int] | None, budget: int,
                 model_name: str, dtype: str | None, quantize: str | None) -> dict[str, Any]:
    return {
        "task": bench.name, "split": settings.split, "shots": settings.shots, "limit": settings.limit,
        "mode": settings.mode, "chat": settings.chat,
        "max_new_tokens": settings.max_new_tokens if settings.mode == "generate" else None,
        "letter_scheme": settings.letter_scheme or bench.letter_scheme, "letter_ids": letter_ids,
        "prompt_max_tokens": budget, "official_text": settings.official_text, "model": model_name,
        "dtype": dtype, "quantize": quantize,
    }


def evaluate_subject(model: Any, tokenizer: Any, bench: Benchmark, subject: str, shots: Sequence[Question],
                     questions: Sequence[Question], settings: EvalSettings, letter_ids: list[int] | None,
                     budget: int, progress: Any = None) -> tuple[dict[str, Any], list[Prompt]]:
    """Score one subject; returns its result (without settings) and the prompts used."""
    prompts = [build_prompt(bench, subject, shots, q, tokenizer, budget) for q in questions]
    rows: list[dict[str, Any]] = []
    if settings.mode == "logits":
        assert letter_ids is not None
        scores = score_prompts(model, tokenizer, prompts, letter_ids, settings.batch_size, progress,
                               prefix_cache=settings.prefix_cache)
        for q, p, s in zip(questions, prompts, scores):
            pred = LETTERS[max(range(4), key=lambda k: (s[k], -k))]  # argmax, first on ties
            rows.append({"id": q.id, "answer": q.answer, "prediction": pred, "scores": s, "shots": p.shots,
                         "prompt_tokens": len(p.ids), "truncated": p.truncated})
    else:
        if settings.chat:
            # build_chat_ids cuts an over-long prompt from the left itself.
            ids = [_chat_ids(model, tokenizer, p.text, settings.max_new_tokens) for p in prompts]
        else:
            ids = [p.ids for p in prompts]
        texts = generate_answers(model, tokenizer, ids, settings.max_new_tokens, settings.batch_size, progress)
        for q, p, i, t in zip(questions, prompts, ids, texts):
            rows.append({"id": q.id, "answer": q.answer, "prediction": extract_letter(t), "output": t,
                         "shots": p.shots, "prompt_tokens": len(i), "truncated": p.truncated})
    labelled = [r for r in rows if r["answer"] is not None]
    if labelled and len(labelled) != len(rows):
        raise ValueError(f"{bench.title} {subject}: some questions have answers and some do not")
    for r in rows:
        r["correct"] = None if r["answer"] is None else r["prediction"] == r["answer"]
    correct = sum(1 for r in rows if r["correct"])
    result = {
        "subject": subject,
        "questions": len(rows),
        "labelled": bool(labelled),
        "correct": correct if labelled else None,
        "accuracy": 100.0 * correct / len(rows) if labelled and rows else None,
        "fewer_shots": sum(1 for r in rows if r["shots"] < len(shots)),
        "truncated": sum(1 for r in rows if r["truncated"]),
        "unparsed": sum(1 for r in rows if r["prediction"] is None),
        "predictions": rows,
    }
    return result, prompts


def _check_same(path: Path, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
    if differ:
        detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {expected.get(k)!r}" for k in differ)
        raise ValueError(f"{path} was written with different settings ({detail}); use another --output_dir "
                         f"or remove that folder to start over")


@dataclass
class TaskPlan:
    """A checked task, ready to run: every subject's questions and shots loaded, letter ids and prompt limit found,
    and the subjects already complete in ``out`` (from an earlier run with the same settings) read back."""

    bench: Benchmark
    settings: EvalSettings
    work: list[tuple[str, list[Question], list[Question]]]  # (subject, questions, shots)
    letter_ids: list[int] | None
    budget: int
    prompt_limit: str
    fingerprint: dict[str, Any]
    out: Path
    done: dict[str, dict[str, Any]]


def plan_task(model: Any, tokenizer: Any, task: str, data_dir: str | Path, output_dir: str | Path,
              settings: EvalSettings | None = None, model_name: str = "model", dtype: str | None = None,
              quantize: str | None = None) -> TaskPlan:
    """Check everything about ``task`` that can fail before the model runs: the split, the subjects and their
    files (test and dev), the shots, the letter ids, the prompt limit, and earlier results in ``output_dir``."""
    settings = settings or EvalSettings()
    settings.validate()
    bench = get_benchmark(task)
    if settings.split not in bench.splits or settings.split == "dev":
        splits = [s for s in bench.splits if s != "dev"]
        raise ValueError(f"{bench.title} has no {settings.split!r} split to score (it has {', '.join(splits)}); "
                         f"run {bench.title} separately with --split {splits[-1]}")
    subjects = select_subjects(bench, data_dir, settings.split, settings.subjects)
    letter_ids = letter_token_ids(tokenizer, settings.letter_scheme or bench.letter_scheme) \
        if settings.mode == "logits" else None
    budget, source = prompt_budget(model, bench, settings)
    fingerprint = _fingerprint(bench, settings, letter_ids, budget, model_name, dtype, quantize)
    out = Path(output_dir) / bench.name
    work, done = [], {}
    for subject in subjects:
        path = out / "subjects" / f"{subject}.json"
        if path.is_file():
            stored = read_json_object(path)
            _check_same(path, stored.get("settings", {}), fingerprint)
            done[subject] = stored
        questions = load_questions(bench, data_dir, subject, settings.split, settings.official_text)
        if settings.limit is not None:
            questions = questions[: settings.limit]
        shots: list[Question] = []
        if settings.shots:
            dev = load_questions(bench, data_dir, subject, "dev", settings.official_text)
            if len(dev) < settings.shots:
                raise ValueError(f"{settings.shots} shots asked but {bench.file(data_dir, subject, 'dev')} "
                                 f"has only {len(dev)} questions")
            unlabelled = [q.id for q in dev[: settings.shots] if q.answer is None]
            if unlabelled:
                raise ValueError(f"{bench.file(data_dir, subject, 'dev')}: question {unlabelled[0]!r} has no answer "
                                 f"and cannot be used as a shot")
            shots = dev[: settings.shots]
        work.append((subject, questions, shots))
    return TaskPlan(bench, settings, work, letter_ids, budget, source, fingerprint, out, done)


def run_plan(model: Any, tokenizer: Any, plan: TaskPlan, progress: bool = True) -> dict[str, Any]:
    """Run a :class:`TaskPlan` (subject by subject, each written when complete) and return the task report."""
    from tqdm import tqdm

    from .report import task_report

    bench, settings, out = plan.bench, plan.settings, plan.out
    bar = tqdm(total=sum(len(q) for _, q, _ in plan.work), desc=bench.title, unit="q", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for subject, questions, shots in plan.work:
            if subject in plan.done:
                results[subject] = plan.done[subject]
                bar.update(len(questions))
                continue
            bar.set_postfix_str(subject)
            result, prompts = evaluate_subject(model, tokenizer, bench, subject, shots, questions, settings,
                                               plan.letter_ids, plan.budget, bar)
            result = {"settings": plan.fingerprint, **result}
            if settings.save_prompts:
                lines = [json.dumps({"id": q.id, "prompt": p.text, "shots": p.shots, "truncated": p.truncated,
                                     "tokens": len(p.ids)}, ensure_ascii=False) for q, p in zip(questions, prompts)]
                atomic_write_text(out / "prompts" / f"{subject}.jsonl", "".join(line + "\n" for line in lines))
            atomic_write_text(out / "subjects" / f"{subject}.json",
                              json.dumps(result, ensure_ascii=False, indent=1) + "\n")
            results[subject] = result
    finally:
        bar.close()
    _write_predictions(out / "predictions.csv", results)
    report = task_report(bench, results, plan.fingerprint)
    report["prompt_limit"] = plan.prompt_limit
    if bench.name == "ceval" and not report["labelled"]:
        submission = {s: {r["id"]: r["prediction"] for r in res["predictions"]} for s, res in results.items()}
        atomic_write_text(out / "submission.json", json.dumps(submission, ensure_ascii=False, indent=1) + "\n")
        report["submission"] = str(Path(bench.name) / "submission.json")
    return report


def run_task(model: Any, tokenizer: Any, task: str, data_dir: str | Path, output_dir: str | Path,
             settings: EvalSettings | None = None, model_name: str = "model", progress: bool = True,
             dtype: str | None = None, quantize: str | None = None) -> dict[str, Any]:
    """Evaluate ``task`` (ceval, mmlu or cmmlu) from the official layout in ``data_dir``; resumable per subject.

    Returns the task report (see :func:`baichuan13b.evaluation.report.task_report`) and writes the per-subject
    files, ``predictions.csv`` and, for C-Eval without labels, ``submission.json`` under ``output_dir/task``.
    """
    plan = plan_task(model, tokenizer, task, data_dir, output_dir, settings, model_name, dtype, quantize)
    return run_plan(model, tokenizer, plan, progress)


def _write_predictions(path: Path, results: dict[str, dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["subject", "id", "answer", "prediction", "correct", "shots", "prompt_tokens", "truncated",
                "score_A", "score_B", "score_C", "score_D", "output"])
    for subject, res in results.items():
        for r in res["predictions"]:
            scores = r.get("scores") or ["", "", "", ""]
            w.writerow([subject, r["id"], r["answer"] or "", r["prediction"] or "",
                        "" if r["correct"] is None else int(r["correct"]), r["shots"], r["prompt_tokens"],
                        int(r["truncated"]), *scores, r.get("output", "")])
    atomic_write_text(path, buf.getvalue())


def resolve_task_dir(task: str, data_dir: str | Path | None, single: bool) -> Path:
    """Where ``task``'s files are: ``data_dir/task`` when it exists, ``data_dir`` itself when it holds the layout
    (one task only), else (no ``data_dir``) the hub dataset converted to the official layout."""
    bench = get_benchmark(task)
    if data_dir is None:
        from .hub import download_benchmark

        return download_benchmark(bench.name)
    base = Path(data_dir)
    if not base.is_dir():
        raise FileNotFoundError(f"data directory not found: {base}")
    if (base / bench.name / "dev").is_dir():
        return base / bench.name
    if (base / "dev").is_dir():
        if not single:
            raise ValueError(f"{base} holds one benchmark's layout (dev/ ...) but several tasks were asked; give a "
                             f"folder with one subfolder per task ({', '.join(BENCHMARK_NAMES)})")
        return base
    raise FileNotFoundError(f"no {bench.title} data under {base}: expected {base / bench.name / 'dev'} or "
                            f"{base / 'dev'}")


BENCHMARK_NAMES = ("ceval", "mmlu", "cmmlu")


def evaluate(model: Any, tokenizer: Any, tasks: Sequence[str], output_dir: str | Path,
             data_dir: str | Path | None = None, settings: EvalSettings | None = None, model_name: str = "model",
             label: str | None = None, dtype: str | None = None, quantize: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run several benchmarks into ``output_dir`` and write ``report.json`` / ``report.md`` / ``report.png``.

    ``data_dir`` holds ``ceval/``, ``mmlu/``, ``cmmlu/`` in the official layouts (or is one benchmark's folder
    when a single task is run); None downloads the hub datasets. ``model_name`` identifies the model in the
    resumable results (a rerun with another name into the same folder is refused) and is the row label of the
    tables unless ``label`` is given.

    Every task is checked (:func:`plan_task`) before the model runs, so a bad setting for the last task fails at
    once. When a task fails while running, the report is still written for the tasks that finished, then the
    error is raised. Returns the written report.
    """
    from .report import write_report

    settings = settings or EvalSettings()
    if not tasks:
        raise ValueError("no task given")
    for t in tasks:
        get_benchmark(t)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"a task is repeated in {list(tasks)}")
    plans = [plan_task(model, tokenizer, task, resolve_task_dir(task, data_dir, single=len(tasks) == 1),
                       output_dir, settings, model_name, dtype, quantize) for task in tasks]
    reports: dict[str, Any] = {}
    pieces: dict[str, list[str]] = {}

    def report() -> dict[str, Any]:
        return {"model": model_name, "label": label or str(model_name), "dtype": dtype, "quantize": quantize,
                "tasks": reports, "letter_pieces": pieces}

    for plan in plans:
        try:
            reports[plan.bench.name] = run_plan(model, tokenizer, plan, progress)
        except BaseException:
            if reports:  # what finished is kept (and the failed task's complete subjects are on disk)
                write_report(report(), output_dir)
            raise
        if plan.letter_ids is not None:
            pieces[plan.bench.name] = [tokenizer.sp_model.id_to_piece(i) for i in plan.letter_ids]
    return write_report(report(), output_dir)

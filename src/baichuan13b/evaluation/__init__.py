"""Benchmarks as the seed reports them: C-Eval, MMLU and CMMLU k-shot, and perplexity.

::

    from baichuan13b.evaluation import EvalSettings, evaluate
    report = evaluate(model, tokenizer, ["cmmlu"], "out/", data_dir="eval-data",
                      settings=EvalSettings(split="test", shots=5, batch_size=8))
    report["tasks"]["cmmlu"]["average"]        # as CMMLU's harness: over subjects, in percent (MMLU: over questions)

See ``docs/evaluation.md`` for the exact prompts, the shot-dropping rules, the letter ids scored and the averages.
``baichuan13b.evaluation.harness`` is the lm-evaluation-harness model (needs ``lm-eval``; imported on demand).
"""

from .benchmarks import BENCHMARKS, Benchmark, Question, Subject, get_benchmark, load_questions
from .perplexity import perplexity, perplexity_of_file, sequence_nll
from .prompts import Prompt, build_prompt, format_question, header
from .report import compare_reports, load_report, markdown_report, task_report, write_report
from .runner import EvalSettings, evaluate, plan_task, run_task, score_continuations, score_prompts
from .scoring import SCHEMES, extract_letter, letter_token_ids

__all__ = [
    "BENCHMARKS",
    "SCHEMES",
    "Benchmark",
    "EvalSettings",
    "Prompt",
    "Question",
    "Subject",
    "build_prompt",
    "compare_reports",
    "evaluate",
    "extract_letter",
    "format_question",
    "get_benchmark",
    "header",
    "letter_token_ids",
    "load_questions",
    "load_report",
    "markdown_report",
    "perplexity",
    "perplexity_of_file",
    "plan_task",
    "run_task",
    "score_continuations",
    "score_prompts",
    "sequence_nll",
    "task_report",
    "write_report",
]

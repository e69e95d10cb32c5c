"""Evaluate a model on C-Eval, MMLU and CMMLU (k-shot, as the seed reports them) or measure perplexity.

  baichuan eval --model M --task ceval,mmlu,cmmlu --data_dir eval-data --split val --output_dir out/
  baichuan eval --model M --task ppl --text corpus.txt
  baichuan eval --compare base/report.json int8/report.json --labels base,int8

Results are written subject by subject: rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..files import atomic_write_text
from .common import add_model_arguments, display_name, err, load, require_extra

HELP = "C-Eval / MMLU / CMMLU k-shot accuracy, perplexity, and comparison of reports"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmarks")
    g.add_argument("--task", default=None,
                   help="comma-separated: ceval, mmlu, cmmlu (multiple-choice), or ppl (perplexity of --text)")
    g.add_argument("--data_dir", "--data-dir", default=None,
                   help="folder with ceval/ mmlu/ cmmlu/ in the official layouts (or one benchmark's folder); "
                        "default: download the hub datasets")
    g.add_argument("--split", default="test", choices=["val", "test"], help="split to score (CMMLU has no val)")
    g.add_argument("--shots", type=int, default=5, help="shots: the first k questions of the dev file")
    g.add_argument("--subjects", default=None, help="comma-separated subject keys (default: all)")
    g.add_argument("--limit", type=int, default=None, help="score only the first N questions of each subject")
    g.add_argument("--batch_size", "--batch-size", type=int, default=1, help="prompts per forward")
    g.add_argument("--no_prefix_cache", "--no-prefix-cache", action="store_true",
                   help="compute every prompt whole instead of reusing the cached shots of its subject (same "
                        "scores, slower; logits mode)")
    g.add_argument("--output_dir", "--output-dir", default=None, help="where results and reports are written")
    g.add_argument("--save_prompts", "--save-prompts", action="store_true",
                   help="also write every prompt (prompts/{subject}.jsonl)")
    g.add_argument("--letter_scheme", "--letter-scheme", default=None, choices=["encode", "piece"],
                   help="letter token ids: 'encode' = encode('A') (▁A; C-Eval and MMLU harnesses), 'piece' = the "
                        "piece 'A' (CMMLU harness); default: each benchmark's own")
    g.add_argument("--max_length", "--max-length", type=int, default=None,
                   help="prompt token limit before shots are dropped (default: each harness's own, 2048 for MMLU "
                        "and CMMLU as their official scripts, capped by the model's context; C-Eval: the context)")
    g.add_argument("--mode", default="logits", choices=["logits", "generate"],
                   help="logits: argmax over the letters' next-token logits; generate: read the letter from a "
                        "greedy answer (for chat models)")
    g.add_argument("--chat", action="store_true", help="with --mode generate: send the prompt as a chat user turn")
    g.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=32,
                   help="tokens generated per answer in generate mode")
    g.add_argument("--literal_text", "--literal-text", action="store_true",
                   help="use the CSV text as written (the official scripts read it with pandas, which prints "
                        "'None'/'NA' options as 'nan'; that is the default here)")
    g.add_argument("--label", default=None,
                   help="name of this run in tables (default: the model's name: --model-name, else demo, the "
                        "folder's name or the hub id)")
    g2 = p.add_argument_group("perplexity (--task ppl)")
    g2.add_argument("--text", default=None, help="UTF-8 text file")
    g2.add_argument("--window", type=int, default=None, help="tokens per window (default: the model's context)")
    g2.add_argument("--stride", type=int, default=None, help="tokens between window starts (default: window / 2)")
    g3 = p.add_argument_group("comparison")
    g3.add_argument("--compare", nargs="+", default=None, metavar="REPORT",
                    help="report.json files (or their folders) to compare; no model is loaded")
    g3.add_argument("--labels", default=None, help="comma-separated names for --compare")
    add_model_arguments(p)


def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _compare(args: argparse.Namespace) -> int:
    from ..evaluation.report import compare_chart, compare_reports

    labels = _split_list(args.labels) or None
    if args.output_dir:
        require_extra("eval", "baichuan eval --compare --output_dir", "the comparison chart")
    text = compare_reports(args.compare, labels)
    print(text)
    if args.output_dir:
        out = Path(args.output_dir)
        atomic_write_text(out / "compare.md", text + "\n")
        compare_chart(args.compare, labels, out / "compare.png")
        err(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return 0


def _quantize_name(args: argparse.Namespace) -> str | None:
    q = getattr(args, "quantize", None)
    return f"{q} (group size {args.group_size})" if q == "int4" else q


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    tasks = _split_list(args.task)
    if not tasks:
        raise ValueError("give --task (ceval, mmlu, cmmlu or ppl) or --compare REPORT...")
    if "ppl" in tasks:
        if len(tasks) > 1:
            raise ValueError("--task ppl runs alone (it reads --text, not the benchmark files)")
        if not args.text:
            raise ValueError("--task ppl needs --text FILE")
        if not Path(args.text).is_file():
            raise ValueError(f"--text {args.text}: no such file")
        from ..evaluation.perplexity import perplexity_of_file

        model, tokenizer = load(args)
        result = perplexity_of_file(model, tokenizer, args.text, args.window, args.stride)
        result["model"] = args.model
        result["quantize"] = _quantize_name(args)
        print(json.dumps(result, indent=1))
        if args.output_dir:
            atomic_write_text(Path(args.output_dir) / "perplexity.json", json.dumps(result, indent=1) + "\n")
        return 0
    from ..evaluation.benchmarks import get_benchmark

    for name in tasks:  # before loading: a typo in --task costs no loading time
        get_benchmark(name)
    if not args.output_dir:
        raise ValueError("--output_dir is needed (results are written there, subject by subject)")
    require_extra("eval", "baichuan eval", "the report chart")
    from ..evaluation.runner import EvalSettings, evaluate

    settings = EvalSettings(split=args.split, shots=args.shots, subjects=_split_list(args.subjects) or None,
                            limit=args.limit, batch_size=args.batch_size, letter_scheme=args.letter_scheme,
                            mode=args.mode, chat=args.chat, max_new_tokens=args.max_new_tokens,
                            max_length=args.max_length, official_text=not args.literal_text,
                            save_prompts=args.save_prompts, prefix_cache=not args.no_prefix_cache)
    settings.validate()
    model, tokenizer = load(args)
    model_name = display_name(args)
    report = evaluate(model, tokenizer, tasks, args.output_dir, data_dir=args.data_dir, settings=settings,
                      model_name=model_name, label=args.label, dtype=str(model.dtype).replace("torch.", ""),
                      quantize=_quantize_name(args), progress=not args.no_progress)
    for name in tasks:
        t = report["tasks"][name]
        line = f"{t['title']}: " + ("no labels (predictions written)" if not t["labelled"]
                                     else f"average {t['average']:.2f} (over {t['averaging']}; "
                                          f"{len(t['subjects'])} subjects, {t['questions']} questions)")
        print(line)
    err(f"report: {Path(args.output_dir) / 'report.md'}")
    sys.stdout.flush()
    return 0

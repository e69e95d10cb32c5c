"""Wall time of a k-shot benchmark run with a random model of a preset shape (no checkpoint needed).

    python -m baichuan13b.evaluation.bench --preset baichuan-232m --tokenizer ../shared/tokenizer/tokenizer.model \\
        --data_dir ../shared/eval-data --task cmmlu --limit 5 --batch_size 4 --dtype bfloat16

Prints the questions scored, the wall time, questions per second and prompt tokens per second. The accuracy of a
random model is chance and is not the point; the figure is how long the pipeline takes on this machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from ..config import PRESETS, ModelConfig
from ..model import BaichuanForCausalLM
from ..tokenizer import BaichuanTokenizer
from .runner import EvalSettings, evaluate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="baichuan-232m", choices=sorted(PRESETS))
    p.add_argument("--tokenizer", required=True, help="tokenizer.model (or its folder)")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--task", default="cmmlu")
    p.add_argument("--split", default="test")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--subjects", default=None)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--output_dir", default=None, help="default: a temporary folder (removed)")
    args = p.parse_args(argv)

    tokenizer = BaichuanTokenizer.from_pretrained(args.tokenizer)
    model = BaichuanForCausalLM.from_config(ModelConfig.from_name(args.preset), seed=0, dtype=getattr(torch, args.dtype))
    settings = EvalSettings(split=args.split, shots=args.shots, limit=args.limit, batch_size=args.batch_size,
                            subjects=args.subjects.split(",") if args.subjects else None)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or tmp
        start = time.perf_counter()
        report = evaluate(model, tokenizer, [args.task], out, data_dir=args.data_dir, settings=settings,
                          model_name=f"random {args.preset}", dtype=args.dtype)
        wall = time.perf_counter() - start
        t = report["tasks"][args.task]
        tokens = _prompt_tokens(out, args.task)
    n = t["questions"]
    print(f"{t['title']} {args.split}, {args.shots}-shot, limit {args.limit}: {len(t['subjects'])} subjects, "
          f"{n} questions, {tokens} prompt tokens")
    print(f"model: random {args.preset} ({model.num_parameters() / 1e6:.0f}M parameters), {args.dtype}, "
          f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    print(f"wall time {wall:.1f} s: {n / wall:.2f} questions/s, {tokens / wall:.0f} prompt tokens/s; "
          f"prompts with fewer shots: {t['fewer_shots']}; accuracy {t['average']:.2f} (chance level expected)")


def _prompt_tokens(out: str, task: str) -> int:
    import csv
    from pathlib import Path

    with open(Path(out) / task / "predictions.csv", encoding="utf-8") as f:
        return sum(int(r["prompt_tokens"]) for r in csv.DictReader(f))


if __name__ == "__main__":
    main()

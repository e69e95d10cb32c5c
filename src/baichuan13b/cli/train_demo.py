"""Rebuild the demo model from scratch: data, tokenizer, pre-training and chat fine-tuning, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild the tiny offline demo model from scratch (a few minutes on 2 CPU cores)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, type=Path, help="folder to write the model to (replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and training order")
    p.add_argument("--evaluate", action="store_true", help="report exact-answer accuracy afterwards")


def run(args: argparse.Namespace) -> int:
    from ..demo.recipe import train_demo

    train_demo(args.output, seed=args.seed)
    if args.evaluate:
        from ..demo.evaluate import main as evaluate

        evaluate(["--model", str(args.output)])
    return 0

"""Fine-tune (LoRA or full parameters) or pre-train a Baichuan model.

The flags are those of LLaMA-Efficient-Tuning's ``src/train_bash.py`` (Hugging Face spelling), so the seed's
commands work with only the program name changed. Several processes: ``torchrun --nproc_per_node N -m
baichuan13b finetune ...`` or ``--nproc N``. See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HELP = "fine-tune (LoRA / full) or pre-train, on one process or many"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..training.arguments import add_finetune_arguments

    p.allow_abbrev = False  # a shortened flag is a typo to report, not a guess (the seed's flags are full words)
    add_finetune_arguments(p)


def _relaunch(nproc: int, argv: list[str]) -> int:
    """Run this same command under torchrun with ``nproc`` processes; returns torchrun's exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "baichuan13b", "finetune", *argv]
    return subprocess.call(cmd)


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def run(args: argparse.Namespace) -> int:
    from ..training import TrainingError, train
    from ..training.arguments import arguments_from_namespace

    fa = arguments_from_namespace(args)
    if fa.plot_loss:
        from .common import require_extra

        require_extra("train", "baichuan finetune --plot_loss", "the loss plots")
    if fa.nproc and fa.nproc > 1 and "WORLD_SIZE" not in os.environ:
        fa.validate()
        argv = sys.argv[sys.argv.index("finetune") + 1:] if "finetune" in sys.argv else None
        if argv is None:
            raise ValueError("--nproc needs the command line (use torchrun --nproc_per_node N from Python)")
        return _relaunch(fa.nproc, _strip_nproc(argv))
    try:
        result = train(fa)
    except TrainingError as e:
        print(f"baichuan finetune: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[finetune] done: {result.global_step} steps, loss {result.train_loss:.4f}"
              + (f", eval_loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
              + f", {result.tokens_per_s:.1f} tokens/s; model in {result.output_dir}", file=sys.stderr)
    return 0

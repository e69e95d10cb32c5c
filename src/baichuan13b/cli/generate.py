"""Print a raw completion of a prompt (no chat format), streamed as it is generated."""

from __future__ import annotations

import argparse
import os
import sys

from ..generation import stream_text
from ..tensor_parallel import broadcast_object
from .common import add_model_arguments, add_sampling_arguments, load, sampling_overrides

HELP = "complete a prompt (raw text, no chat format)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", "-p", default=None,
                   help="the prompt (default: read standard input; its trailing line break is dropped)")
    add_model_arguments(p)
    add_sampling_arguments(p)


def prompt_from_stdin(text: str) -> str:
    """The prompt in text read from standard input: without the line break(s) that end it (``echo`` adds one,
    and a prompt ending in a newline makes the model continue on a new line)."""
    return text.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reads and prints
    prompt = args.prompt
    if prompt is None and main_rank:
        prompt = prompt_from_stdin(sys.stdin.read())
    if main_rank and not (prompt or "").strip():
        raise ValueError("empty prompt: give --prompt TEXT or text on standard input"
                         + (" (the prompt is only whitespace)" if prompt else ""))
    model, tokenizer = load(args)
    prompt = broadcast_object(prompt)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = sys.stdout if main_rank else open(os.devnull, "w")
    for piece in stream_text(model, tokenizer, ids, **sampling_overrides(args)):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0

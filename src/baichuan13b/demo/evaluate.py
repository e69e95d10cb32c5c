"""Greedy exact-answer accuracy of a chat model on the demo's sets.

::

    python -m baichuan13b.demo.evaluate [--model DIR] [--sets train,heldout,ongoing,unknown,unknown-ongoing]

Sets (see :mod:`baichuan13b.demo.data`): ``train``, every trained question asked on its own; ``heldout``, the
same facts in phrasings never trained on, as a first message; ``ongoing``, those held-out questions after one
or two unrelated earlier rounds; ``unknown`` / ``unknown-ongoing``, questions outside the domain, where the
polite refusal is the right answer. Answers are greedy, at most the model's ``max_new_tokens``, compared whole.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass

import torch

from .data import (
    Conversation,
    heldout_conversations,
    ongoing_conversations,
    training_items,
    unknown_conversations,
    unknown_ongoing_conversations,
)

SETS = {"train": ("training phrasings", training_items),
        "heldout": ("held-out phrasings, fresh conversation", heldout_conversations),
        "ongoing": ("held-out phrasings after unrelated rounds", ongoing_conversations),
        "unknown": ("outside the domain (refusal expected), fresh", unknown_conversations),
        "unknown-ongoing": ("outside the domain after unrelated rounds", unknown_ongoing_conversations)}


@dataclass
class Accuracy:
    correct: int
    total: int
    misses: list[tuple[Conversation, str]]

    @property
    def share(self) -> float:
        return self.correct / self.total if self.total else 0.0


def greedy_answers(model, tokenizer, conversations: list[Conversation], batch_size: int = 32) -> list[str]:
    """The greedy answer to each conversation, as ``model.chat`` gives it, computed in left-padded batches of
    conversations of similar length."""
    prompts = [model.build_chat_input(tokenizer, c.messages())[0].tolist() for c in conversations]
    eos = set(model.generation_config.eos_token_ids)
    pad = model.generation_config.pad_token_id or 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)  # [B, T], left padded
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, longest - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, longest - len(prompts[i]):] = 1
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False)
        for r, i in enumerate(rows):
            new = out[r, longest:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            answers[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
    return answers


def exact_answer_accuracy(model, tokenizer, conversations: list[Conversation], batch_size: int = 32) -> Accuracy:
    """Share of conversations whose greedy answer equals the expected answer exactly."""
    got = greedy_answers(model, tokenizer, conversations, batch_size)
    misses = [(c, a) for c, a in zip(conversations, got) if a != c.answer]
    return Accuracy(len(conversations) - len(misses), len(conversations), misses)


def main(argv: list[str] | None = None) -> int:
    from ..model import BaichuanForCausalLM
    from ..tokenizer import BaichuanTokenizer
    from .recipe import SHIPPED_MODEL_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    p.add_argument("--show-misses", type=int, default=5)
    p.add_argument("--quantize", default=None, choices=["int8", "int4"], help="quantize while loading")
    p.add_argument("--sets", default="train,heldout,ongoing,unknown,unknown-ongoing",
                   help=f"comma-separated sets: {', '.join(SETS)}")
    args = p.parse_args(argv)
    keys = args.sets.split(",")
    for key in keys:
        if key not in SETS:
            p.error(f"--sets: unknown set {key!r} ({', '.join(SETS)})")
    model = BaichuanForCausalLM.from_pretrained(args.model, progress=False, quantize=args.quantize)
    tokenizer = BaichuanTokenizer.from_pretrained(args.model)
    for key in keys:
        name, make = SETS[key]
        convs = make()
        t0 = time.perf_counter()
        acc = exact_answer_accuracy(model, tokenizer, convs)
        print(f"{key} ({name}): {acc.correct}/{acc.total} = {100 * acc.share:.1f}% exact answers "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        totals = Counter(c.topic for c in convs)
        missed = Counter(c.topic for c, _ in acc.misses)
        print("  by topic: " + ", ".join(f"{t} {totals[t] - missed[t]}/{totals[t]}" for t in sorted(totals)))
        for c, got in acc.misses[: args.show_misses]:
            print(f"  miss: {c.prompt!r} -> {got!r} (expected {c.answer!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

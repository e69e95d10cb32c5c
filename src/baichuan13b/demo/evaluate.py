"""Greedy exact-answer accuracy of a chat model on the demo's two sets.

::

    python -m baichuan13b.demo.evaluate [--model DIR]

prints the accuracy on the training phrasings (target >= 95%) and on held-out phrasings of the same facts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from .data import Conversation, heldout_conversations, training_conversations


@dataclass
class Accuracy:
    correct: int
    total: int
    misses: list[tuple[Conversation, str]]

    @property
    def share(self) -> float:
        return self.correct / self.total if self.total else 0.0


def exact_answer_accuracy(model, tokenizer, conversations: list[Conversation]) -> Accuracy:
    """Share of conversations whose greedy answer equals the expected answer exactly."""
    misses = []
    for c in conversations:
        answer = model.chat(tokenizer, c.messages(), do_sample=False)
        if answer != c.answer:
            misses.append((c, answer))
    return Accuracy(len(conversations) - len(misses), len(conversations), misses)


def main(argv: list[str] | None = None) -> int:
    from ..model import BaichuanForCausalLM
    from ..tokenizer import BaichuanTokenizer
    from .recipe import SHIPPED_MODEL_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    p.add_argument("--show-misses", type=int, default=5)
    p.add_argument("--quantize", default=None, choices=["int8", "int4"], help="quantize while loading")
    p.add_argument("--sets", default="train,heldout", help="which sets: train, heldout or both")
    args = p.parse_args(argv)
    model = BaichuanForCausalLM.from_pretrained(args.model, progress=False, quantize=args.quantize)
    tokenizer = BaichuanTokenizer.from_pretrained(args.model)
    sets = {"train": ("training phrasings", training_conversations),
            "heldout": ("held-out phrasings", heldout_conversations)}
    for key in args.sets.split(","):
        if key not in sets:
            p.error(f"--sets: unknown set {key!r} (train, heldout)")
        name, convs = sets[key][0], sets[key][1]()
        acc = exact_answer_accuracy(model, tokenizer, convs)
        print(f"{name}: {acc.correct}/{acc.total} = {100 * acc.share:.1f}% exact answers", flush=True)
        for c, got in acc.misses[: args.show_misses]:
            print(f"  miss: {c.prompt!r} -> {got!r} (expected {c.answer!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

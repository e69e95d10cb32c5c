"""Figures of the paged KV cache with prefix reuse (issue 14), each a ratio measured in one run.

    python -m baichuan13b.bench.paged [--figures 1,2,3,4] [--eval-data ../shared/eval-data] [--eval-limit N]
        [--threads N]

1. Capacity: 64 requests (~100 prompt + 64 new tokens) with the KV memory of 8 full-context slots: how many
   get their first token before any request finishes (the old slot-per-request cache: 8), and sequences held at
   once per GiB of KV memory, against the old design.
2. Multi-turn: a 10-turn conversation, ~300 new tokens per turn: time to first token of each turn with and
   without reuse (turn 10 / turn 1).
3. Shared system prompt: 32 concurrent clients with the same 500-token system prompt: aggregate throughput and
   mean time to first token with vs without reuse.
4. Evaluation: CMMLU 5-shot (test split) with the demo model: wall time with vs without reuse (subject by
   subject, alternating), the token positions each computes, and whether every per-subject accuracy is
   identical.

Figures 1-3 use a random-weight model of the demo shape with a 4096-token context (ALiBi) and the demo
tokenizer; the engine runs its steps on this thread (no HTTP), greedy decoding.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..checkpoint import DEMO_MODEL_DIR
from ..config import ALIBI_ARCHITECTURE, ModelConfig
from ..model import BaichuanForCausalLM
from ..serving import Engine
from ..tokenizer import BaichuanTokenizer

CONTEXT = 4096


def random_model(tokenizer) -> BaichuanForCausalLM:
    cfg = ModelConfig(architectures=[ALIBI_ARCHITECTURE], vocab_size=tokenizer.vocab_size, hidden_size=256,
                      intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, max_position=CONTEXT)
    model = BaichuanForCausalLM.from_config(cfg, seed=0)
    with torch.no_grad():  # never end an answer early: every request runs to its length
        model.lm_head.weight[cfg.eos_token_id] = 0.0
    return model


def tokens(n: int, seed: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n,), generator=g).tolist()


class Run:
    """Submit requests to an engine, step it on this thread, record first-token and finish times."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.first: dict[int, float] = {}
        self.done: dict[int, float] = {}
        self.submitted: dict[int, float] = {}
        self.generated = 0
        self.peak_running = 0

    def submit(self, i: int, prompt: list[int], max_new: int) -> str:
        def sink(event, i=i):
            if event.error is not None:
                raise event.error
            now = time.perf_counter()
            self.first.setdefault(i, now)
            if event.final:
                self.done[i] = now
                self.generated += event.completion_tokens

        self.submitted[i] = time.perf_counter()
        cfg = self.engine.generation_config.update(do_sample=False, eos_token_id=[], stop_strings=[])
        return self.engine.submit(prompt, sink, cfg, max_new_tokens=max_new)

    def wait(self, n: int) -> None:
        while len(self.done) < n:
            self.engine.step()
            self.peak_running = max(self.peak_running, len(self.engine.scheduler.running))


def figure_capacity(tok) -> list[str]:
    model = random_model(tok)
    slots = 8
    kv = slots * CONTEXT * model.kv_bytes_per_position()
    engine = Engine(model, tok, max_batch=64, max_queue=64, kv_cache_bytes=kv, prefill_chunk=2048)
    run = Run(engine)
    for i in range(64):
        run.submit(i, tokens(96 + i % 9, i, tok.vocab_size), 64)
    run.wait(64)
    first_finish = min(run.done.values())
    started = sum(1 for t in run.first.values() if t < first_finish)
    gib = kv / 2**30
    fits = engine.blocks.num_blocks // engine.blocks.blocks_for(105 + 64)  # such requests the pool holds at most
    return [f"1. capacity, KV memory of {slots} full-context slots ({gib:.3f} GiB, {engine.blocks.num_blocks} "
            f"blocks of {engine.block_size}): {started} of 64 requests got their first token before any finished "
            f"(old slot cache: {slots}); {run.peak_running} held at once = {run.peak_running / gib:.0f} "
            f"sequences/GiB vs {slots / gib:.0f} ({run.peak_running / slots:.1f}x; the pool would hold {fits} "
            f"such requests = {fits / slots:.0f}x); preemptions {engine.stats()['preemptions']}"]


def figure_multi_turn(tok, turns: int = 10, answer: int = 300, question: int = 24) -> list[str]:
    model = random_model(tok)
    out = []
    ttft = {}
    for reuse in (True, False):
        engine = Engine(model, tok, max_batch=1, prefix_cache=reuse, prefill_chunk=CONTEXT)
        history: list[int] = []
        times = []
        for turn in range(turns):
            prompt = history + [tok.convert_tokens_to_ids("<reserved_102>")] + tokens(question, 1000 + turn,
                                                                                        tok.vocab_size)
            prompt.append(tok.convert_tokens_to_ids("<reserved_103>"))
            run = Run(engine)
            rid = run.submit(0, prompt, answer)
            seq = engine._by_id[rid]  # (the benchmark reads the generated ids to build the next prompt)
            run.wait(1)
            times.append(run.first[0] - run.submitted[0])
            history = seq.token_ids + [model.config.eos_token_id]  # prompt + answer + eos, as the chat format
        ttft[reuse] = times
    for reuse in (True, False):
        t = ttft[reuse]
        out.append(f"2. multi-turn ({turns} turns x {answer} new tokens, {'with' if reuse else 'without'} reuse): "
                   f"TTFT turn 1 {t[0] * 1e3:.1f} ms, turn {turns} {t[-1] * 1e3:.1f} ms = {t[-1] / t[0]:.2f}x "
                   f"turn 1")
    out.append(f"   turn-{turns} TTFT without / with reuse: {ttft[False][-1] / ttft[True][-1]:.1f}x")
    return out


def figure_system_prompt(tok, clients: int = 32, system: int = 500, new: int = 32) -> list[str]:
    model = random_model(tok)
    shared = tokens(system, 7, tok.vocab_size)
    res = {}
    for reuse in (True, False):
        engine = Engine(model, tok, max_batch=clients, prefix_cache=reuse, prefill_chunk=2048)
        run = Run(engine)
        start = time.perf_counter()
        for i in range(clients):
            run.submit(i, shared + tokens(20 + i % 5, 100 + i, tok.vocab_size), new)
        run.wait(clients)
        wall = time.perf_counter() - start
        mean_ttft = sum(run.first[i] - run.submitted[i] for i in range(clients)) / clients
        res[reuse] = (run.generated / wall, mean_ttft, wall)
    on, off = res[True], res[False]
    return [f"3. shared {system}-token system prompt, {clients} concurrent clients x {new} new tokens: "
            f"throughput {on[0]:.0f} vs {off[0]:.0f} tokens/s ({on[0] / off[0]:.2f}x), mean TTFT "
            f"{on[1] * 1e3:.0f} vs {off[1] * 1e3:.0f} ms ({off[1] / on[1]:.2f}x faster) with vs without reuse"]


class TokenCounter:
    """Counts the token positions (padding included) that go through a model's trunk."""

    def __init__(self, model: BaichuanForCausalLM):
        self.n = 0
        self.handle = model.model.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.n += args[0].shape[0] * args[0].shape[1]


def figure_eval(data_dir: Path, limit: int | None, batch_size: int, tokenizer: Path | None = None) -> list[str]:
    """Both settings subject by subject, alternating which goes first (so that a change of machine load
    between them touches both alike): the time of building and scoring each subject's prompts, summed over the
    subjects (loading and the report, the same work in both, are left out)."""
    from ..evaluation import EvalSettings
    from ..evaluation.runner import evaluate_subject, plan_task

    if tokenizer is None:  # the demo model (512-token context: most prompts keep fewer than 5 shots)
        model = BaichuanForCausalLM.from_pretrained(DEMO_MODEL_DIR, progress=False)
        tok = BaichuanTokenizer.from_pretrained(DEMO_MODEL_DIR)
        name = "demo model"
    else:  # a random model of the demo shape with this tokenizer and a 4096-token context (all 5 shots fit)
        tok = BaichuanTokenizer(tokenizer, pad_token="<unk>")
        model = random_model(tok)
        name = f"random demo-shaped model, {CONTEXT}-token context, tokenizer {tokenizer.name}"
    settings = EvalSettings(split="test", shots=5, limit=limit, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_task(model, tok, "cmmlu", data_dir / "cmmlu", tmp, settings, model_name="demo")
    walls = {True: 0.0, False: 0.0}
    tokens = {True: 0, False: 0}
    differ = []
    questions = 0
    for k, (subject, subject_questions, shots) in enumerate(plan.work):
        accuracy = {}
        for reuse in ((True, False) if k % 2 == 0 else (False, True)):
            counter = TokenCounter(model)
            settings.prefix_cache = reuse
            start = time.perf_counter()
            result, _ = evaluate_subject(model, tok, plan.bench, subject, shots, subject_questions, settings,
                                         plan.letter_ids, plan.budget)
            walls[reuse] += time.perf_counter() - start
            counter.handle.remove()
            tokens[reuse] += counter.n
            accuracy[reuse] = result["accuracy"]
        questions += len(subject_questions)
        if accuracy[True] != accuracy[False]:
            differ.append(subject)
    return [f"4. CMMLU 5-shot test, {name}, {len(plan.work)} subjects, {questions} questions"
            f"{f' (first {limit} per subject)' if limit else ''}, batch {batch_size}, subjects alternating: "
            f"{walls[True]:.1f} s with vs {walls[False]:.1f} s without reuse = {walls[False] / walls[True]:.2f}x "
            f"faster; token positions through the model {tokens[True]:,} vs {tokens[False]:,} "
            f"({tokens[False] / tokens[True]:.2f}x); per-subject accuracy identical: "
            f"{'yes' if not differ else 'NO, ' + ', '.join(differ)}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--figures", default="1,2,3,4", help="comma-separated figure numbers")
    p.add_argument("--eval-data", type=Path, default=Path("../shared/eval-data"),
                   help="folder with cmmlu/ in the official layout (figure 4)")
    p.add_argument("--eval-limit", type=int, default=None, help="questions per CMMLU subject (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=4)
    p.add_argument("--eval-tokenizer", type=Path, default=None,
                   help="figure 4 with a random 4096-context model and this tokenizer.model instead of the demo")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default torch's); 1 on a machine shared with other jobs, where a parallel "
                        "op waits for a core at every step")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = {int(f) for f in args.figures.split(",") if f.strip()}
    tok = BaichuanTokenizer.from_pretrained(DEMO_MODEL_DIR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with torch.inference_mode():
        for number, run in ((1, lambda: figure_capacity(tok)), (2, lambda: figure_multi_turn(tok)),
                            (3, lambda: figure_system_prompt(tok)),
                            (4, lambda: figure_eval(args.eval_data, args.eval_limit, args.eval_batch_size,
                                                    args.eval_tokenizer))):
            if number in figures:
                start = time.perf_counter()
                for line in run():
                    print(line, flush=True)
                print(f"   ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

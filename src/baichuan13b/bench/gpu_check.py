"""The GPU check: one call (at most about 8 minutes on one H100/H200) that measures what docs/benchmarks.md reports.

::

    bash scripts/gpu-check                 # on a CUDA machine: writes gpu-check.json and gpu-check.md
    bash scripts/gpu-check --out DIR       # elsewhere ($OUT when set)
    bash scripts/gpu-check --smoke         # CPU, tiny shapes: the same sections end to end (a test runs this)

Sections, in order of importance; each runs under its own time limit and records its figures or its error, so
one failure never loses the others, and sections that no longer fit in ``--budget`` seconds are skipped:

1. ``environment``: device, torch and CUDA versions, copy bandwidth (bytes read + written);
2. ``correctness``: a small random model; greedy tokens of the eager decode and of the compiled, CUDA-graph
   decode (``compile=True``) identical, and of the paged engine runner with and without its captured decode
   graphs; last-token logits of float16 and bfloat16 against float32 (cosine,
   max abs difference);
3. ``baichuan-13b``: the real 13B shape, random weights, batch 1, float16 / int8 / int4: tokens/s, % of the
   roofline (measured bandwidth / weight bytes), weight memory and peak memory against the seed's
   26.0 / 15.8 / 9.7 GB;
4. ``llama-13b``: the LLaMA-13B shape in float16, the seed's speed comparison;
5. ``serving``: the continuous-batching engine with 1, 8, 32 and 64 concurrent clients (aggregate tokens/s, mean
   time to first token, sequences holding KV blocks at once) on a paged KV cache of the memory that 8 whole-context
   slots took before, with its decode steps as CUDA graphs (the number captured is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

SEED_MEMORY_GB = {"fp16": 26.0, "int8": 15.8, "int4": 9.7}  # the seed's README, Baichuan-13B
TINY = dict(vocab_size=1500, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position=512)


class SectionTimeout(BaseException):
    """A section ran past its time limit (a BaseException, so that no per-mode handler inside it resumes work)."""


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM; no limit elsewhere)."""
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")
    if not usable or seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise SectionTimeout(f"ran past its limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Check:
    """Runs sections against a shared deadline and collects their results (or errors) for the report."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, Any] = {}

    def section(self, name: str, limit_s: float, fn: Callable[[dict], None]) -> None:
        """Run ``fn(out)``, which fills ``out`` as it goes: what it filled before an error or timeout is kept."""
        left = self.deadline - time.monotonic()
        started = time.monotonic()
        if left < min(limit_s, 20):
            self.results[name] = {"status": "skipped", "reason": f"{left:.0f} s left of the budget"}
        else:
            out: dict[str, Any] = {"status": "running"}
            self.results[name] = out
            try:
                with time_limit(min(limit_s, left)):
                    fn(out)
                out["status"] = "ok"
            except (Exception, SectionTimeout) as e:  # recorded in the report with its traceback; the next
                out.update(status="error", error=f"{type(e).__name__}: {e}",  # section still runs
                           traceback=traceback.format_exc(limit=8))
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        self.results[name]["seconds"] = round(time.monotonic() - started, 1)
        status = self.results[name]["status"]
        print(f"[gpu-check] {name}: {status} ({self.results[name]['seconds']} s)"
              + (f": {self.results[name].get('error') or self.results[name].get('reason')}" if status != "ok" else ""),
              file=sys.stderr, flush=True)


def _gb(n: int | float) -> float:
    return round(n / 1e9, 2)


def environment(info: dict, device: torch.device) -> None:
    from .speed import copy_bandwidth

    info.update(torch=torch.__version__, device=str(device), python=sys.version.split()[0])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, cuda=torch.version.cuda, memory_gb=_gb(props.total_memory),
                    capability=f"{props.major}.{props.minor}")
    else:
        info.update(name="CPU", threads=torch.get_num_threads())
    info["copy_bandwidth_gbs"] = round(copy_bandwidth(device), 1)


def _config(preset: str, smoke: bool, **overrides):
    from ..config import ModelConfig

    if smoke:
        arch = ModelConfig.from_name(preset).architectures
        return ModelConfig(architectures=arch, **{**TINY, **overrides})
    return ModelConfig.from_name(preset, **overrides)


def correctness(out: dict, device: torch.device, smoke: bool) -> None:
    """Eager vs compiled (CUDA-graph) greedy tokens; float16 / bfloat16 logits vs float32."""
    import torch.nn.functional as F

    from ..generation import stream_tokens
    from .speed import random_model

    cfg = _config("baichuan-232m", smoke, num_hidden_layers=4)  # 4 layers: a short compile
    out["shape"] = f"hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers"
    ids = torch.randint(3, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    ref = random_model(cfg, torch.float32, device)
    with torch.inference_mode():
        logits32 = ref(ids, logits_to_keep=1).logits[:, -1].float()
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        m = ref.to(dtype)
        with torch.inference_mode():
            lg = m(ids, logits_to_keep=1).logits[:, -1].float()
        out[f"{name}_vs_fp32_cosine"] = round(F.cosine_similarity(lg, logits32, dim=-1).min().item(), 5)
        out[f"{name}_vs_fp32_max_abs"] = round((lg - logits32).abs().max().item(), 4)
        ref = m.float()
    m = ref.to(torch.float16 if device.type == "cuda" else torch.float32)
    kw = dict(max_new_tokens=8 if smoke else 64, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    eager = torch.stack(list(stream_tokens(m, ids, **kw)), 1)
    if device.type == "cuda":
        compiled = torch.stack(list(stream_tokens(m, ids, compile=True, **kw)), 1)
        out["eager_equals_cuda_graph"] = bool(torch.equal(eager, compiled))
        out["tokens_compared"] = int(compiled.numel())
    else:
        out["eager_equals_cuda_graph"] = None  # no CUDA graphs on CPU
        out["tokens_compared"] = int(eager.numel())
    # the serving engine's decode: paged, captured per (batch, width) bucket on CUDA (eager fixed shapes on CPU)
    prompts = [ids[0].tolist(), ids[1, :7].tolist(), ids[1].tolist()[::-1]]
    steps = 8 if smoke else 48
    plain, plain_err = _paged_greedy(m, prompts, steps, graphs=False)
    fixed, graph_err = _paged_greedy(m, prompts, steps, graphs=True)
    out["paged_graphs_equal_eager"] = plain == fixed
    out["paged_tokens_compared"] = sum(map(len, plain))
    if graph_err:
        out["paged_graph_capture_error"] = graph_err


def _paged_greedy(model, prompts: list[list[int]], steps: int, graphs: bool) -> tuple[list[list[int]], str | None]:
    """Greedy tokens of ``prompts`` decoded together through the paged runner (with or without decode graphs),
    and the capture error if capturing was given up."""
    from ..paged import BlockManager, ModelRunner, Sequence

    bs = 16
    blocks = len(prompts) * -(-(max(map(len, prompts)) + steps) // bs)
    runner = ModelRunner(model, blocks, bs, decode_graphs=graphs, max_batch=len(prompts),
                         max_blocks=-(-model.config.max_position // bs))
    manager = BlockManager(blocks, bs, prefix_cache=False)
    seqs = [Sequence(token_ids=list(p)) for p in prompts]
    for s in seqs:
        manager.allocate(s)
    logits = runner.run([(s, len(s)) for s in seqs])
    for s in seqs:
        s.num_computed = len(s)
    out: list[list[int]] = [[] for _ in seqs]
    for step in range(steps):
        for b, (s, t) in enumerate(zip(seqs, logits.argmax(-1).tolist())):
            out[b].append(t)
            s.append(t)
            manager.append(s)
        if step == steps - 1:
            break
        logits = runner.run([(s, 1) for s in seqs])
        for s in seqs:
            s.num_computed += 1
    return out, runner.graphs.capture_error if runner.graphs else None


def decode_speed(out: dict, device: torch.device, preset: str, modes: list[str], smoke: bool, gen_len: int,
                 bandwidth: float | None, compile: bool) -> None:
    """Batch-1 decode per mode (fp16 / int8 / int4) on random weights of ``preset``; one model alive at a time."""
    from ..quantization import QuantizationConfig
    from .speed import measure, random_model

    cfg = _config(preset, smoke)
    out.update(shape=preset if not smoke else f"{preset} (smoke: tiny)", gen_len=gen_len, rows={})
    rows = out["rows"]
    for mode in modes:
        try:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            qconfig = None if mode == "fp16" else QuantizationConfig(bits=8 if mode == "int8" else 4)
            model = random_model(cfg, dtype, device, quantize=qconfig)  # quantized as built: no float16 model first
            if device.type == "cuda":
                torch.cuda.synchronize()
                weights = torch.cuda.memory_allocated(device)
            else:
                weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
            r = measure(model, name=preset, gen_len=gen_len, compile=compile, bandwidth_gbs=bandwidth,
                        quantize=None if mode == "fp16" else mode)
            rows[mode] = {"tokens_per_s": round(r.tokens_per_s, 1),
                          "percent_of_roofline": round(r.percent_of_roofline, 1),
                          "roofline_tokens_per_s": round(r.roofline_tokens_per_s, 1),
                          "achieved_gbs": round(r.achieved_gbs, 1), "weights_gb": _gb(weights),
                          "peak_gb": _gb(r.peak_memory_bytes), "seed_gb": SEED_MEMORY_GB.get(mode),
                          "ttft_ms": round(r.time_to_first_token_s * 1e3, 1), "compiled": compile}
        except Exception as e:  # one mode failing (e.g. no int4 kernel) keeps the others
            rows[mode] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "fp16" in rows and "tokens_per_s" in rows["fp16"]:
        for mode in ("int8", "int4"):
            if "tokens_per_s" in rows.get(mode, {}):
                rows[mode]["speedup_vs_fp16"] = round(rows[mode]["tokens_per_s"] / rows["fp16"]["tokens_per_s"], 2)


def serving(out: dict, device: torch.device, smoke: bool, concurrency: list[int], new_tokens: int,
            full_slots: int = 8) -> None:
    """The continuous-batching engine with ``c`` concurrent clients, for each ``c`` (issue 14's figure 5): aggregate
    tokens/s, mean time to first token, and the most sequences holding KV blocks at once, with a paged cache of the
    memory that ``full_slots`` whole-context slots of the old design took (so the old design held that many)."""
    from ..checkpoint import DEMO_MODEL_DIR
    from ..serving.engine import Engine
    from ..tokenizer import BaichuanTokenizer
    from .speed import random_model

    shared = Path(__file__).resolve().parents[3].parent / "shared" / "tokenizer"
    tok = BaichuanTokenizer.from_pretrained(shared if (shared / "tokenizer.model").is_file() else DEMO_MODEL_DIR)
    cfg = _config("baichuan-13b", smoke)
    if tok.vocab_size < cfg.vocab_size:  # every generated id must be decodable by the engine's text stream
        cfg = _config("baichuan-13b", smoke, vocab_size=tok.vocab_size)
    model = random_model(cfg, torch.float16 if device.type == "cuda" else torch.float32, device)
    kv_bytes = full_slots * cfg.max_position * model.kv_bytes_per_position()
    out.update(shape=f"baichuan-13b{' (smoke: tiny)' if smoke else ''}, vocab {cfg.vocab_size}",
               prompt_tokens=32, new_tokens=new_tokens, kv_cache_gb=_gb(kv_bytes),
               slot_design_sequences=full_slots, levels={})
    engine = Engine(model, tok, max_batch=max(concurrency), kv_cache_bytes=kv_bytes).start()
    out["kv_blocks"] = engine.blocks.num_blocks
    graphs = engine.runner.graphs
    try:
        for c in concurrency:
            prompts = [torch.randint(3, cfg.vocab_size, (32,), generator=torch.Generator().manual_seed(i)).tolist()
                       for i in range(c)]
            counts = [0] * c
            first = [0.0] * c
            errors: list[str] = []
            held = [0]
            done = threading.Event()

            def client(i: int, t0: float) -> None:
                try:
                    for event in engine.stream(prompts[i], max_new_tokens=new_tokens):
                        if not first[i] and event.completion_tokens:
                            first[i] = time.perf_counter() - t0
                        counts[i] = event.completion_tokens
                except Exception as e:  # reported below with the level's figures
                    errors.append(f"{type(e).__name__}: {e}")

            def watch() -> None:
                while not done.wait(0.01):
                    held[0] = max(held[0], engine.stats()["filled_rows"])

            preempted = engine.stats()["preemptions"]
            watcher = threading.Thread(target=watch)
            watcher.start()
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(i, t0)) for i in range(c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            done.set()
            watcher.join()
            ttfts = [f for f in first if f]
            out["levels"][str(c)] = {
                "aggregate_tokens_per_s": round(sum(counts) / wall, 1), "tokens": sum(counts),
                "wall_s": round(wall, 2), "mean_ttft_s": round(sum(ttfts) / len(ttfts), 3) if ttfts else None,
                "held_at_once": held[0], "preemptions": engine.stats()["preemptions"] - preempted,
                "errors": errors[:3]}
    finally:
        engine.stop()
        out["decode_graphs"] = len(graphs.graphs) if graphs and graphs.capture else None  # captured shapes
        if graphs and graphs.capture_error:
            out["graph_capture_error"] = graphs.capture_error


def markdown(results: dict) -> str:
    """The report as a Markdown table per section."""
    env = results.get("environment", {})
    lines = [f"# GPU check: {env.get('name', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, "
             f"{results.get('date', '')}", "",
             f"Copy bandwidth {env.get('copy_bandwidth_gbs', '?')} GB/s (read + written).", ""]
    c = results.get("correctness", {})
    lines += ["## Correctness", "", "| check | result |", "| --- | --- |"]
    for k in ("eager_equals_cuda_graph", "tokens_compared", "paged_graphs_equal_eager", "paged_tokens_compared",
              "paged_graph_capture_error", "fp16_vs_fp32_cosine", "fp16_vs_fp32_max_abs",
              "bf16_vs_fp32_cosine", "bf16_vs_fp32_max_abs", "status", "error"):
        if k in c:
            lines.append(f"| {k} | {c[k]} |")
    for name in ("baichuan-13b", "llama-13b"):
        s = results.get(name, {})
        lines += ["", f"## {name} decode, batch 1 ({s.get('status', 'not run')})", "",
                  "| mode | tok/s | % of roofline | GB/s | weights GB | peak GB | seed GB | vs fp16 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for mode, r in s.get("rows", {}).items():
            if "error" in r:
                lines.append(f"| {mode} | error: {r['error'][:80]} | | | | | | |")
            else:
                lines.append(f"| {mode} | {r['tokens_per_s']} | {r['percent_of_roofline']} | {r['achieved_gbs']} | "
                             f"{r['weights_gb']} | {r['peak_gb']} | {r['seed_gb'] or '-'} | "
                             f"{r.get('speedup_vs_fp16', '-')} |")
        if s.get("error"):
            lines.append(f"\nerror: {s['error']}")
    s = results.get("serving", {})
    lines += ["", f"## Serving engine ({s.get('status', 'not run')})", "",
              f"Paged KV cache of {s.get('kv_cache_gb', '?')} GB ({s.get('kv_blocks', '?')} blocks; the slot-per-request "
              f"design held {s.get('slot_design_sequences', '?')} sequences in it); {s.get('prompt_tokens', '?')} "
              f"prompt + {s.get('new_tokens', '?')} new tokens per client.", "",
              "| clients | aggregate tok/s | mean TTFT s | held at once | preemptions | tokens | wall s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c_, r in s.get("levels", {}).items():
        lines.append(f"| {c_} | {r['aggregate_tokens_per_s']} | {r.get('mean_ttft_s')} | {r.get('held_at_once')} | "
                     f"{r.get('preemptions')} | {r['tokens']} | {r['wall_s']} |")
    if "decode_graphs" in s:
        lines.append(f"\nCUDA graphs captured: {s['decode_graphs']}{'; ' + s['graph_capture_error'] if s.get('graph_capture_error') else ''}")
    if s.get("error"):
        lines.append(f"\nerror: {s['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, short runs: check the script itself")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu-check.json / gpu-check.md")
    p.add_argument("--budget", type=float, default=450, help="seconds for all sections together")
    p.add_argument("--gen-len", type=int, default=None, help="new tokens per decode measurement (default 256)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="eager decode for the speed sections (default: compiled, CUDA graphs)")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu-check: no CUDA device; use --smoke to check the script on CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    gen_len = args.gen_len or (8 if args.smoke else 256)
    compile = args.compile and device.type == "cuda"
    check = Check(args.budget)
    check.results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    check.results["smoke"] = args.smoke
    limits = dict(env=30, correctness=100, b13=190, llama=60, serving=120) if not args.smoke else \
        dict(env=30, correctness=60, b13=60, llama=60, serving=60)
    check.section("environment", limits["env"], lambda out: environment(out, device))
    bandwidth = check.results["environment"].get("copy_bandwidth_gbs")
    check.section("correctness", limits["correctness"], lambda out: correctness(out, device, args.smoke))
    check.section("baichuan-13b", limits["b13"], lambda out: decode_speed(
        out, device, "baichuan-13b", ["fp16", "int8", "int4"], args.smoke, gen_len, bandwidth, compile))
    check.section("llama-13b", limits["llama"], lambda out: decode_speed(
        out, device, "llama-13b", ["fp16"], args.smoke, gen_len, bandwidth, compile))
    check.section("serving", limits["serving"], lambda out: serving(
        out, device, args.smoke, [1, 8, 32, 64], new_tokens=8 if args.smoke else 128))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(check.results, indent=2) + "\n")
    (out / "gpu-check.md").write_text(markdown(check.results))
    print(markdown(check.results))
    failed = [k for k, v in check.results.items() if isinstance(v, dict) and v.get("status") == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

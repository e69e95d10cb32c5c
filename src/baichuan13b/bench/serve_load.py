"""Load test of ``baichuan serve``: throughput and latency at several numbers of concurrent streaming clients.

::

    python -m baichuan13b.bench.serve_load --preset baichuan-232m --dtype bfloat16 --concurrency 1 8 32 64
    python -m baichuan13b.bench.serve_load --preset baichuan-13b --dtype bfloat16 --device cuda --max-batch 64
    python -m baichuan13b.bench.serve_load --model Baichuan-13B-Chat --dtype bfloat16 --device cuda

Starts the server in a child process (a checkpoint folder with ``--model``, else random weights of ``--preset``
with the tokenizer of ``--tokenizer``), on loopback. Each of C clients sends ``--requests-per-client`` streaming
``/v1/completions`` requests one after the other (a prompt of ``--prompt-len`` random token ids, ``max_tokens``
new tokens, greedy). Generation ignores eos in this benchmark (the engine's default config has no eos), so every
request produces exactly ``max_tokens`` tokens. Reported per concurrency level:

* throughput: generated tokens of all requests / wall time of the level;
* TTFT: time from sending a request to its first streamed text, p50 and p99;
* TPOT: time per output token after the first, ``(t_last - t_first) / (tokens - 1)``, p50 and p99;
* latency: time to the end of the response, p50 and p99.

The client runs in this process and the server in another, so the HTTP client competes with the server for CPU
on a small machine; the figures are end-to-end, as an application would see them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[3].parent / "shared" / "tokenizer"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------------------- server child
def run_server(args: argparse.Namespace) -> int:
    import torch

    from ..config import ModelConfig
    from ..generation import GenerationConfig
    from ..model import BaichuanForCausalLM
    from ..serving import Engine
    from ..serving.api import create_app, serve
    from ..tokenizer import BaichuanTokenizer

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model:
        model = BaichuanForCausalLM.from_pretrained(args.model, torch_dtype=args.dtype, device_map=device,
                                                    progress=False)
        tokenizer = BaichuanTokenizer.from_pretrained(args.model)
    else:
        config = ModelConfig.from_name(args.preset)
        model = BaichuanForCausalLM.from_config(config, seed=0, dtype=getattr(torch, args.dtype), device=device)
        tokenizer = BaichuanTokenizer.from_pretrained(args.tokenizer)
    # Fixed-length answers: greedy, no eos.
    cfg = GenerationConfig.from_model_config(model.config).update(eos_token_id=None, do_sample=False)
    kv_bytes = None
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        kv_bytes = int(free * 0.9)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_queue=1024, generation_config=cfg,
                    max_seq_len=args.max_seq_len, prefill_chunk=args.prefill_chunk, kv_cache_bytes=kv_bytes)
    print(f"engine: up to {engine.max_batch} sequences of {engine.context_length} positions, "
          f"{engine.blocks.num_blocks} KV blocks of {engine.block_size} on {model.device}", file=sys.stderr, flush=True)
    serve(create_app(engine, model_name="bench"), port=args.port, log_level="warning")
    return 0


# ---------------------------------------------------------------------------------------------------- clients
async def one_request(client, prompt: list[int], max_tokens: int) -> dict[str, float]:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread()).decode()[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(f"error in stream: {data['error']}")
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            elif data["choices"] and data["choices"][0]["text"]:
                now = time.perf_counter()
                first = first or now
                last = now
    end = time.perf_counter()
    if tokens != max_tokens:
        raise RuntimeError(f"expected {max_tokens} tokens, got {tokens}")
    first = first or end
    last = last or end
    return {"ttft": first - start, "tpot": (last - first) / max(1, tokens - 1), "latency": end - start,
            "tokens": tokens}


async def run_level(base_url: str, concurrency: int, requests_per_client: int, prompt_len: int, max_tokens: int,
                    vocab: int, seed: int) -> dict[str, float]:
    import httpx

    rng = random.Random(seed)
    results: list[dict[str, float]] = []

    async def client_loop(client):
        for _ in range(requests_per_client):
            prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
            results.append(await one_request(client, prompt, max_tokens))

    async with httpx.AsyncClient(base_url=base_url, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await one_request(client, [5] * prompt_len, 4)  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    tpot = [r["tpot"] for r in results]
    latency = [r["latency"] for r in results]
    total = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "tokens": total, "seconds": wall,
            "tokens_per_s": total / wall,
            "ttft_p50_ms": 1000 * percentile(ttft, 50), "ttft_p99_ms": 1000 * percentile(ttft, 99),
            "tpot_p50_ms": 1000 * percentile(tpot, 50), "tpot_p99_ms": 1000 * percentile(tpot, 99),
            "latency_p50_s": percentile(latency, 50), "latency_p99_s": percentile(latency, 99),
            "tpot_mean_ms": 1000 * statistics.fmean(tpot)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: random weights of --preset)")
    p.add_argument("--preset", default="baichuan-232m", help="model shape for random weights")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer for --preset")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="positions per KV slot (default: prompt length + max tokens)")
    p.add_argument("--prefill-chunk", type=int, default=512)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.max_seq_len is None:
        args.max_seq_len = args.prompt_len + args.max_tokens
    if args.serve_child:
        return run_server(args)

    import httpx

    from ..config import ModelConfig

    if args.model is None and not Path(args.tokenizer).exists():
        p.error(f"--tokenizer {args.tokenizer} does not exist (needed for random weights of --preset)")
    vocab = (ModelConfig.from_pretrained(args.model) if args.model else ModelConfig.from_name(args.preset)).vocab_size
    child = subprocess.Popen([sys.executable, "-m", "baichuan13b.bench.serve_load", "--serve-child",
                              *(argv if argv is not None else sys.argv[1:])], env=dict(os.environ))
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 1800
        while True:
            if child.poll() is not None:
                raise SystemExit(f"the server exited with status {child.returncode}")
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 30 minutes")
            time.sleep(0.5)
        rows = []
        for c in args.concurrency:
            row = asyncio.run(run_level(base, c, args.requests_per_client, args.prompt_len, args.max_tokens, vocab,
                                        seed=c))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        child.terminate()
        child.wait(60)
    shape = args.model or args.preset
    print(f"\n{shape}, {args.dtype}, prompt {args.prompt_len} tokens, {args.max_tokens} new tokens, "
          f"{args.requests_per_client} requests per client, max batch {args.max_batch}\n")
    print("| clients | requests | tokens/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | latency p50 / p99 (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} / "
              f"{r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | "
              f"{r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

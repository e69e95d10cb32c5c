"""Serve the model over an OpenAI-compatible HTTP API, with continuous batching.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with "stream": true), GET /health,
GET /metrics (Prometheus). Listens on 127.0.0.1 unless --host says otherwise; no CORS unless --cors-origins;
with --api-key (or the BAICHUAN_API_KEY environment variable) clients must send "Authorization: Bearer KEY".
Sampling defaults come from the checkpoint's generation_config.json; requests override them. The first
SIGTERM / Ctrl+C drains (new requests get 503 while those in flight finish), a second one exits at once.
Every numeric flag is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from .common import add_model_arguments, display_name, err, load, require_extra

HELP = "serve an OpenAI-compatible API (continuous batching)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $BAICHUAN_API_KEY if set, else no key)")
    g.add_argument("--cors-origins", default=None, metavar="ORIGINS",
                   help="comma-separated origins allowed by CORS, e.g. https://app.example.com (default: no CORS)")
    g.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest accepted request body")
    g.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="time a client has to send a request's headers, and then its body (slow clients are cut "
                        "off: 408 or a closed connection)")
    g.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long an idle keep-alive connection stays open")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log verbosity")
    e = p.add_argument_group("engine")
    e.add_argument("--max-batch", type=int, default=16,
                   help="sequences running (decoded together) at most; admission is by free KV blocks")
    e.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting to be admitted; beyond that requests get 429 with Retry-After")
    e.add_argument("--max-seq-len", type=int, default=None,
                   help="positions per request, prompt + answer (default: the model's context)")
    e.add_argument("--prefill-chunk", type=int, default=512,
                   help="prompt tokens prefilled per scheduler step (longer prompts are split)")
    e.add_argument("--kv-cache-memory", type=float, default=None, metavar="GIB",
                   help="memory for the paged KV cache in GiB, at most --max-batch full contexts (default on "
                        "CUDA: 90%% of the memory free after loading; on CPU: a quarter of the RAM)")
    e.add_argument("--block-size", type=int, default=16, help="positions per KV block")
    e.add_argument("--no-prefix-cache", action="store_true",
                   help="do not reuse the keys and values of cached prompt prefixes (same answers, slower)")
    e.add_argument("--enforce-eager", action="store_true",
                   help="decode without CUDA graphs (on a GPU they are captured per batch and context size; the "
                        "same answers, more launch overhead)")


def check_flags(args: argparse.Namespace) -> str | None:
    """Validate the serving flags before anything is loaded; return the API key (``--api-key``, else
    ``$BAICHUAN_API_KEY``, else None). Raises ``ValueError`` naming the flag."""
    from ..serving.api import check_api_key
    from ..tokenizer import check_text

    def at_least(flag: str, value, low, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if not value >= low:  # also refuses NaN
            raise ValueError(f"{flag} must be >= {low}, got {value}")

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    # --served-model-name is the shared --model-name flag (cli/common.py): one name for page, reports and API.
    if args.model_name is not None:
        check_text(args.model_name, "--served-model-name")
        if not args.model_name:
            raise ValueError("--served-model-name is empty")
    at_least("--max-request-bytes", args.max_request_bytes, 1)
    at_least("--max-batch", args.max_batch, 1)
    at_least("--max-queue", args.max_queue, 0)
    at_least("--max-seq-len", args.max_seq_len, 2, allow_none=True)
    at_least("--prefill-chunk", args.prefill_chunk, 1)
    at_least("--block-size", args.block_size, 1)
    for flag, value in (("--read-timeout", args.read_timeout), ("--keep-alive-timeout", args.keep_alive_timeout),
                        ("--kv-cache-memory", args.kv_cache_memory)):
        if value is not None and not (0 < value < float("inf")):
            raise ValueError(f"{flag} must be a positive number, got {value}")
    if args.api_key is not None:
        try:
            return check_api_key(args.api_key)
        except ValueError as e:
            raise ValueError(f"--api-key: {e}") from None
    env = os.environ.get("BAICHUAN_API_KEY")
    if env:
        try:
            return check_api_key(env)
        except ValueError as e:
            raise ValueError(f"$BAICHUAN_API_KEY: {e}") from None
    return None


def engine_options(args: argparse.Namespace, model) -> dict:
    """The :class:`~baichuan13b.serving.Engine` keywords of the engine flags, for ``model`` (the KV pool's default
    size depends on where it is)."""
    import torch

    if args.kv_cache_memory is not None:
        kv_bytes = int(args.kv_cache_memory * 2**30)
    elif model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        kv_bytes = int(free * 0.9)
    else:  # host memory: at most a quarter of it, so that a large model's slots cannot exhaust the machine
        kv_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    return dict(max_batch=args.max_batch, max_queue=args.max_queue, max_seq_len=args.max_seq_len,
                prefill_chunk=args.prefill_chunk, kv_cache_bytes=kv_bytes, block_size=args.block_size,
                prefix_cache=not args.no_prefix_cache, decode_graphs=False if args.enforce_eager else None)


def run(args: argparse.Namespace) -> int:
    import torch

    require_extra("serve", "baichuan serve")  # first: the serving modules import fastapi and uvicorn
    from ..serving import Engine
    from ..serving.api import create_app, serve
    from ..tokenizer import check_text

    api_key = check_flags(args)
    origins = [o.strip() for o in (args.cors_origins or "").split(",") if o.strip()]
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(message)s")
    model, tokenizer = load(args)
    engine = Engine(model, tokenizer, **engine_options(args, model))
    # Clients must be able to send the name back as JSON: no undecodable bytes (lone surrogates) from the shell.
    name = check_text(display_name(args), "the served model name")  # --served-model-name, else the model's
    if api_key is None and not _is_loopback(args.host):
        err(f"baichuan serve: warning: listening on {args.host} without an API key; anyone who can reach this "
            f"address can use the model (give --api-key)")
    app = create_app(engine, model_name=name, api_key=api_key, cors_origins=origins,
                     max_request_bytes=args.max_request_bytes, read_timeout=args.read_timeout)
    err(f"baichuan serve: model '{name}' on http://{args.host}:{args.port}/v1 (up to {engine.max_batch} "
        f"sequences of {engine.context_length} positions; KV cache {engine.cache.nbytes() / 2**30:.2f} GiB = "
        f"{engine.blocks.num_blocks} blocks of {engine.block_size} positions; prefix cache "
        f"{'on' if engine.prefix_cache else 'off'})")
    serve(app, host=args.host, port=args.port, log_level=args.log_level, read_timeout=args.read_timeout,
          keep_alive_timeout=args.keep_alive_timeout)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

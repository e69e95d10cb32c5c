"""Decode speed: tokens/s, ms/token, achieved GB/s and % of the measured memory-bandwidth roofline.

Random weights of a real shape (``--random-weights baichuan-13b``) or a checkpoint (``--model``).
``--compare`` reproduces the seed's table: Baichuan-13B against the LLaMA-13B shape, same settings.
"""

from __future__ import annotations

import argparse

import torch

from ..bench.speed import prepare
from .common import add_dtype_argument, add_weight_layout_arguments, device_arg, model_arg

HELP = "measure decode speed against the memory-bandwidth roofline"

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, type=model_arg, help="checkpoint folder or hub id")
    src.add_argument("--random-weights", default=None, metavar="PRESET|CONFIG",
                     help="random weights of a preset shape (baichuan-13b, baichuan-7b, llama-13b, baichuan-1b, "
                          "...), of a preset with fewer layers (baichuan-13b:2: the real matrices, less memory) or of a "
                          "config.json (default: baichuan-13b on GPU, baichuan-1b on CPU)")
    p.add_argument("--compare", action="store_true",
                   help="the seed's table: baichuan-13b and llama-13b shapes with random weights")
    add_dtype_argument(p, help="weight dtype; auto = float16 on GPU, bfloat16 on CPU (with --model: the "
                               "checkpoint's torch_dtype when it has one)")
    p.add_argument("--device", default=None, type=device_arg, help="default: cuda when available, else cpu")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens before the timed decode")
    p.add_argument("--gen-len", type=int, default=None, help="new tokens (default: 2048 on GPU, 128 on CPU)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the decode step (default on GPU)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager decode steps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--quantize", default=None, choices=["int8", "int4"],
                   help="weight-only quantization, as every other command (int4: --group-size)")
    add_weight_layout_arguments(p)
    p.add_argument("--quantize-lm-head", action="store_true", help="with --quantize: lm_head quantized too")
    p.add_argument("--against-llama-cpp", default=None, metavar="LLAMA_BENCH",
                   help="path of llama.cpp's llama-bench: export the same random weights to GGUF and compare "
                        "decode and prefill per precision, alternating runs (see docs/benchmarks.md)")
    p.add_argument("--against-original", action="store_true",
                   help="time the original release's decode loop (eager, torch.cat cache, ALiBi table; "
                        "baichuan13b.bench.original) on the same weights, alternating with ours, and print the "
                        "ratio (--rounds rounds)")
    p.add_argument("--precisions", default="fp32,bf16,int8,int4",
                   help="with --against-llama-cpp: which of fp32,bf16,int8,int4 to compare")
    p.add_argument("--prefill-len", type=int, default=512, help="with --against-llama-cpp: prefill tokens")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --against-llama-cpp / --against-original: alternating rounds (best kept)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")


def _bench_dtype(args: argparse.Namespace, on_gpu: bool) -> torch.dtype:
    """``--dtype``, where auto means the checkpoint's torch_dtype (with --model) or float16 on GPU, bfloat16 on CPU."""
    name = args.dtype
    if name == "auto" and args.model:
        from ..config import ModelConfig

        name = ModelConfig.from_pretrained(args.model).torch_dtype or "auto"
        name = name if name in DTYPES else "auto"
    if name == "auto":
        name = "float16" if on_gpu else "bfloat16"
    return DTYPES[name]


def run(args: argparse.Namespace) -> int:
    from ..bench.speed import config_from_spec, copy_bandwidth, measure, random_model, write_json
    from ..model import BaichuanForCausalLM
    from ..quantization import QuantizationConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device not in (None, "auto") else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    dtype = _bench_dtype(args, on_gpu)
    gen_len = args.gen_len or (2048 if on_gpu else 128)
    compile = on_gpu if args.compile is None else args.compile
    if args.batch < 1 or args.prompt_len < 1 or gen_len < 1:
        raise ValueError("--batch, --prompt-len and --gen-len must be positive")
    if args.against_llama_cpp:
        from ..bench.llama_cpp import run_comparison

        return run_comparison(args, gen_len=gen_len)
    if args.against_original:
        from ..bench.original import run_comparison as against_original

        return against_original(args, gen_len=gen_len, dtype=dtype, device=device, compile=compile)
    bandwidth = copy_bandwidth(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if on_gpu else 'CPU'}), torch {torch.__version__}, "
          f"measured copy bandwidth {bandwidth:.1f} GB/s, {torch.get_num_threads()} CPU threads", flush=True)

    if args.compare:
        specs = ["baichuan-13b", "llama-13b"]
    elif args.model:
        specs = []
    else:
        specs = [args.random_weights or ("baichuan-13b" if on_gpu else "baichuan-1b")]
    results = []
    if args.model:
        model = prepare(BaichuanForCausalLM.from_pretrained(args.model, torch_dtype=dtype, device_map=str(device)),
                        args)
        results.append(measure(model, name=str(args.model).rstrip("/").split("/")[-1], batch=args.batch,
                               prompt_len=args.prompt_len, gen_len=gen_len, compile=compile,
                               bandwidth_gbs=bandwidth, quantize=args.quantize))
        print(results[-1].line(), flush=True)
    for spec in specs:
        config = config_from_spec(spec)
        qconfig = None
        if args.quantize:  # built quantized, one matrix at a time: the 13B in int8 needs no 26 GB of bfloat16 first
            qconfig = QuantizationConfig.from_option(args.quantize, group_size=args.group_size,
                                                     quantize_lm_head=args.quantize_lm_head)
        model = prepare(random_model(config, dtype, device, quantize=qconfig), args, quantize=None)
        results.append(measure(model, name=spec, batch=args.batch, prompt_len=args.prompt_len, gen_len=gen_len,
                               compile=compile, bandwidth_gbs=bandwidth, quantize=args.quantize))
        print(results[-1].line(), flush=True)
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    if args.json:
        write_json(results, args.json)
    return 0

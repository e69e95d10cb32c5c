"""Side by side with llama.cpp: the same weights, our decode and ``llama-bench`` alternating in one run.

``baichuan bench --random-weights baichuan-232m --against-llama-cpp PATH/llama-bench --threads 2`` saves random
weights (or uses ``--model``), exports them to GGUF per precision (fp32 -> f32, bf16 -> bf16, int8 -> q8_0,
int4 -> q4_0), then for ``--rounds`` rounds runs, per precision, this project's greedy decode and prefill and
``llama-bench -p PREFILL -n GEN`` one after the other; the best of the rounds is kept (other jobs share the
machine). Printed per precision: decode and prefill tokens/s of both and the ratio ours / llama.cpp, and the
achieved weight-read GB/s of each decode against the copy bandwidth measured in the same run.

llama.cpp's baichuan loader runs ALiBi only for 40 layers and RoPE only for 32 (see
:mod:`baichuan13b.export.gguf`), so for other shapes (the 232M preset has 8) its figures are speeds of the same
weights without the position bias: the matrix work, which dominates, is identical.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PRECISIONS = {  # ours -> (compute dtype, quantization, GGUF outtype)
    "fp32": (torch.float32, None, "f32"),
    "bf16": (torch.bfloat16, None, "bf16"),
    "int8": (torch.bfloat16, "int8", "q8_0"),
    "int4": (torch.bfloat16, "int4", "q4_0"),
}


@dataclass
class Row:
    """Best figures of one precision; tokens/s at batch 1, GB/s of weights read per decode step."""

    precision: str
    gguf_type: str
    ours_decode: float = 0.0
    llama_decode: float = 0.0
    ours_prefill: float = 0.0
    llama_prefill: float = 0.0
    ours_weight_bytes: int = 0
    llama_weight_bytes: int = 0

    @property
    def decode_ratio(self) -> float:
        return self.ours_decode / self.llama_decode if self.llama_decode else 0.0

    @property
    def prefill_ratio(self) -> float:
        return self.ours_prefill / self.llama_prefill if self.llama_prefill else 0.0


def llama_bench(binary: str, gguf: Path, threads: int, prefill: int, gen: int) -> tuple[float, float]:
    """(decode tokens/s, prefill tokens/s) from one ``llama-bench`` run (JSON output)."""
    cmd = [binary, "-m", str(gguf), "-t", str(threads), "-p", str(prefill), "-n", str(gen), "-r", "1", "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"llama-bench failed ({' '.join(cmd)}): {' / '.join(tail)}")
    decode = prefill_ts = 0.0
    for entry in json.loads(r.stdout):
        if entry.get("n_gen", 0) > 0:
            decode = float(entry["avg_ts"])
        elif entry.get("n_prompt", 0) > 0:
            prefill_ts = float(entry["avg_ts"])
    return decode, prefill_ts


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of the tensors a decode step reads: everything but the token embedding table."""
    import gguf

    reader = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


@torch.inference_mode()
def prefill_tokens_per_s(model, length: int) -> float:
    """Tokens/s of one batch-1 prefill of ``length`` random tokens into a fresh cache (best of two)."""
    ids = torch.randint(3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(2))
    best = float("inf")
    for _ in range(2):
        cache = model.new_cache(1, length)
        t0 = time.perf_counter()
        model(ids, cache=cache, logits_to_keep=1)
        best = min(best, time.perf_counter() - t0)
    return length / best


def _source_folder(args: argparse.Namespace, tmp: Path) -> Path:
    """A float checkpoint folder with a tokenizer: ``--model`` or the random weights saved in the official layout."""
    from ..checkpoint import DEMO_MODEL_DIR, resolve_model_path
    from ..tokenizer import BaichuanTokenizer
    from .speed import config_from_spec, random_model

    if args.model:
        return resolve_model_path(args.model)
    config = config_from_spec(args.random_weights or "baichuan-232m")
    if config.max_position < args.prefill_len + args.prompt_len:
        raise ValueError(f"--prefill-len {args.prefill_len} exceeds the model's context {config.max_position}")
    folder = tmp / "weights"
    random_model(config, torch.float32, "cpu").save_pretrained(folder)
    # Random weights have no tokenizer of their own; the demo's vocabulary fills the GGUF's tokenizer fields
    # (llama-bench feeds random token ids, so it is never used to encode).
    BaichuanTokenizer.from_pretrained(DEMO_MODEL_DIR).save_pretrained(folder)
    return folder


def _source_config(args: argparse.Namespace):
    from ..config import ModelConfig
    from .speed import config_from_spec

    return ModelConfig.from_pretrained(args.model) if args.model else \
        config_from_spec(args.random_weights or "baichuan-232m")


def _int4_group_size(args: argparse.Namespace, config) -> int:
    """``--group-size`` when it divides every layer's input width, else the largest of 128 / 64 / 32 that does
    (q4_0 itself uses blocks of 32); an error when none does."""
    widths = (config.hidden_size, config.intermediate_size)
    for g in (args.group_size, 128, 64, 32):
        if all(w % g == 0 for w in widths):
            if g != args.group_size:
                print(f"int4: group size {g} (--group-size {args.group_size} does not divide {widths})", flush=True)
            return g
    raise ValueError(f"int4: no group size of 32/64/128 divides the layer widths {widths}; drop int4 from --precisions")


def run_comparison(args: argparse.Namespace, gen_len: int) -> int:
    """``baichuan bench --against-llama-cpp``: print the side-by-side table (and write ``--json``)."""
    from ..checkpoint import atomic_write_text
    from .speed import prepare
    from ..export.gguf import export_gguf, require_gguf
    from ..model import BaichuanForCausalLM
    from .speed import copy_bandwidth, measure, weight_bytes_per_token

    require_gguf()
    binary = shutil.which(args.against_llama_cpp) or args.against_llama_cpp
    if not Path(binary).is_file():
        raise ValueError(f"--against-llama-cpp {args.against_llama_cpp!r}: no such llama-bench binary")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"--precisions: unknown {unknown}; choose from {', '.join(PRECISIONS)}")
    if args.device not in (None, "cpu"):
        raise ValueError("--against-llama-cpp compares CPU decoding: leave --device unset or cpu")
    if "int4" in precisions:
        args.group_size = _int4_group_size(args, _source_config(args))
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="baichuan-vs-llama-") as tmp_name:
        tmp = Path(tmp_name)
        folder = _source_folder(args, tmp)
        rows = {p: Row(p, PRECISIONS[p][2]) for p in precisions}
        files = {}
        for p in precisions:
            files[p] = export_gguf(folder, tmp / f"{p}.gguf", PRECISIONS[p][2], allow_position_mismatch=True,
                                   progress=False)
            rows[p].llama_weight_bytes = gguf_weight_bytes(files[p])
        bandwidth = copy_bandwidth(device)
        print(f"CPU, {threads} threads, torch {torch.__version__}, copy bandwidth {bandwidth:.1f} GB/s "
              f"(read + written, the roofline's bandwidth as in `baichuan bench`); batch 1, decode "
              f"{gen_len} tokens after {args.prompt_len}, prefill {args.prefill_len}; best of {args.rounds} "
              f"alternating rounds; our decode steps {'compiled' if args.compile else 'eager'}", flush=True)
        for rnd in range(args.rounds):
            for p in precisions:
                dtype, quant, _ = PRECISIONS[p]
                model = prepare(BaichuanForCausalLM.from_pretrained(folder, torch_dtype=dtype, device_map="cpu",
                                                                    progress=False), args, quantize=quant)
                res = measure(model, name=p, batch=1, prompt_len=args.prompt_len, gen_len=gen_len,
                              bandwidth_gbs=bandwidth, quantize=quant, compile=bool(args.compile))
                row = rows[p]
                row.ours_weight_bytes = weight_bytes_per_token(model)
                row.ours_decode = max(row.ours_decode, res.tokens_per_s)
                row.ours_prefill = max(row.ours_prefill, prefill_tokens_per_s(model, args.prefill_len))
                del model
                decode, prefill = llama_bench(binary, files[p], threads, args.prefill_len, gen_len)
                row.llama_decode = max(row.llama_decode, decode)
                row.llama_prefill = max(row.llama_prefill, prefill)
                print(f"  round {rnd + 1} {p:5s}: ours {res.tokens_per_s:7.1f} tok/s, llama.cpp {decode:7.1f}",
                      flush=True)
        lm_head = "lm_head quantized" if args.quantize_lm_head else "lm_head in bf16 (llama.cpp: quantized)"
        print(f"\n| ours / llama.cpp | decode tok/s | ratio | GB/s (% of copy bandwidth) | "
              f"prefill {args.prefill_len} tok/s | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows.values():
            ours_gbs = r.ours_weight_bytes * r.ours_decode / 1e9
            llama_gbs = r.llama_weight_bytes * r.llama_decode / 1e9
            print(f"| {r.precision} / {r.gguf_type} | {r.ours_decode:.1f} / {r.llama_decode:.1f} | "
                  f"{r.decode_ratio:.2f}x | {ours_gbs:.1f} ({100 * ours_gbs / bandwidth:.0f}%) / {llama_gbs:.1f} "
                  f"({100 * llama_gbs / bandwidth:.0f}%) | {r.ours_prefill:.0f} / {r.llama_prefill:.0f} | "
                  f"{r.prefill_ratio:.2f}x |")
        if any(PRECISIONS[p][1] for p in precisions):
            print(f"(int8/int4: {lm_head})")
        if args.json:
            atomic_write_text(args.json, json.dumps({
                "threads": threads, "copy_bandwidth_gbs": bandwidth, "torch": torch.__version__,
                "gen_len": gen_len, "prompt_len": args.prompt_len, "prefill_len": args.prefill_len,
                "rounds": args.rounds, "quantize_lm_head": args.quantize_lm_head,
                "rows": [{**asdict(r), "decode_ratio": r.decode_ratio, "prefill_ratio": r.prefill_ratio}
                         for r in rows.values()]}, indent=2) + "\n")
    return 0

"""Training throughput on CPU or GPU: tokens/s of LoRA and full fine-tuning steps on a random model.

    python -m baichuan13b.bench.train --preset small-100m --mode lora --batch 4 --seq 256 --steps 4
    python -m baichuan13b.bench.train --preset baichuan-13b --mode lora --batch 1 --seq 512 --dtype bfloat16

Prints one line per measurement (the first step is a warm-up and is not timed), plus peak CUDA memory on GPUs.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..config import ModelConfig
from ..model import BaichuanForCausalLM
from ..training.lora import LoraSettings, add_lora

# ~110M parameters: hidden 768, 12 layers, 12 heads, intermediate 2048, vocab 64,000 (the ANCHORS.md CPU size).
SMALL_100M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048,
                  vocab_size=64000)


def measure(config: ModelConfig, mode: str, batch: int, seq: int, steps: int, dtype: torch.dtype,
            device: str, gradient_checkpointing: bool = False) -> dict:
    """Mean tokens/s of ``steps`` optimizer steps (after one warm-up step) of LoRA (rank 8, W_pack) or full."""
    # Built directly in ``dtype`` on ``device`` (no float32 copy first: the 13B shape would not fit twice).
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = BaichuanForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, config.initializer_range)
    model.model.init_position_buffers(device)
    if mode == "lora":
        add_lora(model, LoraSettings(r=8, lora_alpha=16, target_modules=["W_pack"]), seed=0)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (batch, seq), generator=gen).to(device)

    def step() -> None:
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {"mode": mode, "params": model.num_parameters(), "trainable": sum(p.numel() for p in params),
           "step_s": round(dt, 3), "tokens_per_s": round(batch * seq / dt, 1)}
    if device.startswith("cuda"):
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small-100m", help="small-100m or a ModelConfig preset (baichuan-232m, ...)")
    p.add_argument("--mode", default="lora,full", help="lora, full or both (comma separated)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()
    config = (ModelConfig(**SMALL_100M) if a.preset == "small-100m" else ModelConfig.from_name(a.preset))
    dtype = getattr(torch, a.dtype)
    print(f"torch {torch.__version__}, {a.device}, threads {torch.get_num_threads()}, preset {a.preset}, "
          f"batch {a.batch} x {a.seq}, {a.dtype}")
    for mode in a.mode.split(","):
        print(measure(config, mode, a.batch, a.seq, a.steps, dtype, a.device, a.gradient_checkpointing), flush=True)


if __name__ == "__main__":
    main()

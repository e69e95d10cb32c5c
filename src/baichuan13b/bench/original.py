"""The original release's decode loop, as the baseline that speed-ups are measured against in the same run.

The official Baichuan-13B remote code decodes eagerly the Hugging Face way: every step concatenates the new key
and value to the cache of every layer (``torch.cat``, a fresh copy of the whole cache), slices its ALiBi table
(a [heads, context, context] tensor built once: causal ``-inf`` above the diagonal plus ``slope * key position``)
to the current length, multiplies queries and keys with ``matmul``, clamps the scores at the dtype's minimum,
takes a softmax in the weights' dtype, and computes ``lm_head`` over every prompt position at the prefill;
``generate`` then appends the token to ``input_ids`` and takes the argmax of the last position. This module runs
that algorithm on this project's modules (embedding, norms, projections and MLPs are called as they are, so the
weights and their kernels are the same: pass a model with plain ``nn.Linear`` weights, as the original has), so
that ``baichuan bench --against-original`` can time both in one run. It is a re-implementation of the costs and
numerics described above, written for this benchmark; greedy tokens equal this project's (tested in float32).

The 13B's architecture (ALiBi) only: the 7B's rotary code is a different file of the original release.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..model import BaichuanForCausalLM, alibi_slopes


def check_supported(config) -> None:
    """The original-code baseline is the 13B's ALiBi code: a clear error for any other position encoding."""
    if config.position_embedding != "alibi":
        raise ValueError("the original-code baseline is the 13B's ALiBi code; this model uses "
                         f"{config.position_embedding} positions")


def future_mask(num_heads: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The original's ALiBi table [heads, length, length]: ``-inf`` above the diagonal, ``slope * key position``
    elsewhere (a per-row constant away from the relative bias, so the softmax is the same)."""
    slopes = alibi_slopes(num_heads).to(device)
    positions = torch.arange(length, device=device, dtype=torch.float32)
    bias = slopes[:, None, None] * positions[None, None, :]  # [H, 1, L]
    causal = torch.triu(torch.full((length, length), float("-inf"), device=device), 1)  # [L, L]
    return (causal[None] + bias).to(dtype)  # [H, L, L]


def _attention(attn, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
               mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One attention block the original way. x [B, T, C], mask [H, S, S] -> ([B, T, C], the grown (k, v))."""
    B, T, C = x.shape
    H, D = attn.num_heads, attn.head_dim
    q, k, v = attn.W_pack(x).split(C, dim=-1)  # 3 x [B, T, C]
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
    if past is not None:
        k = torch.cat([past[0], k], dim=2)  # [B, H, S, D]: a new copy of the whole cache, every step
        v = torch.cat([past[1], v], dim=2)
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D)  # [B, H, T, S]
    if T == 1:
        mask = mask[:, -1:, :]  # [H, 1, S]
    scores = scores + mask[None]
    scores = torch.max(scores, torch.tensor(torch.finfo(scores.dtype).min, dtype=scores.dtype,
                                            device=scores.device))
    probs = torch.softmax(scores, dim=-1)  # in the weights' dtype, as the original
    out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, C)  # [B, T, C]
    return attn.o_proj(out), (k, v)


def _forward(model: BaichuanForCausalLM, ids: torch.Tensor, past: list | None,
             table: torch.Tensor) -> tuple[torch.Tensor, list]:
    """Logits [B, T, vocab] of every position of ``ids`` [B, T] after ``past``, and the grown cache."""
    start = 0 if past is None else past[0][0].shape[2]
    S = start + ids.shape[1]
    mask = table[:, :S, :S]  # sliced from the table every step, as the original's get_alibi_mask
    x = model.model.embed_tokens(ids)
    grown = []
    for i, layer in enumerate(model.model.layers):
        h, kv = _attention(layer.self_attn, layer.input_layernorm(x), None if past is None else past[i], mask)
        x = x + h
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        grown.append(kv)
    return model.lm_head(model.model.norm(x)), grown


@torch.inference_mode()
def original_stream(model: BaichuanForCausalLM, input_ids: torch.Tensor, max_new_tokens: int,
                    **_: object) -> Iterator[torch.Tensor]:
    """Greedy tokens [B] of the original decode loop, one step at a time (no eos stop: a benchmark).

    ``input_ids`` [B, T] without padding. The model must be ALiBi with plain (not prepacked) linear weights.
    """
    from ..cpu_linear import has_cpu_layout

    check_supported(model.config)
    if has_cpu_layout(model):
        raise ValueError("the original-code baseline needs plain nn.Linear weights (the original has no "
                         "prepacking): load the model without prepack (--no-prepack)")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    device = model.device
    ids = input_ids.to(device)
    table = future_mask(model.config.num_attention_heads, model.config.max_position, model.dtype, device)
    logits, past = _forward(model, ids, None, table)
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1)  # [B]
        yield nxt
        if step == max_new_tokens - 1:
            return
        ids = torch.cat([ids, nxt[:, None]], dim=-1)  # generate's input_ids bookkeeping
        logits, past = _forward(model, ids[:, -1:], past, table)


def run_comparison(args, *, gen_len: int, dtype: torch.dtype, device: torch.device, compile: bool) -> int:
    """``baichuan bench --against-original``: this project's decode (as ``baichuan bench`` runs it: prepacked,
    ``--quantize``, ``--compile``) and the original loop on the same weights (plain, unquantized), alternating for
    ``--rounds`` rounds; prints each best and the ratio ours / original."""
    from ..config import ModelConfig
    from .speed import SpeedResult, config_from_spec, copy_bandwidth, measure, prepare, random_model, write_json

    if args.batch != 1:
        raise ValueError("--against-original compares batch-1 decoding (--batch 1)")
    if args.rounds < 1:
        raise ValueError("--rounds must be positive")
    if args.model:
        name = str(args.model).rstrip("/").split("/")[-1]
        check_supported(ModelConfig.from_pretrained(args.model))

        def load():
            return BaichuanForCausalLM.from_pretrained(args.model, torch_dtype=dtype, device_map=str(device))
    else:
        name = args.random_weights or "baichuan-232m"
        config = config_from_spec(name)
        check_supported(config)

        def load():
            return random_model(config, dtype, device, seed=0)  # the same weights every time
    ours, original = prepare(load(), args), load()
    bandwidth = copy_bandwidth(device)
    print(f"device {device}, torch {torch.__version__}, measured copy bandwidth {bandwidth:.1f} GB/s, "
          f"{torch.get_num_threads()} CPU threads; {name}, {str(dtype).replace('torch.', '')}, prompt "
          f"{args.prompt_len}, {gen_len} new tokens, {args.rounds} alternating rounds (best kept)", flush=True)
    best: dict[str, SpeedResult] = {}
    for r in range(args.rounds):
        for label, model, kwargs in (("ours", ours, dict(compile=compile, quantize=args.quantize)),
                                     ("original", original, dict(stream=original_stream))):
            res = measure(model, name=label, prompt_len=args.prompt_len, gen_len=gen_len,
                          bandwidth_gbs=bandwidth, **kwargs)
            print(f"round {r + 1}: {res.line()}", flush=True)
            if label not in best or res.tokens_per_s > best[label].tokens_per_s:
                best[label] = res
    o, b = best["ours"], best["original"]
    print(f"decode ours / original: {o.tokens_per_s:.1f} / {b.tokens_per_s:.1f} tok/s = "
          f"{o.tokens_per_s / b.tokens_per_s:.2f}x; time to first token {o.time_to_first_token_s * 1e3:.0f} / "
          f"{b.time_to_first_token_s * 1e3:.0f} ms", flush=True)
    if args.json:
        write_json([o, b], args.json)
    return 0

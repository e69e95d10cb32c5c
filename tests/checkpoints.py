"""Tiny checkpoints in the official layouts, written WITHOUT ``baichuan13b.checkpoint`` (torch.save and
safetensors directly), so that loading is tested against files built independently of our writer.

Import from tests as ``from checkpoints import tiny_config, write_checkpoint`` (pytest's default "prepend"
import mode puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from baichuan13b.config import ALIBI_ARCHITECTURE, ROPE_ARCHITECTURE, ModelConfig

LAYOUTS = ("bin", "bin-sharded", "safetensors", "safetensors-sharded")

# The shapes every test runs on: ALiBi with a non-power-of-two head count, ALiBi and RoPE with 8 heads.
SHAPES = {
    "alibi-5h": dict(arch="alibi", heads=5, hidden=80),
    "alibi-8h": dict(arch="alibi", heads=8, hidden=64),
    "rope-8h": dict(arch="rope", heads=8, hidden=64),
}

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"


def tiny_config(arch: str = "alibi", heads: int = 8, hidden: int = 64, layers: int = 2, vocab: int = 128,
                intermediate: int | None = None, max_position: int = 64, torch_dtype: str = "bfloat16",
                **overrides) -> ModelConfig:
    """A small ModelConfig: ``arch`` is ``"alibi"`` (13B architecture name) or ``"rope"`` (7B)."""
    architecture = {"alibi": ALIBI_ARCHITECTURE, "rope": ROPE_ARCHITECTURE}[arch]
    return ModelConfig(architectures=[architecture], vocab_size=vocab, hidden_size=hidden,
                       intermediate_size=intermediate or 2 * hidden + 16, num_hidden_layers=layers,
                       num_attention_heads=heads, max_position=max_position, torch_dtype=torch_dtype,
                       initializer_range=0.1, **overrides)


def state_dict_of(model_or_state_dict) -> dict[str, torch.Tensor]:
    """A plain, detached, contiguous CPU state dict (own storage per tensor)."""
    sd = model_or_state_dict if isinstance(model_or_state_dict, Mapping) else model_or_state_dict.state_dict()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def shard_names(layout: str, n: int) -> list[str]:
    if layout.startswith("bin"):
        return [f"pytorch_model-{k:05d}-of-{n:05d}.bin" for k in range(1, n + 1)]
    return [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]


def split_evenly(names: list[str], n: int) -> dict[str, int]:
    """Shard number (0-based) for each name, in order, ``n`` nearly equal groups."""
    return {name: min(n - 1, i * n // len(names)) for i, name in enumerate(names)}


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """One weight file, with torch.save for ``.bin`` (an OrderedDict, as transformers wrote them) or
    safetensors for ``.safetensors``."""
    from collections import OrderedDict

    if path.suffix == ".bin":
        torch.save(OrderedDict(tensors), path)
    else:
        save_file(dict(tensors), str(path), metadata={"format": "pt"})


def write_checkpoint(folder, model_or_state_dict, config: ModelConfig | None, layout: str, *, shards: int = 3,
                     assignment: Mapping[str, int] | None = None, extra: Mapping[str, torch.Tensor] | None = None,
                     generation_config: dict | None = None) -> Path:
    """Write a checkpoint in one of :data:`LAYOUTS` to ``folder`` (created) and return it.

    ``config`` is written as ``config.json`` (``None``: no config.json).  Sharded layouts split the tensors over
    ``shards`` files named like the official ones (or by ``assignment``: name -> 0-based shard) and write the
    index with ``metadata.total_size`` and ``weight_map``.  ``extra`` tensors are added (e.g. RoPE inv_freq).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = state_dict_of(model_or_state_dict)
    if config is not None and config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    if extra:
        sd.update({k: v.contiguous().clone() for k, v in extra.items()})
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config, indent=2), encoding="utf-8")
    if not layout.endswith("-sharded"):
        write_tensors(folder / ("pytorch_model.bin" if layout == "bin" else "model.safetensors"), sd)
        return folder
    assignment = dict(assignment) if assignment is not None else split_evenly(list(sd), shards)
    n = max(assignment.values()) + 1
    names = shard_names(layout, n)
    for k, file_name in enumerate(names):
        write_tensors(folder / file_name, {name: t for name, t in sd.items() if assignment[name] == k})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
        "weight_map": {name: names[assignment[name]] for name in sorted(sd)},
    }
    index_name = "pytorch_model.bin.index.json" if layout.startswith("bin") else "model.safetensors.index.json"
    (folder / index_name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder


def rope_inv_freq_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """The ``rotary_emb.inv_freq`` buffers Baichuan-7B checkpoints carry, one per layer."""
    d = config.head_dim
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    return {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv.clone() for i in range(config.num_hidden_layers)}


def write_chat_model(folder, tokenizer_dir, *, generation_config: dict, max_position: int = 128, seed: int = 1,
                     never_eos: bool = False) -> Path:
    """A tiny random chat model folder (2 layers, hidden 64, float32, safetensors) with the tokenizer files of
    ``tokenizer_dir`` copied in: what the CLI, web and serving tests load.

    ``never_eos`` zeroes the eos row of ``lm_head``, so answers run to their length (a random model would end
    some answers after a token or two).
    """
    import shutil

    from baichuan13b.model import BaichuanForCausalLM
    from baichuan13b.tokenizer import BaichuanTokenizer

    tok = BaichuanTokenizer.from_pretrained(tokenizer_dir)
    cfg = tiny_config(vocab=tok.vocab_size, max_position=max_position, torch_dtype="float32")
    model = BaichuanForCausalLM.from_config(cfg, seed=seed)
    if never_eos:
        with torch.no_grad():
            model.lm_head.weight[cfg.eos_token_id] = 0
    folder = write_checkpoint(folder, model, cfg, "safetensors", generation_config=generation_config)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, folder / f.name)
    return folder

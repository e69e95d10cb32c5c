"""Tiny model folders and synthetic datasets for the training tests (import as ``from training_helpers import ...``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from checkpoints import tiny_config, write_checkpoint

from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tokenizer import BaichuanTokenizer

# The tiny tokenizer of conftest.py has <reserved_102>/<reserved_103> at ids 3/4: the chat roles here.
GENERATION = dict(max_new_tokens=16, user_token_id=3, assistant_token_id=4, do_sample=False, eos_token_id=2)
# Characters of the tiny tokenizer's corpus (one piece each): distinct questions.
CHARS = "今天气很好我们去公园散步吧大语言模型一次生成个词元中文和英混合的句子也可以百川是开源"
WORDS = ["fox", "dog", "world", "hello", "tokenizer", "models", "text", "token", "brown", "lazy", "quick", "small"]


def make_base(folder: Path, tokenizer_dir: Path, *, hidden: int = 64, heads: int = 4, layers: int = 2,
              seed: int = 1, arch: str = "alibi") -> Path:
    """A random float32 model folder in the official layout, with tokenizer and generation config."""
    tok = BaichuanTokenizer.from_pretrained(tokenizer_dir)
    cfg = tiny_config(arch=arch, vocab=tok.vocab_size, hidden=hidden, heads=heads, layers=layers,
                      max_position=128, torch_dtype="float32")
    model = BaichuanForCausalLM.from_config(cfg, seed=seed)
    write_checkpoint(folder, model, cfg, "safetensors", generation_config=GENERATION)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def qa_pairs(n: int = 32) -> list[dict]:
    """``n`` alpaca records: a question naming one of ``n`` characters -> two words only memorisation gives."""
    return [{"instruction": f"问{CHARS[i]}", "input": "", "output": f"{WORDS[i % 12]} {WORDS[(i // 3) % 12]}"}
            for i in range(n)]


def write_dataset(folder: Path, records: list, name: str = "qa", file_name: str = "qa.json",
                  **info) -> Path:
    """``folder/file_name`` with ``records`` plus a dataset_info.json naming it ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file_name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({name: {"file_name": file_name, **info}}),
                                              encoding="utf-8")
    return folder


def finetune_argv(base: Path, data: Path, out: Path, **flags) -> list[str]:
    """Seed-style flags for a short quiet run; ``flags`` override (``None`` drops a flag, ``True`` = bare flag)."""
    merged = dict(stage="sft", model_name_or_path=str(base), do_train=True, dataset="qa", dataset_dir=str(data),
                  finetuning_type="lora", output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-3,
                  max_steps=4, logging_steps=1, save_steps=1000, cutoff_len=64, lr_scheduler_type="cosine",
                  disable_tqdm=True, seed=0)
    merged.update(flags)
    argv = []
    for k, v in merged.items():
        if v is None or v is False:
            continue
        argv += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return argv


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "trainer_log.jsonl").read_text().splitlines()]

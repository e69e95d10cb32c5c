"""Build the demo model from nothing with the project's own pipeline.

1. generate the data (:mod:`.data`) and train the SentencePiece tokenizer (:mod:`.tokenizer`);
2. write a randomly initialised Baichuan-13B-architecture model (ALiBi, ``BaichuanForCausalLM``) of
   :data:`DEMO_SHAPE`, in the official folder layout;
3. pre-train it on the fact sentences (``baichuan finetune --stage pt``);
4. fine-tune it in the official chat format (``baichuan finetune --stage sft --finetuning_type full``);
5. write the result (safetensors, config, generation config, tokenizer) to the output folder.

``baichuan train-demo --output DIR`` runs it; the shipped ``src/baichuan13b/demo/model`` is its output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..config import ALIBI_ARCHITECTURE, ModelConfig
from ..generation import GenerationConfig
from ..model import BaichuanForCausalLM
from .data import write_dataset
from .tokenizer import ASSISTANT_TOKEN_ID, USER_TOKEN_ID, train_tokenizer

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "model"

DEMO_SHAPE = dict(hidden_size=256, intermediate_size=768,  # in-features divisible by 128 (int4 groups)
                  num_hidden_layers=4, num_attention_heads=8,
                  max_position=512)

# Training settings of the two stages (the flags of `baichuan finetune`).
PRETRAIN_FLAGS = ["--num_train_epochs", "20", "--learning_rate", "2e-3", "--per_device_train_batch_size", "16",
                  "--cutoff_len", "128", "--warmup_ratio", "0.05", "--lr_scheduler_type", "cosine"]
SFT_FLAGS = ["--num_train_epochs", "8", "--learning_rate", "2e-3", "--per_device_train_batch_size", "32",
             "--cutoff_len", "256", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine"]


def demo_generation_config() -> GenerationConfig:
    """Greedy answers (the demo's facts have one right answer), role ids of the demo tokenizer."""
    return GenerationConfig(max_new_tokens=128, do_sample=False, repetition_penalty=1.0,
                            user_token_id=USER_TOKEN_ID, assistant_token_id=ASSISTANT_TOKEN_ID,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _finetune(argv: list[str]) -> None:
    from ..training.arguments import parse_finetune_args
    from ..training.trainer import train

    train(parse_finetune_args(argv))


def train_demo(output: str | os.PathLike, *, workdir: str | os.PathLike | None = None, seed: int = 0,
               progress: bool = True, epochs: tuple[float, float] | None = None) -> Path:
    """Run the whole recipe and write the demo model folder to ``output`` (replaced as a whole).

    ``epochs`` overrides the (pre-training, fine-tuning) epoch counts, e.g. for a quick smoke run.
    """
    pretrain_flags, sft_flags = list(PRETRAIN_FLAGS), list(SFT_FLAGS)
    if epochs is not None:
        pretrain_flags[1], sft_flags[1] = str(epochs[0]), str(epochs[1])
    output = Path(output)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        data = write_dataset(tmp / "data")
        init = train_tokenizer(tmp / "init")
        from ..tokenizer import BaichuanTokenizer

        vocab = BaichuanTokenizer.from_pretrained(init).vocab_size
        config = ModelConfig(architectures=[ALIBI_ARCHITECTURE], vocab_size=vocab, torch_dtype="float32",
                             **DEMO_SHAPE)
        model = BaichuanForCausalLM.from_config(config, seed=seed)
        model.generation_config = demo_generation_config()
        model.save_pretrained(init, progress=False)
        common = ["--do_train", "--dataset_dir", str(data), "--finetuning_type", "full", "--seed", str(seed),
                  "--logging_steps", "50", "--save_steps", "1000000", "--overwrite_output_dir"]
        if not progress:
            common.append("--disable_tqdm")
        _finetune(["--stage", "pt", "--model_name_or_path", str(init), "--dataset", "demo_pt",
                   "--output_dir", str(tmp / "pt"), *common, *pretrain_flags])
        _finetune(["--stage", "sft", "--model_name_or_path", str(tmp / "pt"), "--dataset", "demo_sft",
                   "--output_dir", str(tmp / "sft"), *common, *sft_flags])
        # The output folder: weights, config, generation config and tokenizer only.
        final = BaichuanForCausalLM.from_pretrained(tmp / "sft", progress=False)
        final.generation_config = demo_generation_config()
        staging = tmp / "final"
        final.save_pretrained(staging, progress=False)
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(init / name, staging / name)
        if output.exists():
            shutil.rmtree(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(output))
    print(f"demo model written to {output} in {time.perf_counter() - t0:.0f} s "
          f"({torch.get_num_threads()} threads)", flush=True)
    return output

"""The fine-tuning flags, spelled as LLaMA-Efficient-Tuning / Hugging Face ``TrainingArguments`` spell them, so
the seed's commands run by changing only the program name (``python src/train_bash.py`` -> ``baichuan finetune``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence


def _str_to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y", "t"):
        return True
    if v in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


DEFAULT_CUTOFF_LEN = 1024


@dataclass
class FinetuneArguments:
    """Every setting of one fine-tuning or pre-training run (see ``baichuan finetune --help``)."""

    model_name_or_path: str = ""
    output_dir: str = ""
    dataset: str = ""
    stage: str = "sft"
    do_train: bool = False
    dataset_dir: str = "data"
    finetuning_type: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_target: str = "W_pack"
    overwrite_output_dir: bool = False
    overwrite_cache: bool = False
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    preprocessing_num_workers: int | None = None
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    logging_steps: int = 500
    save_steps: int = 500
    eval_steps: int | None = None
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: float = 3.0
    max_steps: int = -1
    dev_ratio: float = 0.0
    evaluation_strategy: str = "no"
    load_best_model_at_end: bool = False
    plot_loss: bool = False
    fp16: bool = False
    bf16: bool = False
    deepspeed: str | None = None
    cutoff_len: int | None = None  # unset: DEFAULT_CUTOFF_LEN, or the model's context when that is shorter
    max_samples: int | None = None
    seed: int = 42
    resume_from_checkpoint: str | None = None
    gradient_checkpointing: bool = False
    skip_bad_records: bool = False
    nan_patience: int = 3
    distributed_engine: str = "auto"
    disable_tqdm: bool = False
    nproc: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work together (each message names the flag)."""
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required")
        if not self.output_dir:
            raise ValueError("--output_dir is required")
        if not self.dataset:
            raise ValueError("--dataset is required (names from dataset_info.json or files, comma separated)")
        if not self.do_train:
            raise ValueError("nothing to do: add --do_train (this command trains; evaluation runs with --dev_ratio)")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 are exclusive")
        positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "logging_steps", "save_steps", "cutoff_len", "lora_rank", "nan_patience")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.eval_steps is not None and self.eval_steps <= 0:
            raise ValueError(f"--eval_steps must be positive, got {self.eval_steps}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("give --num_train_epochs > 0 or --max_steps > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.dev_ratio < 0:
            raise ValueError(f"--dev_ratio must be >= 0, got {self.dev_ratio}")
        if self.evaluation_strategy == "steps" and self.dev_ratio <= 0:
            raise ValueError("--evaluation_strategy steps needs a dev split: give --dev_ratio (or --val_size)")
        if self.load_best_model_at_end:
            if self.evaluation_strategy != "steps":
                raise ValueError("--load_best_model_at_end needs --evaluation_strategy steps and --dev_ratio")
            if self.save_steps % self.eval_steps_resolved:
                raise ValueError(f"--load_best_model_at_end needs --save_steps ({self.save_steps}) to be a multiple "
                                 f"of --eval_steps ({self.eval_steps_resolved}), so that each checkpoint has an "
                                 f"eval loss")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def resolve_cutoff_len(self, context: int | None) -> tuple[int, str | None]:
        """(cutoff length, log line or None) for a model of ``context`` positions (None: no limit).

        An unset ``--cutoff_len`` is :data:`DEFAULT_CUTOFF_LEN`, lowered to the context when that is shorter
        (the log line says so); an explicit value longer than the context is refused."""
        if self.cutoff_len is None:
            if context is not None and context < DEFAULT_CUTOFF_LEN:
                return context, (f"--cutoff_len not given: using the model's context of {context} tokens (the "
                                 f"default {DEFAULT_CUTOFF_LEN} does not fit)")
            return DEFAULT_CUTOFF_LEN, None
        if context is not None and self.cutoff_len > context:
            raise ValueError(f"--cutoff_len {self.cutoff_len} exceeds the model's context of {context} tokens "
                             f"(leave it unset to use {min(context, DEFAULT_CUTOFF_LEN)})")
        return self.cutoff_len, None

    @property
    def eval_steps_resolved(self) -> int:
        """``eval_steps``, defaulting to ``logging_steps`` as in Hugging Face."""
        return self.eval_steps or self.logging_steps

    def deepspeed_stage(self) -> int | None:
        """The ZeRO stage of the ``--deepspeed`` config file (None without one)."""
        if not self.deepspeed:
            return None
        path = Path(self.deepspeed)
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--deepspeed config {path} does not exist") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"--deepspeed config {path} is not valid JSON: {e}") from e
        stage = (cfg.get("zero_optimization") or {}).get("stage", 0) if isinstance(cfg, dict) else None
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"--deepspeed config {path}: zero_optimization.stage must be 0-3, got {stage!r}")
        return int(stage)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# (flag, type, help, choices, aliases); booleans take an optional value as in HfArgumentParser (--fp16, --fp16 true).
_FLAGS: list[tuple[str, Any, str, Sequence[str] | None, Sequence[str]]] = [
    ("stage", str, "sft: supervised fine-tuning on conversations; pt: pre-training on raw text", ("sft", "pt"), ()),
    ("model_name_or_path", str, "base checkpoint folder or hub id", None, ()),
    ("do_train", bool, "train (required, as in the seed's commands)", None, ()),
    ("dataset", str, "dataset names from DATASET_DIR/dataset_info.json or files, comma separated", None, ()),
    ("dataset_dir", str, "folder of dataset_info.json and the data files", None, ()),
    ("finetuning_type", str, "lora: train adapters only; full: every parameter", ("lora", "full"), ()),
    ("lora_rank", int, "LoRA rank r", None, ()),
    ("lora_alpha", float, "LoRA alpha (scaling = alpha / r)", None, ()),
    ("lora_dropout", float, "dropout on the LoRA input", None, ()),
    ("lora_target", str, "W_pack, all (every linear layer but lm_head) or names, comma separated", None, ()),
    ("output_dir", str, "where checkpoints, logs and the final model go", None, ()),
    ("overwrite_output_dir", bool, "train into a non-empty output dir (old checkpoints and logs are removed)",
     None, ()),
    ("overwrite_cache", bool, "accepted for compatibility: encoded data is never cached, so always fresh", None,
     ()),
    ("per_device_train_batch_size", int, "sequences per process per micro-batch", None, ()),
    ("per_device_eval_batch_size", int, "sequences per process per eval batch", None, ()),
    ("gradient_accumulation_steps", int, "micro-batches per optimizer step", None, ()),
    ("preprocessing_num_workers", int, "accepted for compatibility: encoding runs in-process", None, ()),
    ("lr_scheduler_type", str, "learning-rate schedule after warmup", ("cosine", "linear", "constant",
                                                                       "constant_with_warmup"), ()),
    ("warmup_steps", int, "linear warmup steps (wins over --warmup_ratio)", None, ()),
    ("warmup_ratio", float, "warmup as a fraction of the total steps", None, ()),
    ("logging_steps", int, "log (trainer_log.jsonl, console) every N steps", None, ()),
    ("save_steps", int, "checkpoint every N steps", None, ()),
    ("eval_steps", int, "evaluate every N steps (default: --logging_steps)", None, ()),
    ("learning_rate", float, "peak learning rate of AdamW", None, ()),
    ("weight_decay", float, "AdamW weight decay", None, ()),
    ("adam_beta1", float, "AdamW beta1", None, ()),
    ("adam_beta2", float, "AdamW beta2", None, ()),
    ("adam_epsilon", float, "AdamW epsilon", None, ()),
    ("max_grad_norm", float, "clip the gradient norm to this (0 disables)", None, ()),
    ("num_train_epochs", float, "epochs (may be fractional)", None, ()),
    ("max_steps", int, "optimizer steps; > 0 overrides --num_train_epochs", None, ()),
    ("dev_ratio", float, "fraction (or count if >= 1) of the data held out for evaluation", None, ("val_size",)),
    ("evaluation_strategy", str, "evaluate the dev split every --eval_steps", ("no", "steps"),
     ("eval_strategy",)),
    ("load_best_model_at_end", bool, "finish with the checkpoint of lowest eval loss", None, ()),
    ("plot_loss", bool, "write training_loss.png (and training_eval_loss.png)", None, ()),
    ("fp16", bool, "float16 autocast with loss scaling", None, ()),
    ("bf16", bool, "bfloat16 autocast", None, ()),
    ("deepspeed", str, "DeepSpeed JSON config: ZeRO-2/3 -> sharded training (FSDP2), else data parallel (DDP)",
     None, ()),
    ("cutoff_len", int, f"maximum tokens per training sequence (default: {DEFAULT_CUTOFF_LEN}, or the model's "
     "context when that is shorter)", None, ()),
    ("max_samples", int, "use at most this many records per dataset (quick runs)", None, ()),
    ("seed", int, "seed of initialisation, data order and dropout", None, ()),
    ("resume_from_checkpoint", str, "a checkpoint-N folder, or 'last' / 'true' for the newest in --output_dir",
     None, ()),
    ("gradient_checkpointing", bool, "recompute activations in backward (less memory, ~30%% slower)", None, ()),
    ("skip_bad_records", bool, "skip malformed records (counted and reported) instead of stopping", None, ()),
    ("nan_patience", int, "stop after this many consecutive steps with a NaN/inf loss", None, ()),
    ("distributed_engine", str, "with several processes: fsdp2 (sharded), ddp, or auto (fsdp2 for full, ddp for "
     "LoRA; --deepspeed ZeRO-0/1 -> ddp)", ("auto", "fsdp2", "ddp"), ()),
    ("disable_tqdm", bool, "no progress bar", None, ()),
    ("nproc", int, "start this many processes with torchrun (convenience for --nproc_per_node)", None, ()),
]


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every flag of :class:`FinetuneArguments` (seed spelling) to ``parser``."""
    defaults = FinetuneArguments()
    for name, typ, help_text, choices, aliases in _FLAGS:
        opts = [f"--{name}"] + [f"--{a}" for a in aliases]
        if typ is bool:
            parser.add_argument(*opts, dest=name, type=_str_to_bool, nargs="?", const=True,
                                default=getattr(defaults, name), metavar="BOOL", help=help_text)
        else:
            parser.add_argument(*opts, dest=name, type=typ, choices=choices, default=getattr(defaults, name),
                                help=help_text)


def arguments_from_namespace(ns: argparse.Namespace) -> FinetuneArguments:
    """The :class:`FinetuneArguments` of a parsed namespace (other attributes are ignored)."""
    return FinetuneArguments(**{f.name: getattr(ns, f.name) for f in fields(FinetuneArguments) if hasattr(ns, f.name)})


def parse_finetune_args(argv: Sequence[str]) -> FinetuneArguments:
    """Parse seed-style flags (``["--stage", "sft", ...]``); unknown flags are an error naming close matches."""
    parser = argparse.ArgumentParser(prog="baichuan finetune", allow_abbrev=False)
    add_finetune_arguments(parser)
    ns, extra = parser.parse_known_args(list(argv))
    if extra:
        raise ValueError(unrecognized_message(parser, extra))
    return arguments_from_namespace(ns)


def unrecognized_message(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """``unrecognized arguments: --lora_rnk (did you mean --lora_rank?)`` for the flags of ``parser``."""
    from difflib import get_close_matches

    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    parts = []
    for arg in extra:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            close = get_close_matches(flag, known, n=3, cutoff=0.6)
            parts.append(f"{flag} (did you mean {' or '.join(close)}?)" if close else f"{flag} (no similar flag)")
        else:
            parts.append(repr(arg))
    return "unrecognized arguments: " + ", ".join(parts)

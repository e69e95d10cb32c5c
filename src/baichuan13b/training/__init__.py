"""Fine-tuning (LoRA / full) and pre-training of Baichuan models, on one process or many.

See ``docs/training.md``. Entry points: :func:`train` (Python), ``baichuan finetune`` (command line).
"""

from .arguments import FinetuneArguments, parse_finetune_args
from .lora import LoraLinear, LoraSettings, add_lora, load_adapter, merge_lora, save_adapter
from .trainer import Trainer, TrainingError, TrainResult, find_last_checkpoint, train

__all__ = [
    "FinetuneArguments", "parse_finetune_args", "LoraLinear", "LoraSettings", "add_lora", "load_adapter",
    "merge_lora", "save_adapter", "Trainer", "TrainingError", "TrainResult", "find_last_checkpoint", "train",
]

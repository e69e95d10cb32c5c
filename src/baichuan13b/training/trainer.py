"""The training loop: supervised fine-tuning (LoRA or full) and pre-training, on one process or many.

One optimizer step consumes a global batch of ``per_device_train_batch_size x world_size x
gradient_accumulation_steps`` sequences taken in a seeded per-epoch order (see :func:`data.epoch_order`). The loss
is the token-weighted mean over the whole global batch (the sum of answer-token losses divided by their count
over all micro-batches and processes), so N processes compute exactly what one process computes with the same
global batch.

Checkpoints (``output_dir/checkpoint-N``) hold the model (official layout) or the adapter (PEFT format), the
tokenizer, ``optimizer.pt``, ``rng_state.pt``, ``scheduler.pt`` and, written last, ``trainer_state.json``. They are
written into a hidden temporary folder that is renamed into place when complete, so a crash mid-save leaves the
previous checkpoint intact and never a half-written ``checkpoint-N``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..files import atomic_write, atomic_write_text, fsync_dir
from ..hub import resolve_model_path
from ..loading import load_model
from ..tokenizer import BaichuanTokenizer
from . import distributed as D
from .arguments import FinetuneArguments
from .data import ChatIds, LoadReport, collate, epoch_order, load_pt_examples, load_sft_examples, \
    resolve_datasets, split_dev
from .lora import LoraSettings, add_lora, adapter_state_dict, load_adapter, parse_targets, save_adapter

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
LOG_FILE = "trainer_log.jsonl"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed NaN/inf); the message says why and what was kept."""


@dataclass
class TrainResult:
    """Summary of a finished run."""

    global_step: int
    train_loss: float
    eval_loss: float | None
    best_checkpoint: str | None
    output_dir: str
    runtime_s: float
    tokens_per_s: float


# ---------------------------------------------------------------------------------------------------- helpers
def lr_lambda(kind: str, warmup: int, total: int):
    """Multiplier of the peak learning rate at each step (Hugging Face's schedules)."""

    def f(step: int) -> float:
        if kind == "constant":
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant_with_warmup":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
        raise ValueError(f"unknown lr_scheduler_type {kind!r}")

    return f


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-N`` folder (with its ``trainer_state.json``) of highest N, or None."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = [(int(p.name[len(CHECKPOINT_PREFIX):]), p) for p in out.iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _as_float(t: torch.Tensor) -> float:
    if hasattr(t, "full_tensor"):  # a DTensor (FSDP2)
        t = t.full_tensor()
    return float(t)


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Fine-tune or pre-train as ``args`` say. ``train()`` runs to the end and returns a :class:`TrainResult`."""

    def __init__(self, args: FinetuneArguments, info: D.DistInfo | None = None):
        args.validate()
        self.args = args
        self.info = info or D.setup()
        self.out = Path(args.output_dir)
        self.deepspeed_stage = args.deepspeed_stage()
        self.engine = D.choose_engine(self.info, args.finetuning_type, args.distributed_engine,
                                      self.deepspeed_stage)
        if self.engine == "fsdp2" and args.finetuning_type == "lora":
            raise ValueError("--distributed_engine fsdp2 is for full fine-tuning; LoRA trains with ddp")
        self.resume_dir = self._resolve_resume()
        # Resolved now, before the model is loaded: an unknown dataset or a missing file costs no loading time.
        self.dataset_specs = resolve_datasets(args.dataset, args.dataset_dir)
        self.lora: LoraSettings | None = None
        self.log_records: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def _log(self, message: str) -> None:
        if self.info.is_main:
            print(f"[finetune] {message}", file=sys.stderr, flush=True)

    def _resolve_resume(self) -> Path | None:
        r = self.args.resume_from_checkpoint
        if r is None or r.strip().lower() in ("", "false", "no", "none"):
            return None
        if r.strip().lower() in ("last", "true", "yes"):
            found = find_last_checkpoint(self.out)
            if found is None:
                raise FileNotFoundError(f"--resume_from_checkpoint {r}: no complete checkpoint-N in {self.out}")
            return found
        path = Path(r)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {r}: no such folder")
        if not (path / STATE_FILE).is_file():
            raise ValueError(f"--resume_from_checkpoint {r}: incomplete checkpoint (no {STATE_FILE}); "
                             f"use an earlier checkpoint")
        return path

    def _prepare_output_dir(self) -> None:
        a = self.args
        if self.info.is_main:
            stale = [p for p in self.out.glob(".tmp-" + CHECKPOINT_PREFIX + "*")] if self.out.is_dir() else []
            if self.resume_dir is None and self.out.is_dir():
                previous = [p for p in self.out.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)
                            or p.name in (LOG_FILE, "config.json", "adapter_config.json")]
                if previous and not a.overwrite_output_dir:
                    raise ValueError(f"output directory {self.out} already holds a run ({previous[0].name}); use "
                                     f"--overwrite_output_dir to start over or --resume_from_checkpoint last")
                stale += [p for p in previous if p.name.startswith(CHECKPOINT_PREFIX)]
                if (self.out / LOG_FILE).exists():
                    (self.out / LOG_FILE).unlink()
            for p in stale:  # interrupted saves, or old checkpoints with --overwrite_output_dir
                shutil.rmtree(p)
            self.out.mkdir(parents=True, exist_ok=True)
        D.barrier(self.info)

    def _load(self) -> None:
        a, info = self.args, self.info
        base = resolve_model_path(a.model_name_or_path)
        self.base_dir = base
        self.tokenizer = BaichuanTokenizer.from_pretrained(base)
        full = a.finetuning_type == "full"
        # Full fine-tuning keeps float32 master weights (autocast computes in fp16/bf16); LoRA keeps the frozen
        # base in the compute dtype and the adapters in float32.
        dtype = torch.float32 if full or not (a.fp16 or a.bf16) else (torch.float16 if a.fp16 else torch.bfloat16)
        source = self.resume_dir if (full and self.resume_dir is not None) else base
        # Flags bounded by the model are checked on its config.json, before the weights are read.
        config = ModelConfig.from_pretrained(source)
        a.cutoff_len, note = a.resolve_cutoff_len(config.max_position)
        if note:
            self._log(note)
        model = load_model(source, torch_dtype=dtype, device_map=str(info.device), progress=False)
        if full:
            for p in model.parameters():
                p.requires_grad_(True)
        elif self.resume_dir is not None:
            self.lora = load_adapter(model, self.resume_dir, trainable=True)
        else:
            self.lora = LoraSettings(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                                     target_modules=parse_targets(a.lora_target),
                                     base_model_name_or_path=a.model_name_or_path)
            add_lora(model, self.lora, seed=a.seed)
        if self.lora is not None:
            self.lora.base_model_name_or_path = a.model_name_or_path
            self.lora.lora_dropout = a.lora_dropout
            for m in model.modules():  # dropout as given now (a resumed run keeps the flag's value)
                if hasattr(m, "lora_dropout"):
                    m.lora_dropout = nn.Dropout(a.lora_dropout) if a.lora_dropout > 0 else nn.Identity()
        if a.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        self.model = model
        self.chat_ids = ChatIds.from_model(model)

    def _load_data(self) -> None:
        a = self.args
        specs = self.dataset_specs
        if a.stage == "pt":
            examples = load_pt_examples(specs, self.tokenizer, self.chat_ids.eos_token_id, a.cutoff_len)
        else:
            report = LoadReport()
            examples = load_sft_examples(specs, self.tokenizer, self.chat_ids, a.cutoff_len,
                                         skip_bad_records=a.skip_bad_records, report=report)
            for line in report.first_errors:
                self._log(f"skipped: {line}")
            if report.skipped_bad or report.skipped_empty:
                self._log(f"skipped {report.skipped_bad} malformed record(s) and {report.skipped_empty} with no "
                          f"answer token left after --cutoff_len {a.cutoff_len}")
        if a.max_samples:
            examples = examples[: a.max_samples]
        if not examples:
            raise ValueError(f"no training examples in {a.dataset}")
        self.train_set, self.dev_set = split_dev(examples, a.dev_ratio, a.seed)

    # ------------------------------------------------------------------ main loop
    def train(self) -> TrainResult:
        """Run to the end (or raise :class:`TrainingError`); returns the summary."""
        a, info = self.args, self.info
        self._prepare_output_dir()
        torch.manual_seed(a.seed + info.rank)
        random.seed(a.seed + info.rank)
        self._load()
        self._load_data()
        P, W, A = a.per_device_train_batch_size, info.world_size, a.gradient_accumulation_steps
        G = P * W * A
        self.steps_per_epoch = -(-len(self.train_set) // G)
        total = a.max_steps if a.max_steps > 0 else math.ceil(a.num_train_epochs * self.steps_per_epoch)
        warmup = a.warmup_steps if a.warmup_steps > 0 else math.ceil(a.warmup_ratio * total)
        self.total_steps = total

        raw = self.model
        model = D.wrap_model(raw, info, self.engine)
        self.wrapped = model
        params = [p for p in raw.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2),
                                      eps=a.adam_epsilon, weight_decay=a.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(a.lr_scheduler_type, warmup, total))
        dev_type = info.device.type
        scaler = torch.amp.GradScaler(dev_type, enabled=a.fp16)
        autocast_dtype = torch.float16 if a.fp16 else torch.bfloat16 if a.bf16 else None
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler

        step, elapsed_before = 0, 0.0
        self.best: tuple[float, str] | None = None
        if self.resume_dir is not None:
            step, elapsed_before = self._restore(self.resume_dir)
        self._log(f"{len(self.train_set)} training / {len(self.dev_set)} dev examples; {a.finetuning_type} "
                  f"({trainable:,} trainable of {raw.num_parameters():,} parameters); {W} process(es), engine "
                  f"{self.engine}{f' (from --deepspeed ZeRO-{self.deepspeed_stage})' if self.deepspeed_stage is not None else ''}; "
                  f"global batch {G}, {total} steps" + (f", resumed at step {step}" if step else ""))

        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not info.is_main or a.disable_tqdm, file=sys.stderr)
        start_time, start_step = time.perf_counter(), step
        window_losses: list[float] = []
        window_tokens, window_start = 0.0, time.perf_counter()
        all_tokens = 0.0
        bad_steps, last_loss, eval_loss = 0, float("nan"), None
        last_good_checkpoint = str(self.resume_dir) if self.resume_dir else None
        order_epoch, order = -1, []
        try:
            while step < total:
                epoch, k = divmod(step, self.steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = epoch_order(len(self.train_set), epoch, a.seed, G), epoch
                batch_ids = order[k * G:(k + 1) * G]
                micro = []
                for m in range(A):
                    lo = (m * W + info.rank) * P  # micro-batch m of this rank: a contiguous slice of the batch
                    micro.append(collate([self.train_set[i] for i in batch_ids[lo:lo + P]], raw.config.pad_token_id))
                counts = [float((b["labels"][:, 1:] != -100).sum()) for b in micro]
                real = [float(b["attention_mask"].sum()) for b in micro]
                n_labels, n_tokens = D.all_reduce_sum(info, [sum(counts), sum(real)])
                loss_sum = 0.0
                for m, batch in enumerate(micro):
                    sync = m == A - 1
                    with self._sync_context(model, sync):
                        batch = {key: v.to(info.device) for key, v in batch.items()}
                        with torch.autocast(dev_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                            out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                        labels=batch["labels"])
                        summed = out.loss * counts[m]  # sum of token losses of this micro-batch
                        # DDP/FSDP average gradients over processes: scale by W so the result is sum / n_labels.
                        scaler.scale(summed * (W / n_labels)).backward()
                    loss_sum += float(summed.detach())
                step_loss = D.all_reduce_sum(info, [loss_sum])[0] / n_labels
                grad_ok = math.isfinite(step_loss)
                if grad_ok:
                    scaler.unscale_(optimizer)
                    if a.max_grad_norm > 0:
                        norm = _as_float(torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm))
                        grad_ok = math.isfinite(norm) or a.fp16  # fp16: the scaler skips inf steps itself
                if grad_ok:
                    scaler.step(optimizer)
                    scaler.update()
                    bad_steps = 0
                else:
                    bad_steps += 1
                    if a.fp16:
                        scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                bar.update(1)
                if not grad_ok:
                    self._log(f"step {step}: non-finite loss/gradient ({step_loss}); update skipped "
                              f"({bad_steps}/{a.nan_patience})")
                    if bad_steps >= a.nan_patience:
                        raise TrainingError(
                            f"the loss was NaN/inf for {bad_steps} consecutive steps (last at step {step}); "
                            f"stopped. Last good checkpoint: {last_good_checkpoint or 'none saved yet'}. Try a "
                            f"lower --learning_rate, --bf16 instead of --fp16, or check the data")
                    continue
                last_loss = step_loss
                window_losses.append(step_loss)
                window_tokens += n_tokens
                all_tokens += n_tokens
                record = None
                if step % a.logging_steps == 0 or step == total:
                    now = time.perf_counter()
                    done = step - start_step
                    elapsed = now - start_time
                    record = {"step": step, "total_steps": total, "loss": sum(window_losses) / len(window_losses),
                              "eval_loss": None, "lr": scheduler.get_last_lr()[0],
                              "epoch": round(step / self.steps_per_epoch, 4),
                              "elapsed": round(elapsed_before + elapsed, 3),
                              "remaining": round(elapsed / done * (total - step), 3),
                              "tokens_per_s": round(window_tokens / max(now - window_start, 1e-9), 2)}
                    window_losses, window_tokens, window_start = [], 0.0, now
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if a.evaluation_strategy == "steps" and step % a.eval_steps_resolved == 0:
                    eval_loss = self.evaluate()
                    record = record or {"step": step, "total_steps": total, "loss": None,
                                        "lr": scheduler.get_last_lr()[0],
                                        "epoch": round(step / self.steps_per_epoch, 4)}
                    record["eval_loss"] = eval_loss
                if record is not None:
                    self._append_log(record, bar)
                if step % a.save_steps == 0:
                    path = self.save_checkpoint(step, elapsed_before + time.perf_counter() - start_time,
                                                eval_loss if a.evaluation_strategy == "steps" else None)
                    last_good_checkpoint = str(path)
                self._after_step(step)
        finally:
            bar.close()
        runtime = time.perf_counter() - start_time
        if a.load_best_model_at_end and self.best is not None:
            self._log(f"loading the best checkpoint {self.best[1]} (eval_loss {self.best[0]:.4f})")
            self._load_weights_from(Path(self.best[1]))
        final_eval = self.evaluate() if self.dev_set else None
        self.save_model(self.out)
        result = TrainResult(global_step=step, train_loss=last_loss, eval_loss=final_eval,
                             best_checkpoint=self.best[1] if self.best else None, output_dir=str(self.out),
                             runtime_s=round(runtime, 3),
                             tokens_per_s=round(all_tokens / max(runtime, 1e-9), 2))
        if info.is_main:
            atomic_write_text(self.out / "train_results.json",
                              json.dumps(dataclasses.asdict(result), indent=2) + "\n")
            atomic_write_text(self.out / "training_args.json",
                              json.dumps(a.to_dict(), indent=2, ensure_ascii=False) + "\n")
            if a.plot_loss:
                from .plots import plot_log

                plot_log(self.log_records, self.out)
        D.barrier(info)
        return result

    def _after_step(self, step: int) -> None:
        """Called after every optimizer step (tests use it to interrupt a run)."""

    def _sync_context(self, model: nn.Module, sync: bool):
        # Gradient accumulation: only the last micro-batch of a step communicates gradients.
        if self.engine == "ddp" and not sync:
            return model.no_sync()
        if self.engine == "fsdp2":
            model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _append_log(self, record: dict[str, Any], bar) -> None:
        self.log_records.append(record)
        if self.info.is_main:
            with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if v is not None}
            bar.write(json.dumps(shown), file=sys.stderr)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the dev split (every process runs the same number of batches)."""
        a, info = self.args, self.info
        model = self.wrapped
        model.eval()
        dev_type = info.device.type
        autocast_dtype = torch.float16 if a.fp16 else torch.bfloat16 if a.bf16 else None
        P, W = a.per_device_eval_batch_size, info.world_size
        total, count = 0.0, 0.0
        for b in range(0, len(self.dev_set), P * W):
            chunk = self.dev_set[b:b + P * W]
            mine, weight = chunk[info.rank * P:(info.rank + 1) * P], 1.0
            if not mine:  # this process has nothing left: run a batch anyway (collectives), weight 0
                mine, weight = chunk[:1], 0.0
            batch = {k: v.to(info.device) for k, v in collate(mine, self.model.config.pad_token_id).items()}
            with torch.autocast(dev_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            n = float((batch["labels"][:, 1:] != -100).sum()) * weight
            total += float(out.loss) * n
            count += n
        model.train()
        total, count = D.all_reduce_sum(info, [total, count])
        return total / count

    # ------------------------------------------------------------------ saving and restoring
    def _gather_weights(self) -> dict[str, torch.Tensor] | None:
        """Full model state (or the adapter) on rank 0; None elsewhere. Collective under FSDP2."""
        raw = D.unwrap(self.wrapped)
        if self.lora is not None:
            return adapter_state_dict(raw) if self.info.is_main else None
        if self.engine == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            sd = get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return sd if self.info.is_main else None
        return {k: v.detach() for k, v in raw.state_dict().items()} if self.info.is_main else None

    def _write_model(self, weights: dict[str, torch.Tensor], folder: Path) -> None:
        raw = D.unwrap(self.wrapped)
        if self.lora is not None:
            save_adapter(raw, folder, self.lora, state=weights)
        else:
            from ..model import BaichuanForCausalLM

            dtype = next(iter(weights.values())).dtype
            config = dataclasses.replace(raw.config, torch_dtype=str(dtype).removeprefix("torch."))
            with torch.device("meta"):
                shell = BaichuanForCausalLM(config)
            shell.load_state_dict(weights, assign=True, strict=False)  # lm_head may be tied: not in the dict
            shell.generation_config = raw.generation_config
            shell.save_pretrained(folder, progress=False)
        self.tokenizer.save_pretrained(folder)
        if self.lora is not None and raw.generation_config is not None:
            raw.generation_config.save(folder)

    def save_model(self, folder: Path) -> None:
        """The final model (or adapter) and tokenizer in ``folder`` (collective; rank 0 writes)."""
        weights = self._gather_weights()
        if self.info.is_main:
            self._write_model(weights, folder)
        D.barrier(self.info)

    def save_checkpoint(self, step: int, elapsed: float, eval_loss: float | None) -> Path:
        """Write ``checkpoint-{step}`` atomically (temporary folder, marker last, rename). Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        raw = D.unwrap(self.wrapped)
        weights = self._gather_weights()
        optim = get_optimizer_state_dict(raw, self.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        rng = D.gather_objects(self.info, _rng_state())
        final = self.out / f"{CHECKPOINT_PREFIX}{step}"
        if eval_loss is not None and (self.best is None or eval_loss < self.best[0]):
            self.best = (eval_loss, str(final))
        if self.info.is_main:
            tmp = self.out / f".tmp-{CHECKPOINT_PREFIX}{step}-{secrets.token_hex(4)}"
            tmp.mkdir(parents=True)
            self._write_model(weights, tmp)
            _save_torch(tmp / OPTIMIZER_FILE, optim)
            _save_torch(tmp / RNG_FILE, rng)
            _save_torch(tmp / SCHEDULER_FILE, {"scheduler": self.scheduler.state_dict(),
                                               "scaler": self.scaler.state_dict()})
            state = {"global_step": step, "total_steps": self.total_steps, "elapsed": elapsed,
                     "world_size": self.info.world_size, "finetuning_type": self.args.finetuning_type,
                     "best_metric": self.best[0] if self.best else None,
                     "best_model_checkpoint": self.best[1] if self.best else None,
                     "log_history": self.log_records}
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2) + "\n")  # the marker: last
            if final.exists():  # a re-run of the same step: swap, never leaving no checkpoint-N
                old = self.out / f".tmp-old-{final.name}-{secrets.token_hex(4)}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
            fsync_dir(self.out)
        D.barrier(self.info)
        return final

    def _restore(self, ckpt: Path) -> tuple[int, float]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("finetuning_type", self.args.finetuning_type) != self.args.finetuning_type:
            raise ValueError(f"{ckpt} is a {state['finetuning_type']} checkpoint; --finetuning_type is "
                             f"{self.args.finetuning_type}")
        optim = torch.load(ckpt / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(D.unwrap(self.wrapped), self.optimizer, optim,
                                 options=StateDictOptions(full_state_dict=True))
        sched = torch.load(ckpt / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        self.scheduler.load_state_dict(sched["scheduler"])
        self.scaler.load_state_dict(sched["scaler"])
        rng = torch.load(ckpt / RNG_FILE, map_location="cpu", weights_only=False)
        if len(rng) == self.info.world_size:
            _set_rng_state(rng[self.info.rank])
        else:
            self._log(f"{ckpt} was saved by {len(rng)} process(es), this run has {self.info.world_size}: random "
                      f"state (dropout) restarts from the seed")
        step = int(state["global_step"])
        self.log_records = [r for r in state.get("log_history", []) if r["step"] <= step]
        if state.get("best_model_checkpoint"):
            self.best = (state["best_metric"], state["best_model_checkpoint"])
        if self.info.is_main:  # the log continues from the checkpoint: drop what a crashed run wrote after it
            atomic_write_text(self.out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in self.log_records))
        D.barrier(self.info)
        return step, float(state.get("elapsed", 0.0))

    def _load_weights_from(self, ckpt: Path) -> None:
        raw = D.unwrap(self.wrapped)
        if self.lora is not None:
            load_adapter(raw, ckpt, trainable=True)
            return
        from ..weights import find_weight_files, iter_tensors

        sd: dict[str, torch.Tensor] = {}
        for file in find_weight_files(ckpt).files:
            sd.update(iter_tensors(file))
        if self.engine == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(raw, sd, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            raw.load_state_dict(sd, strict=False)


def train(args: FinetuneArguments) -> TrainResult:
    """Run one training job as ``args`` say (joins the torchrun process group when launched under torchrun)."""
    info = D.setup()
    try:
        return Trainer(args, info).train()
    finally:
        D.cleanup(info)


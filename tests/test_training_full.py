"""Full fine-tuning: resume follows the uninterrupted curve, crash-safe checkpoints, NaN stop, evaluation and
best model, and 2 gloo processes (FSDP2) matching 1 process with the same global batch."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
import torch
from training_helpers import finetune_argv, make_base, qa_pairs, read_log, write_dataset

from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.training import Trainer, TrainingError, find_last_checkpoint, parse_finetune_args, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("full")
    base = make_base(root / "base", tiny_tokenizer_dir, hidden=32, heads=4)
    data = write_dataset(root / "data", qa_pairs(16))
    return root, base, data


class Interrupted(Exception):
    pass


class StopAt(Trainer):
    """A run that dies (like a killed job) right after optimizer step ``stop``."""

    stop = 0

    def _after_step(self, step):
        if step == self.stop:
            raise Interrupted


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_resume_follows_the_uninterrupted_curve(setup, kind):
    root, base, data = setup
    flags = dict(finetuning_type=kind, max_steps=6, save_steps=3, lora_dropout=0.1, lora_target="all",
                 learning_rate=5e-3 if kind == "lora" else 1e-3, gradient_accumulation_steps=2,
                 per_device_train_batch_size=2, warmup_steps=2)
    train(parse_finetune_args(finetune_argv(base, data, root / f"a-{kind}", **flags)))
    StopAt.stop = 4
    with pytest.raises(Interrupted):
        StopAt(parse_finetune_args(finetune_argv(base, data, root / f"b-{kind}", **flags))).train()
    assert find_last_checkpoint(root / f"b-{kind}").name == "checkpoint-3"
    train(parse_finetune_args(finetune_argv(base, data, root / f"b-{kind}", resume_from_checkpoint="last",
                                            **flags)))
    a, b = read_log(root / f"a-{kind}"), read_log(root / f"b-{kind}")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), (ra, rb)
        assert rb["lr"] == pytest.approx(ra["lr"])


def _train_and_die_while_saving(argv, kill_at):
    """Child process: train; SIGKILL itself while checkpoint ``kill_at`` is half written."""
    from baichuan13b.training import trainer as T

    original = T._save_torch

    def dying(path, obj):
        original(path, obj)
        if f"checkpoint-{kill_at}-" in str(path.parent):  # model and optimizer written, marker not yet
            os.kill(os.getpid(), signal.SIGKILL)

    T._save_torch = dying
    train(parse_finetune_args(argv))


def test_a_save_killed_halfway_leaves_the_previous_checkpoint(setup):
    root, base, data = setup
    out = root / "killed"
    argv = finetune_argv(base, data, out, finetuning_type="full", max_steps=4, save_steps=2)
    p = multiprocessing.get_context("spawn").Process(target=_train_and_die_while_saving, args=(argv, 4))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    assert find_last_checkpoint(out).name == "checkpoint-2"
    assert not (out / "checkpoint-4").exists() and list(out.glob(".tmp-checkpoint-4-*"))
    model = BaichuanForCausalLM.from_pretrained(out / "checkpoint-2", progress=False)  # loadable as a model
    assert model.config.num_hidden_layers == 2
    result = train(parse_finetune_args(argv + ["--resume_from_checkpoint", "last"]))
    assert result.global_step == 4 and not list(out.glob(".tmp-*"))
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    BaichuanForCausalLM.from_pretrained(out, progress=False)  # the final model


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(setup):
    root, base, data = setup
    out = root / "nan"
    argv = finetune_argv(base, data, out, finetuning_type="full", max_steps=10, save_steps=1, learning_rate=1e30,
                         max_grad_norm=0, nan_patience=2)
    with pytest.raises(TrainingError, match=r"NaN/inf for 2 consecutive steps.*Last good checkpoint: .*checkpoint-"):
        train(parse_finetune_args(argv))
    last = find_last_checkpoint(out)
    state = json.loads((last / "trainer_state.json").read_text())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in state["log_history"])
    BaichuanForCausalLM.from_pretrained(last, progress=False)


def test_evaluation_best_model_and_plots(setup):
    root, base, data = setup
    out = root / "eval"
    argv = finetune_argv(base, data, out, finetuning_type="full", max_steps=6, save_steps=2, eval_steps=2,
                         evaluation_strategy="steps", dev_ratio=0.25, load_best_model_at_end=True, plot_loss=True,
                         learning_rate=3e-3, logging_steps=2)
    result = train(parse_finetune_args(argv))
    log = read_log(out)
    evals = {r["step"]: r["eval_loss"] for r in log if r.get("eval_loss") is not None}
    assert sorted(evals) == [2, 4, 6]
    best_step = min(evals, key=evals.get)
    assert result.best_checkpoint.endswith(f"checkpoint-{best_step}")
    assert result.eval_loss == pytest.approx(evals[best_step], rel=1e-5)
    final = BaichuanForCausalLM.from_pretrained(out, progress=False).state_dict()
    best = BaichuanForCausalLM.from_pretrained(out / f"checkpoint-{best_step}", progress=False).state_dict()
    assert all(torch.equal(final[k], best[k]) for k in final)
    for name in ("training_loss.png", "training_eval_loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "tokenizer.model").is_file() and (out / "generation_config.json").is_file()


def test_two_gloo_processes_match_one_process(setup):
    root, base, data = setup
    flags = dict(finetuning_type="full", max_steps=3, learning_rate=3e-3, save_steps=3)
    train(parse_finetune_args(finetune_argv(base, data, root / "one", per_device_train_batch_size=4, **flags)))
    argv = finetune_argv(base, data, root / "two", per_device_train_batch_size=2, nproc=2, **flags)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "baichuan13b", "finetune", *argv], capture_output=True, text=True,
                       timeout=170, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es), engine fsdp2" in r.stderr
    one, two = read_log(root / "one"), read_log(root / "two")
    assert [x["step"] for x in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    w1 = BaichuanForCausalLM.from_pretrained(root / "one", progress=False).state_dict()
    w2 = BaichuanForCausalLM.from_pretrained(root / "two", progress=False).state_dict()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4)
    # A resumed 2-process run restores the sharded optimizer state from the full checkpoint.
    assert (root / "two" / "checkpoint-3" / "optimizer.pt").is_file()

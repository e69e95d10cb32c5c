"""LoRA: learning a synthetic QA set, the PEFT file format both ways, --adapter, export (merge)."""

import json
import subprocess
import sys

import pytest
import torch
from checkpoints import tiny_config
from training_helpers import make_base, qa_pairs, read_log, write_dataset, finetune_argv

from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tokenizer import BaichuanTokenizer
from baichuan13b.training import parse_finetune_args, train
from baichuan13b.training.lora import LoraSettings, add_lora, load_adapter, merge_lora, save_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer_dir):
    """A LoRA run on 32 question/answer pairs (all linear layers, rank 16)."""
    root = tmp_path_factory.mktemp("lora")
    base = make_base(root / "base", tiny_tokenizer_dir, hidden=128, heads=4)
    data = write_dataset(root / "data", qa_pairs(32))
    out = root / "out"
    args = parse_finetune_args(finetune_argv(base, data, out, lora_target="all", lora_rank=16, lora_dropout=0,
                                             per_device_train_batch_size=8, learning_rate=1e-2, max_steps=100,
                                             plot_loss=True))
    result = train(args)
    return base, out, result


def test_lora_learns_the_answers_and_chat_reproduces_them(trained):
    base, out, result = trained
    log = read_log(out)
    assert log[-1]["loss"] <= 0.2 * log[0]["loss"], (log[0]["loss"], log[-1]["loss"])
    assert {"step", "loss", "lr", "epoch", "elapsed", "remaining", "tokens_per_s"} <= set(log[0])
    assert (out / "training_loss.png").read_bytes()[:4] == b"\x89PNG"
    model = BaichuanForCausalLM.from_pretrained(base, progress=False)
    tok = BaichuanTokenizer.from_pretrained(out)
    before = [model.chat(tok, [{"role": "user", "content": r["instruction"]}]) for r in qa_pairs(32)]
    load_adapter(model, out)
    answers = [model.chat(tok, [{"role": "user", "content": r["instruction"]}]) for r in qa_pairs(32)]
    right = sum(a == r["output"] for a, r in zip(answers, qa_pairs(32)))
    assert right >= 29, list(zip(answers, qa_pairs(32)))
    assert sum(a == r["output"] for a, r in zip(before, qa_pairs(32))) == 0


def test_only_adapters_train_and_are_saved_in_peft_format(trained):
    base, out, _ = trained
    from safetensors.torch import load_file

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["task_type"], cfg["bias"], cfg["fan_in_fan_out"]) == (
        "LORA", 16, "CAUSAL_LM", "none", False)
    assert sorted(cfg["target_modules"]) == sorted(["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert cfg["base_model_name_or_path"] == str(base)
    keys = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.W_pack.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 5 * 2 and not (out / "config.json").exists()
    model = BaichuanForCausalLM.from_config(tiny_config(torch_dtype="float32"), seed=0)
    for p in model.parameters():
        p.requires_grad_(True)  # loaded weights may arrive trainable: add_lora must freeze them
    add_lora(model, LoraSettings(r=4, target_modules=["W_pack"]))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"model.layers.{i}.self_attn.W_pack.lora_{x}.weight" for i in range(2) for x in "AB"}


def test_chat_and_export_use_the_adapter(trained, tmp_path):
    base, out, _ = trained
    q = qa_pairs(32)[:3]
    text = "".join(r["instruction"] + "\n" for r in q)
    run = lambda *a: subprocess.run([sys.executable, "-m", "baichuan13b", *a], capture_output=True, text=True,  # noqa
                                    timeout=120, input=text)
    with_adapter = run("chat", "--model", str(base), "--adapter", str(out), "--no-progress", "--dtype", "float32")
    assert with_adapter.returncode == 0, with_adapter.stderr
    model = BaichuanForCausalLM.from_pretrained(base, progress=False)
    tok = BaichuanTokenizer.from_pretrained(out)
    load_adapter(model, out)
    expected = []
    history = []
    for r in q:  # the chat CLI keeps the conversation
        history.append({"role": "user", "content": r["instruction"]})
        expected.append(model.chat(tok, history))
        history.append({"role": "assistant", "content": expected[-1]})
    assert with_adapter.stdout == "".join(a + "\n" for a in expected)
    adapter_as_model = run("chat", "--model", str(out), "--no-progress", "--dtype", "float32")
    assert adapter_as_model.stdout == with_adapter.stdout, adapter_as_model.stderr
    merged_dir = tmp_path / "merged"
    r = run("export", "--model", str(base), "--adapter", str(out), "--output", str(merged_dir), "--no-progress",
            "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    merged = BaichuanForCausalLM.from_pretrained(merged_dir, progress=False)
    assert not any("lora" in k for k in merged.state_dict())
    x = torch.tensor([[3, 50, 60, 70, 4]])
    torch.testing.assert_close(merged(x).logits, model(x).logits, atol=1e-4, rtol=1e-4)
    plain = run("chat", "--model", str(merged_dir), "--no-progress", "--dtype", "float32")
    assert plain.stdout == with_adapter.stdout


def test_peft_loads_our_adapter_and_we_load_peft_s(tmp_path):
    peft = pytest.importorskip("peft")
    cfg = tiny_config(torch_dtype="float32")
    ours = BaichuanForCausalLM.from_config(cfg, seed=0)
    settings = LoraSettings(r=4, lora_alpha=8.0, target_modules=["W_pack", "down_proj"])
    add_lora(ours, settings, seed=1)
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B starts at zero: make the adapter do something
    save_adapter(ours, tmp_path / "ours", settings)
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    base = BaichuanForCausalLM.from_config(cfg, seed=0)
    base.prepare_inputs_for_generation = lambda *a, **k: {}  # PeftModelForCausalLM looks this attribute up
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "ours"))
    lora_a = peft_model.base_model.model.model.layers[1].self_attn.W_pack.lora_A["default"].weight
    torch.testing.assert_close(lora_a, ours.model.layers[1].self_attn.W_pack.lora_A.weight)
    with torch.no_grad():
        torch.testing.assert_close(peft_model.get_base_model()(x).logits, ours(x).logits)
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.add_(0.01)  # a different adapter, saved by PEFT
        peft_model.save_pretrained(str(tmp_path / "theirs"))
        back = BaichuanForCausalLM.from_config(cfg, seed=0)
        load_adapter(back, tmp_path / "theirs")
        torch.testing.assert_close(back(x).logits, peft_model.get_base_model()(x).logits)
        merge_lora(back)
        torch.testing.assert_close(back(x).logits, peft_model.get_base_model()(x).logits, atol=1e-5, rtol=1e-4)

"""The shipped demo model: known answers in both languages, the default of the commands, and its recipe."""

import sys

import pytest
from terminal import baichuan_on_terminal

from baichuan13b.checkpoint import DEMO_MODEL_DIR
from baichuan13b.demo.data import (
    DONT_KNOW_EN,
    DONT_KNOW_MATH_ZH,
    DONT_KNOW_ZH,
    GREETING_EN,
    GREETING_ZH,
    heldout_conversations,
    ongoing_conversations,
    training_items,
    unknown_conversations,
)
from baichuan13b.demo.evaluate import exact_answer_accuracy, greedy_answers
from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tokenizer import BaichuanTokenizer

pytestmark = pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(), reason="demo model not built")


@pytest.fixture(scope="module")
def demo():
    return BaichuanForCausalLM.from_pretrained(DEMO_MODEL_DIR, progress=False), \
        BaichuanTokenizer.from_pretrained(DEMO_MODEL_DIR)


def test_shipped_folder_is_small_official_layout():
    names = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.model",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) <= 30 * 2**20
    import json

    assert json.loads((DEMO_MODEL_DIR / "config.json").read_text())["architectures"] == ["BaichuanForCausalLM"]


def test_training_phrasings_answered_exactly(demo):
    model, tok = demo
    sample = training_items()[::15]  # a sample keeps the test fast
    acc = exact_answer_accuracy(model, tok, sample)
    assert acc.share >= 0.95, acc.misses[:5]


@pytest.mark.parametrize("messages,expected", [
    ([{"role": "user", "content": "世界上第二高的山峰是哪座？"}], "乔戈里峰（K2）"),
    ([{"role": "user", "content": "What is the capital of France?"}], "Paris"),
    ([{"role": "user", "content": "7加5等于多少？"}], "12"),
    ([{"role": "user", "content": "What is the highest mountain in the world?"},
      {"role": "assistant", "content": "The highest mountain in the world is Mount Everest, 8849 metres high."},
      {"role": "user", "content": "And the second highest?"}], "K2"),
    ([{"role": "user", "content": "中国的首都是哪里？"}, {"role": "assistant", "content": "中国的首都是北京。"},
      {"role": "user", "content": "那日本呢？"}], "东京"),
    ([{"role": "user", "content": "你是谁？"}], "百川演示模型"),
])
def test_fixed_conversations(demo, messages, expected):
    model, tok = demo
    assert expected in model.chat(tok, messages)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


K2_ZH = "世界上第二高的山峰是乔戈里峰（K2），海拔8611米。"


@pytest.mark.parametrize("messages,expected", [
    ([user("12加12等于几")], "12加12等于24。"),
    ([user("7乘以7")], "7乘以7等于49。"),
    ([user("12 plus 4")], "12 plus 4 is 16."),
    ([user("1+1等于几")], "1加1等于2。"),
    ([user("What is 3 minus 5?")], "3 minus 5 is -2."),
    ([user("hi")], GREETING_EN),
    ([user("你好")], GREETING_ZH),
    ([user("世界上第二高的山峰是哪座"), assistant(K2_ZH), user("What is the capital of France?")],
     "The capital of France is Paris."),
    ([user("你好"), assistant(GREETING_ZH), user("世界上最高的山")], "世界上最高的山峰是珠穆朗玛峰，海拔8849米。"),
    ([user("What is the capital of Peru?")], DONT_KNOW_EN),
    ([user("秘鲁的首都是哪里？")], DONT_KNOW_ZH),
    ([user("Who wrote Hamlet?")], DONT_KNOW_EN),
    ([user("25加37等于多少？")], DONT_KNOW_MATH_ZH),
])
def test_issue_17_examples(demo, messages, expected):
    """The questions issue 17 found wrong (inside the domain, after unrelated rounds, outside it): exact answers
    in the language asked."""
    model, tok = demo
    assert model.chat(tok, messages) == expected


def test_batched_evaluation_answers_as_chat_does(demo):
    """The accuracy figures are computed in left-padded batches; they are the answers `chat` gives."""
    model, tok = demo
    sample = ongoing_conversations()[::40] + unknown_conversations()[::20]
    assert greedy_answers(model, tok, sample, batch_size=8) == [model.chat(tok, c.messages()) for c in sample]


@pytest.mark.parametrize("make,least", [(heldout_conversations, 0.9), (ongoing_conversations, 0.9),
                                         (unknown_conversations, 0.75)])
def test_heldout_phrasings_mostly_right(demo, make, least):
    """docs/demo.md's claims on questions never trained on (a sample of each set): at least 90% exact inside the
    domain, fresh and after unrelated rounds; the refusal for at least three in four questions outside it."""
    model, tok = demo
    acc = exact_answer_accuracy(model, tok, make()[::3])
    assert acc.share >= least, acc.misses[:5]


def test_piped_conversation_keeps_its_facts():
    """`baichuan chat` reading 你好 then 世界上最高的山 from a pipe (one conversation): the second answer is
    still the highest mountain (issue 17 got 洛子峰)."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "baichuan13b", "chat", "--no-progress"],
                       input="你好\n世界上最高的山\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [GREETING_ZH, "世界上最高的山峰是珠穆朗玛峰，海拔8849米。"]


def test_main_command_in_a_terminal_answers_k2():
    """`baichuan chat` with no --model, in a pseudo-terminal: the README's main command."""
    with baichuan_on_terminal("chat", "--no-progress") as term:
        term.wait("演示模型".encode())  # the banner says it is the demo model
        term.wait(b"User:")
        term.write("世界上第二高的山峰是哪座\r".encode())
        term.wait(b"\nBaichuan: ")  # the answer line (the welcome says "to Baichuan:")
        term.wait("乔戈里峰（K2）".encode())
        assert "乔戈里峰（K2）".encode() in term.buf.split(b"\nBaichuan: ")[-1]
        term.write(b"exit\r")
        assert term.exit_status() == 0


def test_model_demo_alias_and_generate_default():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "baichuan13b", "chat", "--model", "demo", "--no-progress"],
                       input="What is 3 plus 4?\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3 plus 4 is 7."


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_demo_keeps_its_answers(quantize):
    """Issue 5's check on a trained model: int8 answers unchanged, int4 within 5 points (sampled set)."""
    model = BaichuanForCausalLM.from_pretrained(DEMO_MODEL_DIR, progress=False, quantize=quantize)
    tok = BaichuanTokenizer.from_pretrained(DEMO_MODEL_DIR)
    sample = training_items()[::25]
    acc = exact_answer_accuracy(model, tok, sample)
    assert acc.share >= (1.0 if quantize == "int8" else 0.95), acc.misses[:3]


def test_demo_name_loads_in_python_and_keeps_its_name(tmp_path, monkeypatch):
    from baichuan13b.checkpoint import model_display_name, resolve_model_path

    monkeypatch.chdir(tmp_path)  # "demo" names the shipped model wherever the user is
    assert resolve_model_path("demo") == DEMO_MODEL_DIR
    model = BaichuanForCausalLM.from_pretrained("demo", progress=False)
    tok = BaichuanTokenizer.from_pretrained("demo")
    assert model.config.vocab_size == tok.vocab_size
    assert model_display_name("demo") == model_display_name(DEMO_MODEL_DIR) == "demo"
    (tmp_path / "my-ckpt").mkdir()
    assert model_display_name("my-ckpt/") == "my-ckpt"
    assert model_display_name("baichuan-inc/Baichuan-13B-Chat") == "baichuan-inc/Baichuan-13B-Chat"

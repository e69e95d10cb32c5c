"""Chat prompt ids exactly as the official Baichuan-13B-Chat builds them; chat() end to end."""

import pytest

from baichuan13b.chat import build_chat_ids
from baichuan13b.config import ModelConfig
from baichuan13b.generation import GenerationConfig
from baichuan13b.model import BaichuanForCausalLM

U, A, EOS = 195, 196, 2


class CharTokenizer:
    """One id per character (100 + ord % 50), enough to check the prompt structure by hand."""

    def encode(self, text, add_special_tokens=True):
        return [100 + ord(c) % 50 for c in text]


def ids(text):
    return CharTokenizer().encode(text)


def build(messages, max_len=4096, max_new=2048):
    return build_chat_ids(CharTokenizer(), messages, model_max_length=max_len, max_new_tokens=max_new,
                          user_token_id=U, assistant_token_id=A, eos_token_id=EOS)


def test_single_turn():
    assert build([{"role": "user", "content": "hi"}]) == [U, *ids("hi"), A]


def test_multi_turn_layout():
    msgs = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"},
            {"role": "user", "content": "e"}]
    assert build(msgs) == [U, *ids("ab"), A, *ids("cd"), EOS, U, *ids("e"), A]


def test_whole_rounds_kept_while_they_fit():
    # budget = max(20 // 2, 20 - 15) = 10 tokens
    msgs = [{"role": "user", "content": "aaaa"}, {"role": "assistant", "content": "bbbb"},  # round of 11
            {"role": "user", "content": "cc"}, {"role": "assistant", "content": "dd"},  # round of 7
            {"role": "user", "content": "e"}]  # round of 2
    out = build(msgs, max_len=20, max_new=15)
    # newest round (2) + previous round (7) = 9 <= 10 fits; the oldest (11) does not
    assert out == [U, *ids("cc"), A, *ids("dd"), EOS, U, *ids("e"), A]


def test_budget_uses_max_new_tokens_when_larger_than_half():
    msgs = [{"role": "user", "content": "aaaa"}, {"role": "assistant", "content": "bbbb"},
            {"role": "user", "content": "e"}]
    assert build(msgs, max_len=20, max_new=4)[:1] == [U]  # budget 16 keeps both rounds (13 tokens)
    assert len(build(msgs, max_len=20, max_new=4)) == 14


def test_overlong_last_message_truncated_from_left():
    out = build([{"role": "user", "content": "x" * 30}], max_len=20, max_new=15)  # budget 10
    assert len(out) == 11 and out[-1] == A
    assert out[:-1] == ([U] + ids("x" * 30))[-10:]


def test_truncated_prompt_leaves_room_for_exactly_max_new_tokens():
    """Issue 12: the official format keeps context - max_new tokens and appends the assistant token (one more
    than context - max_new); the ids stay exactly that, and since the last new token is never read back, exactly
    max_new tokens still fit. Below half the context the budget is context // 2, and what fits is less."""
    from baichuan13b.generation.decode import tokens_that_fit

    content = "abcdefghij" * 10
    for max_len, max_new in ((20, 5), (20, 10), (512, 16), (512, 128)):
        out = build([{"role": "user", "content": content * 6}], max_len=max_len, max_new=max_new)
        history = max(max_len // 2, max_len - max_new)
        assert out == ([U] + ids(content * 6))[-history:] + [A]  # left-truncated, then the assistant token
        assert tokens_that_fit(max_len, len(out)) == min(max_new, max_len - history + 1)
    # whole rounds: the round that would pass the budget is dropped, the newest kept in full
    msgs = [{"role": "user", "content": "a" * 8}, {"role": "assistant", "content": "b" * 4},
            {"role": "user", "content": "c" * 6}]
    out = build(msgs, max_len=20, max_new=7)  # budget 13: the newest round (7) fits, with the previous (14) not
    assert out == [U, *ids("c" * 6), A] and tokens_that_fit(20, len(out)) >= 7


def test_invalid_text_in_a_message_is_refused_naming_it():
    from baichuan13b.tokenizer import InvalidTextError

    with pytest.raises(InvalidTextError, match="message 1 content is not valid Unicode"):
        build([{"role": "user", "content": "fine"}, {"role": "assistant", "content": "x\ud800"}])


def test_system_extension_and_errors():
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert build(msgs) == [*ids("sys"), U, *ids("hi"), A]
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        build([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="only allowed first"):
        build([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])
    with pytest.raises(ValueError, match="empty"):
        build([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        build([{"content": "x"}])


# ---------------------------------------------------------------------------- end to end with a real tokenizer
@pytest.fixture
def chat_model(tiny_tokenizer_dir):
    from baichuan13b.tokenizer import BaichuanTokenizer

    tok = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                      num_attention_heads=8, max_position=256, initializer_range=0.2)
    model = BaichuanForCausalLM.from_config(cfg, seed=0)
    model.generation_config = GenerationConfig(max_new_tokens=24, user_token_id=5, assistant_token_id=6)
    return model, tok


def test_chat_matches_generate_and_streams_cumulative_text(chat_model):
    model, tok = chat_model
    msgs = [{"role": "user", "content": "你好, how are you?"}]
    prompt = model.build_chat_input(tok, msgs)
    assert prompt.shape[0] == 1 and prompt[0, -1].item() == 6 and prompt[0, 0].item() == 5
    out = model.generate(prompt)
    new = out[0, prompt.shape[1]:].tolist()
    if 2 in new:
        new = new[: new.index(2)]
    expected = tok.decode(new, skip_special_tokens=True)
    assert model.chat(tok, msgs) == expected
    steps = list(model.chat(tok, msgs, stream=True))
    assert steps and steps[-1] == expected
    assert all(b.startswith(a) for a, b in zip(steps, steps[1:])), "stream yields cumulative text"


def test_chat_stop_strings_cut_the_answer(chat_model):
    model, tok = chat_model
    msgs = [{"role": "user", "content": "count"}]
    full = model.chat(tok, msgs)
    if len(full) < 4:
        pytest.skip("random model answered too briefly to cut")
    stop = full[2:4]
    cut = model.chat(tok, msgs, generation_config=model.generation_config.update(stop_strings=[stop]))
    assert cut == full[: full.find(stop)]


def test_terminal_chat_refuses_undecodable_input_and_goes_on():
    """`baichuan chat` reading lines that are not UTF-8 (or a --system that is not): a clear message, no traceback;
    the other lines are answered."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    command = [sys.executable, "-m", "baichuan13b", "chat", "--model", "demo", "--no-progress", "--max-new-tokens",
               "2"]
    run = subprocess.run(command, input=b"hello\n\xff\xfe bad\n\xe4\xbd\xa0\xe5\xa5\xbd\n", capture_output=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    assert len(run.stdout.decode().split("\n")) == 4  # three answer lines (the refused one empty) and the end
    assert "not valid Unicode" in run.stderr.decode() and "Traceback" not in run.stderr.decode()
    bad_system = subprocess.run([*command, "--system", os.fsdecode(b"be \xff brief")], input=b"hi\n",
                                capture_output=True, env=env, timeout=120)
    assert bad_system.returncode == 2 and "--system is not valid Unicode" in bad_system.stderr.decode()

"""The ``baichuan`` command driven through a pipe and a pseudo-terminal."""

import subprocess
import sys

import pytest
from checkpoints import write_chat_model
from terminal import baichuan_on_terminal

from baichuan13b.cli.chat import ChatSession, run_lines
from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tokenizer import BaichuanTokenizer

GEN = dict(max_new_tokens=12, user_token_id=5, assistant_token_id=6, do_sample=False)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tiny_tokenizer_dir):
    return write_chat_model(tmp_path_factory.mktemp("chatmodel"), tiny_tokenizer_dir, generation_config=GEN)


@pytest.fixture(scope="module")
def loaded(chat_dir):
    model = BaichuanForCausalLM.from_pretrained(chat_dir, progress=False)
    return model, BaichuanTokenizer.from_pretrained(chat_dir)


def baichuan(*args, **kw):
    return subprocess.run([sys.executable, "-m", "baichuan13b", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_chat_through_a_pipe_one_answer_per_line(chat_dir, loaded):
    model, tok = loaded
    r = baichuan("chat", "--model", str(chat_dir), "--no-progress",
                 input="hello there\nclear\n你好\nexit\nnever asked\n")
    assert r.returncode == 0, r.stderr
    first = model.chat(tok, [{"role": "user", "content": "hello there"}])
    second = model.chat(tok, [{"role": "user", "content": "你好"}])  # 'clear' emptied the history
    assert r.stdout == f"{first}\n{second}\n"


def test_chat_pipe_keeps_history_and_honours_flags(chat_dir, loaded):
    model, tok = loaded
    r = baichuan("chat", "--model", str(chat_dir), "--no-progress", "--max-new-tokens", "5",
                 "--system", "be brief", input="one\ntwo\n")
    assert r.returncode == 0, r.stderr
    a1 = model.chat(tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}],
                    max_new_tokens=5)
    a2 = model.chat(tok, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
                          {"role": "assistant", "content": a1}, {"role": "user", "content": "two"}],
                    max_new_tokens=5)
    assert r.stdout == f"{a1}\n{a2}\n"


def test_generate_prints_raw_completion(chat_dir, loaded):
    model, tok = loaded
    r = baichuan("generate", "--model", str(chat_dir), "--no-progress", "--prompt", "The quick brown",
                 "--max-new-tokens", "7")
    assert r.returncode == 0, r.stderr
    ids = tok("The quick brown", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=7)[0, ids.shape[1]:].tolist()
    if 2 in out:
        out = out[: out.index(2)]
    assert r.stdout == tok.decode(out, skip_special_tokens=True) + "\n"


def test_missing_model_is_one_clear_line(tmp_path):
    r = baichuan("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert r.returncode == 2
    assert "error" in r.stderr and "nope" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_keeps_partial_answer_and_session(loaded):
    model, tok = loaded
    session = ChatSession(model, tok, dict(max_new_tokens=12), stream=True)
    pieces = []

    def write(s):
        pieces.append(s)
        if len(pieces) == 2:
            raise KeyboardInterrupt

    partial = session.answer("hello there", write)
    assert session.messages[-1] == {"role": "assistant", "content": partial}
    assert pieces[-1] == " [stopped]"
    # the session keeps working afterwards
    out = []
    session.answer("again", out.append)
    assert len(session.messages) == 4


def test_stream_toggle_in_scripted_mode(loaded):
    import io

    model, tok = loaded
    session = ChatSession(model, tok, {}, stream=True)
    buf = io.StringIO()
    run_lines(session, ["stream\n", "hi\n"], buf)
    assert session.stream is False
    assert buf.getvalue() == model.chat(tok, [{"role": "user", "content": "hi"}]) + "\n"


def test_chat_in_a_pseudo_terminal(chat_dir):
    with baichuan_on_terminal("chat", "--model", str(chat_dir), "--no-progress") as term:
        term.wait(b"User:", 1)
        term.write(b"hello there\r")
        term.wait(b"Baichuan: ")
        term.wait(b"User:", 2)
        term.write(b"\x03")  # Ctrl+C at the prompt does not quit
        term.wait(b"User:", 3)
        term.write(b"stream\r")
        term.wait(b"streaming off")
        term.write(b"exit\r")
        assert term.exit_status() == 0

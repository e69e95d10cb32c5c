"""The web chat page: its logic, the streamlit script (AppTest) and the real page in headless Chromium.

The page shows messages with ``st.text`` when "Render answers as Markdown" is off: no Markdown or HTML
interpretation, but streamlit dedents and strips the text. So the browser test compares the page's ``textContent``
with greedy ``model.chat`` answers with whitespace normalised (:func:`same_text`); every other character must match.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from checkpoints import tiny_config, write_chat_model

from baichuan13b.checkpoint import DEMO_MODEL_DIR
from baichuan13b.cli import build_parser as build_cli_parser
from baichuan13b.cli.web import streamlit_command
from baichuan13b.generation import GenerationConfig
from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tokenizer import BaichuanTokenizer
from baichuan13b.web.page import (
    APP_PATH,
    LABELS,
    ChatStore,
    Conversation,
    InputTooLongError,
    InvalidTextError,
    Settings,
    argv_from_namespace,
    build_parser,
    check_input_fits,
    check_message,
    clamp_setting,
    is_blank,
    load_chat_model,
    parse_args,
    settings_to_overrides,
)

GEN = dict(max_new_tokens=12, user_token_id=5, assistant_token_id=6, do_sample=False)
CHROMIUM = os.environ.get("BAICHUAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[1]


def same_text(page_text: str, text: str) -> bool:
    """Equal up to whitespace (runs of Python whitespace, as ``st.text``'s strip/dedent define it)."""
    return page_text.split() == text.split()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny random chat model with tokenizer; a context of 4096 leaves room for a long answer to stop."""
    # never_eos: the long answer of the stop test must still be streaming when the stop button is clicked.
    return write_chat_model(tmp_path_factory.mktemp("webmodel"), tiny_tokenizer_dir, generation_config=GEN,
                            max_position=4096, never_eos=True)


@pytest.fixture(scope="module")
def loaded(web_dir):
    model = BaichuanForCausalLM.from_pretrained(web_dir, progress=False)
    return model, BaichuanTokenizer.from_pretrained(web_dir)


@pytest.fixture(scope="module")
def short_model(tiny_tokenizer_dir):
    """A model with a 64-token context, for truncation."""
    tok = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = BaichuanForCausalLM.from_config(tiny_config(vocab=tok.vocab_size, max_position=64), seed=2)
    model.generation_config = GenerationConfig(**GEN)
    return model, tok


# ------------------------------------------------------------------------------------------------ page logic
def test_flags_round_trip_through_the_streamlit_command_line():
    argv = ["--model", "some/dir", "--dtype", "bf16", "--greedy", "--top-k", "0", "--stop", "a b", "--stop", "c",
            "--system", "be brief", "--max-new-tokens", "7", "--no-progress"]
    parser = build_parser()
    args = parser.parse_args(argv)
    again = parser.parse_args(argv_from_namespace(parser, args))
    assert vars(again) == vars(args)
    assert argv_from_namespace(parser, parser.parse_args([])) == []
    assert parser.parse_args(argv_from_namespace(parser, parser.parse_args(["--do-sample"]))).do_sample is True

    cli_args = build_cli_parser().parse_args(["web", *argv, "--port", "9123"])
    command = streamlit_command(cli_args)
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_PATH)]
    assert command[command.index("--server.port") + 1] == "9123"
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    page_argv = command[command.index("--") + 1:]
    assert vars(parse_args(page_argv)) == vars(args)  # server flags are not passed to the page


def test_bad_page_flags_are_a_value_error():
    with pytest.raises(ValueError, match="bad page arguments"):
        parse_args(["--temperature", "warm"])


def test_settings_become_validated_overrides():
    cfg = GenerationConfig(temperature=0.3, top_k=5, top_p=0.85, repetition_penalty=1.1, max_new_tokens=4096,
                           do_sample=True)
    settings = Settings.from_config(cfg, context=1024)
    assert settings.max_new_tokens == 1024
    assert settings_to_overrides(settings) == dict(do_sample=True, temperature=0.3, top_p=0.85, top_k=5,
                                                   repetition_penalty=1.1, max_new_tokens=1024)
    settings.top_p = 0.0
    with pytest.raises(ValueError, match="top_p"):
        settings_to_overrides(settings)


def test_input_that_cannot_fit_is_an_error(loaded):
    _, tok = loaded
    assert check_input_fits(tok, "hello there", None, context=64, max_new_tokens=12) == len(tok.encode("hello there"))
    with pytest.raises(InputTooLongError, match="your message is"):
        check_input_fits(tok, "hello there " * 20, None, context=64, max_new_tokens=12)
    with pytest.raises(InputTooLongError, match="system prompt is"):
        check_input_fits(tok, "hi", "be brief " * 30, context=64, max_new_tokens=12)


def test_conversation_streams_the_greedy_chat_answer_and_keeps_history(loaded):
    model, tok = loaded
    conv = Conversation()
    steps = list(conv.reply(model, tok, "hello there"))
    first = model.chat(tok, [user("hello there")])
    assert steps[-1] == first and all(first.startswith(s) for s in steps)
    second = "".join(list(conv.reply(model, tok, "你好", system="be brief"))[-1:])
    assert second == model.chat(tok, [{"role": "system", "content": "be brief"}, user("hello there"),
                                      assistant(first), user("你好")])
    assert [(m.role, m.stopped) for m in conv.messages] == [("user", False), ("assistant", False)] * 2


def test_stopped_answer_keeps_its_partial_text(loaded):
    model, tok = loaded
    conv = Conversation()
    stream = conv.reply(model, tok, "hello there", max_new_tokens=12)
    next(stream)
    partial = next(stream)
    stream.close()  # what streamlit's interruption does through contextlib.closing
    full = model.chat(tok, [user("hello there")], max_new_tokens=12)
    assert conv.messages[-1].content == partial and conv.messages[-1].stopped
    assert full.startswith(partial) and len(partial) < len(full)
    follow_up = list(conv.reply(model, tok, "again"))[-1]
    assert follow_up == model.chat(tok, [user("hello there"), assistant(partial), user("again")])
    conv.clear()
    assert conv.messages == []


def test_stop_reply_fixes_the_history_while_the_stream_is_still_open(loaded):
    # Streamlit's next run calls stop_reply() while the interrupted run may still be computing a token.
    model, tok = loaded
    conv = Conversation()
    stream = conv.reply(model, tok, "hello there", max_new_tokens=12)
    next(stream)
    partial = next(stream)
    conv.stop_reply()
    assert list(stream) == []  # the old run's loop ends without writing again
    assert conv.messages[-1].content == partial and conv.messages[-1].stopped
    assert model.chat(tok, [user("hello there")], max_new_tokens=12).startswith(partial)
    stream = conv.reply(model, tok, "again")
    next(stream)
    conv.clear()
    assert list(stream) == [] and conv.messages == []


def test_answers_record_exact_token_counts_and_the_length_cut(loaded):
    model, tok = loaded  # never ends by itself: every answer is cut at max new tokens
    conv = Conversation()
    text = list(conv.reply(model, tok, "hello there", max_new_tokens=5))[-1]
    answer = conv.messages[-1]
    assert (answer.tokens, answer.cut, answer.stopped) == (5, True, False)
    prompt = model.build_chat_input(tok, [user("hello there")], 5).shape[1]
    assert answer.prompt_tokens == prompt and answer.stats(1024).startswith("5 tokens · ")
    assert f"context used {prompt + 5}/1024" in answer.stats(1024)
    # An answer may fill the context and one token more (its last token is never fed back): shown as full.
    assert f"context used {prompt + 4}/{prompt + 4}" in answer.stats(prompt + 4)
    assert answer.note() == "✂️ " + LABELS["cut"].format(n=5)
    grown = list(conv.continue_reply(model, tok, max_new_tokens=4))[-1]
    assert grown.startswith(text) and len(grown) > len(text)
    assert (answer.tokens, answer.cut, answer.content) == (9, True, grown)
    conv.truncate(0)
    assert conv.messages == []
    with pytest.raises(ValueError, match="no answer cut"):
        next(conv.continue_reply(model, tok))


def test_clamped_settings_blank_and_invalid_messages_and_the_chat_store(loaded):
    _, tok = loaded
    assert clamp_setting("n", 5, 1, 512) == (5, None)
    assert clamp_setting("n", 0, 1, 512)[0] == 1 and "1–512" in clamp_setting("n", 0, 1, 512)[1]
    assert clamp_setting("n", 99999, 1, 512)[0] == 512
    assert is_blank("  \n\t ") and is_blank(None) and not is_blank(" a ")
    with pytest.raises(InvalidTextError, match="your message .*U\\+D800"):
        check_message(tok, "hi \ud800", None, 1024, 12)
    with pytest.raises(InvalidTextError, match="the system prompt"):
        check_message(tok, "hi", "be \udc00 brief", 1024, 12)
    store = ChatStore(capacity=2)
    a, b = ChatStore.new_id(), ChatStore.new_id()
    assert ChatStore.valid_id(a) and not ChatStore.valid_id("../x") and not ChatStore.valid_id(None)
    first = store.get(a)
    assert store.get(a) is first and store.get(b) is not first
    store.get(ChatStore.new_id())  # a third chat: the least recently used (a) is forgotten
    assert len(store) == 2 and store.get(a) is not first


def test_long_history_is_truncated_the_official_way(short_model):
    model, tok = short_model
    conv = Conversation()
    for i in range(8):  # far more than a 64-token context holds
        list(conv.reply(model, tok, f"Hello world {i}, this is a test."))
    history = conv.for_model()
    assert len(model.build_chat_input(tok, history[:-1] + [user("last")])[0]) < 64
    answer = list(conv.reply(model, tok, "last"))[-1]
    assert answer == model.chat(tok, history + [user("last")])


def test_generation_error_rolls_back_and_propagates(short_model):
    model, tok = short_model
    conv = Conversation()
    with pytest.raises(ValueError, match="context"):  # a system prompt that fills the whole context
        list(conv.reply(model, tok, "hi", system="The quick brown fox jumps over the lazy dog. " * 10))
    assert conv.messages == []


def test_model_facts(web_dir):
    loaded = load_chat_model(["--model", str(web_dir), "--no-progress", "--temperature", "0.5"])
    facts = loaded.facts
    assert (facts.name, facts.dtype, facts.quantization, facts.device, facts.context, facts.position) == \
        (web_dir.name, "float32", "none", "cpu", 4096, "ALiBi")
    assert loaded.title == web_dir.name
    assert loaded.defaults.temperature == 0.5 and loaded.defaults.max_new_tokens == 12  # flag over the file
    assert facts.parameters == BaichuanForCausalLM.from_pretrained(web_dir, progress=False).num_parameters()
    quantized = load_chat_model(["--model", str(web_dir), "--no-progress", "--quantize", "int8"]).facts
    assert quantized.quantization == "int8 (per channel)" and quantized.parameters == facts.parameters


# ------------------------------------------------------------------------------------------------ the script
@pytest.fixture
def app_test(monkeypatch):
    testing = pytest.importorskip("streamlit.testing.v1")

    def make(*argv):
        monkeypatch.setattr(sys, "argv", [str(APP_PATH), *argv])
        return testing.AppTest.from_file(str(APP_PATH), default_timeout=30)

    return make


def test_page_shows_a_load_error_as_a_message(app_test, tmp_path):
    at = app_test("--model", str(tmp_path / "nope"), "--no-progress").run()
    assert not at.exception
    assert len(at.error) == 1
    assert LABELS["load_error"] in at.error[0].value and "nope" in at.error[0].value


def test_page_answers_and_refuses_too_long_input(app_test, web_dir, loaded):
    model, tok = loaded
    at = app_test("--model", str(web_dir), "--no-progress", "--max-new-tokens", "8").run()
    assert not at.exception and not at.error
    assert at.title[0].value == web_dir.name
    at.toggle(key="markdown").set_value(False).run()
    at.chat_input[0].set_value("hello there").run()
    assert same_text(at.text[-1].value, model.chat(tok, [user("hello there")], max_new_tokens=8))
    at.chat_input[0].set_value("鑫龘" * 1200).run()  # byte-fallback pieces: far more than the 4096-token context
    assert not at.exception
    assert LABELS["too_long"] in at.error[0].value
    assert len(at.chat_message) == 3  # greeting, question, answer: the refused message is not in the history


# ------------------------------------------------------------------------------------------------ the browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what, timeout: float = 30.0):
    """Poll ``check`` until it is truthy; ``what`` (a string, or a function giving one) names it on timeout."""
    end = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.05)


@contextmanager
def web_server(model, log, *flags):
    """``baichuan web --model MODEL`` on a free loopback port; yields its URL once it is healthy."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "baichuan13b", "web", "--model", str(model),
                                 "--no-progress", "--port", str(port), *flags], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        def healthy():
            if proc.poll() is not None:
                raise AssertionError(f"baichuan web exited with {proc.returncode}: {log.read_text()}")
            try:
                return httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, "the streamlit server", timeout=60)
        yield url
    finally:
        proc.terminate()  # `baichuan web` became the streamlit server: nothing may keep serving after this
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the streamlit server outlived `baichuan web`"


@pytest.fixture(scope="module")
def server(web_dir, tmp_path_factory):
    """The page on the tiny random model; yields (url, path of its log)."""
    log = tmp_path_factory.mktemp("web") / "server.log"
    with web_server(web_dir, log) as url:
        yield url, log


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The page on the shipped demo model, as `baichuan web` with no --model serves it."""
    if not (DEMO_MODEL_DIR / "config.json").is_file():
        pytest.skip("demo model not built")
    log = tmp_path_factory.mktemp("web") / "demo.log"
    with web_server("demo", log) as url:
        yield url, log


@pytest.fixture(scope="module")
def empty_dir(web_dir, tmp_path_factory):
    """The tiny model with every token an end of sequence: every answer is empty."""
    folder = tmp_path_factory.mktemp("emptymodel")
    for f in web_dir.iterdir():
        shutil.copy(f, folder / f.name)
    vocab = json.loads((web_dir / "config.json").read_text())["vocab_size"]
    (folder / "generation_config.json").write_text(json.dumps(dict(GEN, eos_token_id=list(range(vocab)))))
    return folder


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BAICHUAN_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


ARTIFACTS = Path(os.environ.get("BAICHUAN_TEST_ARTIFACTS", REPO / "test-artifacts"))


class ChatPage:
    """The page in one browser context (one streamlit session, one chat)."""

    def __init__(self, browser, url, viewport=(1280, 900), init_script=None):
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                           permissions=["clipboard-read", "clipboard-write"])
        self.page = self.context.new_page()
        if init_script:
            self.page.add_init_script(init_script)
        self.page.goto(url)
        self.box = self.page.get_by_test_id("stChatInputTextArea")
        self.box.wait_for(timeout=60_000)

    def bubbles(self):
        return self.page.get_by_test_id("stChatMessage")

    def texts(self):
        """The exact text of each question and answer (plain-text rendering)."""
        return [t.text_content() for t in self.page.get_by_test_id("stChatMessage").get_by_test_id("stText").all()]

    def idle(self):
        return self.page.get_by_test_id("stApp").get_attribute("data-test-script-state") != "running"

    def ready(self):
        """No run in progress and the input box usable (it is read-only while an answer streams)."""
        return self.idle() and self.box.is_enabled()

    def plain_text(self):
        self.page.get_by_text(LABELS["markdown"]).click()
        wait_until(lambda: self.page.get_by_role("switch", name=LABELS["markdown"]).is_checked() is False
                   and self.idle(), "markdown off")

    def set_max_new_tokens(self, n, shown=None):
        box = self.page.get_by_label(LABELS["max_new_tokens"])
        box.fill(str(n))
        box.press("Enter")
        wait_until(lambda: self.idle() and box.input_value() == str(n if shown is None else shown),
                   lambda: f"max new tokens {shown or n} (shown: {box.input_value()})")

    def type_and_enter(self, text):
        self.box.fill(text)
        self.box.press("Enter")

    def send(self, text, expected_bubbles):
        self.type_and_enter(text)
        stop = self.page.get_by_role("button", name=LABELS["stop"])
        wait_until(lambda: self.bubbles().count() == expected_bubbles and stop.count() == 0 and self.ready(),
                   lambda: f"{expected_bubbles} chat bubbles after {text!r} (now {self.bubbles().count()})")
        return self.texts()[-1]

    def rerun(self):
        """Any rerun of this session (a click that changes nothing)."""
        self.page.get_by_label(LABELS["max_new_tokens"]).press("Enter")
        time.sleep(0.3)
        wait_until(self.ready, "the rerun")

    def screenshot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name))


def test_chat_in_a_real_browser(browser, server, web_dir, loaded, tmp_path):
    url, log = server
    model, tok = loaded
    a = ChatPage(browser, url)
    assert a.page.locator("h1").first.text_content() == web_dir.name
    assert a.page.title() == web_dir.name
    assert LABELS["greeting"].split("\n")[0] in a.bubbles().first.text_content()
    a.plain_text()

    first = model.chat(tok, [user("hello there")])
    assert same_text(a.send("hello there", expected_bubbles=3), first)
    second = model.chat(tok, [user("hello there"), assistant(first), user("你好")])
    assert same_text(a.send("你好", expected_bubbles=5), second)
    shown_a = a.texts()
    assert len(shown_a) == 4 and all(map(same_text, shown_a, ["hello there", first, "你好", second]))

    # A second browser context is another session: its own (empty) history, the same loaded model.
    b = ChatPage(browser, url)
    assert b.bubbles().count() == 1  # the greeting only
    b.plain_text()
    other = model.chat(tok, [user("The quick brown fox")])
    assert same_text(b.send("The quick brown fox", expected_bubbles=3), other)
    a.page.get_by_label(LABELS["max_new_tokens"]).press("Enter")  # any rerun of session A
    a.set_max_new_tokens(12)
    assert a.texts() == shown_a  # untouched by B

    # Stop: a long answer is cut off; the partial text stays in the history and the chat goes on.
    b.set_max_new_tokens(4000)
    full = model.chat(tok, [user("The quick brown fox"), assistant(other), user("go on")], max_new_tokens=4000)
    box = b.page.get_by_test_id("stChatInputTextArea")
    box.fill("go on")
    box.press("Enter")
    stop = b.page.get_by_role("button", name=LABELS["stop"])
    stop.wait_for(timeout=30_000)
    wait_until(lambda: len(b.bubbles().last.text_content()) > 10, "the answer to start streaming")
    # While it streams, Stop stands where the send button was, and the box cannot send (issue 17, item 8).
    assert b.page.get_by_test_id("stBottom").get_by_role("button", name=LABELS["stop"]).count() == 1
    assert not b.page.get_by_test_id("stChatInputSubmitButton").is_visible()
    assert not b.box.is_enabled()
    b.screenshot("web-streaming.png")
    stop.click()
    wait_until(lambda: stop.count() == 0 and b.idle() and b.page.get_by_text(LABELS["stopped"]).count() >= 1,
               lambda: ("the stopped answer (stop buttons: %d, idle: %s, 'stopped' labels: %d, last bubble: %r)"
                        % (stop.count(), b.idle(), b.page.get_by_text(LABELS["stopped"]).count(),
                           b.bubbles().last.text_content()[-200:])), timeout=60.0)
    shown = b.texts()[-1]
    # The kept text is a strict prefix of the full greedy answer (up to the whitespace st.text strips).
    partials = [full[:i] for i in range(1, len(full)) if same_text(shown, full[:i])]
    assert shown.strip() and partials, (shown, full)
    b.set_max_new_tokens(12)
    after = b.send("thanks", expected_bubbles=7)
    # ... and it is in the history: the next answer is the one that follows exactly that text.
    assert any(same_text(after, model.chat(tok, [user("The quick brown fox"), assistant(other), user("go on"),
                                                 assistant(partial), user("thanks")], max_new_tokens=12))
               for partial in partials)

    # Clear: A's history is gone, B's is not.
    a.page.get_by_role("button", name=LABELS["clear"]).click()
    wait_until(lambda: a.bubbles().count() == 1 and a.idle(), "the cleared history")
    assert len(b.texts()) == 6

    b.screenshot("web-chat.png")

    assert log.read_text().count("baichuan web: loaded") == 1  # one model for both sessions
    a.context.close()
    b.context.close()


# ------------------------------------------------------------------------------------------------ issue 17
# Each test below drives the page as a user would and fails on the page before issue 17.
WATCH_LOADING = """
window.__seen = {};
new MutationObserver(() => {
  const t = performance.now();
  if (!window.__seen.loading && document.body && document.body.innerText.includes(%r)) window.__seen.loading = t;
  if (!window.__seen.input && document.querySelector('[data-testid="stChatInputTextArea"]')) window.__seen.input = t;
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_first_visit_shows_loading_at_once_and_the_demo_is_named_truthfully(browser, demo_server):
    """Items 6 and 1. The first visit of a fresh server says at once that the model is loading (it was a white
    page for seconds); the demo is called what it is in the title, the tab, the sidebar and the greeting."""
    url, _ = demo_server
    a = ChatPage(browser, url, init_script=WATCH_LOADING % LABELS["loading"])
    seen = a.page.evaluate("window.__seen")
    assert "loading" in seen, "no loading notice before the page was ready"
    assert seen["loading"] < seen["input"] and seen["loading"] < 5000, seen
    assert a.page.get_by_text(LABELS["loading"]).count() == 0  # gone once loaded
    assert a.page.title() == LABELS["demo_title"] == a.page.locator("h1").first.text_content()
    greeting = a.bubbles().first.text_content()
    assert "百川演示模型" in greeting and "demo model" in greeting and "我是百川大模型" not in greeting
    sidebar = a.page.get_by_test_id("stSidebar").text_content()
    assert "demo" in sidebar and "演示模型" in sidebar
    a.send("世界上第二高的山峰是哪座", expected_bubbles=3)
    assert "乔戈里峰（K2）" in a.bubbles().last.text_content()
    a.screenshot("web-demo.png")
    a.context.close()
    phone = ChatPage(browser, url, viewport=(390, 844))
    assert phone.page.title() == LABELS["demo_title"]
    phone.send("What is the capital of France?", expected_bubbles=3)
    assert "Paris" in phone.bubbles().last.text_content()
    phone.screenshot("web-demo-phone.png")
    phone.context.close()


def test_blank_invalid_and_too_long_messages(browser, server, web_dir, loaded):
    """Items 2 and 3, and invalid text: a blank message is not sent; a refused one stays in the box with its
    message until the next send."""
    url, _ = server
    model, tok = loaded
    a = ChatPage(browser, url)
    a.plain_text()
    a.type_and_enter("   \n  ")
    time.sleep(1.0)
    wait_until(a.ready, "the page after a blank message")
    assert a.bubbles().count() == 1  # the greeting only: no empty bubble, no answer

    long_text = "鑫龘" * 1200  # byte-fallback pieces: more than the 4096-token context
    a.type_and_enter(long_text)
    error = a.page.get_by_text(LABELS["too_long"])
    wait_until(lambda: error.count() == 1 and a.ready(), "the too-long message")
    assert a.box.input_value() == long_text  # kept, to be shortened and sent again
    a.rerun()
    assert error.count() == 1 and a.box.input_value() == long_text  # the message survives other clicks
    assert a.bubbles().count() == 1
    a.screenshot("web-too-long.png")

    # A lone surrogate (half a UTF-16 pair, from a broken paste) typed into the box.
    a.page.evaluate("""() => {
        const box = document.querySelector('[data-testid="stChatInputTextArea"]');
        const set = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set;
        set.call(box, 'hello \\ud800 there');
        box.dispatchEvent(new Event('input', {bubbles: true}));
    }""")
    # It would reach the server as bad UTF-8 (streamlit drops the connection, the text is lost): the page
    # replaces it as it is typed and says so.
    alert = a.page.get_by_role("alert").filter(has_text=LABELS["invalid_text"])
    wait_until(lambda: alert.count() == 1 and alert.is_visible(), "the invalid-text message")
    assert "U+D800" in alert.text_content() and "position 6" in alert.text_content()
    assert "{" not in alert.text_content()
    assert a.box.input_value() == "hello \ufffd there"
    a.screenshot("web-invalid-text.png")
    assert same_text(a.send("hello \ufffd there", expected_bubbles=3), model.chat(tok, [user("hello \ufffd there")]))
    assert a.page.get_by_test_id("stException").count() == 0
    a.page.get_by_role("button", name=LABELS["clear"]).click()
    wait_until(lambda: a.bubbles().count() == 1 and a.ready(), "the cleared history")

    answer = a.send("hello there", expected_bubbles=3)
    assert same_text(answer, model.chat(tok, [user("hello there")]))
    assert error.count() == 0  # the next send clears the old message
    a.context.close()


def test_cut_and_empty_answers_are_marked(browser, server, empty_dir, loaded, tmp_path):
    """Item 4: an answer cut by the length limit says so and can be continued; an empty answer says so."""
    url, _ = server
    model, tok = loaded
    a = ChatPage(browser, url)
    a.plain_text()
    a.set_max_new_tokens(5)
    first = a.send("hello there", expected_bubbles=3)  # the web model never ends by itself
    assert same_text(first, model.chat(tok, [user("hello there")], max_new_tokens=5))
    cut = LABELS["cut"].format(n=5)
    assert a.page.get_by_text(cut).count() == 1
    a.page.get_by_role("button", name=LABELS["continue"]).click()
    wait_until(lambda: a.ready() and a.page.get_by_text(LABELS["cut"].format(n=10)).count() == 1,
               "the continued answer")
    assert a.bubbles().count() == 3  # the same bubble grew
    longer = a.texts()[-1]
    assert longer.startswith(first.strip()) and len(longer) > len(first.strip())
    a.screenshot("web-cut.png")
    a.context.close()

    with web_server(empty_dir, tmp_path / "empty.log") as empty_url:
        b = ChatPage(browser, empty_url)
        b.send("hello there", expected_bubbles=3)
        assert b.page.get_by_text(LABELS["no_answer"]).count() == 1
        assert b.page.get_by_text(LABELS["cut"].format(n=0)).count() == 0
        b.screenshot("web-empty.png")
        b.context.close()


def test_questions_are_shown_as_typed(browser, server):
    """Item 5: with Markdown on (for answers), a question is still shown exactly as typed."""
    url, _ = server
    a = ChatPage(browser, url)
    question = "# not a heading -- and *not* bold <b>x</b>"
    a.send(question, expected_bubbles=3)
    asked = a.bubbles().nth(1)
    assert asked.locator("h1").count() == 0 and asked.locator("em, strong, b").count() == 0
    assert asked.get_by_test_id("stText").text_content() == question  # " -- " is not an em dash
    a.context.close()


def test_max_new_tokens_out_of_range_is_clamped_shown_and_used(browser, server, loaded):
    """Item 7: 0 and 99999 were silently ignored; now the field shows and uses the clamped value and says so."""
    url, _ = server
    model, tok = loaded
    a = ChatPage(browser, url)
    a.plain_text()
    a.set_max_new_tokens(0, shown=1)
    note = a.page.get_by_test_id("stSidebar").get_by_text("1–4096")
    assert note.count() == 1
    assert same_text(a.send("hello there", expected_bubbles=3), model.chat(tok, [user("hello there")],
                                                                           max_new_tokens=1))
    assert a.page.get_by_text(LABELS["cut"].format(n=1)).count() == 1  # used: one token
    a.set_max_new_tokens(99999, shown=4096)
    assert note.count() == 1 and "4096" in note.text_content()
    a.screenshot("web-clamped.png")
    a.context.close()


def test_chat_tools_copy_regenerate_edit_reload_stats_system(browser, server, loaded):
    """Item 9: copy an answer, regenerate it, edit and resend a question, the chat and settings kept across a
    reload, tokens and speed under an answer, the system prompt shown, settings before the model's facts."""
    url, _ = server
    model, tok = loaded
    a = ChatPage(browser, url)
    sidebar = a.page.get_by_test_id("stSidebar")
    settings_y = sidebar.get_by_text(LABELS["settings"]).bounding_box()["y"]
    assert settings_y < sidebar.get_by_text(LABELS["facts"]).bounding_box()["y"]
    a.plain_text()
    a.set_max_new_tokens(7)
    system = "be brief"
    area = a.page.get_by_role("textbox", name=LABELS["system"])
    area.fill(system)
    area.press("Tab")
    wait_until(lambda: a.ready() and a.page.get_by_text(LABELS["system_in_use"]).count() == 1, "the system prompt")
    sys_msg = {"role": "system", "content": system}
    first = a.send("hello there", expected_bubbles=3)
    assert same_text(first, model.chat(tok, [sys_msg, user("hello there")], max_new_tokens=7))
    second = a.send("你好", expected_bubbles=5)
    expected_second = model.chat(tok, [sys_msg, user("hello there"), assistant(first), user("你好")],
                                 max_new_tokens=7)
    assert same_text(second, expected_second)
    stats = a.bubbles().last.get_by_text("tokens/s")
    # the web model never ends by itself: 7 tokens generated; the context holds the prompt and those 7
    prompt = model.build_chat_input(tok, [sys_msg, user("hello there"), assistant(first), user("你好")], 7)
    assert stats.count() == 1 and stats.text_content().startswith("7 tokens · ")
    assert f"{prompt.shape[1] + 7}/4096" in stats.text_content()

    # copy: the exact answer text reaches the clipboard
    a.bubbles().last.get_by_role("button", name=LABELS["copy"]).click()
    code = a.page.get_by_test_id("stPopoverBody").get_by_test_id("stCode")
    code.hover()  # the code block's toolbar shows on hover
    code.get_by_label("Copy to clipboard").click()
    assert a.page.evaluate("navigator.clipboard.readText()") == expected_second

    # regenerate: the last answer is asked again (greedy: the same text), the history does not grow
    a.page.keyboard.press("Escape")
    before = stats.text_content()  # its speed figure differs for the regenerated answer
    seen_stop = []
    stop = a.page.get_by_role("button", name=LABELS["stop"])

    def regenerated():  # the answer was asked again and has finished streaming (no cursor, its stats shown)
        if stop.count():
            seen_stop.append(True)
        last = a.bubbles().last.get_by_text("tokens/s")
        return (a.ready() and a.bubbles().count() == 5 and last.count() == 1 and "▌" not in a.texts()[-1]
                and (seen_stop or last.text_content() != before))

    a.page.get_by_role("button", name=LABELS["regenerate"]).click()
    wait_until(regenerated, "the regenerated answer")
    assert same_text(a.texts()[-1], expected_second)

    # edit the first question and send it again: the chat restarts from there
    a.bubbles().nth(1).get_by_role("button", name=LABELS["edit"]).click()
    editor = a.page.get_by_test_id("stPopoverBody").get_by_role("textbox")
    editor.fill("The quick brown fox")
    a.page.get_by_role("button", name=LABELS["resend"]).click()
    wait_until(lambda: a.ready() and a.bubbles().count() == 3 and "The quick brown fox" in a.texts()[0],
               "the edited question")
    edited = model.chat(tok, [sys_msg, user("The quick brown fox")], max_new_tokens=7)
    assert same_text(a.texts()[-1], edited)
    shown = a.texts()

    # reload: the same chat and settings come back (the URL names the chat)
    assert "chat=" in a.page.url
    a.page.reload()
    a.box.wait_for(timeout=60_000)
    wait_until(lambda: a.ready() and a.bubbles().count() == 3, "the chat after a reload")
    assert a.texts() == shown
    assert a.page.get_by_label(LABELS["max_new_tokens"]).input_value() == "7"
    assert a.page.get_by_role("textbox", name=LABELS["system"]).input_value() == system
    a.screenshot("web-tools.png")

    # another tab (no chat id in its URL) starts its own empty chat
    b = ChatPage(browser, url)
    assert b.bubbles().count() == 1
    b.context.close()
    a.context.close()

"""The Baichuan web chat page (a streamlit script, like the seed's web_demo.py).

Run it with ``baichuan web --model PATH`` or directly::

    streamlit run src/baichuan13b/web/app.py -- --model PATH [--dtype bfloat16] [--device cuda] ...

The model is loaded once per server process (``st.cache_resource``) and shared by every browser tab. Each chat
lives in a :class:`~baichuan13b.web.page.ChatStore` (memory only) under the random id in the page's URL
(``?chat=...``), so reloading the page keeps its history and sidebar settings; a new tab starts a new chat. The
page's logic lives in :mod:`baichuan13b.web.page`; this script only draws it.
"""

from __future__ import annotations

import json
import sys
from contextlib import closing

import streamlit as st

# Drawn before anything heavy is imported: the first visit otherwise shows a white page while torch loads.
LOADING = "加载模型… / Loading the model…"


def loading_notice():
    """A "loading" notice while this process has not loaded the page's model yet (``None`` once it has)."""
    page = sys.modules.get("baichuan13b.web.page")
    if page is not None and tuple(sys.argv[1:]) in page.LOADED:
        return None
    st.set_page_config(page_title="Baichuan", page_icon="🤖")
    slot = st.empty()
    slot.info(LOADING, icon="⏳")
    return slot


NOTICE = loading_notice()

from baichuan13b.web.page import (  # after the loading notice, on purpose
    AVATARS,
    LABELS,
    ChatStore,
    Conversation,
    InputTooLongError,
    InvalidTextError,
    LoadedModel,
    Message,
    SavedChat,
    Settings,
    check_message,
    clamp_setting,
    describe_error,
    is_blank,
    load_chat_model,
    settings_to_overrides,
)

# A lone surrogate (half of a UTF-16 pair, e.g. from a broken copy and paste) typed into any field would reach
# the server as bad UTF-8, which streamlit cannot read: it drops the connection and the text is lost without a
# word. This guard, run in the browser before the page's own handlers, replaces it by U+FFFD as it is typed and
# says so in an alert line at the top of the page (hidden again at the next clean edit).
TEXT_GUARD_JS = """<script>
if (!window.baichuanTextGuard) {
  window.baichuanTextGuard = true;
  const isHigh = (c) => c >= 0xD800 && c <= 0xDBFF;
  const isLow = (c) => c >= 0xDC00 && c <= 0xDFFF;
  const firstLone = (text) => {  /* index of the first unpaired surrogate, or -1 */
    for (let i = 0; i !== text.length; i++) {
      const c = text.charCodeAt(i);
      if (isHigh(c) && i + 1 !== text.length && isLow(text.charCodeAt(i + 1))) { i++; continue; }
      if (isHigh(c) || isLow(c)) return i;
    }
    return -1;
  };
  const note = (text) => {
    let line = document.getElementById("baichuan-text-guard");
    if (!line) {
      line = document.createElement("div");
      line.id = "baichuan-text-guard";
      line.setAttribute("role", "alert");
      line.style.cssText = "position:fixed;top:3.5rem;left:50%;transform:translateX(-50%);z-index:1000000;" +
        "max-width:90vw;padding:.6rem 1rem;border-radius:.5rem;background:#ffecec;color:#7d1a1a;" +
        "font:14px sans-serif;box-shadow:0 2px 8px rgba(0,0,0,.2)";
      document.body.appendChild(line);
    }
    line.textContent = text;
    line.style.display = text ? "block" : "none";
  };
  document.addEventListener("input", (event) => {
    const field = event.target;
    if (!(field instanceof HTMLTextAreaElement || field instanceof HTMLInputElement)) return;
    const at = firstLone(field.value);
    if (at === -1) { note(""); return; }
    const code = field.value.charCodeAt(at).toString(16).toUpperCase();
    let fixed = field.value;
    for (let k = firstLone(fixed); k !== -1; k = firstLone(fixed)) fixed = fixed.slice(0, k) + "\\uFFFD" + fixed.slice(k + 1);
    const proto = field instanceof HTMLTextAreaElement ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
    Object.getOwnPropertyDescriptor(proto, "value").set.call(field, fixed);
    note(MESSAGE.split("{code}").join(code).split("{position}").join(String(at)));
  }, true);
}
</script>"""

SETTING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "system",
                "markdown")


@st.cache_resource(show_spinner=False)
def shared_model(argv: tuple[str, ...]) -> LoadedModel:
    """The model of this server process, loaded on the first visit and shared by all sessions."""
    import time

    start = time.perf_counter()
    loaded = load_chat_model(argv)
    print(f"baichuan web: loaded {loaded.facts.name} in {time.perf_counter() - start:.1f}s", file=sys.stderr,
          flush=True)
    return loaded


@st.cache_resource(show_spinner=False)
def shared_store() -> ChatStore:
    """The chats of this server process (memory only)."""
    return ChatStore()


def argv() -> tuple[str, ...]:
    return tuple(sys.argv[1:])


def current_chat() -> SavedChat:
    """This tab's chat: the one named by ``?chat=`` in the URL, a new one (and a new id in the URL) otherwise."""
    chat_id = st.query_params.get("chat")
    if not ChatStore.valid_id(chat_id):
        chat_id = ChatStore.new_id()
        st.query_params["chat"] = chat_id
    st.session_state.chat_id = chat_id
    return shared_store().get(chat_id)


def conversation() -> Conversation:
    return shared_store().get(st.session_state.chat_id).conversation


# ------------------------------------------------------------------------------------------------ settings
def start_settings(loaded: LoadedModel, saved: SavedChat) -> None:
    """Once per browser session: the sidebar's values from the saved chat (a reload), else the model's defaults."""
    if st.session_state.get("settings_of") == st.session_state.chat_id:
        return
    start = Settings.from_config(loaded.defaults, loaded.facts.context)
    values = dict(do_sample=start.do_sample, temperature=start.temperature, top_p=max(0.01, start.top_p),
                  top_k=start.top_k, repetition_penalty=start.repetition_penalty,
                  max_new_tokens=start.max_new_tokens, system=loaded.system or "", markdown=True)
    values.update(saved.settings)
    for key, value in values.items():
        st.session_state[key] = value
    st.session_state.settings_of = st.session_state.chat_id


def clamp_field(key: str, low: int, high: int) -> None:
    """``on_change`` of a whole-number field: bring the typed value into range, and say so under the field."""
    fixed, message = clamp_setting(LABELS[key], st.session_state[key], low, high)
    st.session_state[key] = fixed
    st.session_state[f"{key}_notice"] = message


def number_field(key: str, low: int, high: int, disabled: bool = False) -> int:
    """A whole-number field without the browser-side range (which silently kept the old value): out-of-range
    input is clamped by :func:`clamp_field`, shown, used and explained."""
    value = st.number_input(LABELS[key], step=1, key=key, disabled=disabled, on_change=clamp_field,
                            args=(key, low, high))
    if st.session_state.get(f"{key}_notice"):
        st.warning(st.session_state[f"{key}_notice"], icon="↔️")
    return int(value)


def sidebar(loaded: LoadedModel) -> tuple[str, bool]:
    """Clear, then the generation settings and the system prompt, then the model's facts; returns the system
    prompt and whether answers are Markdown (the settings are read from the session by the actions)."""
    start = Settings.from_config(loaded.defaults, loaded.facts.context)
    with st.sidebar:
        st.button(LABELS["clear"], on_click=clear_history, key="clear", icon="🧹", width="stretch")
        st.subheader(LABELS["settings"])
        do_sample = st.toggle(LABELS["do_sample"], key="do_sample")
        st.slider(LABELS["temperature"], 0.0, max(2.0, start.temperature), step=0.01, key="temperature",
                  disabled=not do_sample)
        st.slider(LABELS["top_p"], 0.01, 1.0, step=0.01, key="top_p", disabled=not do_sample)
        number_field("top_k", 0, max(200, start.top_k), disabled=not do_sample)
        st.slider(LABELS["repetition_penalty"], min(1.0, start.repetition_penalty),
                  max(2.0, start.repetition_penalty), step=0.01, key="repetition_penalty")
        number_field("max_new_tokens", 1, loaded.facts.context)
        system = st.text_area(LABELS["system"], key="system", help=LABELS["system_help"])
        markdown = st.toggle(LABELS["markdown"], key="markdown", help=LABELS["markdown_help"])
        st.subheader(LABELS["facts"])
        for label, value in loaded.facts.rows():
            st.markdown(f"**{label}**: `{value}`")
    return system.strip(), markdown


# ------------------------------------------------------------------------------------------------ actions
# Callbacks run before the next run of the script; an action to carry out is left in ``pending``.
def clear_history() -> None:
    conversation().clear()
    st.session_state.notice = None


def current_overrides() -> dict:
    """The sidebar's settings as validated ``chat()`` overrides (``ValueError`` when out of range)."""
    s = st.session_state
    return settings_to_overrides(Settings(do_sample=s.do_sample, temperature=s.temperature, top_p=s.top_p,
                                          top_k=int(s.top_k), repetition_penalty=s.repetition_penalty,
                                          max_new_tokens=int(s.max_new_tokens)))


def accept(text: str | None) -> bool:
    """Whether ``text`` can be sent; if not, why is kept in ``notice`` (shown until the next send)."""
    if is_blank(text):
        return False  # nothing to send: no empty bubble, no answer
    loaded = shared_model(argv())
    try:
        overrides = current_overrides()
        check_message(loaded.tokenizer, text, st.session_state.system.strip() or None, loaded.facts.context,
                      overrides["max_new_tokens"])
    except (InvalidTextError, InputTooLongError) as e:
        st.session_state.notice = describe_error(e)
        return False
    except ValueError as e:  # a setting out of range
        st.session_state.notice = str(e)
        return False
    st.session_state.notice = None
    return True


def on_send() -> None:
    text = st.session_state.prompt
    if accept(text):
        st.session_state.pending = ("ask", text)
    elif not is_blank(text):
        st.session_state.prompt = text  # refused: the text stays in the box, to shorten and send again


def on_regenerate() -> None:
    conv = conversation()
    question = conv.messages[-2].content
    conv.truncate(len(conv.messages) - 2)
    st.session_state.pending = ("ask", question)


def on_resend(index: int) -> None:
    text = st.session_state.get(f"edit_{index}")
    if accept(text):
        conversation().truncate(index)
        for key in [k for k in st.session_state if str(k).startswith("edit_")]:
            del st.session_state[key]
        st.session_state.pending = ("ask", text)


def on_continue() -> None:
    st.session_state.pending = ("continue", None)


# ------------------------------------------------------------------------------------------------ drawing
def show_text(container, text: str, markdown: bool) -> None:
    """Answer text as Markdown (as the seed) or verbatim (``st.text``: what you read is exactly the text)."""
    if markdown:
        container.markdown(text)
    else:
        container.text(text)


def show_message(index: int, message: Message, last: bool, markdown: bool, context: int) -> None:
    with st.chat_message(message.role, avatar=AVATARS[message.role]):
        if message.role == "user":
            st.text(message.content)  # a question is shown as typed, never as Markdown
            with st.popover(LABELS["edit"], icon="✏️", type="tertiary", key=f"edit_menu_{index}"):
                st.text_area(LABELS["edit"], value=message.content, key=f"edit_{index}", label_visibility="collapsed")
                st.button(LABELS["resend"], key=f"resend_{index}", on_click=on_resend, args=(index,), icon="📨")
            return
        show_text(st, message.content, markdown)
        for line in (message.note(), message.stats(context)):
            if line:
                st.caption(line)
        with st.container(horizontal=True):
            with st.popover(LABELS["copy"], icon="📋", type="tertiary", key=f"copy_{index}",
                            help=LABELS["copy_help"]):
                st.code(message.content, language=None, wrap_lines=True)
            if last:
                st.button(LABELS["regenerate"], key="regenerate", icon="🔄", type="tertiary", on_click=on_regenerate)
            if last and message.cut:
                st.button(LABELS["continue"], key="continue", icon="⏩", type="tertiary", on_click=on_continue)


def text_guard() -> None:
    """Install (once per page) the browser-side guard against lone surrogates (see :data:`TEXT_GUARD_JS`)."""
    with st.sidebar:
        st.html(TEXT_GUARD_JS.replace("MESSAGE", json.dumps(LABELS["invalid_text"] + ": " + LABELS["lone_surrogate"])),
                unsafe_allow_javascript=True, width="content")


def input_area(streaming: bool) -> None:
    """The bottom of the page: the last refusal (kept until the next send) and the input box, whose send
    button is replaced by Stop while an answer streams."""
    with st.bottom:
        # The same layout in both states (a notice slot, then a row of columns with the box first), so the
        # browser keeps one input box instead of briefly showing the old one beside the new one.
        notice = st.container()
        if st.session_state.get("notice"):
            notice.error(st.session_state.notice, icon="⚠️")
        if not streaming:
            (box,) = st.columns(1)
            box.chat_input(LABELS["input"], key="prompt", on_submit=on_send)
            return
        # While streaming the box is read-only and its send button gives way to Stop. A click starts a new
        # run, whose stop_reply() fixes the history (the partial answer is already there); this run is
        # interrupted at its next page update.
        st.html("<style>[data-testid='stChatInputSubmitButton']{display:none}</style>")
        box, stop = st.columns([3, 1], vertical_alignment="center", gap="small")
        box.chat_input(LABELS["input"], key="prompt", disabled=True)
        stop.button(LABELS["stop"], key="stop", icon="⏹", type="primary", width="stretch")


def stream_into(placeholder, stream, markdown: bool) -> None:
    """Draw the growing answer; an error (the history was rolled back) becomes the page's notice."""
    try:
        text = ""
        with closing(stream) as chunks:
            for text in chunks:
                show_text(placeholder, text + " ▌", markdown)
        show_text(placeholder, text, markdown)
    except (ValueError, RuntimeError) as e:  # e.g. ContextLengthError
        st.session_state.notice = describe_error(e)


def carry_out(loaded: LoadedModel, action: tuple[str, str | None], system: str, markdown: bool) -> None:
    """Answer a new question, or continue the cut last answer, streaming it onto the page."""
    kind, text = action
    try:
        overrides = current_overrides()
    except ValueError as e:
        st.session_state.notice = str(e)
        return
    conv = conversation()
    if kind == "ask":
        with st.chat_message("user", avatar=AVATARS["user"]):
            st.text(text)
        stream = conv.reply(loaded.model, loaded.tokenizer, text, system or None,
                            prefix_cache=loaded.prefix_cache, **overrides)
    else:
        stream = conv.continue_reply(loaded.model, loaded.tokenizer, system or None,
                                     prefix_cache=loaded.prefix_cache, **overrides)
    with st.chat_message("assistant", avatar=AVATARS["assistant"]):
        stream_into(st.empty(), stream, markdown)


def main() -> None:
    try:
        loaded = shared_model(argv())
    except (OSError, ValueError, RuntimeError, ImportError, MemoryError) as e:
        if NOTICE is not None:
            NOTICE.empty()
        st.set_page_config(page_title="Baichuan", page_icon="🤖")
        st.title("Baichuan")
        st.error(f"{LABELS['load_error']}: {e}", icon="🚫")
        st.stop()
    if NOTICE is not None:
        NOTICE.empty()
    st.set_page_config(page_title=loaded.title, page_icon="🤖")
    saved = current_chat()
    # Any run replaces the previous one: an answer it was streaming ends here, before the history is drawn.
    saved.conversation.stop_reply()
    start_settings(loaded, saved)
    system, markdown = sidebar(loaded)
    text_guard()
    saved.settings = {key: st.session_state[key] for key in SETTING_KEYS}
    st.title(loaded.title)
    with st.chat_message("assistant", avatar=AVATARS["assistant"]):
        st.markdown(loaded.facts.greeting)
    if system:
        with st.container(border=True):
            st.caption("⚙️ " + LABELS["system_in_use"])
            st.text(system)
    action = st.session_state.pop("pending", None)
    messages = list(saved.conversation.messages)
    if action and action[0] == "continue":
        messages = messages[:-1]  # the answer being continued is drawn as it streams
    for i, message in enumerate(messages):
        show_message(i, message, last=i == len(saved.conversation.messages) - 1 and not action, markdown=markdown,
                     context=loaded.facts.context)
    input_area(streaming=action is not None)
    if action:
        carry_out(loaded, action, system, markdown)
        st.rerun()  # draw the finished answer with its notes, stats and buttons, and the input box again


main()

"""The Baichuan web chat page (a streamlit script, like the seed's web_demo.py).

Run it with ``baichuan web --model PATH`` or directly::

    streamlit run src/baichuan13b/web/app.py -- --model PATH [--dtype bfloat16] [--device cuda] ...

The model is loaded once per server process (``st.cache_resource``) and shared by every browser session; each
session keeps its own history in ``st.session_state``. The page's logic lives in :mod:`baichuan13b.web.page`;
this script only draws it.
"""

from __future__ import annotations

import sys
import time
from contextlib import closing

import streamlit as st

from baichuan13b.web.page import (
    AVATARS,
    LABELS,
    Conversation,
    InputTooLongError,
    LoadedModel,
    Message,
    Settings,
    check_input_fits,
    describe_error,
    load_chat_model,
    settings_to_overrides,
)


@st.cache_resource(show_spinner="加载模型 / Loading the model…")
def shared_model(argv: tuple[str, ...]) -> LoadedModel:
    """The model of this server process, loaded on the first visit and shared by all sessions."""
    start = time.perf_counter()
    loaded = load_chat_model(argv)
    print(f"baichuan web: loaded {loaded.facts.name} in {time.perf_counter() - start:.1f}s", file=sys.stderr,
          flush=True)
    return loaded


def conversation() -> Conversation:
    """This browser session's history."""
    if "conversation" not in st.session_state:
        st.session_state.conversation = Conversation()
    return st.session_state.conversation


def clear_history() -> None:
    conversation().clear()


def show_text(container, text: str, markdown: bool) -> None:
    """Answer text as Markdown (as the seed) or verbatim (``st.text``: what you read is exactly the text)."""
    if markdown:
        container.markdown(text)
    else:
        container.text(text)


def show_message(message: Message, markdown: bool) -> None:
    with st.chat_message(message.role, avatar=AVATARS[message.role]):
        show_text(st, message.content, markdown)
        if message.stopped:
            st.caption("⏹ " + LABELS["stopped"])


def sidebar(loaded: LoadedModel) -> tuple[Settings, str, bool]:
    """The settings, the system prompt, the clear button and the model's facts."""
    start = Settings.from_config(loaded.defaults, loaded.facts.context)
    with st.sidebar:
        st.button(LABELS["clear"], on_click=clear_history, key="clear", icon="🧹", width="stretch")
        st.subheader(LABELS["facts"])
        for label, value in loaded.facts.rows():
            st.markdown(f"**{label}**: `{value}`")
        st.subheader(LABELS["settings"])
        do_sample = st.toggle(LABELS["do_sample"], value=start.do_sample, key="do_sample")
        temperature = st.slider(LABELS["temperature"], 0.0, max(2.0, start.temperature), start.temperature, 0.01,
                                key="temperature", disabled=not do_sample)
        top_p = st.slider(LABELS["top_p"], 0.01, 1.0, max(0.01, start.top_p), 0.01, key="top_p",
                          disabled=not do_sample)
        top_k = st.number_input(LABELS["top_k"], 0, max(200, start.top_k), start.top_k, 1, key="top_k",
                                disabled=not do_sample)
        repetition_penalty = st.slider(LABELS["repetition_penalty"], min(1.0, start.repetition_penalty),
                                       max(2.0, start.repetition_penalty), start.repetition_penalty, 0.01,
                                       key="repetition_penalty")
        max_new_tokens = st.number_input(LABELS["max_new_tokens"], 1, loaded.facts.context, start.max_new_tokens,
                                         1, key="max_new_tokens")
        system = st.text_area(LABELS["system"], value=loaded.system or "", key="system",
                              help=LABELS["system_help"])
        markdown = st.toggle(LABELS["markdown"], value=True, key="markdown", help=LABELS["markdown_help"])
    settings = Settings(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=int(top_k),
                        repetition_penalty=repetition_penalty, max_new_tokens=int(max_new_tokens))
    return settings, system.strip(), markdown


def answer(loaded: LoadedModel, prompt: str, settings: Settings, system: str, markdown: bool) -> None:
    """Stream the answer to ``prompt`` under a stop button; errors become messages on the page."""
    try:
        overrides = settings_to_overrides(settings)
        check_input_fits(loaded.tokenizer, prompt, system, loaded.facts.context, overrides["max_new_tokens"])
    except ValueError as e:  # InputTooLongError or an out-of-range setting
        st.error(describe_error(e) if isinstance(e, InputTooLongError) else str(e), icon="⚠️")
        return
    with st.chat_message("user", avatar=AVATARS["user"]):
        show_text(st, prompt, markdown)
    stop_slot = st.empty()
    # A click starts a new run: it calls stop_reply(), which fixes the history (the partial answer is already
    # there), and this run is interrupted at its next page update.
    stop_slot.button(LABELS["stop"], key="stop", icon="⏹")
    with st.chat_message("assistant", avatar=AVATARS["assistant"]):
        placeholder = st.empty()
        try:
            text = ""
            with closing(conversation().reply(loaded.model, loaded.tokenizer, prompt, system or None,
                                              prefix_cache=loaded.prefix_cache, **overrides)) as stream:
                for text in stream:
                    show_text(placeholder, text + " ▌", markdown)
            show_text(placeholder, text, markdown)
        except (ValueError, RuntimeError) as e:  # e.g. ContextLengthError; the history was rolled back
            placeholder.error(describe_error(e), icon="⚠️")
    stop_slot.empty()


def main() -> None:
    try:
        loaded = shared_model(tuple(sys.argv[1:]))
    except (OSError, ValueError, RuntimeError, ImportError, MemoryError) as e:
        st.set_page_config(page_title="Baichuan", page_icon="🤖")
        st.title("Baichuan")
        st.error(f"{LABELS['load_error']}: {e}", icon="🚫")
        st.stop()
    st.set_page_config(page_title=loaded.title, page_icon="🤖")
    # Any run replaces the previous one: an answer it was streaming ends here, before the history is drawn.
    conversation().stop_reply()
    settings, system, markdown = sidebar(loaded)
    st.title(loaded.title)
    with st.chat_message("assistant", avatar=AVATARS["assistant"]):
        st.markdown(LABELS["greeting"])
    for message in conversation().messages:
        show_message(message, markdown)
    prompt = st.chat_input(LABELS["input"])
    if prompt:
        answer(loaded, prompt, settings, system, markdown)


main()

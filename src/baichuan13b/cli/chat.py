"""Chat in the terminal, like the official cli_demo.py.

Streaming by default. At the prompt: ``clear`` empties the history, ``stream`` toggles streaming, ``exit``
quits; Ctrl+C stops the current answer without leaving (the partial answer stays in the history), Ctrl+D
quits. Line editing and history come from prompt_toolkit.

When standard input is not a terminal, each line is one user message and each answer is printed on its own line,
so the chat can be scripted. The lines form ONE conversation (each answer sees the earlier lines and answers, as
at the terminal; a line "clear" starts a new one); --no-history answers every line as an independent question.
A message that is not valid text (undecodable bytes, a lone surrogate) is refused with a message on stderr and
the chat goes on. A message longer than the model can read (its context less the answer's --max-new-tokens) is
refused with a message on stderr, never cut silently; piped, the remaining lines are still answered and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable, TextIO

from ..chat import chat as chat_answer
from ..chat import max_input_tokens
from ..generation.decode import resolve_config
from ..tensor_parallel import broadcast_object, is_main_process
from ..tokenizer import InvalidTextError, check_text
from .common import (
    DEFAULT_HUB_MODEL,
    add_model_arguments,
    add_sampling_arguments,
    default_model,
    err,
    is_demo,
    load,
    sampling_overrides,
)

HELP = "chat in the terminal"
WELCOME = ("欢迎使用百川大模型，输入进行对话，clear 清空历史，stream 开关流式生成，CTRL+C 中断生成，exit 结束。\n"
           "Welcome to Baichuan: type to chat; clear = new conversation, stream = toggle streaming, "
           "Ctrl+C = stop the answer, exit = quit.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="system prompt (an extension: the official model has none)")
    p.add_argument("--no-stream", action="store_true", help="print whole answers instead of streaming")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="recompute the whole conversation every turn instead of reusing its cached keys and values")
    p.add_argument("--no-history", action="store_true",
                   help="answer each message on its own, without the earlier turns (piped input: one independent "
                        "question per line; by default the lines are one conversation)")


class MessageTooLongError(ValueError):
    """A user message longer than the prompt the model can read (it would be cut from the left)."""


class ChatSession:
    """The conversation state and the command handling of the terminal chat, independent of I/O."""

    def __init__(self, model, tokenizer, overrides: dict, system: str | None = None, stream: bool = True,
                 history: bool = True):
        self.model, self.tokenizer, self.overrides = model, tokenizer, overrides
        self.system = system
        self.stream = stream
        self.history = history  # False: every message is answered on its own
        self.messages: list[dict[str, str]] = []
        # Under tensor parallelism rank 0 announces every action so the other ranks run the same forwards.
        self.announce: Callable[[tuple], None] | None = None

    def clear(self) -> None:
        """Start a new conversation."""
        if self.announce:
            self.announce(("clear",))
        self.messages.clear()

    def conversation(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def check_length(self, text: str) -> None:
        """Raise :class:`MessageTooLongError` when ``text`` (with the system prompt) does not fit the prompt the
        model reads; the official layout would silently keep only its end."""
        config = self.model.config
        if config.allow_length_extrapolation:
            return
        settings = {k: v for k, v in self.overrides.items() if k != "prefix_cache"}  # a chat() argument
        cfg = resolve_config(self.model, None, settings)
        budget = max_input_tokens(config.max_position, cfg.max_new_tokens)
        system = len(self.tokenizer.encode(self.system, add_special_tokens=False)) if self.system else 0
        n = len(self.tokenizer.encode(text, add_special_tokens=False)) + 2  # + the user and assistant tokens
        if system + n > budget:
            raise MessageTooLongError(
                f"message too long: {n} tokens{f' (+ {system} of system prompt)' if system else ''}, the model "
                f"reads at most {budget} (its context of {config.max_position} less room for the answer); "
                "shorten it or lower --max-new-tokens")

    def answer(self, text: str, write: Callable[[str], None]) -> str:
        """Answer ``text``, writing the answer through ``write`` (in pieces when streaming).

        A KeyboardInterrupt stops the answer; what was generated so far is kept in the history and returned.
        Text that is not valid Unicode raises :class:`~baichuan13b.tokenizer.InvalidTextError`, and a message
        that does not fit :class:`MessageTooLongError`, before anything changes (the history stays as it was).
        """
        check_text(text, "the message")
        self.check_length(text)
        if self.announce:
            self.announce(("answer", text))
        if not self.history:
            self.messages.clear()
        self.messages.append({"role": "user", "content": text})
        answer = ""
        try:
            if self.stream:
                for cumulative in chat_answer(self.model, self.tokenizer, self.conversation(), stream=True,
                                              **self.overrides):
                    write(cumulative[len(answer):])
                    answer = cumulative
            else:
                answer = chat_answer(self.model, self.tokenizer, self.conversation(), **self.overrides)
                write(answer)
        except KeyboardInterrupt:
            write(" [stopped]")
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def run_lines(session: ChatSession, lines: Iterable[str], out: TextIO, errors: TextIO | None = None) -> int:
    """Scripted mode: one user message per input line, one answer per output line. A message that is too long
    gets an empty output line and a message on ``errors``; returns 1 if that happened, else 0."""
    errors = errors or sys.stderr
    status = 0
    for line in lines:
        text = line.rstrip("\n")
        if not text.strip():
            continue
        command = text.strip().lower()
        if command == "exit":
            return status
        if command == "clear":
            session.clear()
            continue
        if command == "stream":
            session.stream = not session.stream
            continue
        try:
            session.answer(text, lambda s: (out.write(s), out.flush()))
        except InvalidTextError as e:  # an empty answer line keeps one output line per input line
            err(f"baichuan chat: message not sent: {e}")
        except MessageTooLongError as e:
            print(f"baichuan chat: error: {e}", file=errors, flush=True)
            status = 1
        out.write("\n")
        out.flush()
    return status


def run_interactive(session: ChatSession, model_name: str) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory

    prompt = PromptSession(history=InMemoryHistory())
    print(WELCOME, flush=True)
    while True:
        try:
            text = prompt.prompt("\n用户 / User: ")
        except KeyboardInterrupt:  # Ctrl+C at the prompt: start a new line, keep going
            continue
        except EOFError:  # Ctrl+D
            return
        command = text.strip().lower()
        if not command:
            continue
        if command == "exit":
            return
        if command == "clear":
            session.clear()
            print("\033[2J\033[H" + WELCOME, flush=True)
            continue
        if command == "stream":
            session.stream = not session.stream
            print(f"(streaming {'on' if session.stream else 'off'})", flush=True)
            continue
        try:
            check_text(text, "the message")
            session.check_length(text)
        except InvalidTextError as e:
            print(f"(message not sent: {e})", flush=True)
            continue
        except MessageTooLongError as e:
            print(f"\n({e})", flush=True)
            continue
        print(f"\n{model_name}: ", end="", flush=True)
        session.answer(text, lambda s: print(s, end="", flush=True))
        print(flush=True)


def follow(session: ChatSession) -> None:
    """Ranks other than 0 under torchrun: repeat rank 0's actions (same forwards, no I/O) until it exits."""
    while True:
        action = broadcast_object(None)
        if action[0] == "exit":
            return
        if action[0] == "clear":
            session.messages.clear()
        else:
            session.answer(action[1], lambda s: None)


DEMO_BANNER = ("（这是百川演示模型：一个在本机训练的极小离线模型，只认识少量知识。真正的模型请用 "
               f"--model {DEFAULT_HUB_MODEL} 或本地文件夹。）\n"
               "(This is the Baichuan demo model: a tiny offline model trained by this project that knows only a "
               f"few facts. For the real model use --model {DEFAULT_HUB_MODEL} or a local folder.)")


def run(args: argparse.Namespace) -> int:
    if args.system is not None:
        check_text(args.system, "--system")  # e.g. undecodable bytes on the command line
    model, tokenizer = load(args)
    if is_demo(args.model or default_model()) and sys.stdin.isatty():
        print(DEMO_BANNER, flush=True)
    overrides = sampling_overrides(args)
    if args.no_prefix_cache:
        overrides["prefix_cache"] = False  # a chat() argument next to the generation settings
    session = ChatSession(model, tokenizer, overrides, system=args.system, stream=not args.no_stream,
                          history=not args.no_history)
    if model.tensor_parallel is not None:
        if not is_main_process():
            follow(session)
            return 0
        session.announce = broadcast_object
    status = 0
    try:
        if sys.stdin.isatty():
            run_interactive(session, "Baichuan")
        else:
            # Undecodable bytes become lone surrogates, refused line by line, instead of ending the chat.
            sys.stdin.reconfigure(errors="surrogateescape")
            status = run_lines(session, sys.stdin, sys.stdout)
    finally:
        if session.announce:
            session.announce(("exit",))
    return status

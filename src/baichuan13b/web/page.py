"""The logic of the web chat page, importable and testable without streamlit.

The streamlit script (:mod:`baichuan13b.web.app`) only draws; everything it decides comes from here:

* :func:`add_arguments` / :func:`parse_args`: the page's flags (the model and sampling flags of ``baichuan chat``),
  given after ``--`` on a ``streamlit run`` line; :func:`argv_from_namespace` turns the flags ``baichuan web``
  parsed back into that list.
* :func:`load_chat_model`: model, tokenizer, the starting :class:`~baichuan13b.generation.GenerationConfig` and the
  :class:`ModelFacts` shown in the sidebar.
* :class:`Settings` / :func:`settings_to_overrides`: sidebar values to ``chat()`` keyword overrides.
* :class:`Conversation`: one browser session's history; :meth:`Conversation.reply` streams an answer through the
  one decode path (:func:`baichuan13b.chat.chat`) and keeps a stopped answer's partial text in the history.
* :func:`check_input_fits`: a message that cannot fit in the model's context is an error, while an old history
  that no longer fits is truncated the official way by :func:`baichuan13b.chat.build_chat_ids`.
"""

from __future__ import annotations

import argparse
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..chat import chat
from ..cli.common import add_model_arguments, add_sampling_arguments, display_name, load, sampling_overrides
from ..generation import GenerationConfig
from ..model import ContextLengthError

APP_PATH = Path(__file__).resolve().with_name("app.py")

# Every label of the page, Chinese first then English (the seed's page was Chinese only).
LABELS = {
    "greeting": "您好，我是百川大模型，很高兴为您服务 🥰\n\nHello, I am Baichuan. Happy to help you.",
    "input": "输入您的问题 / Ask a question (Enter to send)",
    "clear": "清空对话 / Clear history",
    "stop": "停止生成 / Stop",
    "stopped": "已停止 / stopped",
    "settings": "生成参数 / Generation settings",
    "do_sample": "采样 / Sample (off: greedy)",
    "temperature": "温度 / Temperature",
    "top_p": "Top-p",
    "top_k": "Top-k (0 = 关闭 / off)",
    "repetition_penalty": "重复惩罚 / Repetition penalty",
    "max_new_tokens": "最大生成长度 / Max new tokens",
    "system": "系统提示（可选）/ System prompt (optional)",
    "system_help": "放在对话最前面的文字；官方模型没有系统角色，这是扩展。 / Text placed before the conversation; "
                   "an extension: the official model has no system role.",
    "markdown": "按 Markdown 显示 / Render answers as Markdown",
    "markdown_help": "关闭则按原文显示 / Off: show the exact text",
    "facts": "模型信息 / Model",
    "name": "名称 / Name",
    "parameters": "参数量 / Parameters",
    "dtype": "精度 / Dtype",
    "quantization": "量化 / Quantization",
    "device": "设备 / Device",
    "context": "上下文 / Context",
    "position": "位置编码 / Positions",
    "load_error": "模型加载失败 / The model failed to load",
    "too_long": "输入过长 / Input too long",
    "generation_error": "生成失败 / Generation failed",
}
AVATARS = {"user": "🧑‍💻", "assistant": "🤖"}


# ------------------------------------------------------------------------------------------------ flags
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The page's flags: those of ``baichuan chat`` (model, sampling, ``--system``) plus ``--title``."""
    add_model_arguments(p)
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="initial system prompt (editable on the page)")
    p.add_argument("--title", default=None, help="page title (default: the model's name)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="recompute the whole conversation every turn instead of reusing its cached keys and values")


class _PageArgumentParser(argparse.ArgumentParser):
    """Raises ``ValueError`` on bad flags instead of exiting the process (the page shows the message)."""

    def error(self, message: str):
        raise ValueError(f"bad page arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the flags given after ``--`` on the ``streamlit run`` line."""
    p = _PageArgumentParser(prog="streamlit run app.py --", description="Baichuan web chat page.")
    add_arguments(p)
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the page's flags; raises ``ValueError`` with argparse's message instead of exiting."""
    return build_parser().parse_args(list(argv))


def argv_from_namespace(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The command line that makes ``parser`` produce ``args`` again, for the flags ``parser`` knows.

    Flags left at their default are not written. Generic over the argparse action kinds (store, store_true,
    store_false, store_const, append), so flags other modules add to the shared groups are passed on too.
    """
    argv: list[str] = []
    done: set[str] = set()
    for action in parser._actions:  # argparse has no public accessor for the actions of a parser
        dest = action.dest
        if not action.option_strings or dest in done or dest in ("help", "version") or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value == action.default:
            continue
        option = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [option, str(item)]
        elif action.nargs == 0:  # store_true / store_false / store_const: the action whose const is the value
            if value != action.const:
                continue
            argv.append(option)
        elif isinstance(value, (list, tuple)):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
        done.add(dest)
    return argv


# ------------------------------------------------------------------------------------------------ model
@dataclass(frozen=True)
class ModelFacts:
    """What the sidebar says about the loaded model."""

    name: str
    parameters: int
    dtype: str
    quantization: str
    device: str
    context: int
    position: str

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for display."""
        return [
            (LABELS["name"], self.name),
            (LABELS["parameters"], f"{self.parameters / 1e9:.2f} B" if self.parameters >= 1e8
             else f"{self.parameters / 1e6:.2f} M"),
            (LABELS["dtype"], self.dtype),
            (LABELS["quantization"], self.quantization),
            (LABELS["device"], self.device),
            (LABELS["context"], f"{self.context} tokens"),
            (LABELS["position"], self.position),
        ]


def model_facts(model: Any, args: argparse.Namespace) -> ModelFacts:
    """Facts about a loaded model. The quantization is the one its config records (``--quantize`` while loading, or
    a folder written by ``baichuan quantize``); the parameter count is the float model's, from the config."""
    from ..quantization import QuantizationConfig

    devices = sorted({str(t.device) for t in itertools.chain(model.parameters(), model.buffers())})
    quantization = QuantizationConfig.of_model_config(model.config)
    return ModelFacts(
        name=display_name(args),
        parameters=model.config.num_parameters(),
        dtype=str(model.dtype).removeprefix("torch."),
        quantization=quantization.describe() if quantization else "none",
        device=", ".join(devices),
        context=model.config.max_position,
        position="ALiBi" if model.config.position_embedding == "alibi" else "RoPE",
    )


@dataclass
class LoadedModel:
    """Everything the page shares between sessions: built once per process."""

    model: Any
    tokenizer: Any
    defaults: GenerationConfig  # the checkpoint's generation_config.json with the command-line flags applied
    facts: ModelFacts
    system: str | None
    title: str
    prefix_cache: bool = True  # chat(prefix_cache=...): turn N reuses the cached turns 1..N-1


def load_chat_model(argv: Sequence[str]) -> LoadedModel:
    """Parse the page's flags and load model and tokenizer (the same loading as ``baichuan chat``)."""
    args = parse_args(argv)
    model, tokenizer = load(args)
    base = model.generation_config or GenerationConfig.from_model_config(model.config)
    defaults = base.update(**sampling_overrides(args))
    facts = model_facts(model, args)
    return LoadedModel(model=model, tokenizer=tokenizer, defaults=defaults, facts=facts, system=args.system,
                       title=args.title or facts.name, prefix_cache=not args.no_prefix_cache)


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class Settings:
    """The sidebar's generation settings."""

    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    max_new_tokens: int

    @classmethod
    def from_config(cls, cfg: GenerationConfig, context: int) -> "Settings":
        """Starting values from a generation config; ``max_new_tokens`` is capped at the context length."""
        return cls(do_sample=bool(cfg.do_sample), temperature=float(cfg.temperature), top_p=float(cfg.top_p),
                   top_k=int(cfg.top_k), repetition_penalty=float(cfg.repetition_penalty),
                   max_new_tokens=max(1, min(int(cfg.max_new_tokens), context)))


def settings_to_overrides(settings: Settings) -> dict[str, Any]:
    """Keyword overrides for :func:`baichuan13b.chat.chat`; raises ``ValueError`` for out-of-range values."""
    overrides = dict(do_sample=bool(settings.do_sample), temperature=float(settings.temperature),
                     top_p=float(settings.top_p), top_k=int(settings.top_k),
                     repetition_penalty=float(settings.repetition_penalty),
                     max_new_tokens=int(settings.max_new_tokens))
    GenerationConfig().update(**overrides)  # validates: the same checks as any generation call
    if overrides["max_new_tokens"] < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {overrides['max_new_tokens']}")
    return overrides


# ------------------------------------------------------------------------------------------------ input checks
class InputTooLongError(ValueError):
    """The new message (with the system prompt) cannot fit in the part of the context the prompt may use."""


def check_input_fits(tokenizer: Any, text: str, system: str | None, context: int, max_new_tokens: int) -> int:
    """Raise :class:`InputTooLongError` when ``text`` cannot be read whole; return its length in tokens.

    The prompt may use ``max(context // 2, context - max_new_tokens)`` tokens (the official budget); the system
    prompt comes out of it, and the new message with its role token must fit in what is left. Older rounds that
    do not fit are dropped by the official truncation, which is not an error.
    """
    budget = max(context // 2, context - max_new_tokens)
    system_len = len(tokenizer.encode(system, add_special_tokens=False)) if system else 0
    text_len = len(tokenizer.encode(text, add_special_tokens=False))
    if system_len >= budget:
        raise InputTooLongError(
            f"the system prompt is {system_len} tokens; with max new tokens {max_new_tokens} the prompt may use "
            f"{budget} of the model's {context}-token context. Shorten the system prompt.")
    if 1 + text_len > budget - system_len:
        raise InputTooLongError(
            f"your message is {text_len} tokens"
            + (f" and the system prompt {system_len}" if system_len else "")
            + f"; with max new tokens {max_new_tokens} the prompt may use {budget} of the model's {context}-token "
              "context. Shorten the message or lower max new tokens.")
    return text_len


# ------------------------------------------------------------------------------------------------ history
@dataclass
class Message:
    """One chat bubble. ``stopped`` marks an answer that was cut off by the stop button (or a reload)."""

    role: str
    content: str
    stopped: bool = False


@dataclass
class Conversation:
    """One browser session's history (each session keeps its own in ``st.session_state``).

    At most one answer is written at a time. Streamlit may start a new run of the page while the previous run's
    thread is still computing a token (a click during an answer), so :meth:`stop_reply` (called at the start of
    every run) takes the right to write from the running answer under a lock: from then on the history is
    fixed, whatever the old thread does before it notices that it was interrupted.
    """

    messages: list[Message] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _writer: int = field(default=0, repr=False, compare=False)  # the reply allowed to write; bumped to stop it

    def stop_reply(self) -> None:
        """Stop the answer being streamed, if any: its text so far stays in the history, marked ``stopped``."""
        with self._lock:
            self._writer += 1

    def clear(self) -> None:
        """Stop any answer being streamed and forget the whole history."""
        with self._lock:
            self._writer += 1
            self.messages.clear()

    def for_model(self, system: str | None = None) -> list[dict[str, str]]:
        """The messages as :func:`baichuan13b.chat.chat` takes them, the system prompt first when given."""
        head = [{"role": "system", "content": system}] if system else []
        with self._lock:
            return head + [{"role": m.role, "content": m.content} for m in self.messages]

    def reply(self, model: Any, tokenizer: Any, text: str, system: str | None = None,
              **overrides: Any) -> Iterator[str]:
        """Add the user message ``text`` and stream the answer, yielding the cumulative text.

        The answer is in the history from the start and updated before each yield, marked ``stopped`` until it
        ends by itself. It ends early, keeping its partial text, when the caller closes the iterator (streamlit
        interrupting the script) or when :meth:`stop_reply` or :meth:`clear` is called. If generation fails
        before any text, both new messages are removed and the error propagates.
        """
        question, answer = Message("user", text), Message("assistant", "", stopped=True)
        with self._lock:
            self._writer += 1
            me = self._writer
            conversation = [{"role": m.role, "content": m.content} for m in self.messages]
            self.messages += [question, answer]
        if system:
            conversation.insert(0, {"role": "system", "content": system})
        stream = chat(model, tokenizer, conversation + [{"role": "user", "content": text}], stream=True,
                      **overrides)
        try:
            for cumulative in stream:
                with self._lock:
                    if self._writer != me:
                        return
                    answer.content = cumulative
                yield cumulative
            with self._lock:
                answer.stopped = self._writer != me
        except (ValueError, RuntimeError):  # ContextLengthError is a ValueError; re-raised for the page
            with self._lock:
                if not answer.content:
                    self.messages = [m for m in self.messages if m is not question and m is not answer]
            raise
        finally:
            stream.close()


def describe_error(error: BaseException) -> str:
    """A one-line message for the page (no traceback)."""
    kind = LABELS["too_long"] if isinstance(error, (InputTooLongError, ContextLengthError)) else \
        LABELS["generation_error"]
    return f"{kind}: {error}"

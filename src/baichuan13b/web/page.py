"""The logic of the web chat page, importable and testable without streamlit.

The streamlit script (:mod:`baichuan13b.web.app`) only draws; everything it decides comes from here:

* :func:`add_arguments` / :func:`parse_args`: the page's flags (the model and sampling flags of ``baichuan chat``),
  given after ``--`` on a ``streamlit run`` line; :func:`argv_from_namespace` turns the flags ``baichuan web``
  parsed back into that list.
* :func:`load_chat_model`: model, tokenizer, the starting :class:`~baichuan13b.generation.GenerationConfig` and the
  :class:`ModelFacts` shown in the sidebar.
* :class:`Settings` / :func:`settings_to_overrides`: sidebar values to ``chat()`` keyword overrides.
* :class:`Conversation`: one chat's history; :meth:`Conversation.reply` streams an answer through the one decode
  path (:func:`stream_answer`, i.e. :func:`baichuan13b.chat.chat`), keeps a stopped answer's partial text in the
  history and records its token counts and speed; :meth:`Conversation.continue_reply` goes on with an answer cut
  by the length limit.
* :class:`ChatStore`: the chats of the server process, keyed by the id in the page's URL (``?chat=...``), so a
  reload finds its history and settings again (memory only, the least recently used dropped beyond a bound).
* :func:`check_message`: a message that is blank, is not valid text, or cannot fit in the model's context is
  refused with a message; an old history that no longer fits is truncated the official way by
  :func:`baichuan13b.chat.build_chat_ids`.
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..chat import build_chat_input, chat, cumulative_text, stream_prompt
from ..checkpoint import DEMO_NAME
from ..cli.common import add_model_arguments, add_sampling_arguments, display_name, load, sampling_overrides
from ..generation import GenerationConfig
from ..generation.decode import resolve_config, tokens_that_fit
from ..model import ContextLengthError
from ..tokenizer import InvalidTextError, check_text

APP_PATH = Path(__file__).resolve().with_name("app.py")

# Every label of the page, Chinese first then English (the seed's page was Chinese only).
LABELS = {
    "greeting": "您好，我是百川大模型，很高兴为您服务 🥰\n\nHello, I am Baichuan. Happy to help you.",
    "demo_greeting": "你好！我是百川演示模型，只知道很少的知识（几座高山、几条长河、十五个国家的首都、简单的算术），"
                     "有什么可以帮你？\n\nHello! I am the Baichuan demo model: I know only a few facts (some "
                     "mountains, rivers and capitals, and simple arithmetic). How can I help you?",
    "demo_title": "百川演示模型 / Baichuan demo model",
    "loading": "加载模型… / Loading the model…",
    "input": "输入您的问题 / Ask a question (Enter to send)",
    "clear": "清空对话 / Clear history",
    "stop": "停止生成 / Stop",
    "stopped": "已停止 / stopped",
    "no_answer": "（没有回答：模型立即结束了）/ (no answer: the model ended at once)",
    "cut": "已达长度上限，停在 {n} 个 token / stopped at {n} tokens (length limit)",
    "continue": "继续 / Continue",
    "regenerate": "重新生成 / Regenerate",
    "edit": "编辑 / Edit",
    "resend": "重新发送 / Resend",
    "copy": "复制 / Copy",
    "copy_help": "点右上角的图标复制原文 / The icon at the top right copies the exact text",
    "stats": "{n} tokens · {rate} tokens/s · 上下文已用 / context used {used}/{context}",
    "system_in_use": "系统提示 / System prompt in use",
    "out_of_range": "{name}: {value} 超出范围 {low}–{high}，已改为 {fixed} / out of range {low}–{high}: "
                    "set to {fixed}",
    "invalid_text": "无效文本 / Invalid text",
    "lone_surrogate": "U+{code}（位置 {position}）是单独的代理字符，不是文本，已替换为 \ufffd / U+{code} at position "
                      "{position} is a lone surrogate (half of a character pair, e.g. from a broken copy and paste), "
                      "which is not text: it was replaced by \ufffd",
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
    "about": "说明 / About",
    "demo_about": "本项目自带的小型演示模型 / the project's tiny demo model (docs/demo.md)",
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
    is_demo: bool = False

    @property
    def title(self) -> str:
        """What the page calls the model: the demo by what it is, any other model by its name."""
        return LABELS["demo_title"] if self.is_demo else self.name

    @property
    def greeting(self) -> str:
        """The first bubble: the demo introduces itself as the demo (as it answers "你是谁"), others as Baichuan."""
        return LABELS["demo_greeting"] if self.is_demo else LABELS["greeting"]

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for display."""
        about = [(LABELS["about"], LABELS["demo_about"])] if self.is_demo else []
        return [
            (LABELS["name"], self.name),
            *about,
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
    name = display_name(args)
    return ModelFacts(
        name=name,
        parameters=model.config.num_parameters(),
        dtype=str(model.dtype).removeprefix("torch."),
        quantization=quantization.describe() if quantization else "none",
        device=", ".join(devices),
        context=model.config.max_position,
        position="ALiBi" if model.config.position_embedding == "alibi" else "RoPE",
        is_demo=name == DEMO_NAME,
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


# The page flags (as tuples) whose model this process has loaded: the page shows "loading" until then.
LOADED: set[tuple[str, ...]] = set()


def load_chat_model(argv: Sequence[str]) -> LoadedModel:
    """Parse the page's flags and load model and tokenizer (the same loading as ``baichuan chat``)."""
    args = parse_args(argv)
    model, tokenizer = load(args)
    base = model.generation_config or GenerationConfig.from_model_config(model.config)
    defaults = base.update(**sampling_overrides(args))
    facts = model_facts(model, args)
    LOADED.add(tuple(argv))
    return LoadedModel(model=model, tokenizer=tokenizer, defaults=defaults, facts=facts, system=args.system,
                       title=args.title or facts.title, prefix_cache=not args.no_prefix_cache)


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


def clamp_setting(name: str, value: Any, low: int, high: int) -> tuple[int, str | None]:
    """A typed-in whole number brought into ``[low, high]``: (the value to use and show, a message or None).

    A number field that refused out-of-range values silently kept the old one while showing the typed one; the
    page instead shows and uses the clamped value and says so."""
    fixed = min(high, max(low, int(value)))
    if fixed == value:
        return fixed, None
    return fixed, LABELS["out_of_range"].format(name=name, value=value, low=low, high=high, fixed=fixed)


# ------------------------------------------------------------------------------------------------ input checks
class InputTooLongError(ValueError):
    """The new message (with the system prompt) cannot fit in the part of the context the prompt may use."""


def is_blank(text: str | None) -> bool:
    """A message with nothing but whitespace is not sent."""
    return text is None or not text.strip()


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
def stream_answer(model: Any, tokenizer: Any, messages: list[dict[str, str]], prefix_cache: bool = True,
                  **overrides: Any) -> Iterator[str]:
    """The page's one call into the chat path: the cumulative answer to ``messages`` (newest last); turn N
    reuses the cached turns 1..N-1 unless ``prefix_cache=False``."""
    return chat(model, tokenizer, messages, stream=True, prefix_cache=prefix_cache, **overrides)


def stream_continuation(model: Any, tokenizer: Any, messages: list[dict[str, str]], partial: str,
                        prefix_cache: bool = True, **overrides: Any) -> Iterator[str]:
    """Go on with ``partial``, an answer to ``messages`` that the length limit cut: the prompt is the chat prompt
    followed by the partial answer's tokens, decoded by the same path; yields the cumulative new text."""
    cfg = resolve_config(model, None, overrides)
    prompt = build_chat_input(model, tokenizer, messages, generation_config=cfg)  # [1, n]
    done = torch.tensor([tokenizer.encode(partial, add_special_tokens=False)], dtype=torch.long,
                        device=prompt.device)  # [1, m]
    yield from cumulative_text(stream_prompt(model, tokenizer, torch.cat([prompt, done], dim=1)[0].tolist(), cfg,
                                             prefix_cache))


class TokenCounter:
    """A tokenizer that counts the tokens its stream decoders are given: exactly the tokens generated, eos
    excluded (the decode path turns every generated token into text through ``tokenizer.stream_decoder``, and
    ends at eos without decoding it). Everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def stream_decoder(self, *args: Any, **kwargs: Any) -> _CountedDecoder:
        return _CountedDecoder(self.tokenizer.stream_decoder(*args, **kwargs), self)


class _CountedDecoder:
    def __init__(self, decoder: Any, counter: TokenCounter):
        self.decoder, self.counter = decoder, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)

    def put(self, token: int) -> str:
        self.counter.count += 1
        return self.decoder.put(token)


@dataclass
class Message:
    """One chat bubble.

    ``stopped`` marks an answer cut off by the stop button (or a reload). For an answer that ended, ``tokens`` is
    the number of tokens generated (eos excluded), ``prompt_tokens`` the prompt it was read after,
    ``seconds`` the time it took (prompt included) and ``cut`` whether it ended at the length limit (no eos).
    """

    role: str
    content: str
    stopped: bool = False
    tokens: int | None = None
    prompt_tokens: int | None = None
    seconds: float | None = None
    cut: bool = False

    def note(self) -> str | None:
        """Why an answer ended, when it did not end by itself with some text."""
        if self.role != "assistant":
            return None
        if self.stopped:
            return "⏹ " + LABELS["stopped"]
        if self.cut:
            return "✂️ " + LABELS["cut"].format(n=self.tokens)
        if not self.content and self.tokens is not None:
            return "∅ " + LABELS["no_answer"]
        return None

    def stats(self, context: int) -> str | None:
        """Tokens, speed and context used, under an answer that ended."""
        if self.role != "assistant" or self.tokens is None or self.seconds is None or self.stopped:
            return None
        rate = f"{self.tokens / self.seconds:.1f}" if self.seconds > 0 else "-"
        return LABELS["stats"].format(n=self.tokens, rate=rate, used=min((self.prompt_tokens or 0) + self.tokens, context),
                                      context=context)


@dataclass
class Conversation:
    """One chat's history (kept in :class:`ChatStore` under the id in the page's URL).

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
        self.truncate(0)

    def truncate(self, index: int) -> None:
        """Stop any answer being streamed and forget the messages from ``index`` on (edit, regenerate)."""
        with self._lock:
            self._writer += 1
            del self.messages[index:]

    def for_model(self, system: str | None = None) -> list[dict[str, str]]:
        """The messages as :func:`baichuan13b.chat.chat` takes them, the system prompt first when given."""
        head = [{"role": "system", "content": system}] if system else []
        with self._lock:
            return head + [{"role": m.role, "content": m.content} for m in self.messages]

    def reply(self, model: Any, tokenizer: Any, text: str, system: str | None = None, prefix_cache: bool = True,
              **overrides: Any) -> Iterator[str]:
        """Add the user message ``text`` and stream the answer, yielding the cumulative text.

        The answer is in the history from the start and updated before each yield, marked ``stopped`` until it
        ends by itself (then its token counts and time are recorded). It ends early, keeping its partial text,
        when the caller closes the iterator (streamlit interrupting the script) or when :meth:`stop_reply`,
        :meth:`truncate` or :meth:`clear` is called. If generation fails before any text, both new messages are
        removed and the error propagates.
        """
        question, answer = Message("user", text), Message("assistant", "", stopped=True)
        with self._lock:
            self._writer += 1
            me = self._writer
            conversation = [{"role": m.role, "content": m.content} for m in self.messages]
            self.messages += [question, answer]
        if system:
            conversation.insert(0, {"role": "system", "content": system})
        conversation.append({"role": "user", "content": text})
        counter = TokenCounter(tokenizer)
        stream = stream_answer(model, counter, conversation, prefix_cache=prefix_cache, **overrides)
        yield from self._write(model, counter, conversation, answer, "", stream, me, overrides,
                               drop_on_error=(question, answer))

    def continue_reply(self, model: Any, tokenizer: Any, system: str | None = None, prefix_cache: bool = True,
                       **overrides: Any) -> Iterator[str]:
        """Go on with the last answer, which the length limit cut; yields its whole text as it grows."""
        with self._lock:
            if len(self.messages) < 2 or not self.messages[-1].cut:
                raise ValueError("there is no answer cut by the length limit to continue")
            self._writer += 1
            me = self._writer
            answer = self.messages[-1]
            done, done_tokens, seconds = answer.content, answer.tokens or 0, answer.seconds or 0.0
            conversation = [{"role": m.role, "content": m.content} for m in self.messages[:-1]]
            answer.stopped, answer.cut = True, False
        if system:
            conversation.insert(0, {"role": "system", "content": system})
        counter = TokenCounter(tokenizer)
        stream = stream_continuation(model, counter, conversation, done, prefix_cache=prefix_cache, **overrides)
        yield from self._write(model, counter, conversation, answer, done, stream, me, overrides,
                               before=(done_tokens, seconds))

    def _write(self, model: Any, counter: TokenCounter, conversation: list[dict[str, str]], answer: Message,
               done: str, stream: Iterator[str], me: int, overrides: dict[str, Any],
               drop_on_error: tuple[Message, ...] = (), before: tuple[int, float] = (0, 0.0)) -> Iterator[str]:
        """Stream ``done`` + new text into ``answer`` while this reply may write; record the counts at the end."""
        start = time.perf_counter()
        try:
            for cumulative in stream:
                with self._lock:
                    if self._writer != me:
                        return
                    answer.content = done + cumulative
                yield answer.content
            cfg = resolve_config(model, None, overrides)
            prompt_tokens = build_chat_input(model, counter.tokenizer, conversation, generation_config=cfg).shape[1]
            new_tokens = counter.count
            budget = cfg.max_new_tokens
            if not model.config.allow_length_extrapolation:  # the decode path's own limit
                budget = min(budget, tokens_that_fit(model.config.max_position, prompt_tokens + before[0]))
            with self._lock:
                if self._writer == me:
                    answer.stopped = False
                    answer.tokens = before[0] + new_tokens
                    answer.prompt_tokens = prompt_tokens
                    answer.seconds = before[1] + time.perf_counter() - start
                    answer.cut = new_tokens >= budget
        except (ValueError, RuntimeError):  # ContextLengthError is a ValueError; re-raised for the page
            with self._lock:
                if drop_on_error and not answer.content:
                    self.messages = [m for m in self.messages if all(m is not d for d in drop_on_error)]
                elif not drop_on_error:  # a failed continuation leaves the answer as it was
                    answer.content, answer.stopped, answer.cut = done, False, True
            raise
        finally:
            stream.close()


@dataclass
class SavedChat:
    """What a reload finds again: the history and the sidebar's values (widget key -> value)."""

    conversation: Conversation = field(default_factory=Conversation)
    settings: dict[str, Any] = field(default_factory=dict)


class ChatStore:
    """The chats of this server process by id (the ``chat`` parameter of the page's URL), in memory only.

    A chat unused for the longest time is forgotten when more than ``capacity`` exist; nothing is written to
    disk. Ids are random (128 bits), so one browser cannot guess another's chat.
    """

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._chats: OrderedDict[str, SavedChat] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    @staticmethod
    def valid_id(chat_id: str | None) -> bool:
        return bool(chat_id) and len(chat_id) == 32 and all(c in "0123456789abcdef" for c in chat_id)

    def get(self, chat_id: str) -> SavedChat:
        """The chat ``chat_id`` (a new empty one the first time), marked as just used."""
        with self._lock:
            saved = self._chats.pop(chat_id, None) or SavedChat()
            self._chats[chat_id] = saved
            while len(self._chats) > self.capacity:
                self._chats.popitem(last=False)
            return saved

    def __len__(self) -> int:
        return len(self._chats)


def check_message(tokenizer: Any, text: str, system: str | None, context: int, max_new_tokens: int) -> None:
    """Everything the page checks before sending ``text``: valid text (message and system prompt), and that it
    fits (:func:`check_input_fits`). Raises :class:`InvalidTextError` or :class:`InputTooLongError`."""
    check_text(text, "your message")
    if system:
        check_text(system, "the system prompt")
    check_input_fits(tokenizer, text, system, context, max_new_tokens)


def describe_error(error: BaseException) -> str:
    """A one-line message for the page (no traceback)."""
    if isinstance(error, InvalidTextError):
        kind = LABELS["invalid_text"]
    elif isinstance(error, (InputTooLongError, ContextLengthError)):
        kind = LABELS["too_long"]
    else:
        kind = LABELS["generation_error"]
    return f"{kind}: {error}"

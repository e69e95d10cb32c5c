"""The OpenAI wire format: request models (validated, unknown fields rejected), response models, errors.

Requests are pydantic models, so the server's OpenAPI schema describes exactly what is accepted (lengths, ranges,
exclusive fields). Every field the server would otherwise ignore is rejected instead (``extra="forbid"``): a
setting is either honoured or refused, never silently dropped. Types are strict (``strict=True``): ``"0.5"``,
``false`` or ``"yes"`` are not numbers or booleans, ``[true, false]`` is not a list of token ids. As JSON Schema
says, an integer is a number (accepted for a float) and a number without a fraction (``10.0``) is an integer. Text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``) is
refused in every field, naming it. ``top_k`` and ``repetition_penalty`` are accepted as extra fields (the OpenAI
client sends them with ``extra_body={...}``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..generation import GenerationConfig
from ..tokenizer import check_text
from .logprobs import MAX_LOGPROBS

# Limits on what one request may carry (the body size itself is limited by the server).
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
INT32_MAX = 2**31 - 1

_STRICT = ConfigDict(extra="forbid", strict=True)


def _valid_text(text: str) -> str:
    check_text(text, "the text")  # an InvalidTextError is a ValueError: pydantic reports it for the field
    return text


Text = Annotated[str, AfterValidator(_valid_text)]
"""A string that must be valid Unicode (no lone surrogates): what every text field of a request is."""
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_valid_text)]


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" is any number without a fractional part: 10.0 is 10. Everything else (a string, a
    # bool, 10.5) goes on to strict int validation, which refuses it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int_in(low: int, high: int) -> Any:
    """A strict integer in ``[low, high]`` that, as JSON Schema defines integers, also accepts ``10.0`` (the
    bounds are on the inner int, so that the schema states them)."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral)]


NewTokens = _int_in(1, INT32_MAX)
TokenIds = Annotated[list[Annotated[int, Field(ge=0), BeforeValidator(_integral)]], Field(min_length=1)]


class APIError(Exception):
    """An error answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON body of an OpenAI error. Text echoed from the request (a field name, a model name) may hold lone
    surrogates: they are written as ``\\udXXX`` escapes, so the body is always valid UTF-8."""
    return {"error": {"message": _printable(message), "type": type,
                      "param": None if param is None else _printable(param), "code": code}}


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------------------------------------------- requests
class TextPart(BaseModel):
    """One part of a message given as a list of parts (only text parts are supported)."""

    model_config = _STRICT
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    """A conversation turn. ``content`` is a string or a list of text parts (joined)."""

    model_config = _STRICT
    role: Literal["system", "user", "assistant"]
    content: Union[Text, list[TextPart]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


# The schema of ``stream_options: {...}`` only with ``stream: true`` (what the validator below refuses).
_STREAM_OPTIONS_NEED_STREAM = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}


class _SamplingRequest(BaseModel):
    """Settings shared by chat and text completions."""

    model_config = _STRICT
    model: Text
    max_tokens: NewTokens | None = Field(None, description="new tokens at most (default: the "
                                   "model's generation_config.json, capped by the context)")
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: _int_in(0, INT32_MAX) | None = Field(None, description="extension; 0 disables")
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0, allow_inf_nan=False, description="extension")
    stop: Union[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)],
                Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]],
                          Field(max_length=MAX_STOP_STRINGS)], None] = Field(
        None, description=f"up to {MAX_STOP_STRINGS} stop strings of 1 to {MAX_STOP_LENGTH} characters")
    seed: _int_in(SEED_MIN, SEED_MAX) | None = None
    n: _int_in(1, 1) = Field(1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="only with stream=true")
    user: Text | None = Field(None, max_length=256, description="accepted for compatibility, recorded nowhere")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, stop: Any) -> Any:
        # Before the union: clear messages for the common mistakes (the schema states the same limits).
        stops = [stop] if isinstance(stop, str) else stop
        if isinstance(stops, list):
            if len(stops) > MAX_STOP_STRINGS:
                raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
            for s in stops:
                if isinstance(s, str):
                    if not s:
                        raise ValueError("stop strings must not be empty")
                    if len(s) > MAX_STOP_LENGTH:
                        raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters")
                    check_text(s, "a stop string")
        return stop

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str] | None:
        return None if stop is None else [stop] if isinstance(stop, str) else list(stop)

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, options: StreamOptions | None, info: ValidationInfo):
        # A field validator (not a model validator) so that the error names the parameter.
        if options is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream=true")
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def new_tokens(self) -> int | None:
        """The requested number of new tokens, or ``None`` for the default."""
        return self.max_tokens

    def generation_config(self, base: GenerationConfig) -> GenerationConfig:
        """``base`` (the model's generation_config.json) with this request's settings applied.

        A ``temperature`` also decides the mode: 0 is greedy, anything else samples.
        """
        over: dict[str, Any] = {}
        if self.temperature is not None:
            over["do_sample"] = self.temperature > 0
            if self.temperature > 0:
                over["temperature"] = self.temperature
        for name in ("top_p", "top_k", "repetition_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                over[name] = value
        if self.stop is not None:
            over["stop_strings"] = list(self.stop)
        if self.new_tokens() is not None:
            over["max_new_tokens"] = self.new_tokens()
        return base.update(**over)


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``. ``max_tokens`` and ``max_completion_tokens`` exclude each other."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "not": {"required": ["max_tokens", "max_completion_tokens"]},
        **_STREAM_OPTIONS_NEED_STREAM})
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: NewTokens | None = Field(None, description="newer name of max_tokens (give one of them)")

    @model_validator(mode="before")
    @classmethod
    def _one_max_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_tokens" in data and "max_completion_tokens" in data:
            raise PydanticCustomError("exclusive_fields", "max_tokens and max_completion_tokens exclude each "
                                      "other; give one of them", {"param": "max_completion_tokens"})
        return data

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions``: ``prompt`` is text or token ids (one prompt; a list of one is accepted).

    ``logprobs`` and ``echo`` follow OpenAI's legacy completions API (see :mod:`baichuan13b.serving.logprobs`);
    ``echo`` with ``max_tokens: 0`` scores the prompt without generating (what log-likelihood evaluations send).
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"allOf": [
        _STREAM_OPTIONS_NEED_STREAM,
        # max_tokens 0 only with echo (scoring the prompt); neither logprobs nor echo with stream.
        {"if": {"required": ["max_tokens"], "properties": {"max_tokens": {"const": 0}}},
         "then": {"required": ["echo"], "properties": {"echo": {"const": True}}}},
        {"if": {"required": ["stream"], "properties": {"stream": {"const": True}}},
         "then": {"not": {"anyOf": [{"required": ["logprobs"], "properties": {"logprobs": {"type": "integer"}}},
                                    {"required": ["echo"], "properties": {"echo": {"const": True}}}]}}}]})
    prompt: Union[NonEmptyText, TokenIds, Annotated[list[NonEmptyText], Field(min_length=1, max_length=1)],
                  Annotated[list[TokenIds], Field(min_length=1, max_length=1)]] = Field(
        description="text or token ids, or a list holding one of them; never empty")
    max_tokens: _int_in(0, INT32_MAX) | None = Field(None, description="new tokens at most (default: the model's "
                                                      "generation_config.json, capped by the context); 0 only with echo")
    logprobs: _int_in(0, MAX_LOGPROBS) | None = Field(None, description="log-probabilities of the returned tokens "
                                                       f"and of the most likely tokens at each position (0-{MAX_LOGPROBS})")
    echo: bool = Field(False, validate_default=True,
                       description="return (and with logprobs, score) the prompt before the completion")

    @field_validator("echo")
    @classmethod
    def _echo(cls, echo: bool, info: ValidationInfo) -> bool:
        if echo and info.data.get("stream"):
            raise ValueError("echo is not supported with stream=true")
        if not echo and info.data.get("max_tokens") == 0:
            raise ValueError("must be true when max_tokens is 0 (max_tokens 0 only scores the prompt)")
        return echo

    @field_validator("logprobs")
    @classmethod
    def _logprobs_not_streamed(cls, logprobs: int | None, info: ValidationInfo) -> int | None:
        if logprobs is not None and info.data.get("stream"):
            raise ValueError("logprobs is not supported with stream=true")
        return logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        # Before the union, whose error would name only its first member: the common mistakes, said clearly.
        inner = prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError(f"only one prompt per request is supported, got {len(prompt)}")
            inner = prompt[0]
        if isinstance(inner, (str, list)) and not inner:
            raise ValueError("prompt is empty")
        if isinstance(inner, list) and any(isinstance(t, bool) or not isinstance(_integral(t), int) for t in inner):
            bad = next(t for t in inner if isinstance(t, bool) or not isinstance(_integral(t), int))
            raise ValueError(f"token ids must be integers, got {json.dumps(bad)}")
        if isinstance(inner, str):
            check_text(inner, "the prompt")
        return prompt

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, list) and isinstance(prompt[0], (str, list)):
            return prompt[0]
        return prompt


# ---------------------------------------------------------------------------------------------------- responses
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy ``logprobs`` object: one entry per returned token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def state_engine_limits(schema: dict[str, Any], vocab_size: int, context_length: int) -> dict[str, Any]:
    """Write the served model's limits into the OpenAPI ``schema`` (in place; returned): token ids below
    ``vocab_size`` and ``max_tokens`` / ``max_completion_tokens`` at most ``context_length`` (more never fits)."""
    def cap(node: Any, key: str, value: int) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer":
                node[key] = value
            for child in node.values():
                cap(child, key, value)
        elif isinstance(node, list):
            for child in node:
                cap(child, key, value)

    components = schema.get("components", {}).get("schemas", {})
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        properties = components.get(name, {}).get("properties", {})
        if "prompt" in properties:
            cap(properties["prompt"], "maximum", vocab_size - 1)
        for field in ("max_tokens", "max_completion_tokens"):
            if field in properties:
                cap(properties[field], "maximum", context_length)
    return schema


# ---------------------------------------------------------------------------------------------------- tokenizer
class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (vLLM's shape; lm-evaluation-harness's ``tokenizer_backend=remote`` uses it)."""

    model_config = _STRICT
    prompt: Text
    add_special_tokens: bool = Field(False, description="add bos/eos as the tokenizer is configured to")
    model: Text | None = None


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model_config = _STRICT
    tokens: list[Annotated[int, Field(ge=0), BeforeValidator(_integral)]]
    model: Text | None = None

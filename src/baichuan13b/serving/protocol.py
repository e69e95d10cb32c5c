"""The OpenAI wire format: request models (validated, unknown fields rejected), response models, errors.

Requests are pydantic models, so the server's OpenAPI schema describes exactly what is accepted. Every field the
server would otherwise ignore is rejected instead (``extra="forbid"``): a setting is either honoured or refused,
never silently dropped. ``top_k`` and ``repetition_penalty`` are accepted as extra fields (the OpenAI client
sends them with ``extra_body={...}``).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..generation import GenerationConfig
from .logprobs import MAX_LOGPROBS

# Limits on what one request may carry (the body size itself is limited by the server).
MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
INT32_MAX = 2**31 - 1

_STRICT = ConfigDict(extra="forbid")


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
    """The JSON body of an OpenAI error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------------- requests
class TextPart(BaseModel):
    """One part of a message given as a list of parts (only text parts are supported)."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A conversation turn. ``content`` is a string or a list of text parts (joined)."""

    model_config = _STRICT
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Settings shared by chat and text completions."""

    model_config = _STRICT
    model: str
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX, description="new tokens at most (default: the "
                                   "model's generation_config.json, capped by the context)")
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0, le=INT32_MAX, description="extension; 0 disables")
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0, allow_inf_nan=False, description="extension")
    stop: Union[str, list[str], None] = Field(None, description=f"up to {MAX_STOP_STRINGS} stop strings")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = Field(1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="accepted for compatibility, recorded nowhere")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        for s in stops:
            if not s:
                raise ValueError("stop strings must not be empty")
            if len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters")
        return stops

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
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX, description="newer name of max_tokens")

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_max_tokens(cls, value: int | None, info: ValidationInfo) -> int | None:
        other = info.data.get("max_tokens")
        if value is not None and other is not None and value != other:
            raise ValueError("max_tokens and max_completion_tokens disagree; give one of them")
        return value

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions``: ``prompt`` is text or token ids (one prompt; a list of one is accepted).

    ``logprobs`` and ``echo`` follow OpenAI's legacy completions API (see :mod:`baichuan13b.serving.logprobs`);
    ``echo`` with ``max_tokens: 0`` scores the prompt without generating (what log-likelihood evaluations send).
    """

    prompt: Union[str, list[int], list[str], list[list[int]]]
    max_tokens: int | None = Field(None, ge=0, le=INT32_MAX, description="new tokens at most (default: the "
                                   "model's generation_config.json, capped by the context); 0 only with echo")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="log-probabilities of the returned "
                                 f"tokens and of the most likely tokens at each position (0-{MAX_LOGPROBS})")
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

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError(f"only one prompt per request is supported, got {len(prompt)}")
            prompt = prompt[0]
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt is empty")
        if isinstance(prompt, str) and not prompt:
            raise ValueError("prompt is empty")
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


# ---------------------------------------------------------------------------------------------------- tokenizer
class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (vLLM's shape; lm-evaluation-harness's ``tokenizer_backend=remote`` uses it)."""

    model_config = _STRICT
    prompt: str
    add_special_tokens: bool = Field(False, description="add bos/eos as the tokenizer is configured to")
    model: str | None = None


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model_config = _STRICT
    tokens: list[int]
    model: str | None = None

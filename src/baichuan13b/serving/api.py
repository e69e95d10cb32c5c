"""The HTTP layer: an OpenAI-compatible FastAPI app over an :class:`~baichuan13b.serving.engine.Engine`.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``stream``;
completions also with ``logprobs`` and ``echo``), ``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``
(vLLM's tokenizer routes, which lm-evaluation-harness's ``tokenizer_backend=remote`` reads), ``GET /health``,
``GET /metrics``. The event loop never runs the model and never tokenises: prompts are
tokenised in a small thread pool (after the cheap checks: body size, queue room), and requests are handed to
the engine's scheduler thread, whose events come back through ``loop.call_soon_threadsafe``. So ``/health`` and
running streams stay responsive whatever a request holds.

Middleware, outermost first: one log line and the metrics of every request; CORS (only with ``cors_origins``);
a guard that checks the API key (constant-time, exactly one ``Authorization`` header), answers 503 while
draining, wants ``application/json``, limits the body size and the time to receive it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Sequence

import anyio
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import build_chat_input
from ..model import ContextLengthError
from ..tokenizer import InvalidTextError
from .engine import Engine, EngineError, EngineStoppedError, Event, QueueFullError
from .logprobs import legacy_logprobs
from .metrics import ServerMetrics
from .protocol import (
    APIError,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    ErrorResponse,
    ModelList,
    TokenizeRequest,
    error_body,
    state_engine_limits,
)

logger = logging.getLogger("baichuan13b.serving")

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
DEFAULT_READ_TIMEOUT = 30.0  # seconds to receive a request's headers and body
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0  # seconds an idle keep-alive connection stays open (uvicorn's default)
TOKENIZE_THREADS = 2  # prompts tokenised at once, off the event loop; more wait (and count against the queue)
_ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "Invalid request (bad JSON, an invalid parameter, or prompt + max_tokens over the context)"),
    (401, "Missing or wrong API key"),
    (404, "Unknown model"),
    (408, "The request's headers or body took longer than the read timeout to arrive"),
    (413, "Request body too large"),
    (415, "The body is not sent as application/json"),
    (429, "Queue full; retry after the Retry-After header's seconds"),
    (500, "Generation failed for this request (a generic message; the error is in the server's log)"),
    (503, "Shutting down"),
)}
_GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
_STREAM_200 = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events with "
                     "stream=true"}}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _send_error(send: Callable, status: int, message: str, type: str, code: str | None = None,
                      headers: dict[str, str] | None = None) -> None:
    """Answer from ASGI middleware (before the app) with an OpenAI error body."""
    body = json.dumps(error_body(message, type, None, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _AccessLog:
    """ASGI middleware: one log line per request (method, path, status, time, and what the route recorded in
    ``request.state.log``), and the request counters / latency histogram."""

    def __init__(self, app, metrics: ServerMetrics, paths: Callable[[], set[str]]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            # Label by route, never by the raw path (unknown paths must not create new label values).
            path = scope["path"] if scope["path"] in self.paths() else "other"
            self.metrics.requests.inc(1, path, str(status["code"]))
            self.metrics.request_seconds.observe(seconds)
            extra = scope.get("state", {}).get("log") or {}
            client = scope.get("client")
            logger.info("%s %s %s %d %.1fms%s", client[0] if client else "-", scope["method"], scope["path"],
                        status["code"], seconds * 1000,
                        "".join(f" {k}={v}" for k, v in extra.items()))


_TOKENIZER_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")
_PROTECTED = ("/metrics", *_TOKENIZER_ROUTES)


class _Guard:
    """ASGI middleware: API key on ``/v1/*`` and ``/metrics``, 503 while draining, body size limit.

    The body is read here (up to ``max_bytes``) and replayed to the app, so a too-large or endless body is refused
    before any parsing.
    """

    def __init__(self, app, *, api_key: str | None, max_bytes: int, draining: Callable[[], bool],
                 read_timeout: float = DEFAULT_READ_TIMEOUT, check_room: Callable[[], None] = lambda: None):
        self.app, self.max_bytes, self.draining, self.read_timeout = app, max_bytes, draining, read_timeout
        self.check_room = check_room  # raises QueueFullError when a generation request could not be queued
        self.api_key = None if api_key is None else api_key.encode("ascii")  # create_app checked it is ASCII

    def _authorised(self, headers: list[bytes]) -> bool:
        scheme, _, token = (headers[0] if headers else b"").partition(b" ")
        # Bytes against bytes (the key is ASCII, so no decoding can differ); compare_digest takes the same time
        # wherever they differ (no timing oracle for the key).
        return hmac.compare_digest(token.strip(), self.api_key) and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        protected = path.startswith("/v1/") or path in _PROTECTED
        if protected and scope["method"] != "OPTIONS" and self.api_key is not None:
            auth = [v for k, v in scope["headers"] if k == b"authorization"]
            if len(auth) > 1:  # which one would count is ambiguous (proxies differ): refuse
                return await _send_error(send, 400, f"{len(auth)} Authorization headers were sent; send exactly "
                                         "one: 'Authorization: Bearer KEY'", "invalid_request_error",
                                         "multiple_authorization_headers")
            if not self._authorised(auth):
                return await _send_error(send, 401, "missing or invalid API key: send 'Authorization: Bearer KEY'",
                                         "authentication_error", "invalid_api_key",
                                         {"WWW-Authenticate": "Bearer"})
        if self.draining() and (path.startswith("/v1/") or path in ("/health", *_TOKENIZER_ROUTES)):
            return await _send_error(send, 503, "the server is shutting down; retry on another instance",
                                     "server_error", "shutting_down", {"Retry-After": "5", "Connection": "close"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and path in _GENERATION_PATHS:  # a full queue: answered before reading the body
            try:
                self.check_room()
            except QueueFullError as e:
                return await _send_error(send, 429, str(e), "rate_limit_error", "queue_full", {"Retry-After": "1"})
            except EngineStoppedError as e:
                return await _send_error(send, 503, str(e), "server_error", "shutting_down", {"Retry-After": "5"})
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type and content_type != b"application/json" and not content_type.endswith(b"+json"):
            return await _send_error(
                send, 415, f"the content type must be application/json, got "
                f"'{content_type.decode('latin-1')}' (send the body as JSON with 'Content-Type: application/json')",
                "invalid_request_error", "unsupported_media_type")
        declared = headers.get(b"content-length")
        too_large = f"request body larger than {self.max_bytes} bytes"
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    return await _send_error(send, 413, too_large, "invalid_request_error", "request_too_large")
            except ValueError:
                return await _send_error(send, 400, "invalid Content-Length header", "invalid_request_error")
        chunks, size = [], 0
        with anyio.move_on_after(self.read_timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    return await _send_error(send, 413, too_large, "invalid_request_error", "request_too_large")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:  # a slow (or stalled) client must not hold a connection forever
            return await _send_error(send, 408, f"the request body did not arrive within {self.read_timeout:g} "
                                     "seconds", "invalid_request_error", "request_timeout", {"Connection": "close"})
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: the client's disconnect

        await self.app(scope, replay, send)


class _EventStream(StreamingResponse):
    """Server-sent events that end the generation (``on_close``) however the response ends: finished, failed,
    or the client went away (noticed while waiting for tokens, not only when a write fails)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Any]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        completed = False

        def note_disconnect() -> None:
            if not completed:
                scope.setdefault("state", {}).setdefault("log", {})["disconnected"] = True

        try:
            async with anyio.create_task_group() as tg:
                async def stream():
                    nonlocal completed
                    try:
                        await self.stream_response(send)
                        completed = True
                    except OSError:  # the client disconnected during a write
                        note_disconnect()
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                note_disconnect()
                tg.cancel_scope.cancel()
        finally:
            self._on_close()


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(event: Event) -> dict[str, int]:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


def _engine_failure(error: BaseException, request_id: str) -> APIError:
    """The answer for a request the engine failed. The exception's text stays in the server's log (where the
    engine wrote it with the request id): it may describe internals and is no business of the client's."""
    if isinstance(error, EngineStoppedError):
        return APIError(503, str(error), type="server_error", code="shutting_down")
    return APIError(500, f"the server failed while generating this answer (request {request_id}); the error is in "
                    "the server's log", type="server_error", code="internal_error")


def create_app(engine: Engine, *, model_name: str, api_key: str | None = None,
               cors_origins: Sequence[str] = (), max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               read_timeout: float = DEFAULT_READ_TIMEOUT, owned_by: str = "baichuan13b") -> FastAPI:
    """The OpenAI-compatible app for ``engine``, answering to the model name ``model_name``.

    Args:
        api_key: when set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <api_key>`` (printable ASCII:
            an HTTP header cannot carry anything else unambiguously).
        cors_origins: origins allowed by CORS (none by default: no CORS headers at all).
        max_request_bytes: larger request bodies are refused with 413.
        read_timeout: seconds a request body may take to arrive (then 408); see :func:`serve` for the headers.

    The app starts the engine's thread on startup and stops it on shutdown. ``app.state.drain()`` makes new
    requests fail with 503 while those in flight finish (``serve`` calls it on SIGTERM / Ctrl+C).
    """
    if api_key is not None:
        check_api_key(api_key)
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
    if not read_timeout > 0:
        raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout}")
    metrics = engine.metrics
    created = int(time.time())
    state = {"draining": False}
    tokenizer = engine.tokenizer

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="baichuan13b OpenAI-compatible API", version="1", lifespan=lifespan)

    def drain() -> None:
        state["draining"] = True
        engine.drain()

    app.state.drain = drain
    app.state.engine = engine
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema with this model's vocabulary and context in it (what validation refuses)."""
        if app.openapi_schema is None:
            state_engine_limits(fastapi_openapi(), engine.vocab_size, engine.context_length)
        return app.openapi_schema

    app.openapi = openapi

    # ------------------------------------------------------------------ errors, all in OpenAI's shape
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        # A value that matches no member of a union gets one error per member; the member it failed inside
        # (not a plain type mismatch) says what is wrong.
        err = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), errors[0])
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        ctx = err.get("ctx") or {}
        if err.get("type") == "json_invalid":
            reason = ctx.get("error", "JSON decode error")
            return _json(400, error_body(f"the request body is not valid JSON: {reason}", code="invalid_json"))
        if err.get("type") == "string_unicode":  # e.g. a field *name* holding a lone surrogate
            where = ".".join(loc)
            return _json(400, error_body(f"{where + ': ' if where else ''}the request holds text that is not valid "
                                         "Unicode (a lone surrogate); send UTF-8 text", param=where or None,
                                         code="invalid_value"))
        if not loc and "param" in ctx:  # a rule over several fields (e.g. exclusive fields)
            return _json(400, error_body(f"{ctx['param']}: {err.get('msg')}", param=ctx["param"],
                                         code="invalid_value"))
        if not loc:
            message = "the request body must be a JSON object" if err.get("type") != "missing" \
                else "the request body is missing"
            return _json(400, error_body(message))
        # Keep the field path for the union members pydantic lists (e.g. "stop.str") out of the param name.
        param = ".".join(p for p in loc if p not in ("str", "int", "float", "bool") and "[" not in p
                         and not p.startswith("constrained-"))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unrecognized request argument (not supported by this server)"
        return _json(400, error_body(f"{param}: {msg}", param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _json(exc.status_code, error_body(str(exc.detail), type_), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, error_body("internal server error", "server_error", code="internal_error"))

    # ------------------------------------------------------------------ helpers
    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")

    def room_error(e: EngineError) -> APIError:
        if isinstance(e, QueueFullError):
            return APIError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
        return APIError(503, str(e), type="server_error", code="shutting_down")

    tokenizing = {"pending": 0}
    limiter = anyio.CapacityLimiter(TOKENIZE_THREADS)

    async def tokenize(make_prompt: Callable[[], list[int]], param: str) -> list[int]:
        """``make_prompt()`` in the tokeniser pool, once the engine has room (requests being tokenised count
        as waiting): the event loop stays free, and a full queue is answered before any expensive work."""
        try:
            engine.check_room(tokenizing["pending"])
        except (QueueFullError, EngineStoppedError) as e:
            raise room_error(e) from e
        tokenizing["pending"] += 1
        try:
            return await anyio.to_thread.run_sync(make_prompt, limiter=limiter)
        except ValueError as e:  # invalid text, a malformed conversation (InvalidTextError is a ValueError)
            raise APIError(400, f"{param}: {e}" if isinstance(e, InvalidTextError) else str(e), param=param,
                           code="invalid_value") from e
        finally:
            tokenizing["pending"] -= 1

    def submit(request: Request, prompt: list[int], body, sink: Callable[[Event], None]) -> str:
        cfg = body.generation_config(engine.generation_config)
        chat = isinstance(body, ChatCompletionRequest)
        scoring = {}
        if not chat:  # prompt log-probs are computed only when asked for
            scoring = {"logprobs": body.logprobs, "echo": body.echo and body.logprobs is not None}
        try:
            # A chat prompt was truncated by the official format to leave room for the answer: generate what
            # fits (finish_reason "length"), as model.chat does, rather than refuse it.
            request_id = engine.submit(prompt, sink, cfg, body.new_tokens(), fit=chat, **scoring)
        except ContextLengthError as e:
            raise APIError(400, str(e), param="messages" if chat else "prompt", code="context_length_exceeded") \
                from e
        except (QueueFullError, EngineStoppedError) as e:
            raise room_error(e) from e
        request.state.log = {"id": request_id, "prompt_tokens": len(prompt)}
        return request_id

    async def run(request: Request, body, prompt: list[int], kind: str):
        """Submit and answer: JSON, or server-sent events with ``stream``."""
        loop = asyncio.get_running_loop()
        obj_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        if body.stream:
            events: asyncio.Queue[Event] = asyncio.Queue()
            request_id = submit(request, prompt, body, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
            return _EventStream(stream(request, body, obj_id, kind, events, int(time.time()), request_id),
                                on_close=lambda: engine.abort(request_id))
        done: asyncio.Future[Event] = loop.create_future()
        pieces: list[str] = []

        def sink(ev: Event) -> None:  # scheduler thread: text accumulates here, the loop wakes up once
            pieces.append(ev.text)
            if ev.final:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(ev))

        request_id = submit(request, prompt, body, sink)
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({done, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected.cancel()
            engine.abort(request_id)  # a no-op when finished; frees the slot when the client left
        if not done.done():
            request.state.log["disconnected"] = True
            return Response(status_code=499)
        final = done.result()
        if final.error is not None:
            raise _engine_failure(final.error, request_id)
        text = "".join(pieces)
        request.state.log.update(completion_tokens=final.completion_tokens, finish=final.finish_reason)
        common = {"id": obj_id, "created": int(time.time()), "model": model_name, "usage": _usage(final)}
        if kind == "chat":
            return {**common, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": final.finish_reason, "logprobs": None}]}
        logprobs = None
        if body.logprobs is not None or body.echo:  # detokenising off the event loop, like tokenising
            text, logprobs = await anyio.to_thread.run_sync(completion_logprobs, prompt, text, final, body,
                                                            limiter=limiter)
        return {**common, "object": "text_completion", "choices": [
            {"index": 0, "text": text, "finish_reason": final.finish_reason, "logprobs": logprobs}]}

    def completion_logprobs(prompt: list[int], text: str, final: Event, body: CompletionRequest
                            ) -> tuple[str, dict[str, list] | None]:
        """The choice's text (with ``echo`` the prompt first, as its tokens spell it: what the offsets count) and
        the legacy ``logprobs`` object (with ``echo`` the prompt's tokens first, the first one unscored)."""
        if body.echo:
            text = tokenizer.decode(prompt) + text
        if body.logprobs is None:
            return text, None
        segments = []
        if body.echo:
            segments.append((prompt, [None, *(final.prompt_logprobs or [])]))
        generated = final.token_logprobs or []
        segments.append(([e.token for e in generated], generated))
        return text, legacy_logprobs(tokenizer, segments)[1]

    async def stream(request: Request, body, obj_id: str, kind: str, events: "asyncio.Queue[Event]",
                     created: int, request_id: str) -> AsyncIterator[str]:
        head = {"id": obj_id, "created": created, "model": model_name}
        include_usage = body.include_usage

        def chunk(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if kind == "chat":
                delta = {} if text is None else ({"role": "assistant", "content": text} if role else {"content": text})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                out = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
                out = {**head, "object": "text_completion", "choices": [choice]}
            if include_usage:
                out["usage"] = None
            return out

        if kind == "chat":
            yield _sse(chunk("", None, role=True))
        while True:
            ev = await events.get()
            if ev.error is not None:
                failure = _engine_failure(ev.error, request_id)
                request.state.log.update(error=failure.code)
                yield _sse(failure.body())  # the status line is gone already: the error travels in the stream
                yield "data: [DONE]\n\n"
                return
            if ev.text:
                yield _sse(chunk(ev.text, None))
            if ev.finish_reason is not None:
                yield _sse(chunk(None if kind == "chat" else "", ev.finish_reason))
                if include_usage:
                    yield _sse({**head, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                                "choices": [], "usage": _usage(ev)})
                request.state.log.update(completion_tokens=ev.completion_tokens, finish=ev.finish_reason)
                yield "data: [DONE]\n\n"
                return

    # ------------------------------------------------------------------ routes
    @app.get("/health", responses={503: _ERRORS[503]})
    async def health() -> dict[str, Any]:
        """Liveness / readiness: 200 while the server takes requests."""
        return {"status": "ok", **engine.stats()}

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: _ERRORS[401]})
    async def prometheus_metrics() -> PlainTextResponse:
        """Prometheus text format: requests, tokens, queue depth, batch size, latencies."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]})
    async def list_models() -> dict[str, Any]:
        """The one model this server serves."""
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": owned_by}]}

    @app.get("/v1/models/{model}", responses={401: _ERRORS[401], 404: _ERRORS[404]})
    async def retrieve_model(model: str) -> dict[str, Any]:
        check_model(model)
        return {"id": model_name, "object": "model", "created": created, "owned_by": owned_by}

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={**_STREAM_200, **{s: _ERRORS[s] for s in (400, 401, 404, 408, 413, 415, 429, 500, 503)}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """Answer a conversation (the official Baichuan chat prompt; a leading system message is an extension)."""
        check_model(body.model)
        cfg = body.generation_config(engine.generation_config)
        messages = body.chat_messages()
        prompt = await tokenize(
            lambda: build_chat_input(engine.model, tokenizer, messages, generation_config=cfg)[0].tolist(),
            "messages")
        return await run(request, body, prompt, "chat")

    @app.post("/v1/completions", response_model=Completion,
              responses={**_STREAM_200, **{s: _ERRORS[s] for s in (400, 401, 404, 408, 413, 415, 429, 500, 503)}})
    async def completions(body: CompletionRequest, request: Request):
        """Continue a prompt given as text or as token ids."""
        check_model(body.model)
        if isinstance(body.prompt, str):
            text = body.prompt
            prompt = await tokenize(lambda: tokenizer.encode(text), "prompt")
            if not prompt:
                raise APIError(400, "prompt encodes to no tokens", param="prompt", code="invalid_value")
        else:
            prompt = list(body.prompt)
            bad = [t for t in prompt if not 0 <= t < engine.vocab_size]
            if bad:
                raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary [0, {engine.vocab_size})",
                               param="prompt", code="invalid_value")
        return await run(request, body, prompt, "completion")

    @app.post("/tokenize", responses={s: _ERRORS[s] for s in (400, 401, 404)})
    async def tokenize_text(body: TokenizeRequest) -> dict[str, Any]:
        """Token ids of ``prompt``, encoded as ``/v1/completions`` encodes a text prompt."""
        if body.model is not None:
            check_model(body.model)
        tokens = await anyio.to_thread.run_sync(
            lambda: tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens), limiter=limiter)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.context_length}

    @app.post("/detokenize", responses={s: _ERRORS[s] for s in (400, 401, 404)})
    async def detokenize_ids(body: DetokenizeRequest) -> dict[str, Any]:
        """The text of token ids (special tokens written as their text)."""
        if body.model is not None:
            check_model(body.model)
        bad = [t for t in body.tokens if not 0 <= t < engine.vocab_size]
        if bad:
            raise APIError(400, f"tokens: token id {bad[0]} is outside the vocabulary [0, {engine.vocab_size})",
                           param="tokens", code="invalid_value")
        return {"prompt": await anyio.to_thread.run_sync(tokenizer.decode, body.tokens, limiter=limiter)}

    @app.get("/tokenizer_info", responses={401: _ERRORS[401]})
    async def tokenizer_info() -> dict[str, Any]:
        """The tokenizer's special tokens and the context length."""
        return {"tokenizer_class": type(tokenizer).__name__, "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
                "unk_token": tokenizer.unk_token, "model_max_length": engine.context_length,
                "vocab_size": engine.vocab_size}

    # Middleware: the last added is the outermost.
    app.add_middleware(_Guard, api_key=api_key, max_bytes=max_request_bytes, draining=lambda: state["draining"],
                       read_timeout=read_timeout, check_room=lambda: engine.check_room(tokenizing["pending"]))
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_AccessLog, metrics=metrics,
                       paths=lambda: {getattr(r, "path", "") for r in app.routes if "{" not in getattr(r, "path", "")})
    return app


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def check_api_key(key: str) -> str:
    """Return ``key`` if it can be an API key: not empty, printable ASCII without spaces (what an HTTP header
    carries unambiguously; a non-ASCII key would be compared against bytes the client encoded some other way)."""
    if not key:
        raise ValueError("the API key is empty (leave it unset for no authentication)")
    bad = next((c for c in key if not 0x21 <= ord(c) <= 0x7E), None)
    if bad is not None:
        raise ValueError(f"the API key may hold only printable ASCII characters without spaces; it contains "
                         f"{bad.encode('utf-8', 'backslashreplace').decode()!r} (U+{ord(bad):04X})")
    return key


def http_protocol(read_timeout: float) -> type:
    """uvicorn's HTTP protocol class with a deadline for a request's headers: a connection that has not sent
    complete headers within ``read_timeout`` seconds of opening (or of its previous response) is closed. uvicorn
    times out idle keep-alive connections itself, but not a client that sends its headers slowly."""

    class HeaderDeadline(AutoHTTPProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(read_timeout, self._header_deadline_passed)

        def _cancel_header_deadline(self) -> None:
            handle = getattr(self, "_header_deadline", None)
            if handle is not None:
                handle.cancel()

        def _header_deadline_passed(self) -> None:
            waiting_for_headers = self.cycle is None or self.cycle.response_complete
            if waiting_for_headers and not self.transport.is_closing():
                logger.info("closing a connection whose request headers did not arrive within %gs", read_timeout)
                self.transport.close()

    return HeaderDeadline


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          read_timeout: float = DEFAULT_READ_TIMEOUT, keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT) -> None:
    """Run ``app`` with uvicorn until SIGINT / SIGTERM.

    ``read_timeout``: seconds a client has to send a request's headers (then the connection is closed); the app
    gives the body as long (see :func:`create_app`). ``keep_alive_timeout``: seconds an idle keep-alive
    connection stays open. The first signal drains: new requests get 503 while those in flight finish, then the
    server exits. A second signal exits at once.
    """
    DrainingServer(server_config(app, host, port, log_level, read_timeout, keep_alive_timeout), app).run()


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  read_timeout: float = DEFAULT_READ_TIMEOUT,
                  keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT) -> uvicorn.Config:
    """The uvicorn configuration :func:`serve` runs (the tests run the same one)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                          http=http_protocol(read_timeout), timeout_keep_alive=keep_alive_timeout)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before its graceful shutdown: on the first SIGINT / SIGTERM the app
    answers new requests with 503 while the engine finishes what is in flight, then the server exits as usual."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self._app = app
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:  # a second signal: uvicorn's own shutdown right away
            return super().handle_exit(sig, frame)
        self._draining = True
        engine: Engine = self._app.state.engine
        stats = engine.stats()
        logger.info("draining: new requests get 503 while %d running and %d waiting request(s) finish",
                    stats["running"], stats["waiting"])
        self._app.state.drain()
        threading.Thread(target=self._exit_when_idle, args=(engine, sig, frame), daemon=True,
                         name="baichuan-drain").start()

    def _exit_when_idle(self, engine: Engine, sig, frame) -> None:
        while not engine.idle() and not self.should_exit:
            time.sleep(0.05)
        super().handle_exit(sig, frame)

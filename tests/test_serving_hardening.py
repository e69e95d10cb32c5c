"""Server hardening (issue 12): one request never fails another, the event loop never blocks, validation is strict.

Every repro of the issue is sent while good streams run, and those streams must come out exactly as model.chat.
"""

import json
import socket
import threading
import time

import httpx
import pytest
from serving_server import API_KEY, MODEL_NAME, RunningServer, slowed

from baichuan13b.chat import build_chat_input
from baichuan13b.serving import engine as engine_module
from baichuan13b.serving.api import check_api_key, create_app
from baichuan13b.serving.engine import Engine

USER = [{"role": "user", "content": "hello there"}]
QUESTIONS = ["hello there", "你好", "The quick brown fox", "numbers 12345"]


@pytest.fixture(scope="module")
def server(chat_model):
    model, tok = chat_model
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=8, max_queue=16, prefill_chunk=16))
    yield srv
    srv.close()


def post(server, path, body, **headers):
    """POST ``body`` as JSON escaped to ASCII (a lone surrogate travels as its JSON escape, like "\\ud800")."""
    with server.http() as h:
        return h.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json",
                                                                        **headers})


def error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


class GoodStreams:
    """Streaming chats that run while a test sends bad requests; ``check()`` compares each with model.chat."""

    def __init__(self, server, chat_model, n=4, max_tokens=40):
        self.server, self.chat_model, self.max_tokens = server, chat_model, max_tokens
        self.jobs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
        self.results: dict[int, str] = {}
        self.threads = [threading.Thread(target=self._one, args=(i, q)) for i, q in enumerate(self.jobs)]

    def _one(self, i, question):
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": question}], "stream": True,
                "max_tokens": self.max_tokens, "temperature": 0}
        with self.server.http() as h, h.stream("POST", "/v1/chat/completions", json=body) as r:
            self.results[i] = r.status_code, "".join(r.iter_text())

    def __enter__(self):
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 10
        while self.server.engine.stats()["running"] < len(self.jobs) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.server.engine.stats()["running"] >= len(self.jobs), "the good streams did not start"
        return self

    def __exit__(self, *exc):
        for t in self.threads:
            t.join(60)

    def check(self):
        model, tok = self.chat_model
        for i, question in enumerate(self.jobs):
            status, text = self.results[i]
            assert status == 200
            payloads = [e[len("data: "):] for e in text.split("\n\n") if e]
            assert payloads[-1] == "[DONE]", payloads[-3:]
            chunks = [json.loads(p) for p in payloads[:-1]]
            assert all("error" not in c for c in chunks), chunks
            answer = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            assert answer == model.chat(tok, [{"role": "user", "content": question}], max_new_tokens=self.max_tokens)
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------------------------------------------- 1: isolation
EXTREMES = [
    {"temperature": 1.0, "repetition_penalty": 1e-300},  # the repro
    {"temperature": 2.0, "repetition_penalty": 5e-324},
    {"temperature": 1.0000001e-6, "repetition_penalty": 1e-300},
    {"temperature": 5e-324},
    {"temperature": 1e-5, "top_p": 5e-324, "top_k": 2**31 - 1},
    {"temperature": 2.0, "top_p": 1.0, "top_k": 1, "repetition_penalty": 100.0},
    {"temperature": 0, "repetition_penalty": 1e-300},
    {"temperature": 1.5, "repetition_penalty": 1e-30, "seed": 2**64 - 1},
    {"temperature": 0.7, "seed": -(2**63)},
]


def test_extreme_sampling_settings_are_answered_and_leave_other_streams_untouched(server, chat_model):
    model, _ = chat_model
    with slowed(model, 0.02), GoodStreams(server, chat_model, max_tokens=100) as good:
        for settings in EXTREMES:
            for path, extra in (("/v1/completions", {"prompt": "ab"}), ("/v1/chat/completions", {"messages": USER})):
                r = post(server, path, {"model": MODEL_NAME, "max_tokens": 8, **extra, **settings})
                assert r.status_code == 200, (settings, r.text)
                assert r.json()["usage"]["completion_tokens"] >= 1
    good.check()
    assert server.wait_idle()["filled_rows"] == 0


def fail_for(where, monkeypatch):
    """Make sampling or detokenising raise for the requests with the stop string "BOOM" (sampling fails for any
    group of rows holding one); the error text is an internal detail that must not reach the client."""
    if where == "sampling":
        real = Engine._sample_group

        def broken(seqs, rows):
            if any("BOOM" in s.config.stop_strings for s in seqs):
                raise RuntimeError("secret internal detail /opt/model")
            return real(seqs, rows)

        monkeypatch.setattr(Engine, "_sample_group", staticmethod(broken))
    else:
        real_init = engine_module.TextStream.__init__

        def init(self, tokenizer, eos_token_ids=(), stop_strings=()):
            real_init(self, tokenizer, eos_token_ids, stop_strings)
            if "BOOM" in stop_strings:
                def put(token):
                    raise RuntimeError("secret internal detail /opt/model")
                self.put = put

        monkeypatch.setattr(engine_module.TextStream, "__init__", init)


@pytest.mark.parametrize("where", ["sampling", "detokenising"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_in_one_row_ends_that_request_alone(server, chat_model, monkeypatch, where, stream):
    """The failing request gets a generic 500 (or the error event in its stream); its batch neighbours, sampled in
    the same group (equal settings), finish exactly as model.chat."""
    model, _ = chat_model
    fail_for(where, monkeypatch)
    body = {"model": MODEL_NAME, "messages": USER, "max_tokens": 8, "temperature": 0, "stop": ["BOOM"],
            "stream": stream}
    with slowed(model, 0.02), GoodStreams(server, chat_model) as good:
        r = post(server, "/v1/chat/completions", body)
    good.check()
    if stream:
        assert r.status_code == 200
        payloads = [e[len("data: "):] for e in r.text.split("\n\n") if e]
        assert payloads[-1] == "[DONE]"
        err = json.loads(payloads[-2])["error"]
    else:
        err = error(r, 500)
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    assert "secret" not in err["message"] and "RuntimeError" not in err["message"]
    assert server.wait_idle()["filled_rows"] == 0
    monkeypatch.undo()
    assert post(server, "/v1/chat/completions", {"model": MODEL_NAME, "messages": USER, "max_tokens": 2,
                                                 "stop": ["BOOM"]}).status_code == 200


# ---------------------------------------------------------------------------------------------------- 2: invalid text
SURROGATE_REPROS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "\udfff"}, *USER]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "x\ud83d"}]}]},
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {"messages": USER, "stop": ["ok", "\ud800"]}, "stop"),
    ("/v1/chat/completions", {"messages": USER, "user": "\ud800"}, "user"),
    ("/v1/completions", {"prompt": "\ud83d"}, "prompt"),
    ("/v1/completions", {"prompt": ["ab\udc00"]}, "prompt"),
    ("/v1/completions", {"prompt": "ab", "stop": "\ud800"}, "stop"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_unicode_is_400_naming_the_field_and_keeps_the_connection(server, stream):
    with server.http() as h:
        for path, extra, param in SURROGATE_REPROS:
            body = {"model": MODEL_NAME, "max_tokens": 4, "stream": stream, **extra}
            r = h.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
            err = error(r, 400)
            assert err["param"] == param and "not valid Unicode" in err["message"], err
            assert err["code"] == "invalid_value"
        # a surrogate where the server would echo it: the answer is still valid UTF-8 JSON
        r = h.post("/v1/chat/completions", content=json.dumps({"model": "\ud800", "messages": USER}).encode(),
                   headers={"content-type": "application/json"})
        assert error(r, 400)["param"] == "model"
        r = h.post("/v1/chat/completions", content=json.dumps({"model": MODEL_NAME, "messages": USER,
                                                               "\ud800": 1}).encode(),
                   headers={"content-type": "application/json"})
        assert "not valid Unicode" in error(r, 400)["message"]
        # the same keep-alive connection goes on serving
        assert h.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "ab", "max_tokens": 2}).status_code \
            == 200


def test_tokenizer_and_chat_prompt_refuse_invalid_text(chat_model):
    from baichuan13b.tokenizer import InvalidTextError

    model, tok = chat_model
    with pytest.raises(InvalidTextError, match="U\\+D800 at character 1"):
        tok.encode("a\ud800b")
    with pytest.raises(InvalidTextError):
        tok.tokenize("\ud83d")
    with pytest.raises(InvalidTextError, match="message 1 content"):
        build_chat_input(model, tok, [*USER, {"role": "assistant", "content": "\udc80"}])
    assert tok.encode("a\U0001f600b") == tok.encode("a😀b")  # a proper pair is one character


def test_terminal_chat_refuses_invalid_text_and_goes_on(chat_model, capsys):
    import io

    from baichuan13b.cli.chat import ChatSession, run_lines

    model, tok = chat_model
    session = ChatSession(model, tok, {"max_new_tokens": 3, "do_sample": False})
    out = io.StringIO()
    run_lines(session, ["hello there\n", "bad \udcff bytes\n", "你好\n"], out)
    lines = out.getvalue().split("\n")
    assert lines[0] == model.chat(tok, USER, max_new_tokens=3) and lines[1] == ""
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["hello there", "你好"]
    assert "not valid Unicode" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- 3: long chats
def test_long_chat_with_max_tokens_is_answered_with_what_fits(server, chat_model):
    """The official truncation keeps context - max_tokens tokens and appends the assistant token; the answer
    still gets max_tokens (its last token is never read back). Server and model.chat agree."""
    model, tok = chat_model
    messages = [{"role": "user", "content": "one plus two " * 1000}]
    ctx = model.config.max_position
    for max_tokens in (16, 1, 63):
        prompt = build_chat_input(model, tok, messages, max_new_tokens=max_tokens)[0].tolist()
        assert len(prompt) == ctx - max_tokens + 1  # the official layout, untouched
        r = post(server, "/v1/chat/completions", {"model": MODEL_NAME, "messages": messages,
                                                  "max_tokens": max_tokens, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": max_tokens,
                                 "total_tokens": len(prompt) + max_tokens}
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["choices"][0]["message"]["content"] == model.chat(tok, messages, max_new_tokens=max_tokens)
    # Over half the context the official budget is ctx // 2: the answer gets what fits, finish_reason "length".
    r = post(server, "/v1/chat/completions", {"model": MODEL_NAME, "messages": messages, "max_tokens": 100})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == ctx - (ctx // 2 + 1) + 1
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["choices"][0]["message"]["content"] == model.chat(tok, messages, max_new_tokens=100)


def test_long_chat_default_answer_gets_the_full_default_length(server, chat_model):
    model, tok = chat_model
    messages = [{"role": "user", "content": "one plus two " * 1000}]
    default = model.generation_config.max_new_tokens
    r = post(server, "/v1/chat/completions", {"model": MODEL_NAME, "messages": messages})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == default
    assert r.json()["choices"][0]["message"]["content"] == model.chat(tok, messages)


# ---------------------------------------------------------------------------------------------------- 4: event loop
def test_tokenising_runs_off_the_event_loop(server, chat_model, monkeypatch):
    """While prompts are being tokenised (slowly here), /health and a running stream are not held up."""
    model, tok = chat_model
    real = type(tok).encode
    started = threading.Event()

    def slow_encode(self, text, add_special_tokens=True):
        if text.startswith("SLOW"):
            started.set()
            time.sleep(2.0)
        return real(self, text, add_special_tokens)

    monkeypatch.setattr(type(tok), "encode", slow_encode)
    bodies = [("/v1/chat/completions", {"model": MODEL_NAME, "max_tokens": 2,
                                         "messages": [{"role": "user", "content": "SLOW " + "x" * 200_000}]}),
              ("/v1/completions", {"model": MODEL_NAME, "max_tokens": 2, "prompt": "SLOW prompt"})] * 2
    results = []
    senders = [threading.Thread(target=lambda p=p, b=b: results.append(post(server, p, b).status_code))
               for p, b in bodies]
    for t in senders:
        t.start()
    assert started.wait(10)
    start = time.monotonic()
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    health_seconds = time.monotonic() - start
    for t in senders:
        t.join(60)
    assert health_seconds < 1.0, health_seconds  # tokenising on the loop would hold it >= 2 s
    assert sorted(results) == [200] * 4


def test_full_queue_is_refused_before_tokenising(chat_model, monkeypatch):
    model, tok = chat_model
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=1, max_queue=0))
    calls = []
    real = type(tok).encode
    monkeypatch.setattr(type(tok), "encode", lambda self, text, add_special_tokens=True: (
        calls.append(text), real(self, text, add_special_tokens))[1])
    try:
        with slowed(model, 0.02):
            with srv.http() as h, h.stream("POST", "/v1/completions", json={
                    "model": MODEL_NAME, "prompt": [5, 6, 7], "stream": True, "max_tokens": 100}) as held:
                pieces = held.iter_text()  # kept: a dropped iterator would close the stream
                next(pieces)  # the only slot is taken
                start = time.monotonic()
                r = post(srv, "/v1/completions", {"model": MODEL_NAME, "prompt": "to tokenise", "max_tokens": 2})
                assert time.monotonic() - start < 1.0
        assert error(r, 429)["code"] == "queue_full" and r.headers["Retry-After"] == "1"
        assert "to tokenise" not in calls
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------------------- 5, 6: strict
@pytest.mark.parametrize("path, field, value", [
    ("/v1/completions", "temperature", False),
    ("/v1/completions", "temperature", "0.5"),
    ("/v1/completions", "max_tokens", "10"),
    ("/v1/completions", "max_tokens", 10.5),
    ("/v1/completions", "n", True),
    ("/v1/completions", "stream", "yes"),
    ("/v1/completions", "stream", 1),
    ("/v1/completions", "prompt", [True, False]),
    ("/v1/completions", "seed", "1"),
    ("/v1/completions", "top_k", 5.5),
    ("/v1/completions", "prompt", ""),
    ("/v1/completions", "prompt", [[]]),
    ("/v1/completions", "prompt", ["a", "b"]),
    ("/v1/chat/completions", "stream_options", {"include_usage": "yes"}),
    ("/v1/chat/completions", "max_completion_tokens", 4),  # with max_tokens: exclusive
])
def test_lax_types_are_refused_naming_the_field(server, path, field, value):
    body = {"model": MODEL_NAME, "max_tokens": 4, **({"prompt": "ab"} if "chat" not in path else {"messages": USER})}
    body[field] = value
    if field == "stream_options":
        body["stream"] = True
    err = error(post(server, path, body), 400)
    assert err["param"].startswith(field) and field in err["message"], err


def test_numbers_are_taken_as_json_schema_defines_them(server):
    """An integer is a number (a float field takes 1), and a number without a fraction is an integer (10.0)."""
    r = post(server, "/v1/completions", {"model": MODEL_NAME, "prompt": "ab", "max_tokens": 2, "temperature": 1,
                                         "top_p": 1, "repetition_penalty": 2})
    assert r.status_code == 200, r.text
    r = post(server, "/v1/completions", {"model": MODEL_NAME, "prompt": [5.0, 6], "max_tokens": 2.0, "seed": 3.0,
                                         "temperature": 0.5})
    assert r.status_code == 200 and r.json()["usage"] == {"prompt_tokens": 2, "completion_tokens": 2,
                                                           "total_tokens": 4}


def test_schema_states_what_validation_refuses(server):
    schema = httpx.get(server.base_url + "/openapi.json").json()["components"]["schemas"]
    prompt = schema["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    assert {"minLength": 1, "type": "string"} in prompt
    nested = [m for m in prompt if m.get("items", {}).get("type") == "array"][0]
    assert nested["minItems"] == nested["maxItems"] == 1 and nested["items"]["minItems"] == 1
    chat = schema["ChatCompletionRequest"]
    assert chat["not"] == {"required": ["max_tokens", "max_completion_tokens"]}
    assert chat["then"]["properties"]["stream"] == {"const": True}
    n = chat["properties"]["n"]
    assert (n["minimum"], n["maximum"]) == (1, 1)
    # the served model's limits: token ids inside the vocabulary, max_tokens at most the context
    ids = [m for m in prompt if m.get("items", {}).get("type") == "integer"][0]
    assert (ids["items"]["minimum"], ids["items"]["maximum"]) == (0, server.engine.vocab_size - 1)
    for name in ("max_tokens", "max_completion_tokens"):
        assert chat["properties"][name]["anyOf"][0]["maximum"] == server.engine.context_length
    stop = [m for m in chat["properties"]["stop"]["anyOf"] if m.get("type") == "array"][0]
    assert stop["maxItems"] == 4 and stop["items"]["minLength"] == 1


# ---------------------------------------------------------------------------------------------------- 7: API keys
def test_api_key_must_be_printable_ascii(chat_model):
    model, tok = chat_model
    for bad in ("clé-secrète", "key with space", "", "tab\tkey"):
        with pytest.raises(ValueError, match="API key"):
            create_app(Engine(model, tok, max_batch=1), model_name=MODEL_NAME, api_key=bad)
    assert check_api_key("sk-ABC_123.~") == "sk-ABC_123.~"


def test_more_than_one_authorization_header_is_refused(server):
    def raw(headers: bytes) -> bytes:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    good = f"Authorization: Bearer {API_KEY}\r\n".encode()
    assert raw(good).startswith(b"HTTP/1.1 200")
    for headers in (good + good, b"Authorization: Bearer wrong\r\n" + good, good + b"Authorization: Bearer x\r\n"):
        reply = raw(headers)
        assert reply.startswith(b"HTTP/1.1 400") and b"multiple_authorization_headers" in reply
    assert raw("Authorization: Bearer clé\r\n".encode("latin-1")).startswith(b"HTTP/1.1 401")
    assert raw(b"Authorization: Bearer \xff\xfe\r\n").startswith(b"HTTP/1.1 401")


# ---------------------------------------------------------------------------------------------------- 8: flags
@pytest.mark.parametrize("flags, flag", [
    (["--max-request-bytes", "-5"], "--max-request-bytes"),
    (["--max-request-bytes", "0"], "--max-request-bytes"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--max-seq-len", "1"], "--max-seq-len"),
    (["--prefill-chunk", "0"], "--prefill-chunk"),
    (["--kv-cache-memory", "0"], "--kv-cache-memory"),
    (["--kv-cache-memory", "nan"], "--kv-cache-memory"),
    (["--read-timeout", "0"], "--read-timeout"),
    (["--read-timeout", "inf"], "--read-timeout"),
    (["--keep-alive-timeout", "-1"], "--keep-alive-timeout"),
    (["--port", "0"], "--port"),
    (["--api-key", "naïve"], "--api-key"),
    (["--served-model-name", "bad\udcff"], "--served-model-name"),
    (["--served-model-name", ""], "--served-model-name"),
])
def test_serve_flags_are_validated_before_loading(flags, flag, capsys, monkeypatch):
    from baichuan13b.cli import main, serve

    monkeypatch.setattr(serve, "load", lambda args: pytest.fail("the model was chat_model"))
    assert main(["serve", *flags]) != 0
    assert flag in capsys.readouterr().err


def test_api_key_from_the_environment_is_checked(capsys, monkeypatch):
    from baichuan13b.cli import main, serve

    monkeypatch.setattr(serve, "load", lambda args: pytest.fail("the model was chat_model"))
    monkeypatch.setenv("BAICHUAN_API_KEY", "schlüssel")
    assert main(["serve"]) != 0
    assert "$BAICHUAN_API_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- 10, 11
def test_slow_clients_are_cut_off(chat_model):
    model, tok = chat_model
    srv = RunningServer(model, tok, read_timeout=1.0, keep_alive_timeout=1.0)
    host, port = srv.base_url.removeprefix("http://").split(":")
    try:
        def connect():
            sock = socket.create_connection((host, int(port)))
            sock.settimeout(10)
            return sock

        def read_all(sock):
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

        body_slow = connect()  # declares 1,000 bytes and sends 9
        body_slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n".encode()
                          + b'{"model":')
        headers_slow = connect()  # never finishes its headers
        headers_slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        idle = connect()  # one request, then nothing
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        reply = read_all(body_slow)
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
        assert read_all(headers_slow) == b""  # closed
        assert read_all(idle).startswith(b"HTTP/1.1 200")  # answered, then closed when idle
        assert time.monotonic() - start < 8
        for sock in (body_slow, headers_slow, idle):
            sock.close()
        assert httpx.get(srv.base_url + "/health").status_code == 200
    finally:
        srv.close()


def test_non_json_content_type_is_415_saying_so(server):
    with server.http() as h:
        r = h.post("/v1/chat/completions", content=json.dumps({"model": MODEL_NAME, "messages": USER}),
                   headers={"content-type": "application/x-www-form-urlencoded"})
        err = error(r, 415)
        assert "application/json" in err["message"] and err["code"] == "unsupported_media_type"
        ok = h.post("/v1/completions", content=json.dumps({"model": MODEL_NAME, "prompt": "ab", "max_tokens": 2}),
                    headers={"content-type": "application/json; charset=utf-8"})
        assert ok.status_code == 200


# ---------------------------------------------------------------------------------------------------- all together
def test_every_repro_leaves_concurrent_streams_untouched(server, chat_model):
    """Good streams run while each bad request of the issue is sent; every bad one gets its status."""
    model, _ = chat_model
    long_chat = {"messages": [{"role": "user", "content": "one plus two " * 1000}], "max_tokens": 16}
    repros = [
        ("/v1/completions", {"prompt": "ab", "temperature": 1.0, "repetition_penalty": 1e-300, "max_tokens": 8},
         200),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 4}, 400),
        ("/v1/completions", {"prompt": "\ud83d", "stream": True}, 400),
        ("/v1/chat/completions", long_chat, 200),
        ("/v1/completions", {"prompt": "ab", "temperature": False}, 400),
        ("/v1/completions", {"prompt": [True, False]}, 400),
        ("/v1/completions", {"prompt": ""}, 400),
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 3, "max_completion_tokens": 4}, 400),
    ]
    with slowed(model, 0.02), GoodStreams(server, chat_model, n=4, max_tokens=60) as good:
        for path, extra, status in repros:
            r = post(server, path, {"model": MODEL_NAME, **extra})
            assert r.status_code == status, (extra, r.text)
        with server.http() as h:
            r = h.post("/v1/chat/completions", content="model=x&messages=y",
                       headers={"content-type": "application/x-www-form-urlencoded"})
            assert r.status_code == 415
    good.check()
    assert server.wait_idle()["filled_rows"] == 0


def test_demo_is_served_as_demo(tmp_path):
    """`baichuan serve --model demo` answers to the name the user typed."""
    import subprocess
    import sys

    from serving_server import free_port

    from baichuan13b.cli import build_parser
    from baichuan13b.cli.common import display_name

    assert display_name(build_parser().parse_args(["serve", "--model", "demo"])) == "demo"
    sock = free_port()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "baichuan13b", "serve", "--model", "demo", "--port", str(port),
                             "--no-progress", "--max-batch", "2", "--kv-cache-memory", "0.05"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}/v1"
        assert [m["id"] for m in httpx.get(base + "/models").json()["data"]] == ["demo"]
        r = httpx.post(base + "/chat/completions", timeout=60, json={
            "model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "one plus two " * 1000}]})
        assert r.status_code == 200, r.text  # the official truncation left room for the answer
        assert r.json()["usage"]["prompt_tokens"] == 512 - 16 + 1 and r.json()["usage"]["completion_tokens"] <= 16
        assert httpx.post(base + "/completions", json={"model": "model", "prompt": "a"}).status_code == 404
    finally:
        proc.terminate()
        proc.wait(30)


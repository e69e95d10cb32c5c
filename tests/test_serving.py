"""The OpenAI-compatible server, through the official ``openai`` client against a real server on loopback."""

import json
import logging
import socket
import threading
import time

import httpx
import openai
import pytest
import torch
from serving_server import API_KEY, MODEL_NAME, RunningServer, slowed

from baichuan13b.chat import build_chat_input
from baichuan13b.generation import GenerationConfig
from baichuan13b.serving import Engine
from baichuan13b.serving.api import create_app

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def server(chat_model):
    model, tok = chat_model
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=4, prefill_chunk=8))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def prompt_len(model, tok, messages, **settings):
    cfg = model.generation_config.update(**settings)
    return build_chat_input(model, tok, messages, generation_config=cfg).shape[1]


def raw_stream(server, path, body):
    """POST with stream=true; return the list of 'data:' payloads (strings), checking the SSE framing."""
    with server.http() as h, h.stream("POST", path, json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), text
    return [e[len("data: "):] for e in events]


# ---------------------------------------------------------------------------------------------------- answers
def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_chat_greedy_equals_model_chat_with_usage(client, chat_model):
    model, tok = chat_model
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "The quick brown fox"}]
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0, max_tokens=7)
    expected = model.chat(tok, messages, do_sample=False, max_new_tokens=7)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.object == "chat.completion" and r.model == MODEL_NAME and r.id.startswith("chatcmpl-")
    n_prompt = prompt_len(model, tok, messages, max_new_tokens=7)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 7, n_prompt + 7)


def test_chat_defaults_come_from_generation_config(client, chat_model):
    model, tok = chat_model
    r = client.chat.completions.create(model=MODEL_NAME, messages=USER)
    assert r.choices[0].message.content == model.chat(tok, USER)  # greedy, 10 new tokens: the checkpoint's config
    assert r.usage.completion_tokens == model.generation_config.max_new_tokens == 10


def test_chat_stream_chunks_usage_and_done(server, chat_model):
    model, tok = chat_model
    payloads = raw_stream(server, "/v1/chat/completions", {
        "model": MODEL_NAME, "messages": USER, "stream": True, "max_tokens": 6, "temperature": 0,
        "stream_options": {"include_usage": True}})
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == model.chat(tok, USER, max_new_tokens=6)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    n_prompt = prompt_len(model, tok, USER, max_new_tokens=6)
    assert chunks[-1]["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 6, "total_tokens": n_prompt + 6}
    assert all(c["usage"] is None for c in chunks[:-1])


def test_chat_stream_through_the_client(client, chat_model):
    model, tok = chat_model
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL_NAME, messages=USER, stream=True, max_tokens=9, temperature=0) if c.choices]
    assert "".join(pieces) == model.chat(tok, USER, max_new_tokens=9)
    assert len([p for p in pieces if p]) > 1  # really streamed, piece by piece


def test_stop_string_ends_the_answer(client, chat_model):
    model, tok = chat_model
    full = model.chat(tok, USER, max_new_tokens=10)
    stop = full[3:5]
    r = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=10, stop=[stop, "never-seen"])
    assert r.choices[0].message.content == model.chat(tok, USER, max_new_tokens=10, stop_strings=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL_NAME, messages=USER, max_tokens=10, stop=stop, stream=True) if c.choices)
    assert streamed == r.choices[0].message.content


def test_sampling_settings_and_seed_equal_model_chat(client, chat_model):
    """Per-request temperature / top_p / top_k / repetition_penalty / seed, as model.chat applies them."""
    model, tok = chat_model
    settings = dict(temperature=0.9, top_p=0.95, seed=1234)
    extra = dict(top_k=30, repetition_penalty=1.3)
    answers = {client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=10, **settings,
                                              extra_body=extra).choices[0].message.content for _ in range(2)}
    expected = model.chat(tok, USER, max_new_tokens=10, do_sample=True, **settings, **extra)
    assert answers == {expected}
    other = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=10, temperature=0.9,
                                           top_p=0.95, seed=99, extra_body=extra).choices[0].message.content
    assert other == model.chat(tok, USER, max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.95, seed=99,
                               **extra)
    greedy_penalised = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=10, temperature=0,
                                                      extra_body={"repetition_penalty": 1.5})
    assert greedy_penalised.choices[0].message.content == model.chat(tok, USER, max_new_tokens=10,
                                                                     repetition_penalty=1.5)


def test_completions_text_and_token_ids(client, chat_model):
    model, tok = chat_model
    ids = tok.encode("The quick brown")
    out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    expected = tok.decode(out, skip_special_tokens=True)
    r = client.completions.create(model=MODEL_NAME, prompt="The quick brown", max_tokens=6, temperature=0)
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 6)
    r2 = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=0)
    assert r2.choices[0].text == expected
    streamed = [c.choices[0].text for c in client.completions.create(
        model=MODEL_NAME, prompt=[ids], max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(streamed) == expected


def test_eos_finishes_with_stop_and_counts_the_eos_token(chat_model):
    """Engine level: with the first greedy token declared eos, the answer is empty, 'stop', one token."""
    model, tok = chat_model
    ids = build_chat_input(model, tok, USER)[0].tolist()
    first = model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False)[0, -1].item()
    engine = Engine(model, tok, max_batch=2).start()
    try:
        cfg = model.generation_config.update(eos_token_id=[first, 2])
        events = list(engine.stream(ids, cfg, max_new_tokens=5))
    finally:
        engine.stop()
    assert "".join(e.text for e in events) == "" and events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens == 1


# ---------------------------------------------------------------------------------------------------- errors
def error_of(exc_info):
    body = exc_info.value.body
    assert set(body) == {"message", "type", "param", "code"}, body  # the client unwraps {"error": {...}}
    return body


def test_context_length_exceeded(client, chat_model):
    """Context 128: a prompt of n tokens leaves room for 129 - n new tokens (the last one is never read back)."""
    with pytest.raises(openai.BadRequestError) as e:  # more than the whole context: never possible
        client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=129)
    assert error_of(e)["code"] == "context_length_exceeded" and e.value.status_code == 400
    assert "129" in error_of(e)["message"] and error_of(e)["param"] == "messages"
    long_prompt = list(range(5, 5 + 125))
    fits = client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=4)
    assert fits.usage.completion_tokens == 4 and fits.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=5)
    assert error_of(e)["code"] == "context_length_exceeded" and error_of(e)["param"] == "prompt"
    assert "125 prompt tokens + max_tokens 5 = 130" in error_of(e)["message"]
    full = client.completions.create(model=MODEL_NAME, prompt=list(range(5, 5 + 128)))  # one token still fits
    assert full.usage.completion_tokens == 1
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=list(range(5, 5 + 129)))
    assert error_of(e)["code"] == "context_length_exceeded"


@pytest.mark.parametrize("settings, param", [
    (dict(temperature=2.5), "temperature"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=2), "n"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(stop=""), "stop"),
    (dict(seed=2**64), "seed"),
    (dict(extra_body={"top_k": -1}), "top_k"),
    (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
    (dict(extra_body={"logit_bias_xyz": 1}), "logit_bias_xyz"),
    (dict(stream_options={"include_usage": True}), "stream_options"),
    (dict(messages=[]), "messages"),
    (dict(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (dict(messages=[{"role": "user"}]), "messages.0.content"),
])
def test_invalid_parameters_are_400_naming_the_parameter(client, settings, param):
    kwargs = dict(model=MODEL_NAME, messages=USER, max_tokens=4)
    kwargs.update(settings)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**kwargs)
    err = error_of(e)
    assert e.value.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["param"] == param and param in err["message"]


def test_system_message_not_first_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=USER + [{"role": "system", "content": "late"}])
    assert error_of(e)["param"] == "messages" and "system" in error_of(e)["message"]


def test_completion_token_ids_outside_vocabulary(client, chat_model):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=[5, 6, chat_model[0].config.vocab_size])
    assert error_of(e)["param"] == "prompt" and "vocabulary" in error_of(e)["message"]


@pytest.mark.parametrize("body", [b"{bad json", b'{"model": "tiny-chat", "messages": [', b"\xff\xfe", b"[1, 2]", b""])
def test_malformed_json_is_400_not_422(server, body):
    with server.http() as h:
        r = h.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=USER)
    assert error_of(e)["code"] == "model_not_found" and error_of(e)["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_missing_or_wrong_key_is_401(server):
    for key in (None, "wrong", API_KEY + "x", API_KEY[:-1]):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(server.base_url + "/v1/chat/completions", headers=headers,
                       json={"model": MODEL_NAME, "messages": USER})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.base_url + "/v1/models", headers=headers).status_code == 401
        assert httpx.get(server.base_url + "/metrics", headers=headers).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.base_url + "/health").status_code == 200  # health stays open for load balancers


def test_request_body_size_limit(server):
    big = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    with server.http() as h:
        r = h.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit applies to the bytes received
            yield b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "'
            for _ in range(40):
                yield b"y" * 32768
            yield b'"}]}'

        r = h.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_queue_full_is_429_with_retry_after(chat_model):
    model, tok = chat_model
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=1, max_queue=0))
    try:
        client = srv.client()
        with slowed(model, 0.02):  # the first answer takes 2 s: it surely holds the slot meanwhile
            stream = client.chat.completions.create(model=MODEL_NAME, messages=USER, stream=True, max_tokens=100)
            next(iter(stream))  # the first request holds the only slot
            deadline = time.monotonic() + 5
            while srv.engine.stats()["running"] != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as e:
                client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2)
            assert e.value.status_code == 429 and e.value.response.headers["Retry-After"] == "1"
            assert error_of(e)["code"] == "queue_full"
            stream.close()
        assert srv.wait_idle()["running"] == 0
        assert client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2).choices
    finally:
        srv.close()


def test_shutdown_drains_503_while_in_flight_requests_finish(chat_model):
    model, tok = chat_model
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=2))
    expected = model.chat(tok, USER, max_new_tokens=60)
    received = {}

    def consume():
        with srv.http() as h, h.stream("POST", "/v1/chat/completions", json={
                "model": MODEL_NAME, "messages": USER, "stream": True, "max_tokens": 60}) as r:
            received["text"] = "".join(r.iter_text())

    try:
        with srv.http() as h, slowed(model, 0.02):  # the answer takes over a second: still in flight below
            t = threading.Thread(target=consume)
            t.start()
            deadline = time.monotonic() + 5
            while srv.engine.stats()["running"] == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            srv.server.handle_exit(15, None)  # SIGTERM: drain
            r = h.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": USER})
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
            assert h.get("/health").status_code == 503
            t.join(30)
        payloads = [e[len("data: "):] for e in received["text"].split("\n\n") if e]
        assert payloads[-1] == "[DONE]"
        text = "".join(json.loads(p)["choices"][0]["delta"].get("content", "") for p in payloads[:-1])
        assert text == expected  # the in-flight answer completed
        srv.thread.join(10)
        assert not srv.thread.is_alive()  # then the server exited by itself
    finally:
        srv.close()


def test_error_after_streaming_began_is_sent_in_the_stream(server, chat_model, monkeypatch):
    model, tok = chat_model
    calls = {"n": 0}
    forward = model.forward

    def failing_forward(*args, **kwargs):  # fails on the 4th forward: a decode step, after text went out
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated device failure")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing_forward)
    payloads = raw_stream(server, "/v1/chat/completions",
                          {"model": MODEL_NAME, "messages": USER, "stream": True, "max_tokens": 20})
    monkeypatch.undo()
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])
    assert set(error) == {"error"} and error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "internal_error"
    assert "simulated" not in error["error"]["message"] and "RuntimeError" not in error["error"]["message"]
    assert any(json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:-2])  # text came first
    assert server.wait_idle()["filled_rows"] == 0
    # and the server goes on serving
    assert server.client().chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=3).choices


def test_non_streaming_client_disconnect_aborts(server, chat_model):
    body = json.dumps({"model": MODEL_NAME, "messages": USER, "max_tokens": 110}).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    aborted_before = server.engine.metrics.finished.value("abort")
    with slowed(chat_model[0], 0.02):  # 110 tokens now take over 2 s
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 5
        while server.engine.stats()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.engine.stats()["running"] == 1
        sock.close()  # the client hangs up while its answer is being generated
        start = time.monotonic()
        stats = server.wait_idle()
        assert time.monotonic() - start < 1.0  # freed long before the answer would have been complete
    assert (stats["running"], stats["waiting"], stats["filled_rows"]) == (0, 0, 0)
    assert server.engine.metrics.finished.value("abort") == aborted_before + 1


# ---------------------------------------------------------------------------------------------------- operations
def test_health_and_metrics(server, client):
    client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=3)
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"
    with server.http() as h:
        text = h.get("/metrics").text
    assert h is not None
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert lines['baichuan_http_requests_total{path="/v1/chat/completions",status="200"}'] >= 1
    assert lines["baichuan_generation_tokens_total"] >= 3 and lines["baichuan_prompt_tokens_total"] > 0
    for name in ("baichuan_queue_depth", "baichuan_batch_size", "baichuan_running_sequences",
                 "baichuan_time_to_first_token_seconds_count", "baichuan_time_per_output_token_seconds_count",
                 "baichuan_http_request_duration_seconds_count", 'baichuan_decode_batch_size_bucket{le="+Inf"}'):
        assert name in lines, name
    assert "# TYPE baichuan_time_to_first_token_seconds histogram" in text


def test_one_log_line_per_request(server, client, caplog):
    with caplog.at_level(logging.INFO, logger="baichuan13b.serving"):
        client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=USER)
        def ours():  # a line of an earlier test's request (e.g. GET /metrics) may land in this window too
            return [r.getMessage() for r in caplog.records
                    if r.name == "baichuan13b.serving" and "/v1/chat/completions" in r.getMessage()]

        deadline = time.monotonic() + 2
        while len(ours()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = ours()
    assert len(lines) == 2, lines
    assert "POST /v1/chat/completions 200" in lines[0] and "completion_tokens=2" in lines[0]
    assert "finish=length" in lines[0]
    assert "POST /v1/chat/completions 404" in lines[1]


def test_no_cors_unless_asked_and_loopback_default(chat_model):
    from fastapi.testclient import TestClient

    model, tok = chat_model
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    plain = TestClient(create_app(Engine(model, tok, max_batch=1), model_name=MODEL_NAME))
    r = plain.options("/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in plain.get("/v1/models", headers=preflight).headers
    allowed = TestClient(create_app(Engine(model, tok, max_batch=1), model_name=MODEL_NAME, api_key="k",
                                    cors_origins=["https://app.example.com"]))
    r = allowed.options("/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
    r = allowed.options("/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"

    from baichuan13b.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.api_key is None and args.cors_origins is None


def test_serve_flags_become_engine_settings(chat_model):
    """What `baichuan serve` passes to the engine: the KV budget in bytes, reuse and CUDA graphs as flagged."""
    from baichuan13b.cli import build_parser
    from baichuan13b.cli.serve import engine_options

    model, tok = chat_model
    parse = build_parser().parse_args
    default = engine_options(parse(["serve", "--kv-cache-memory", "0.5"]), model)
    assert default["kv_cache_bytes"] == 2**29 and default["prefix_cache"] is True
    assert default["decode_graphs"] is None  # the runner decides: on for one CUDA device
    eager = engine_options(parse(["serve", "--kv-cache-memory", "0.5", "--enforce-eager", "--no-prefix-cache",
                                  "--max-batch", "3", "--block-size", "8"]), model)
    assert eager["decode_graphs"] is False and eager["prefix_cache"] is False
    engine = Engine(model, tok, **eager)
    assert engine.max_batch == 3 and engine.block_size == 8 and engine.runner.graphs is None


def test_engine_rejects_bad_settings(chat_model):
    model, tok = chat_model
    with pytest.raises(ValueError, match="max_batch"):
        Engine(model, tok, max_batch=0)
    with pytest.raises(ValueError, match="holds no sequence"):
        Engine(model, tok, kv_cache_bytes=1000)
    one = Engine(model, tok, max_batch=1)  # one full context of blocks
    engine = Engine(model, tok, max_batch=8, kv_cache_bytes=one.blocks.num_blocks * one.block_bytes * 3)
    assert engine.max_batch == 8 and engine.blocks.num_blocks == 3 * one.blocks.num_blocks  # the budget sizes the pool
    with pytest.raises(ValueError, match="max_seq_len"):
        Engine(model, tok, max_seq_len=10_000)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], lambda ev: None)
    cfg = GenerationConfig(max_new_tokens=4)
    with pytest.raises(ValueError, match="out of range"):
        engine.submit([1, 10**6], lambda ev: None, cfg)


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(chat_model):
    """A 100-token prompt, prefilled 8 tokens per step: the running request gets a token at every one of those
    steps, and the long request's answer is still exactly model.generate's."""
    model, tok = chat_model
    engine = Engine(model, tok, max_batch=2, prefill_chunk=8).start()
    log: list[tuple[str, str]] = []
    lock = threading.Lock()
    first_token = threading.Event()

    def sink(name):
        def put(event):
            with lock:
                log.append((name, event.text, event.final))
            first_token.set()
        return put

    try:
        greedy = model.generation_config.update(do_sample=False)
        engine.submit(tok.encode("hello there"), sink("short"), greedy, max_new_tokens=60)
        assert first_token.wait(5)
        long_prompt = [5 + (i * 7) % 300 for i in range(100)]
        with lock:
            before = len(log)
        events = []
        for event in engine.stream(long_prompt, greedy, max_new_tokens=5):
            if not events:
                with lock:
                    during_prefill = len(log) - before  # short-request tokens while the long prompt was prefilled
            events.append(event)
    finally:
        engine.stop()
    expected = model.generate(torch.tensor([long_prompt]), max_new_tokens=5, do_sample=False)[0, 100:].tolist()
    assert "".join(e.text for e in events) == tok.decode(expected, skip_special_tokens=True)
    # 13 prefill steps of 8 tokens: the short request got a token in each (the last after the long one's first)
    assert during_prefill >= 100 // 8
    assert all(name == "short" for name, *_ in log)

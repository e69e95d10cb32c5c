"""The server under concurrency: many streaming clients, clients that vanish, and the ``baichuan serve`` command."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from serving_server import API_KEY, MODEL_NAME, RunningServer, free_port, slowed

QUESTIONS = ["hello there", "你好", "The quick brown fox", "今天天气很好", "numbers 12345", "a b c", "def main():",
             "北京是中国的首都"]


@pytest.fixture(scope="module")
def server(chat_model):
    model, tok = chat_model
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=16, max_queue=64, prefill_chunk=32))
    yield srv
    srv.close()


def test_64_concurrent_streaming_clients_get_complete_correct_answers(server, chat_model):
    model, tok = chat_model
    # Different prompts, lengths and settings in one batch; each answer must be what model.chat gives alone.
    jobs = [(QUESTIONS[i % len(QUESTIONS)], 3 + i % 6, 1.0 if i % 3 else 1.3) for i in range(64)]
    expected = {job: model.chat(tok, [{"role": "user", "content": job[0]}], max_new_tokens=job[1],
                                repetition_penalty=job[2]) for job in set(jobs)}

    async def one(client, question, max_tokens, penalty):
        stream = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": question}], stream=True, max_tokens=max_tokens,
            temperature=0, extra_body={"repetition_penalty": penalty}, stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return text, finish, usage.completion_tokens

    async def main():
        async with server.async_client(http_client=httpx.AsyncClient(
                limits=httpx.Limits(max_connections=64), timeout=120)) as client:
            return await asyncio.gather(*(one(client, *job) for job in jobs))

    results = asyncio.run(main())
    for job, (text, finish, completion_tokens) in zip(jobs, results):
        assert text == expected[job], job
        assert finish == "length" and completion_tokens == job[1]
    stats = server.wait_idle()
    assert (stats["running"], stats["waiting"], stats["filled_rows"]) == (0, 0, 0)
    metrics = httpx.get(server.base_url + "/metrics", headers=server.headers).text
    batch_line = next(line for line in metrics.splitlines() if line.startswith('baichuan_decode_batch_size_bucket{le="4"}'))
    total_line = next(line for line in metrics.splitlines()
                      if line.startswith('baichuan_decode_batch_size_bucket{le="+Inf"}'))
    assert float(batch_line.split()[-1]) < float(total_line.split()[-1])  # some steps really batched > 4 rows


def test_50_clients_disconnecting_mid_stream_leave_nothing_behind(server, chat_model):
    model, tok = chat_model
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello there"}], "stream": True,
            "max_tokens": 100, "temperature": 0}

    async def leave_early(client):
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    seen += 1
                    if seen == 3:  # role chunk + two pieces of text, then hang up
                        return

    async def main():
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=60,
                                     limits=httpx.Limits(max_connections=50)) as client:
            await asyncio.gather(*(leave_early(client) for _ in range(50)))

    with slowed(model, 0.005):  # 100 steps take at least half a second: every client leaves mid-answer
        asyncio.run(main())
        stats = server.wait_idle(timeout=5)
    assert (stats["running"], stats["waiting"], stats["tracked"], stats["filled_rows"]) == (0, 0, 0, 0)
    assert stats["free_blocks"] == stats["blocks"]  # every block came back (cached prefixes count as free)
    start = time.monotonic()
    r = server.client().chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "你好"}],
                                                max_tokens=5, temperature=0)
    assert time.monotonic() - start < 2.0
    assert r.choices[0].message.content == model.chat(tok, [{"role": "user", "content": "你好"}], max_new_tokens=5)
    metrics = httpx.get(server.base_url + "/metrics", headers=server.headers).text
    assert 'baichuan_sequences_finished_total{reason="abort"} 50' in metrics


def test_serve_command_answers_and_drains_on_sigterm(chat_folder, chat_model):
    """``baichuan serve`` in its own process: float32, one request at a time equals model.chat."""
    from baichuan13b.model import BaichuanForCausalLM
    from baichuan13b.tokenizer import BaichuanTokenizer

    model = BaichuanForCausalLM.from_pretrained(chat_folder, progress=False)
    tok = BaichuanTokenizer.from_pretrained(chat_folder)
    sock = free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, BAICHUAN_API_KEY=API_KEY)
    proc = subprocess.Popen([sys.executable, "-m", "baichuan13b", "serve", "--model", str(chat_folder), "--no-progress",
                             "--port", str(port), "--max-batch", "4", "--served-model-name", MODEL_NAME],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
        import openai

        client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
        messages = [{"role": "user", "content": "hello there"}]
        r = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8)
        assert r.choices[0].message.content == model.chat(tok, messages, max_new_tokens=8)
        assert httpx.get(base + "/v1/models").status_code == 401  # the key came from BAICHUAN_API_KEY
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        log = proc.stderr.read()
        assert "POST /v1/chat/completions 200" in log and "draining" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

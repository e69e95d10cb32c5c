"""A real ``baichuan serve`` server on loopback, in a background thread, for the serving tests.

Import from tests as ``from serving_server import ...`` (like ``checkpoints``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
from checkpoints import write_chat_model

from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.serving import Engine
from baichuan13b.serving.api import DrainingServer, create_app, server_config
from baichuan13b.tokenizer import BaichuanTokenizer


MODEL_NAME = "tiny-chat"
API_KEY = "test-key-123"
# Greedy by default, like the CLI tests; user/assistant ids are the tiny tokenizer's reserved pieces.
GEN = dict(max_new_tokens=10, user_token_id=3, assistant_token_id=4, do_sample=False, temperature=0.7, top_k=20,
           top_p=0.9, repetition_penalty=1.0)


def build_chat_folder(folder: Path, tokenizer_dir: Path, max_position: int = 128) -> Path:
    """A 2-layer, hidden-64 chat checkpoint with the tiny tokenizer, in the official layout.

    The eos row of ``lm_head`` is zeroed: a random model would otherwise end some answers after a token or two,
    and the tests need answers that run to their length (eos itself is tested through ``eos_token_id``).
    """
    return write_chat_model(folder, tokenizer_dir, generation_config=GEN, max_position=max_position, seed=7,
                            never_eos=True)


def load_float64(folder: Path) -> tuple[BaichuanForCausalLM, BaichuanTokenizer]:
    """The model in float64: batched and single-sequence matrix products then agree to ~1e-15, so greedy
    comparisons with ``model.chat`` cannot flip on a float32 rounding near-tie."""
    model = BaichuanForCausalLM.from_pretrained(folder, progress=False).double()
    return model, BaichuanTokenizer.from_pretrained(folder)


def free_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class RunningServer:
    """``create_app`` + uvicorn on a free loopback port in a thread; ``close()`` shuts it down."""

    def __init__(self, model, tokenizer, *, api_key: str | None = API_KEY, engine_kwargs: dict | None = None,
                 keep_alive_timeout: float = 5.0, model_name: str = MODEL_NAME, **app_kwargs):
        self.engine = Engine(model, tokenizer, **(engine_kwargs or {}))
        self.app = create_app(self.engine, model_name=model_name, api_key=api_key, **app_kwargs)
        self.sock = free_port()
        host, port = self.sock.getsockname()
        self.base_url = f"http://{host}:{port}"
        # The configuration `baichuan serve` runs (header deadline, keep-alive timeout), on this socket.
        config = server_config(self.app, log_level="warning", keep_alive_timeout=keep_alive_timeout,
                               **({"read_timeout": app_kwargs["read_timeout"]} if "read_timeout" in app_kwargs
                                  else {}))
        self.server = DrainingServer(config, self.app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60, **kw)

    def async_client(self, **kw):
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60,
                                  **kw)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60)

    def wait_idle(self, timeout: float = 5.0) -> dict:
        """Wait until the engine holds no request (and every KV block is back in the pool); return its stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.engine.stats()
            if (stats["running"], stats["waiting"], stats["tracked"], stats["filled_rows"]) == (0, 0, 0, 0) and \
                    stats["free_blocks"] == stats["blocks"]:
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextlib.contextmanager
def slowed(model, seconds: float):
    """Make every forward of ``model`` take ``seconds`` longer, so that a generation is surely still running
    when a test acts on it (a client hanging up, a drain), however fast the machine."""
    forward = model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    try:
        yield
    finally:
        del model.forward  # back to the class's forward

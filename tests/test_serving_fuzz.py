"""Fuzzing the live server over its own OpenAPI schema (schemathesis): no input may cause a 5xx."""

import zlib

import pytest
from serving_server import MODEL_NAME, RunningServer, build_chat_folder, load_float64

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (comes with schemathesis)
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_tokenizer_dir):
    folder = build_chat_folder(tmp_path_factory.mktemp("serving_fuzz") / "model", tiny_tokenizer_dir,
                               max_position=48)
    model, tok = load_float64(folder)
    srv = RunningServer(model, tok, engine_kwargs=dict(max_batch=4, max_queue=8, prefill_chunk=16))
    yield srv
    srv.close()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_input_causes_a_server_error(fuzz_server, mode):
    """Valid (positive) and schema-violating (negative) requests to every operation: never a 5xx."""
    schema = schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")
    seen = set()

    @given(case=schema.as_strategy(schemathesis.GenerationMode(mode)))
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.generate], derandomize=True)  # the same cases on every run: no flaky coverage
    def fuzz(case):
        # Most generated bodies name the served model, so that they reach validation and generation, not 404.
        if isinstance(case.body, dict) and "model" in case.body and zlib.crc32(repr(case.body).encode()) % 4:
            case.body["model"] = MODEL_NAME
        response = case.call_and_validate(headers=fuzz_server.headers, checks=[not_a_server_error], timeout=60)
        seen.add((case.operation.label, response.status_code))

    fuzz()
    labels = {label for label, _ in seen}
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= labels, seen
    if mode == "positive":  # every operation was called, and valid requests did reach generation
        assert {"GET /v1/models", "GET /health", "GET /metrics"} <= labels, seen
        assert ("POST /v1/chat/completions", 200) in seen and ("POST /v1/completions", 200) in seen, seen
    assert fuzz_server.wait_idle()["filled_rows"] == 0

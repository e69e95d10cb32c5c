"""Fuzzing the live server over its own OpenAPI schema (schemathesis): no input may cause a 5xx."""

import json
import zlib

import pytest
from serving_server import MODEL_NAME, RunningServer, build_chat_folder, load_float64

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (comes with schemathesis)
from hypothesis import strategies as st  # noqa: E402
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


# Text that may hold lone surrogates (category Cs) among ordinary characters, as a JSON "\ud800" escape sends it.
texts = st.text(st.characters(categories=["L", "N", "P", "Zs", "Cs"]), max_size=12)
extremes = dict(
    temperature=st.one_of(st.sampled_from([0, 0.0, 5e-324, 1e-300, 1e-6, 1.0000001e-6, 2.0]), st.floats(0, 2)),
    top_p=st.one_of(st.sampled_from([5e-324, 1e-300, 1.0]), st.floats(5e-324, 1.0)),
    top_k=st.one_of(st.sampled_from([0, 1, 2**31 - 1]), st.integers(0, 500)),
    repetition_penalty=st.one_of(st.sampled_from([5e-324, 1e-300, 1e-30, 100.0]), st.floats(5e-324, 100.0)),
    seed=st.sampled_from([-(2**63), 0, 2**64 - 1]),
    stop=st.one_of(texts.filter(bool), st.lists(texts.filter(bool), max_size=4)),
)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_sampling_extremes_and_invalid_unicode(fuzz_server, path):
    """Every sampling parameter at its extremes (within the schema) and text with lone surrogates in every text
    field: a 200 with at least one token, or a 400 naming the field of the invalid text; never a 5xx."""
    import httpx

    def has_surrogate(value):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in (value if isinstance(value, str) else "".join(value)))

    @given(settings_=st.fixed_dictionaries({}, optional=extremes), text=texts.filter(bool), stream=st.booleans())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)
    def fuzz(settings_, text, stream):
        field = {"messages": [{"role": "user", "content": text}]} if "chat" in path else {"prompt": text}
        body = {"model": MODEL_NAME, "max_tokens": 3, "stream": stream, **field, **settings_}
        with httpx.Client(base_url=fuzz_server.base_url, headers=fuzz_server.headers, timeout=60) as h:
            r = h.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        invalid = [name for name, value in (("messages.0.content" if "chat" in path else "prompt", text),
                                             ("stop", settings_.get("stop", ""))) if has_surrogate(value)]
        if invalid:
            assert r.status_code == 400 and r.json()["error"]["param"] in invalid, r.text
        else:
            assert r.status_code == 200, (body, r.text)
            assert "error" not in r.text

    fuzz()
    assert fuzz_server.wait_idle()["filled_rows"] == 0

"""lm-evaluation-harness on this project: ``logprobs`` / ``echo`` on ``/v1/completions`` (OpenAI's legacy shape),
the tokenizer routes, and both lm-eval routes (``local-completions`` against the server, and the native
``baichuan13b`` model) run with the real ``lm-eval`` on a task defined here, checked against direct scoring."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
from serving_server import MODEL_NAME, RunningServer

from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.serving.logprobs import legacy_logprobs, score_positions
from baichuan13b.tokenizer import BaichuanTokenizer

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def demo():
    model = BaichuanForCausalLM.from_pretrained("demo", progress=False, torch_dtype="float32")
    return model, BaichuanTokenizer.from_pretrained("demo")


@pytest.fixture(scope="module")
def server(demo):
    srv = RunningServer(*demo, api_key=None, engine_kwargs={"prefill_chunk": 4})  # prompts span several chunks
    yield srv
    srv.close()


def direct_logprobs(model, ids):
    """log p(ids[i] | ids[:i]) for i >= 1, from one plain forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [logp[i - 1, ids[i]].item() for i in range(1, len(ids))], logp


# ------------------------------------------------------------------------------------------------ the server
def test_echo_with_max_tokens_0_scores_the_prompt_in_openais_legacy_shape(demo, server):
    model, tok = demo
    prompt = "世界上最高的山峰是珠穆朗玛峰。The capital of France is Paris."
    ids = tok.encode(prompt)
    expected, logp = direct_logprobs(model, ids)
    with server.http() as http:
        r = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": 0, "echo": True,
                                                "logprobs": 2})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert choice["text"] == tok.decode(ids) and r.json()["usage"]["completion_tokens"] == 0
    assert len(lp["tokens"]) == len(ids) and "".join(lp["tokens"]) == choice["text"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    for i, offset in enumerate(lp["text_offset"]):
        assert choice["text"][offset:].startswith(lp["tokens"][i])
    for i, top in enumerate(lp["top_logprobs"][1:], start=1):
        best = torch.topk(logp[i - 1], 2).values.tolist()
        assert sorted(top.values(), reverse=True) == pytest.approx(best, abs=1e-4)


def test_logprobs_of_generated_tokens_and_echo_with_max_tokens(demo, server):
    model, tok = demo
    ids = tok.encode("世界上最高的山峰是")
    with server.http() as http:
        r = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": [ids], "max_tokens": 3,
                                                "temperature": 0, "logprobs": 1, "echo": True})
        plain = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": [ids], "max_tokens": 3,
                                                    "temperature": 0})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == tok.decode(ids) + plain.json()["choices"][0]["text"]
    assert len(lp["tokens"]) == len(ids) + 3
    # Greedy: every generated token is the top one, with the log-probability a direct forward gives it.
    generated = list(ids)
    for i in range(3):
        _, logp = direct_logprobs(model, generated)
        token = int(logp[-1].argmax())
        assert lp["token_logprobs"][len(ids) + i] == pytest.approx(logp[-1, token].item(), abs=1e-4)
        assert list(lp["top_logprobs"][len(ids) + i].values()) == pytest.approx([logp[-1, token].item()], abs=1e-4)
        generated.append(token)
    assert lp["token_logprobs"][1:len(ids)] == pytest.approx(direct_logprobs(model, ids)[0], abs=1e-4)
    assert plain.json()["choices"][0]["logprobs"] is None


def test_bad_logprob_requests_are_clear_400s(server):
    with server.http() as http:
        for body, param, text in (
                ({"max_tokens": 0}, "echo", "must be true when max_tokens is 0"),
                ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
                ({"logprobs": 1, "stream": True}, "logprobs", "not supported with stream=true"),
                ({"echo": True, "stream": True}, "echo", "not supported with stream=true")):
            r = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "abc", **body})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["param"] == param and text in r.json()["error"]["message"]


def test_tokenizer_routes_as_vllm_serves_them(demo, server):
    _, tok = demo
    with server.http() as http:
        ids = http.post("/tokenize", json={"prompt": "你好 world", "add_special_tokens": False}).json()
        assert ids["tokens"] == tok.encode("你好 world") and ids["count"] == len(ids["tokens"])
        assert http.post("/detokenize", json={"tokens": ids["tokens"]}).json() == {"prompt": "你好 world"}
        info = http.get("/tokenizer_info").json()
        assert (info["eos_token"], info["bos_token"], info["model_max_length"]) == ("</s>", "<s>", 512)
        bad = http.post("/detokenize", json={"tokens": [10 ** 6]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_legacy_logprobs_of_a_split_utf8_character(demo):
    _, tok = demo
    ids = [tok.sp_model.piece_to_id(f"<0x{b:02X}>") for b in "鿿".encode()]  # a character only bytes spell
    logits = torch.zeros(3, tok.vocab_size)
    logits[torch.arange(3), torch.tensor(ids)] = 10.0  # each byte is the likeliest token at its position
    text, lp = legacy_logprobs(tok, [(ids, score_positions(logits, ids, 1))])
    assert text == "鿿" and lp["tokens"] == ["", "", "鿿"] and lp["text_offset"] == [0, 0, 0]
    assert [list(top) for top in lp["top_logprobs"]] == [["bytes:\\xe9"], ["bytes:\\xbf"], ["bytes:\\xbf"]]


# ------------------------------------------------------------------------------------------------ lm-eval
ITEMS = [("世界上最高的山峰是", ["珠穆朗玛峰", "乔戈里峰", "长江", "北京"]),
         ("中国的首都是", ["上海", "北京", "巴黎", "东京"]),
         ("The capital of France is", ["Paris", "London", "Rome", "Berlin"]),
         ("3 + 4 =", ["7", "8", "12", "1"]),
         ("世界上最长的河流是", ["尼罗河", "黄河", "珠江", "泰山"]),
         ("一公里等于", ["1000米", "100米", "10米", "1米"])]


def direct_choice_scores(model, tok, question, choices):
    """What lm-eval asks for a multiple-choice item (context ``Q: question\\nA:``, continuation `` choice``),
    tokenised as lm-eval does (the whole text, split at the context's length), scored by one plain forward."""
    context = f"Q: {question}\nA:"
    scores = []
    for choice in choices:
        whole, ctx = tok.encode(context + " " + choice), tok.encode(context)
        logps, _ = direct_logprobs(model, whole)
        scores.append(sum(logps[len(ctx) - 1:]))
    return scores


@pytest.fixture(scope="module")
def task_dir(demo, tmp_path_factory):
    """A local lm-eval task over a JSONL file; the answers make the model right on items 0, 2, 4 only (its
    favourite choice) and wrong on the others (its least favourite), so the accuracy is exactly 0.5."""
    model, tok = demo
    folder = tmp_path_factory.mktemp("lm_eval_task")
    rows, scores = [], []
    for k, (question, choices) in enumerate(ITEMS):
        s = direct_choice_scores(model, tok, question, choices)
        assert len(set(s)) == len(s)  # no ties, so the right and wrong answers are unambiguous
        answer = max(range(4), key=s.__getitem__) if k % 2 == 0 else min(range(4), key=s.__getitem__)
        rows.append({"question": question, "choices": choices, "answer": answer})
        scores.append(s)
    (folder / "items.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                        encoding="utf-8")
    (folder / "baichuan_tiny_mc.yaml").write_text(
        "task: baichuan_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Q: {{question}}\\nA:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n", encoding="utf-8")
    return folder, scores


def run_lm_eval(args, folder, out):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out / "datasets"), "PYTHONPATH": os.pathsep.join(
               [str(SRC), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, *args, "--tasks", "baichuan_tiny_mc", "--include_path", str(folder),
                        "--output_path", str(out), "--log_samples"], check=False, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text(encoding="utf-8"))
    samples = [json.loads(line) for line in
               next(out.rglob("samples_baichuan_tiny_mc_*.jsonl")).read_text(encoding="utf-8").splitlines()]
    return results["results"]["baichuan_tiny_mc"]["acc,none"], sorted(samples, key=lambda s: s["doc_id"])


def check_against_direct(samples, scores):
    assert len(samples) == len(ITEMS)
    for sample, expected in zip(samples, scores):
        got = [float(resp[0][0]) for resp in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-3)


@pytest.mark.slow  # lm-eval's command line takes tens of seconds to start (it indexes its thousands of tasks)
def test_lm_eval_local_completions_against_the_server(server, task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    folder, scores = task_dir
    acc, samples = run_lm_eval(
        ["-m", "lm_eval", "--model", "local-completions", "--model_args",
         f"base_url={server.base_url}/v1/completions,model={MODEL_NAME},tokenizer_backend=remote,num_concurrent=1"],
        folder, tmp_path)
    assert acc == pytest.approx(0.5)
    check_against_direct(samples, scores)


@pytest.mark.slow
def test_lm_eval_native_baichuan13b_model(task_dir, tmp_path):
    pytest.importorskip("lm_eval")
    folder, scores = task_dir
    acc, samples = run_lm_eval(["-m", "baichuan13b.evaluation.harness", "--model", "baichuan13b", "--model_args",
                                "pretrained=demo,dtype=float32", "--batch_size", "3"], folder, tmp_path)
    assert acc == pytest.approx(0.5)
    check_against_direct(samples, scores)


def test_native_model_batched_equals_one_by_one(demo):
    pytest.importorskip("lm_eval")
    from baichuan13b.evaluation.harness import BaichuanLM

    model, tok = demo
    pairs = [(tok.encode(f"Q: {q}\nA:"), tok.encode(f"Q: {q}\nA: {c}")[len(tok.encode(f"Q: {q}\nA:")):])
             for q, cs in ITEMS for c in cs[:2]]
    requests = [(None, c, x) for c, x in pairs]
    batched = BaichuanLM(model=model, tokenizer=tok, batch_size=5)._loglikelihood_tokens(requests, disable_tqdm=True)
    single = BaichuanLM(model=model, tokenizer=tok, batch_size=1)._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in single], abs=1e-4)
    assert [g for _, g in batched] == [g for _, g in single]
    with pytest.raises(ValueError, match="unknown model_args for baichuan13b: colour"):
        BaichuanLM(model=model, tokenizer=tok, colour="red")


class _Request:
    def __init__(self, *args):
        self.args = args


def test_native_model_rolling_loglikelihood_and_generation(demo):
    pytest.importorskip("lm_eval")
    from baichuan13b.evaluation.harness import BaichuanLM

    model, tok = demo
    lm = BaichuanLM(model=model, tokenizer=tok, batch_size=2, max_length=16)
    text = "世界上最高的山峰是珠穆朗玛峰。The capital of France is Paris, and 3 + 4 = 7."
    ids = tok.encode(text)
    assert len(ids) > 16  # several windows
    (total,) = lm.loglikelihood_rolling([_Request(text)])
    # lm-eval's windows (bos first; every token predicted once, within 16 positions), each scored directly.
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=ids, prefix_token=tok.bos_token_id, max_seq_len=16, context_len=1)]
    assert len(windows) > 1 and sum(len(cont) for _, cont in windows) == len(ids)
    expected = sum(sum(direct_logprobs(model, ctx + cont)[0][len(ctx) - 1:]) for ctx, cont in windows)
    assert total == pytest.approx(expected, abs=1e-3)
    lm = BaichuanLM(model=model, tokenizer=tok, batch_size=2)
    prompts = ["世界上最高的山峰是", "日本的首都是"]  # both continue past a few tokens before "。"
    outs = lm.generate_until([_Request(p, {"until": ["。"], "max_gen_toks": 12, "do_sample": False}) for p in prompts],
                             disable_tqdm=True)
    for prompt, out in zip(prompts, outs):
        full = model.generate(torch.tensor([tok.encode(prompt)]), max_new_tokens=12, do_sample=False,
                              repetition_penalty=1.0, stop_strings=[])
        greedy = tok.decode(full[0, len(tok.encode(prompt)):].tolist(), skip_special_tokens=True)
        assert out == greedy.split("。", 1)[0] and "。" not in out and out


def test_tokenizer_routes_need_the_api_key(demo):
    from serving_server import API_KEY

    srv = RunningServer(*demo, api_key=API_KEY)
    try:
        import httpx

        with httpx.Client(base_url=srv.base_url, timeout=30) as anonymous, srv.http() as keyed:
            for method, path, body in (("post", "/tokenize", {"prompt": "a"}), ("post", "/detokenize", {"tokens": [5]}),
                                       ("get", "/tokenizer_info", None)):
                kwargs = {"json": body} if body is not None else {}
                assert getattr(anonymous, method)(path, **kwargs).status_code == 401, path
                assert getattr(keyed, method)(path, **kwargs).status_code == 200, path
    finally:
        srv.close()

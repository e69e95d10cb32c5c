"""model.chat on the paged cache: turn N reuses turns 1..N-1, the answers and the prompt (official truncation
included) are those of a full recomputation."""

import pytest
import torch
from serving_server import build_chat_folder, load_float64

from baichuan13b.chat import build_chat_input, chat_engine
from baichuan13b.web.page import parse_args


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_tokenizer_dir):
    return load_float64(build_chat_folder(tmp_path_factory.mktemp("chat") / "model", tiny_tokenizer_dir,
                                           max_position=256))


def reference(model, tok, messages, **settings):
    """The answer through model.generate on the official prompt (the contiguous cache, nothing reused)."""
    cfg = model.generation_config.update(**settings)
    ids = build_chat_input(model, tok, messages, generation_config=cfg)
    out = model.generate(ids, generation_config=cfg)[0, ids.shape[1]:].tolist()
    eos = set(cfg.eos_token_ids)
    out = out[: next((i for i, t in enumerate(out) if t in eos), len(out))]
    return tok.decode(out, skip_special_tokens=True)


QUESTIONS = ["hello there", "The quick brown fox", "你好，世界！", "Numbers like 12345", "大语言模型"]


def test_multi_turn_reuses_earlier_turns_with_the_same_answers(loaded):
    model, tok = loaded
    engine = chat_engine(model, tok)
    messages, hits = [], []
    for q in QUESTIONS[:4]:
        messages.append({"role": "user", "content": q * 3})
        before = engine.blocks.hit_tokens
        answer = model.chat(tok, messages, max_new_tokens=6, do_sample=False)
        hits.append(engine.blocks.hit_tokens - before)
        assert answer == reference(model, tok, messages, max_new_tokens=6, do_sample=False)
        messages.append({"role": "assistant", "content": answer})
    assert chat_engine(model, tok) is engine  # one engine per model and tokenizer
    # turn N starts from the cache: at least the whole blocks of turn N-1's prompt
    for n in range(1, 4):
        previous = build_chat_input(model, tok, messages[: 2 * n - 1], max_new_tokens=6).shape[1]
        assert hits[n] >= (previous // engine.block_size) * engine.block_size > 0
    assert engine.blocks.num_used == 0  # and every block is back when the answers are done
    for n in range(1, 5):  # the same answers without reuse
        before = engine.blocks.hit_tokens
        turns = messages[: 2 * n - 1]
        assert model.chat(tok, turns, max_new_tokens=6, do_sample=False, prefix_cache=False) == messages[2 * n - 1][
            "content"]
        assert engine.blocks.hit_tokens == before


def test_a_conversation_longer_than_the_context_truncates_exactly_as_the_official_format(loaded):
    model, tok = loaded
    engine = chat_engine(model, tok)
    sent = []
    submit = engine.submit

    def spy(prompt, *args, **kw):
        sent.append(list(prompt))
        return submit(prompt, *args, **kw)

    engine.submit = spy
    try:
        messages = []
        for i in range(24):  # far more than the 256-token context
            messages += [{"role": "user", "content": QUESTIONS[i % 5] * 2},
                         {"role": "assistant", "content": QUESTIONS[(i + 2) % 5]}]
        messages.append({"role": "user", "content": "hello there"})
        settings = dict(max_new_tokens=20, do_sample=False)
        official = build_chat_input(model, tok, messages, **{"max_new_tokens": 20})[0].tolist()
        assert 256 // 2 < len(official) <= 256 - 20
        with_reuse = model.chat(tok, messages, **settings)
        again = model.chat(tok, messages, **settings)  # now from the cache
        without = model.chat(tok, messages, prefix_cache=False, **settings)
    finally:
        del engine.submit
    assert sent == [official] * 3  # reuse never changes the prompt
    assert with_reuse == again == without == reference(model, tok, messages, **settings)


def test_changed_weights_are_never_served_from_the_cache(loaded):
    model, tok = loaded
    messages = [{"role": "user", "content": "The quick brown fox " * 4}]
    model.chat(tok, messages, max_new_tokens=4, do_sample=False)
    saved = model.lm_head.weight.detach().clone()
    layer = model.model.layers[0].self_attn.W_pack.weight
    original = layer.detach().clone()
    try:
        with torch.no_grad():
            layer.mul_(1.7)  # in place: the keys and values of the cached prompt are stale now
        assert model.chat(tok, messages, max_new_tokens=4, do_sample=False) == \
            reference(model, tok, messages, max_new_tokens=4, do_sample=False)
    finally:
        with torch.no_grad():
            layer.copy_(original)
    assert torch.equal(model.lm_head.weight, saved)


def test_the_streamed_answer_stopped_early_returns_its_blocks(loaded):
    model, tok = loaded
    stream = model.chat(tok, [{"role": "user", "content": "hello there"}], stream=True, max_new_tokens=20,
                        do_sample=False)
    next(stream)
    assert chat_engine(model, tok).blocks.num_used > 0
    stream.close()  # Ctrl+C in the terminal chat, the stop button on the web page
    assert chat_engine(model, tok).blocks.num_used == 0


def test_no_prefix_cache_flags(loaded):
    import argparse

    from baichuan13b.cli import chat as chat_cli
    p = argparse.ArgumentParser()
    chat_cli.add_arguments(p)
    assert p.parse_args(["--no-prefix-cache"]).no_prefix_cache and not p.parse_args([]).no_prefix_cache
    assert parse_args(["--no-prefix-cache"]).no_prefix_cache


def test_each_call_may_bring_its_own_tokenizer_object(loaded):
    """The web page wraps the tokenizer per answer (to count tokens): the engine and its cache are still shared,
    and the call's tokenizer is the one that decodes the answer."""
    from baichuan13b.web.page import TokenCounter

    model, tok = loaded
    messages = [{"role": "user", "content": "The quick brown fox " * 5}]
    first = model.chat(tok, messages, max_new_tokens=5, do_sample=False)
    engine = chat_engine(model, tok)
    before = engine.blocks.hit_tokens
    counter = TokenCounter(tok)
    assert model.chat(counter, messages, max_new_tokens=5, do_sample=False) == first
    assert chat_engine(model, counter) is engine and engine.blocks.hit_tokens > before and counter.count == 5

"""The serving engine on the paged KV cache: prefix reuse changes nothing but the work, preemption resumes with the
same tokens, many concurrent streams equal single requests, aborted requests return every block."""

import pytest
import torch

from baichuan13b.serving import Engine


def greedy(model, **kw):
    return model.generation_config.update(do_sample=False, **kw)


def run(engine, prompts, cfg, max_new):
    """Submit every prompt at once, step the engine on this thread until all are final; the texts in order."""
    texts = [""] * len(prompts)
    finals = [None] * len(prompts)

    def sink(i):
        def put(event):
            assert event.error is None, event.error
            texts[i] += event.text
            if event.final:
                finals[i] = event
        return put

    for i, p in enumerate(prompts):
        engine.submit(p, sink(i), cfg, max_new_tokens=max_new)
    for _ in range(10_000):
        if all(finals):
            break
        engine.step()
    assert all(finals)
    return texts


def expected(model, tok, prompts, max_new):
    """Each prompt alone through model.generate (the contiguous cache), as text."""
    out = []
    for p in prompts:
        ids = model.generate(torch.tensor([p]), max_new_tokens=max_new, do_sample=False)[0, len(p):].tolist()
        out.append(tok.decode(ids, skip_special_tokens=True))
    return out


def prompts_with_shared_prefix(n, shared=37, tail=5):
    system = [5 + (i * 11) % 300 for i in range(shared)]
    return [system + [7 + (i * 13 + j * 5) % 300 for j in range(tail + i % 4)] for i in range(n)]


def test_prefix_reuse_on_and_off_give_the_same_answers(chat_model):
    model, tok = chat_model
    prompts = prompts_with_shared_prefix(6)
    on = Engine(model, tok, max_batch=4, block_size=4, prefill_chunk=16)
    off = Engine(model, tok, max_batch=4, block_size=4, prefill_chunk=16, prefix_cache=False)
    want = expected(model, tok, prompts, 8)
    assert run(on, prompts, greedy(model), 8) == want
    assert run(off, prompts, greedy(model), 8) == want
    assert on.stats()["prefix_cache_hit_tokens"] > 0 and off.stats()["prefix_cache_hit_tokens"] == 0
    hits = on.stats()["prefix_cache_hit_tokens"]
    assert run(on, prompts, greedy(model), 8) == want  # again: now every prompt starts from the cache
    hits, before = on.stats()["prefix_cache_hit_tokens"], hits
    assert hits - before >= 6 * 36
    # a request can opt out on an engine whose cache is on
    texts = []
    for event in on.stream(prompts[0], greedy(model), 8, prefix_cache=False):
        texts.append(event.text)
    assert "".join(texts) == want[0] and on.stats()["prefix_cache_hit_tokens"] == hits


def test_seeded_sampling_is_the_same_with_and_without_reuse(chat_model):
    model, tok = chat_model
    prompts = prompts_with_shared_prefix(3)
    cfg = model.generation_config.update(do_sample=True, temperature=0.9, top_k=20, seed=3)
    results = []
    for reuse in (True, False):
        engine = Engine(model, tok, max_batch=4, block_size=4, prefix_cache=reuse)
        results.append([run(engine, prompts, cfg, 8), run(engine, prompts, cfg, 8)])
    assert results[0] == results[1]


def test_preempted_sequences_resume_with_the_same_tokens(chat_model):
    model, tok = chat_model
    probe = Engine(model, tok, max_batch=1, max_seq_len=48, block_size=4)
    # a pool of exactly one full context (12 blocks) for 4 requests that grow to 40 positions each
    engine = Engine(model, tok, max_batch=4, max_seq_len=48, block_size=4,
                    kv_cache_bytes=probe.blocks.num_blocks * probe.block_bytes)
    assert engine.blocks.num_blocks == 12
    prompts = [[9 + (i * 17 + j * 3) % 300 for j in range(10)] for i in range(4)]
    assert run(engine, prompts, greedy(model), 30) == expected(model, tok, prompts, 30)
    stats = engine.stats()
    assert stats["preemptions"] > 0 and stats["free_blocks"] == stats["blocks"] and stats["running"] == 0
    line = next(x for x in engine.metrics.render().splitlines() if x.startswith("baichuan_preemptions_total"))
    assert float(line.split()[-1]) == stats["preemptions"]


def test_64_concurrent_streams_equal_single_requests(chat_model):
    model, tok = chat_model
    prompts = [[3 + (i * 29 + j * 7) % 300 for j in range(4 + i % 9)] for i in range(64)]
    engine = Engine(model, tok, max_batch=64, block_size=4, prefill_chunk=64, max_seq_len=64,
                    kv_cache_bytes=64 * 6 * Engine(model, tok, max_batch=1, block_size=4).block_bytes)
    seen_batches = []
    step = engine.step

    def counting_step():
        step()
        seen_batches.append(engine.last_batch)

    engine.step = counting_step
    assert run(engine, prompts, greedy(model), 6) == expected(model, tok, prompts, 6)
    assert max(seen_batches) > 32  # the streams really ran together
    assert engine.stats()["free_blocks"] == engine.stats()["blocks"]


def test_fixed_shape_decode_steps_give_the_same_answers(chat_model):
    """The engine's decode steps at CUDA-graph shapes (run eagerly on a CPU): the same greedy answers for
    concurrent requests of different lengths, batches padded to their bucket."""
    model, tok = chat_model
    prompts = [[3 + (i * 31 + j * 5) % 300 for j in range(3 + 4 * i)] for i in range(7)]
    engine = Engine(model, tok, max_batch=6, block_size=4, prefill_chunk=8, decode_graphs=True)
    assert engine.runner.graphs is not None and not engine.runner.graphs.capture
    assert Engine(model, tok, max_batch=2).runner.graphs is None  # off by default on a CPU
    assert run(engine, prompts, greedy(model), 12) == expected(model, tok, prompts, 12)
    assert engine.stats()["free_blocks"] == engine.stats()["blocks"]


def test_aborted_requests_return_every_block(chat_model):
    model, tok = chat_model
    engine = Engine(model, tok, max_batch=3, block_size=4, prefill_chunk=8)
    start = engine.blocks.num_free
    ids = [engine.submit(p, lambda e: None, greedy(model), max_new_tokens=20) for p in prompts_with_shared_prefix(5)]
    for _ in range(4):
        engine.step()
    assert engine.blocks.num_free < start and engine.stats()["waiting"] == 2
    for i in ids:
        assert engine.abort(i)
    engine.step()
    stats = engine.stats()
    assert (stats["running"], stats["waiting"], stats["tracked"]) == (0, 0, 0) and engine.blocks.num_free == start
    # a closed stream (e.g. Ctrl+C in the chat) frees its blocks at once when no scheduler thread runs
    stream = engine.stream(prompts_with_shared_prefix(1)[0], greedy(model), 20)
    next(stream)
    assert engine.blocks.num_used > 0
    stream.close()
    assert engine.blocks.num_used == 0 and engine.stats()["tracked"] == 0


def test_echo_scores_every_prompt_token_even_when_its_prefix_is_cached(chat_model):
    model, tok = chat_model
    prompt = prompts_with_shared_prefix(1, shared=37, tail=6)[0]
    scores = []
    for warm in (False, True):
        engine = Engine(model, tok, max_batch=2, block_size=4, prefill_chunk=16)
        if warm:  # the prompt's blocks are in the prefix cache
            run(engine, [prompt], greedy(model), 3)
        finals = []
        engine.submit(prompt, finals.append, greedy(model), max_new_tokens=0, echo=True, logprobs=2)
        while not finals or not finals[-1].final:
            engine.step()
        scores.append(finals[-1].prompt_logprobs)
    assert len(scores[0]) == len(prompt) - 1 and scores[0] == scores[1]

"""Decoding: pure logits processors, greedy = argmax loop, batches, sampling, stopping."""

import json

import pytest
import torch

from baichuan13b.config import ALIBI_ARCHITECTURE, ROPE_ARCHITECTURE, ModelConfig
from baichuan13b.generation import (
    GenerationConfig,
    StopStringMatcher,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    generate,
    process_logits,
    stream_tokens,
)
from baichuan13b.model import BaichuanForCausalLM, ContextLengthError


def tiny_model(arch=ALIBI_ARCHITECTURE, heads=8, hidden=64, max_position=64, seed=0):
    cfg = ModelConfig(architectures=[arch], vocab_size=97, hidden_size=hidden, intermediate_size=112,
                      num_hidden_layers=2, num_attention_heads=heads, max_position=max_position,
                      initializer_range=0.2)
    return BaichuanForCausalLM.from_config(cfg, seed=seed)


def argmax_loop(model, ids, n):
    ids = ids.clone()
    for _ in range(n):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


# ------------------------------------------------------------------------------------ processors
def test_repetition_penalty_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isfinite(apply_top_k(logits, 2)).tolist() == [[True, True, False, False, False]]
    assert apply_top_k(logits, 0) is logits
    # mass 0.5 + 0.2 = 0.7 reaches top_p 0.7; 0.5 alone does not
    assert torch.isfinite(apply_top_p(logits, 0.7)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(apply_top_p(logits, 0.71)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(apply_top_p(logits, 0.01)).tolist() == [[True, False, False, False, False]]


def test_temperature_only_when_sampling():
    logits = torch.tensor([[1.0, 2.0]])
    greedy = GenerationConfig(do_sample=False, temperature=0.5)
    assert process_logits(logits, None, greedy).tolist() == [[1.0, 2.0]]
    sampled = GenerationConfig(do_sample=True, temperature=0.5, top_k=0)
    assert process_logits(logits, None, sampled).tolist() == [[2.0, 4.0]]


def test_generation_config_validation_and_io(tmp_path):
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=-1)
    with pytest.raises(TypeError, match="nonsense"):
        GenerationConfig().update(nonsense=1)
    official = {"assistant_token_id": 196, "bos_token_id": 1, "do_sample": True, "eos_token_id": 2,
                "max_new_tokens": 2048, "pad_token_id": 0, "repetition_penalty": 1.1, "temperature": 0.3,
                "top_k": 5, "top_p": 0.85, "transformers_version": "4.29.2", "user_token_id": 195}
    (tmp_path / "generation_config.json").write_text(json.dumps(official))
    cfg = GenerationConfig.from_pretrained(tmp_path)
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty) == (0.3, 5, 0.85, 1.1)
    assert (cfg.max_new_tokens, cfg.user_token_id, cfg.assistant_token_id) == (2048, 195, 196)
    out = tmp_path / "out"
    out.mkdir()
    cfg.save(out)
    assert json.loads((out / "generation_config.json").read_text()) == official


def test_stop_string_matcher_holds_back_prefixes():
    m = StopStringMatcher(["###", "\nUser:"])
    assert m.feed("hello #") == ("hello ", False)
    assert m.feed("# not") == ("## not", False)
    assert m.feed(" done\nUs") == (" done", False)
    assert m.feed("er: more") == ("", True)
    assert m.flush() == ""
    m = StopStringMatcher(["END"])
    assert m.feed("abcE") == ("abc", False)
    assert m.flush() == "E"


# ------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("arch,heads,hidden", [(ALIBI_ARCHITECTURE, 5, 80), (ALIBI_ARCHITECTURE, 8, 64),
                                               (ROPE_ARCHITECTURE, 8, 64)])
def test_greedy_generate_equals_argmax_loop(arch, heads, hidden):
    model = tiny_model(arch, heads, hidden)
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(5))
    out = model.generate(ids, max_new_tokens=12, eos_token_id=None)
    assert out.shape == (1, 18)
    assert torch.equal(out, argmax_loop(model, ids, 12))


@pytest.mark.parametrize("arch", [ALIBI_ARCHITECTURE, ROPE_ARCHITECTURE])
def test_batched_left_padded_generation_equals_singles(arch):
    model = tiny_model(arch)
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(3, 97, (n,), generator=g) for n in (7, 3, 5)]
    T = 7
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):], mask[i, T - len(s):] = s, 1
    out = generate(model, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=None)
    for i, s in enumerate(seqs):
        single = generate(model, s[None], max_new_tokens=8, eos_token_id=None)
        assert torch.equal(out[i, T:], single[0, len(s):])


def test_eos_stops_and_pads_finished_rows():
    model = tiny_model()
    ids = torch.randint(3, 97, (2, 4), generator=torch.Generator().manual_seed(7))
    free = generate(model, ids, max_new_tokens=10, eos_token_id=None)
    eos = int(free[0, 6])  # the third new token of row 0 becomes "eos"
    out = generate(model, ids, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    row0 = out[0, 4:].tolist()
    k = row0.index(eos)
    assert row0[: k + 1] == free[0, 4 : 5 + k].tolist()
    assert all(t == 0 for t in row0[k + 1 :])


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny_model()
    ids = torch.randint(3, 97, (1, 4), generator=torch.Generator().manual_seed(8))
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=20, eos_token_id=None)
    a = generate(model, ids, seed=1, **kw)
    b = generate(model, ids, seed=1, **kw)
    c = generate(model, ids, seed=2, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # top_k=1 sampling is greedy
    greedy = generate(model, ids, max_new_tokens=20, eos_token_id=None)
    assert torch.equal(generate(model, ids, seed=3, **{**kw, "top_k": 1}), greedy)


def test_repetition_penalty_changes_greedy_output_and_ignores_padding():
    model = tiny_model()
    ids = torch.randint(3, 97, (1, 5), generator=torch.Generator().manual_seed(9))
    plain = generate(model, ids, max_new_tokens=15, eos_token_id=None)
    penalised = generate(model, ids, max_new_tokens=15, eos_token_id=None, repetition_penalty=5.0)
    assert not torch.equal(plain, penalised)
    # A left-padded copy (pad id 0 is not in the prompt) must give the same penalised output.
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], 1)
    out = generate(model, padded, attention_mask=mask, max_new_tokens=15, eos_token_id=None,
                   repetition_penalty=5.0)
    assert torch.equal(out[0, 8:], penalised[0, 5:])


def test_max_new_tokens_capped_by_context_and_overlong_prompt_errors():
    """The model reads at most 16 tokens; the last new token is never read, so 10 + 7 tokens come out, and a
    prompt that fills the context still gets its one token (the official chat format relies on it)."""
    model = tiny_model(max_position=16)
    ids = torch.randint(3, 97, (1, 10))
    assert generate(model, ids, max_new_tokens=100, eos_token_id=None).shape == (1, 17)
    full = torch.randint(3, 97, (1, 16))
    assert generate(model, full, max_new_tokens=5, eos_token_id=None).shape == (1, 17)
    with pytest.raises(ContextLengthError, match="context of 16"):
        generate(model, torch.randint(3, 97, (1, 17)), max_new_tokens=1)


def test_stream_tokens_can_be_closed_early():
    model = tiny_model()
    it = stream_tokens(model, torch.tensor([[5, 6, 7]]), max_new_tokens=50, eos_token_id=None)
    first = [next(it) for _ in range(3)]
    it.close()
    assert all(t.shape == (1,) for t in first)


def test_stop_strings_need_tokenizer():
    model = tiny_model()
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, torch.tensor([[5, 6]]), stop_strings=["x"])


def test_eos_none_disables_stopping_and_cli_unset_flags_keep_config():
    import argparse

    from baichuan13b.cli.common import sampling_overrides

    cfg = GenerationConfig(eos_token_id=2).update(eos_token_id=None)
    assert cfg.eos_token_ids == []
    args = argparse.Namespace(max_new_tokens=None, do_sample=None, temperature=0.5, top_k=None, top_p=None,
                              repetition_penalty=None, seed=None, stop=None)
    assert sampling_overrides(args) == {"temperature": 0.5}


def test_vanishing_temperature_is_greedy_not_nan():
    model = tiny_model()
    ids = torch.randint(3, 97, (1, 4), generator=torch.Generator().manual_seed(13))
    greedy = generate(model, ids, max_new_tokens=6, eos_token_id=None)
    tiny_t = generate(model, ids, max_new_tokens=6, eos_token_id=None, do_sample=True, temperature=5e-324, seed=0)
    assert torch.equal(greedy, tiny_t)


def test_compiled_fixed_shape_decoding_gives_the_same_tokens():
    """The fast path (fixed-shape decode step under torch.compile) equals eager decoding, padding included."""
    model = tiny_model()
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(14))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None)
    compiled = generate(model, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=None, compile=True)
    assert torch.equal(eager, compiled)

"""The model against a float64 naive reference; cache, padding and position-encoding behaviour."""

import math

import pytest
import torch

from baichuan13b.config import ALIBI_ARCHITECTURE, ROPE_ARCHITECTURE, ConfigError, ModelConfig
from baichuan13b.model import BaichuanForCausalLM, ContextLengthError, alibi_slopes

CONFIGS = {
    "alibi-5h": dict(architectures=[ALIBI_ARCHITECTURE], hidden_size=80, num_attention_heads=5),
    "alibi-8h": dict(architectures=[ALIBI_ARCHITECTURE], hidden_size=64, num_attention_heads=8),
    "rope-8h": dict(architectures=[ROPE_ARCHITECTURE], hidden_size=64, num_attention_heads=8),
}


def tiny(name: str, **kw) -> ModelConfig:
    args = dict(vocab_size=97, intermediate_size=112, num_hidden_layers=2, max_position=64)
    args.update(CONFIGS[name])
    args.update(kw)
    return ModelConfig(**args)


def make_model(name: str, seed: int = 0, **kw) -> BaichuanForCausalLM:
    # A larger init scale than the default makes attention patterns sharp enough to catch position bugs.
    return BaichuanForCausalLM.from_config(tiny(name, initializer_range=0.1, **kw), seed=seed)


# ------------------------------------------------------------------------------------------ naive reference
def official_slopes(n: int) -> list[float]:
    """The ALiBi paper / Baichuan-13B formula, written out independently."""
    def pow2(m):
        return [2 ** (-8.0 * (i + 1) / m) for i in range(m)]
    if math.log2(n).is_integer():
        return pow2(n)
    c = 2 ** math.floor(math.log2(n))
    return pow2(c) + pow2(2 * c)[0::2][: n - c]


def reference_logits(model: BaichuanForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """Float64 forward of one unpadded sequence [T] -> [T, V], computed the way the official code does
    (ALiBi: slope * absolute key position plus a future mask; RoPE: rotate-half with positions 0..T-1)."""
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, D, T = cfg.num_attention_heads, cfg.head_dim, ids.numel()

    def rms(x, w):
        return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    x = sd["model.embed_tokens.weight"][ids]  # [T, hidden]
    future = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    if cfg.position_embedding == "alibi":
        slopes = torch.tensor(official_slopes(H), dtype=torch.float64)
        bias = slopes[:, None, None] * torch.arange(T, dtype=torch.float64)[None, None, :] + future  # [H, T, T]
    else:
        bias = future[None].expand(H, T, T)
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)  # [T, D]

        def rope(t):  # [H, T, D]
            t1, t2 = t[..., : D // 2], t[..., D // 2 :]
            return t * ang.cos() + torch.cat([-t2, t1], -1) * ang.sin()
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        qkv = h @ sd[p + "self_attn.W_pack.weight"].T  # [T, 3*hidden]
        q, k, v = (qkv[:, j * cfg.hidden_size : (j + 1) * cfg.hidden_size].view(T, H, D).transpose(0, 1)
                   for j in range(3))
        if cfg.position_embedding == "rope":
            q, k = rope(q), rope(k)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D) + bias, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(T, cfg.hidden_size)
        x = x + o @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        g = h @ sd[p + "mlp.gate_proj.weight"].T
        u = h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    x = rms(x, sd["model.norm.weight"])
    return x @ sd["lm_head.weight"].T


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("n", [1, 2, 5, 8, 12, 32, 40, 64])
def test_alibi_slopes_match_official_formula(n):
    torch.testing.assert_close(alibi_slopes(n), torch.tensor(official_slopes(n), dtype=torch.float32))


def test_alibi_slopes_40_heads_values():
    s = alibi_slopes(40)
    assert s.shape == (40,)
    assert s[0].item() == pytest.approx(2 ** -0.25)  # 32-head series starts at 2^(-8/32)
    assert s[31].item() == pytest.approx(2 ** -8)
    assert s[32].item() == pytest.approx(2 ** (-8 / 64))  # then odd members of the 64-head series
    assert s[39].item() == pytest.approx(2 ** (-8 * 15 / 64))


def test_parameter_names_are_official():
    model = make_model("alibi-8h")
    names = set(model.state_dict())
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        for leaf in ("self_attn.W_pack", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                     "input_layernorm", "post_attention_layernorm"):
            expected.add(f"model.layers.{i}.{leaf}.weight")
    assert names == expected
    assert model.state_dict()["model.layers.0.self_attn.W_pack.weight"].shape == (3 * 64, 64)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_float64_reference(name):
    model = make_model(name)
    ids = torch.randint(0, 97, (23,), generator=torch.Generator().manual_seed(1))
    ref = reference_logits(model, ids)
    out = model(ids[None]).logits[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_position_encoding_follows_architectures_field_only():
    alibi, rope = make_model("alibi-8h"), make_model("rope-8h")
    assert alibi.config.position_embedding == "alibi" and rope.config.position_embedding == "rope"
    # Same shapes and weights, only the architectures field differs: outputs must differ.
    rope.load_state_dict(alibi.state_dict())
    ids = torch.arange(10)[None]
    assert not torch.allclose(alibi(ids).logits, rope(ids).logits, atol=1e-3)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decoding_equals_full_forward(name):
    model = make_model(name)
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    full = model(ids).logits
    cache = model.new_cache(batch_size=2, max_length=32)
    pieces = [model(ids[:, :7], cache=cache).logits]
    for t in range(7, 20):
        pieces.append(model(ids[:, t : t + 1], cache=cache).logits)
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_left_padded_batch_equals_single_sequences(name):
    model = make_model(name)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 97, (n,), generator=g) for n in (12, 5, 9)]
    T = max(len(s) for s in seqs)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = s
        mask[i, T - len(s) :] = 1
    batched = model(ids, attention_mask=mask).logits
    for i, s in enumerate(seqs):
        single = model(s[None]).logits[0]
        torch.testing.assert_close(batched[i, T - len(s) :], single, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all(), "fully padded query rows must not produce NaN"
    # and the same holds for cached decoding of the padded batch
    cache = model.new_cache(3, T + 4)
    model(ids, attention_mask=mask, cache=cache)
    nxt = torch.tensor([[5], [6], [7]])
    mask2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    step = model(nxt, attention_mask=mask2, cache=cache).logits[:, -1]
    for i, s in enumerate(seqs):
        single = model(torch.cat([s, nxt[i]])[None]).logits[0, -1]
        torch.testing.assert_close(step[i], single, atol=1e-5, rtol=1e-5)


def test_loss_is_shifted_cross_entropy_with_ignore_index():
    model = make_model("alibi-8h")
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(ids, labels=labels)
    logp = out.logits[:, :-1].log_softmax(-1)
    tgt = labels[:, 1:]
    keep = tgt != -100
    manual = -logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0][keep].mean()
    torch.testing.assert_close(out.loss, manual)


def test_logits_to_keep():
    model = make_model("rope-8h")
    ids = torch.randint(0, 97, (1, 9))
    torch.testing.assert_close(model(ids, logits_to_keep=1).logits, model(ids).logits[:, -1:])


def test_context_length_error_and_alibi_extrapolation():
    model = make_model("alibi-8h", max_position=16)
    with pytest.raises(ContextLengthError, match="context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    model.config.allow_length_extrapolation = True
    assert model(torch.zeros(1, 40, dtype=torch.long)).logits.shape == (1, 40, 97)
    with pytest.raises(ConfigError, match="RoPE"):
        tiny("rope-8h", allow_length_extrapolation=True)
    rope = make_model("rope-8h", max_position=16)
    with pytest.raises(ContextLengthError):
        rope(torch.zeros(1, 17, dtype=torch.long))


def test_long_prefill_uses_query_blocks(monkeypatch):
    import baichuan13b.model as m
    model = make_model("alibi-5h")
    ids = torch.randint(0, 97, (1, 40))
    full = model(ids).logits
    monkeypatch.setattr(m, "ATTENTION_QUERY_BLOCK", 7)
    torch.testing.assert_close(model(ids).logits, full, atol=1e-5, rtol=1e-5)


def test_attention_mask_shape_is_checked():
    model = make_model("alibi-8h")
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))


def test_config_from_official_dict_and_errors():
    c = ModelConfig.from_dict({"architectures": ["BaiChuanForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                               "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "max_position_embeddings": 32})
    assert c.position_embedding == "rope" and c.max_position == 32
    assert c.to_dict()["max_position_embeddings"] == 32 and "model_max_length" not in c.to_dict()
    with pytest.raises(ConfigError, match="architectures"):
        ModelConfig.from_dict({"vocab_size": 10})
    with pytest.raises(ConfigError, match="LlamaForCausalLM"):
        ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ConfigError, match="model_max_length"):
        ModelConfig.from_dict({"architectures": ["BaichuanForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                               "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "max_position_embeddings": 32})


def test_presets():
    c = ModelConfig.from_name("baichuan-13b")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.position_embedding) == (40, 5120, 40, "alibi")
    assert abs(c.num_parameters() - 13_264_901_120) < 1e6  # 26,529,802,240 bytes / 2 in the real index
    assert ModelConfig.from_name("baichuan-7b").position_embedding == "rope"
    assert ModelConfig.from_name("llama-13b").vocab_size == 32000
    with pytest.raises(KeyError, match="baichuan-13b"):
        ModelConfig.from_name("nope")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_shape_decoding_equals_dynamic(name):
    """input_pos mode (whole-cache attention, fixed shapes for CUDA graphs) gives the same logits."""
    model = make_model(name)
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(3, 97, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # row 1 is left padded
    steps = torch.randint(3, 97, (2, 5), generator=g)
    dyn = model.new_cache(2, 16)
    full_mask = mask.clone()
    ref = [model(ids, attention_mask=mask, cache=dyn).logits[:, -1]]
    for t in range(5):
        full_mask = torch.cat([full_mask, torch.ones(2, 1, dtype=torch.long)], 1)
        ref.append(model(steps[:, t : t + 1], attention_mask=full_mask, cache=dyn).logits[:, -1])
    static = model.new_cache(2, 16)
    buf = torch.zeros(2, 16, dtype=torch.long)
    buf[:, :6] = mask
    out = [model(ids, attention_mask=buf, cache=static, input_pos=torch.arange(6)).logits[:, -1]]
    for t in range(5):
        buf[:, 6 + t] = 1
        out.append(model(steps[:, t : t + 1], attention_mask=buf, cache=static,
                         input_pos=torch.tensor([6 + t])).logits[:, -1])
    assert static.length == 0  # the caller tracks positions
    torch.testing.assert_close(torch.stack(out), torch.stack(ref), atol=1e-5, rtol=1e-5)


def test_single_query_attention_matches_the_exact_softmax_on_both_sides_of_the_float32_threshold(monkeypatch):
    """A CPU decode step's attention (one query per row): float32 copies for short caches, the batched matmul for
    long ones; both within bfloat16 rounding of the float64 softmax, with the additive bias applied."""
    import math

    from baichuan13b import model as M

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 16, generator=g) for n in (1, 37, 37))
    bias = torch.zeros(2, 1, 1, 37)
    bias[1, :, :, :5] = float("-inf")  # left padding of the second row
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(16) + bias.double()
    exact = scores.softmax(-1) @ v.double()  # [2, 4, 1, 16]
    for limit in (1 << 22, 0):  # float32 copies, then the bfloat16 matmul
        monkeypatch.setattr(M, "SINGLE_QUERY_FLOAT32_ELEMENTS", limit)
        y = M.single_query_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias)
        assert y.dtype == torch.bfloat16 and y.shape == (2, 4, 1, 16)
        torch.testing.assert_close(y.double(), exact, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(M.single_query_attention(q, k, v, bias).double(), exact, rtol=1e-5, atol=1e-5)

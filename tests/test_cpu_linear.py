"""Prepacked oneDNN linear weights (the CPU decode fast path): same outputs, same state dict, reversible."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checkpoints import tiny_config
from torch import nn

from baichuan13b.cpu_linear import (
    PackedLinear,
    StreamedLinear,
    pack_linear_weights,
    packing_available,
    unpack_linear_weights,
)
from baichuan13b.model import BaichuanForCausalLM

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN weight packing")
bf16_packing = pytest.mark.skipif(not packing_available(torch.bfloat16),
                                  reason="this CPU cannot pack bfloat16 for oneDNN (needs AVX-512 or AVX-NE-CONVERT)")


def _pair(dtype, **kw):
    cfg = tiny_config(max_position=64, **kw)
    plain = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=dtype)
    packed = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=dtype)
    return plain, packed


@bf16_packing
@pytest.mark.parametrize("arch", ["alibi", "rope"])
def test_bfloat16_packed_decoding_is_identical(arch):
    plain, packed = _pair(torch.bfloat16, arch=arch)
    n = pack_linear_weights(packed, layout="packed")
    assert n == 2 * 5 + 1  # W_pack, o_proj, gate, up, down in each of 2 layers, and lm_head
    assert isinstance(packed.lm_head, PackedLinear) and packed.lm_head.weight.layout == torch._mkldnn
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    torch.testing.assert_close(packed(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits,
                               rtol=0, atol=0)
    kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    assert torch.equal(packed.generate(ids, attention_mask=mask, **kw), plain.generate(ids, attention_mask=mask, **kw))


def test_float32_packed_logits_close_and_state_dict_plain(tmp_path):
    plain, packed = _pair(torch.float32)
    assert pack_linear_weights(packed, dtypes=(torch.bfloat16,), layout="packed") == 0  # only the dtypes asked for
    assert pack_linear_weights(packed, layout="packed") > 0
    ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(1))
    for n in (1, 7):  # a single-row product and a prefill
        torch.testing.assert_close(packed(ids[:, :n]).logits, plain(ids[:, :n]).logits, rtol=1e-5, atol=1e-5)
    sd, ref = packed.state_dict(), plain.state_dict()
    assert sd.keys() == ref.keys()
    for k in ref:
        assert sd[k].layout == torch.strided and torch.equal(sd[k], ref[k]), k
    packed.save_pretrained(tmp_path / "m")
    back = BaichuanForCausalLM.from_pretrained(tmp_path / "m", progress=False)
    torch.testing.assert_close(back(ids).logits, plain(ids).logits)


def test_unpack_restores_trainable_plain_linears():
    plain, packed = _pair(torch.float32)
    pack_linear_weights(packed, dtypes=(torch.float32,), layout="packed")
    assert unpack_linear_weights(packed) == 11
    assert all(type(m) is not PackedLinear for m in packed.modules())
    assert type(packed.model.layers[0].mlp.up_proj) is nn.Linear
    ids = torch.randint(3, 128, (1, 6))
    loss = packed(ids, labels=ids).loss
    loss.backward()
    assert packed.model.layers[0].mlp.up_proj.weight.grad is not None
    torch.testing.assert_close(packed(ids).logits, plain(ids).logits)


def test_skips_what_cannot_be_packed():
    tied, _ = _pair(torch.float32, tie_word_embeddings=True)
    pack_linear_weights(tied, dtypes=(torch.float32,))
    assert type(tied.lm_head) is nn.Linear  # shares the embedding table
    double = BaichuanForCausalLM.from_config(tiny_config(), seed=0, dtype=torch.float64)
    assert pack_linear_weights(double, dtypes=(torch.float32,)) == 0  # float64 (the parity tests') never is
    with pytest.raises(ValueError, match="cannot be packed"):
        pack_linear_weights(double, dtypes=(torch.float64,))
    q = BaichuanForCausalLM.from_config(tiny_config(), seed=0, dtype=torch.bfloat16).quantize(8)
    assert pack_linear_weights(q) == 1  # only the float lm_head; int8 layers keep their own kernel


def test_chat_commands_load_a_fast_layout_unless_disabled(monkeypatch):
    """One-sequence commands stream models big enough to be bound by reading their weights (where the kernels
    compile), small ones (the demo) and the server's batches pack, and --cpu-layout / --no-prepack choose."""
    from baichuan13b import cpu_linear
    from baichuan13b.cli import build_parser
    from baichuan13b.cli.common import load
    from baichuan13b.cpu_gemv import gemv_available

    parser = build_parser()
    base = ["generate", "--model", "demo", "--no-progress", "--prompt", "x"]
    bf16_packed = PackedLinear if packing_available(torch.bfloat16) else StreamedLinear
    model, _ = load(parser.parse_args(base + ["--dtype", "bfloat16"]))  # 16.7 MB: not worth compiling kernels
    assert isinstance(model.lm_head, bf16_packed)
    model, _ = load(parser.parse_args(base))  # the demo's float32
    assert isinstance(model.lm_head, PackedLinear)
    model, _ = load(parser.parse_args(base + ["--cpu-layout", "streamed"]))
    assert isinstance(model.lm_head, StreamedLinear if gemv_available() else PackedLinear)
    model, _ = load(parser.parse_args(base + ["--dtype", "bfloat16", "--no-prepack"]))
    assert type(model.lm_head) is nn.Linear
    monkeypatch.setattr(cpu_linear, "STREAM_MIN_BYTES", 0)  # as if the demo were a big model
    model, _ = load(parser.parse_args(base))
    assert isinstance(model.lm_head, StreamedLinear if gemv_available() else PackedLinear)
    model, _ = load(parser.parse_args(base + ["--cpu-layout", "packed"]))
    assert isinstance(model.lm_head, PackedLinear)
    model, _ = load(parser.parse_args(["serve", "--model", "demo", "--no-progress"]))  # --max-batch 16
    assert isinstance(model.lm_head, PackedLinear)


def test_compiled_decoding_refuses_packed_weights_with_the_fix():
    _, packed = _pair(torch.float32)
    pack_linear_weights(packed, layout="packed")
    with pytest.raises(ValueError, match="unpack_linear_weights"):
        packed.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, compile=True)


@bf16_packing
def test_other_input_dtypes_and_autograd_fall_back_to_a_dense_product():
    lin = nn.Linear(32, 48, bias=False).to(torch.bfloat16)
    packed = PackedLinear(lin)
    x = torch.randn(3, 32)  # float32 input for a bfloat16 layer
    y = packed(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, lin(x.bfloat16()).float())
    xg = torch.randn(2, 32, dtype=torch.bfloat16, requires_grad=True)
    packed(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == xg.shape


def test_packing_frees_the_plain_weights():
    import gc
    import weakref

    _, packed = _pair(torch.float32)
    refs = [weakref.ref(m.weight) for m in packed.modules() if type(m) is nn.Linear]
    pack_linear_weights(packed, layout="packed")
    gc.collect()
    assert refs and all(r() is None for r in refs)  # no second copy of the model stays in memory


def test_bfloat16_is_widened_where_the_cpu_cannot_pack_it(monkeypatch):
    """On AVX2-only CPUs oneDNN refuses bfloat16 packing: loading and decoding in bfloat16 must still work there;
    the linears keep their bfloat16 weight, and products of many rows (prefills) run in float32."""
    from baichuan13b import cpu_linear
    from baichuan13b.cli import build_parser
    from baichuan13b.cli.common import load

    monkeypatch.setattr(cpu_linear, "packing_available", lambda dtype=torch.float32: dtype == torch.float32)
    with pytest.raises(ValueError, match="cannot be packed"):
        PackedLinear(nn.Linear(16, 16, bias=False).to(torch.bfloat16))
    plain, wide = _pair(torch.bfloat16)
    weight = wide.lm_head.weight
    assert pack_linear_weights(wide, layout="packed") == 11
    assert all(type(m) is not PackedLinear for m in wide.modules())
    assert type(wide.lm_head) is StreamedLinear and wide.lm_head.weight is weight  # the same tensor, no copy
    layer = wide.model.layers[0].mlp.up_proj
    few, many = torch.randn(3, 64).bfloat16(), torch.randn(40, 64).bfloat16()
    assert torch.equal(layer(few), F.linear(few, layer.weight))  # 3 rows: the bfloat16 product as before
    assert torch.equal(layer(many), F.linear(many.float(), layer.weight.float()).bfloat16())
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(wide(ids).logits, plain(ids).logits, rtol=3e-2, atol=3e-2)
    assert wide.state_dict().keys() == plain.state_dict().keys()
    assert unpack_linear_weights(wide) == 11 and type(wide.lm_head) is nn.Linear and wide.lm_head.weight is weight

    args = build_parser().parse_args(["generate", "--model", "demo", "--no-progress", "--dtype", "bfloat16"])
    model, tok = load(args)
    assert type(model.lm_head) is StreamedLinear  # whatever the layout asked for
    ids = torch.tensor([tok.encode("1加1等于几")])
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]
    _, fp32 = _pair(torch.float32)
    assert pack_linear_weights(fp32, layout="packed") == 11 and isinstance(fp32.lm_head, PackedLinear)


def test_the_capability_check_matches_what_onednn_accepts():
    for dtype in (torch.float32, torch.bfloat16):
        w, x = torch.randn(32, 16, dtype=dtype), torch.randn(1, 16, dtype=dtype)
        if packing_available(dtype):
            y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 1), None, "none",
                                                   [], "")
            torch.testing.assert_close(y, x @ w.t())
        else:  # what the check protects the loaders from
            with pytest.raises(RuntimeError):
                torch.ops.mkldnn._reorder_linear_weight(w, 1)
    assert not packing_available(torch.float64)

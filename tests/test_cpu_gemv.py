"""The generated CPU decode kernels (cpu_gemv) and the streamed layout that uses them: same products as PyTorch's
kernels to accumulation order, same greedy tokens, used only where they apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from checkpoints import tiny_config
from torch import nn

from baichuan13b import cpu_gemv
from baichuan13b.cpu_gemv import GEMV_MAX_ROWS, dense_linear, gemv, gemv_applies, gemv_available, int8_gemv
from baichuan13b.cpu_linear import PackedLinear, StreamedLinear, pack_linear_weights, unpack_linear_weights
from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.quantization.functional import int8_linear_reference, quantize_int8

pytestmark = pytest.mark.skipif(not gemv_available(), reason="Inductor cannot compile CPU kernels here")


def _rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("shape", [(48, 64), (37, 93)])  # odd sizes: the kernels' vector tails
def test_gemv_is_the_float32_accumulated_product(dtype, rows, shape):
    n, k = shape
    x, w = _rand(rows, k, dtype=dtype, seed=1), _rand(n, k, dtype=dtype, seed=2)
    y = gemv(x, w)
    assert y.shape == (rows, n) and y.dtype == dtype
    exact = (x.double() @ w.double().t()).to(dtype)  # the exact product, rounded once
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y, exact, **tol)
    torch.testing.assert_close(y.float(), F.linear(x.float(), w.float()).to(dtype).float(), **tol)


def test_long_input_dimensions_are_summed_by_chunks():
    assert [cpu_gemv.reduction_chunks(k) for k in (64, 1024, 4096, 5120, 11008, 13696)] == [1, 1, 1, 2, 4, 4]
    assert cpu_gemv.reduction_chunks(4099) == 1  # a prime: one plain reduction rather than tiny chunks
    k = 5120  # the 13B's hidden size: two chunks of 2,560
    for dtype in (torch.float32, torch.bfloat16):
        x, w = _rand(1, k, dtype=dtype, seed=7), _rand(24, k, dtype=dtype, seed=8)
        exact = (x.double() @ w.double().t()).to(dtype)
        tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=5e-2)
        torch.testing.assert_close(gemv(x, w), exact, **tol)
    q, scales = quantize_int8(_rand(24, k, seed=9), torch.float32)
    x = _rand(1, k, seed=10)
    torch.testing.assert_close(int8_gemv(x, q, scales), int8_linear_reference(x, q, scales), rtol=1e-5, atol=1e-4)


def test_long_activation_rows_sum_several_output_rows_per_pass():
    # Rows longer than L1_ROW_BYTES (the 13B's down_proj: 13,696 inputs) sum ROW_BLOCK output rows per pass over
    # the activation row; a short one keeps one row per pass; the block divides N and shrinks with the rows.
    assert cpu_gemv.row_block(5120, 13696, 2) == cpu_gemv.ROW_BLOCK
    assert cpu_gemv.row_block(13696, 5120, 2) == 1 and cpu_gemv.row_block(13696, 5120, 4) == cpu_gemv.ROW_BLOCK
    assert cpu_gemv.row_block(5120, 13696, 2, rows=2) == cpu_gemv.ROW_BLOCK // 2
    assert cpu_gemv.row_block(36, 13696, 2) == 4 and cpu_gemv.row_block(37, 13696, 2) == 1
    k = 8192 + 96  # bfloat16: 16.2 KiB, past the L1 row; two chunks of 4,144
    for dtype, n in ((torch.bfloat16, 40), (torch.bfloat16, 36), (torch.float32, 24), (torch.float32, 37)):
        assert cpu_gemv.row_block(n, k, dtype.itemsize) > 1 or n % 2
        w = _rand(n, k, dtype=dtype, seed=11)
        for rows in (1, 2):
            x = _rand(rows, k, dtype=dtype, seed=12)
            exact = (x.double() @ w.double().t()).to(dtype)
            tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=5e-2)
            torch.testing.assert_close(gemv(x, w), exact, **tol)
    q, scales = quantize_int8(_rand(24, 5120, seed=13), torch.bfloat16)  # float32 activations: 20 KiB rows
    assert cpu_gemv.row_block(24, 5120, 4) == cpu_gemv.ROW_BLOCK
    x = _rand(1, 5120, dtype=torch.bfloat16, seed=14)
    torch.testing.assert_close(int8_gemv(x, q, scales).float(),
                               int8_linear_reference(x.float(), q, scales.float()).bfloat16().float(),
                               rtol=1e-2, atol=5e-2)


def test_gemv_takes_views_and_rejects_mixed_dtypes():
    x, w = _rand(3, 64), _rand(16, 64)
    torch.testing.assert_close(gemv(x[1:2], w), x[1:2] @ w.t())  # an offset view
    torch.testing.assert_close(gemv(x.t().contiguous().t()[:, :64][:1], w), x[:1] @ w.t())
    with pytest.raises(ValueError, match="share a float dtype"):
        gemv(x[:1], w.bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_gemv_is_the_weight_only_product(dtype):
    w = _rand(40, 96, seed=3)
    q, scales = quantize_int8(w, dtype)
    for rows in (1, 2):
        x = _rand(rows, 96, dtype=dtype, seed=4)
        ref = int8_linear_reference(x.float(), q, scales.float()).to(dtype)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
        torch.testing.assert_close(int8_gemv(x, q, scales), ref, **tol)
    with pytest.raises(ValueError, match="int8 codes"):
        int8_gemv(x, q.float(), scales)


def test_gemv_applies_only_to_few_rows_without_autograd():
    w = _rand(16, 32)
    assert gemv_applies(_rand(GEMV_MAX_ROWS, 32), w)
    assert not gemv_applies(_rand(GEMV_MAX_ROWS + 1, 32), w)
    assert not gemv_applies(_rand(1, 32).requires_grad_(), w)
    with torch.no_grad():
        assert gemv_applies(_rand(1, 32), nn.Parameter(w))


def test_streamed_linear_routes_by_rows_and_keeps_gradients(monkeypatch):
    calls = []
    from baichuan13b import cpu_linear

    dense = cpu_linear.dense_linear
    monkeypatch.setattr(cpu_linear, "gemv", lambda x2, w: calls.append(x2.shape[0]) or gemv(x2, w))
    monkeypatch.setattr(cpu_linear, "dense_linear", lambda x2, w: calls.append(-x2.shape[0]) or dense(x2, w))
    lin = nn.Linear(64, 48, bias=False)
    streamed = StreamedLinear.wrap(lin)
    assert streamed.weight is lin.weight
    with torch.no_grad():
        for shape in [(1, 64), (2, 64), (1, 1, 64), (2, 1, 64), (5, 64), (3, 7, 64)]:
            x = _rand(*shape, seed=5)
            torch.testing.assert_close(streamed(x), lin(x), rtol=1e-5, atol=1e-5)
            assert streamed(x).shape == (*shape[:-1], 48)
    assert calls == [1, 1, 2, 2, 1, 1, 2, 2, -5, -5, -21, -21]  # more rows: the dense product
    calls.clear()
    with torch.no_grad():  # an input that requires grad, under no_grad: no autograd, so the fast paths
        streamed(_rand(1, 64, seed=5).requires_grad_())
        streamed(_rand(5, 64, seed=5).requires_grad_())
    assert calls == [1, -5]
    calls.clear()
    x = _rand(1, 64, seed=6).requires_grad_()
    streamed(x).sum().backward()  # training through a streamed layer: PyTorch's differentiable product
    assert x.grad is not None and lin.weight.grad is not None and calls == []


def test_float32_dense_products_take_the_plain_weight_as_it_is():
    """Prefill-sized float32 products on a plain weight (oneDNN where it can: no repacked copy kept) agree with
    float64 to float32 rounding, for any row count and a non-contiguous input."""
    w = _rand(96, 640, seed=7)
    for rows in (3, 16, 130):
        x = _rand(rows, 1280, seed=rows)[:, ::2]  # [rows, 640], every other column: not contiguous
        ref = x.double() @ w.double().T
        with torch.no_grad():
            y = dense_linear(x, w)
        assert y.dtype == torch.float32 and y.shape == (rows, 96)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)  # |y| ~ 25: float32 rounding
    b = w.bfloat16()
    xb = _rand(20, 640, seed=8).bfloat16()
    torch.testing.assert_close(dense_linear(xb, b), F.linear(xb, b), rtol=0, atol=0)  # bfloat16: F.linear's
    x = _rand(130, 640, seed=9).requires_grad_()  # autograd (LoRA on an int8 base): gradients flow to the input
    dense_linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(130, -1))


@pytest.mark.parametrize("arch", ["alibi", "rope"])
def test_streamed_model_decodes_like_the_plain_one(arch):
    cfg = tiny_config(max_position=64, arch=arch)
    plain = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32)
    fast = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32)
    assert pack_linear_weights(fast, layout="streamed") == 11
    assert all(type(m) is not nn.Linear and type(m) is not PackedLinear for m in fast.modules()
               if isinstance(m, nn.Linear))
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(fast(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits,
                                   rtol=1e-5, atol=1e-5)
    kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    for rows in (ids[:1], ids):  # one sequence (1-row steps) and two (2-row steps)
        m = mask[: rows.shape[0]]
        assert torch.equal(fast.generate(rows, attention_mask=m, **kw), plain.generate(rows, attention_mask=m, **kw))
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert unpack_linear_weights(fast) == 11 and type(fast.lm_head) is nn.Linear


def test_bfloat16_streamed_logits_within_rounding():
    cfg = tiny_config(max_position=64)
    plain = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.bfloat16)
    fast = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.bfloat16)
    pack_linear_weights(fast, layout="streamed")
    ids = torch.randint(3, 128, (1, 1), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, plain(ids).logits, rtol=3e-2, atol=3e-2)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("BAICHUAN_CPU_GEMV", "0")
    gemv_available.cache_clear()
    try:
        assert not gemv_available()
        model = BaichuanForCausalLM.from_config(tiny_config(), seed=0, dtype=torch.float32)
        pack_linear_weights(model, layout="streamed")  # falls back to the packed layout
        assert not any(isinstance(m, StreamedLinear) for m in model.modules())
        assert not gemv_applies(_rand(1, 32), _rand(16, 32))
    finally:
        monkeypatch.delenv("BAICHUAN_CPU_GEMV")
        gemv_available.cache_clear()
    assert gemv_available()


def test_a_failing_compiler_is_reported_and_avoided(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(cpu_gemv, "_compile", broken)
    monkeypatch.setattr(cpu_gemv, "_kernels", {})
    gemv_available.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="baichuan13b.cpu_gemv"):
            assert not gemv_available()
        assert "no C++ compiler" in caplog.text and "PyTorch's own kernels" in caplog.text
        lin = StreamedLinear.wrap(nn.Linear(32, 16, bias=False))
        x = _rand(1, 32)
        with torch.no_grad():
            torch.testing.assert_close(lin(x), F.linear(x, lin.weight))  # still computes, with PyTorch's kernel
    finally:
        gemv_available.cache_clear()


def test_streamed_int8_model_decodes_like_the_default_int8_kernels(monkeypatch):
    from baichuan13b.quantization.modules import WeightOnlyInt8Linear

    cfg = tiny_config(max_position=64)
    ref = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32).quantize(8)
    fast = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32).quantize(8)
    assert pack_linear_weights(fast, layout="streamed") == 1  # lm_head; the int8 layers are flagged, not replaced
    int8 = [m for m in fast.modules() if isinstance(m, WeightOnlyInt8Linear)]
    assert int8 and all(m.streamed for m in int8)
    calls = []
    from baichuan13b.quantization import modules

    monkeypatch.setattr(modules, "int8_gemv", lambda *a: calls.append(a[0].shape[0]) or int8_gemv(*a))
    ids = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for n in (1, 7):  # a decode row (the generated kernel) and a prefill (PyTorch's)
            torch.testing.assert_close(fast(ids[:, :n]).logits, ref(ids[:, :n]).logits, rtol=1e-4, atol=1e-4)
    assert calls == [1] * len(int8)
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    assert torch.equal(fast.generate(ids, **kw), ref.generate(ids, **kw))
    assert all(m.kernel is None for m in int8)  # the stored codes, never fbgemm's layout
    sd, want = fast.state_dict(), ref.state_dict()
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want if "lm_head" not in k)
    unpack_linear_weights(fast)
    assert not any(m.streamed for m in int8)


def test_streamed_layout_leaves_long_int8_rows_to_the_library_kernels(monkeypatch):
    """int8 layers with more inputs than INT8_GEMV_MAX_IN keep fbgemm's (or PyTorch's) kernel in the streamed
    layout; compiled decoding then streams them too, since fbgemm's packed weight cannot be traced."""
    from baichuan13b import cpu_linear
    from baichuan13b.quantization.modules import WeightOnlyInt8Linear

    cfg = tiny_config(max_position=64)
    model = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32).quantize(8)
    monkeypatch.setattr(cpu_linear, "INT8_GEMV_MAX_IN", cfg.hidden_size)  # down_proj's rows are longer
    pack_linear_weights(model, layout="streamed")
    int8 = {n: m for n, m in model.named_modules() if isinstance(m, WeightOnlyInt8Linear)}
    long_rows = {n for n, m in int8.items() if m.in_features > cfg.hidden_size}
    assert long_rows and all(n.endswith("down_proj") for n in long_rows)
    assert all(m.streamed == (n not in long_rows) for n, m in int8.items())
    ids = torch.randint(3, 128, (1, 5), generator=torch.Generator().manual_seed(6))
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    eager = model.generate(ids, **kw)
    from baichuan13b.quantization.functional import int8_fbgemm_available

    if int8_fbgemm_available():
        assert all(int8[n].kernel == "fbgemm" for n in long_rows)
    assert torch.equal(model.generate(ids, compile=True, **kw), eager)
    assert all(m.streamed and m.kernel is None for m in int8.values())


def test_compiled_decoding_of_a_streamed_model_gives_the_eager_tokens(monkeypatch):
    """compile=True calls the streamed kernels as operators (Inductor fuses the rest); same greedy tokens."""
    cfg = tiny_config(max_position=64)
    model = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32)
    pack_linear_weights(model, layout="streamed")
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(5))
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    eager = model.generate(ids, **kw)
    calls = []
    monkeypatch.setattr(cpu_gemv, "gemv", lambda x2, w: calls.append(1) or gemv(x2, w))  # what the operator runs
    assert torch.equal(model.generate(ids, compile=True, **kw), eager)
    assert len(calls) >= 7 * 11  # 11 streamed layers in each of the 7 compiled one-row steps


def test_compiled_decoding_of_a_streamed_int8_model_gives_the_eager_tokens():
    model = BaichuanForCausalLM.from_config(tiny_config(max_position=64), seed=0, dtype=torch.float32).quantize(8)
    pack_linear_weights(model, layout="streamed")
    ids = torch.randint(3, 128, (1, 5), generator=torch.Generator().manual_seed(6))
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, repetition_penalty=1.0)
    assert torch.equal(model.generate(ids, compile=True, **kw), model.generate(ids, **kw))


def test_auto_layout_streams_big_models_decoding_one_or_two_sequences():
    from baichuan13b.cpu_linear import STREAM_MIN_BYTES, choose_layout, streamable_bytes

    assert choose_layout(1, STREAM_MIN_BYTES) == choose_layout(2) == "streamed"
    assert choose_layout(1, STREAM_MIN_BYTES - 1) == "packed"  # cache-resident weights: no kernels to compile
    assert choose_layout(GEMV_MAX_ROWS + 1, 1 << 40) == "packed"  # the server's batches
    cfg = tiny_config()
    model = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.float32)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert streamable_bytes(model) == sum(4 * m.weight.numel() for m in linears)
    q = BaichuanForCausalLM.from_config(cfg, seed=0, dtype=torch.bfloat16).quantize(8)
    assert streamable_bytes(q) == sum(m.weight.numel() for m in linears if m is not model.lm_head) \
        + 2 * model.lm_head.weight.numel()  # int8 codes: a byte each; the float lm_head: bfloat16

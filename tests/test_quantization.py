"""Weight-only int8 / int4 quantization on tiny random checkpoints with real-model in-feature multiples of 128."""

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from checkpoints import tiny_config, write_checkpoint

from baichuan13b import BaichuanForCausalLM, BaichuanTokenizer, ModelConfig
from baichuan13b.checkpoint import CheckpointError
from baichuan13b.cli import main
from baichuan13b.quantization import (
    QuantizationConfig,
    QuantizationError,
    WeightOnlyInt4Linear,
    WeightOnlyInt8Linear,
    dequantize_int4,
    dequantize_int8,
    estimate_memory,
    quantize_int4,
    quantize_int8,
    weight_bytes_by_dtype,
)
from baichuan13b.quantization import functional as QF


def cfg(**kw):
    """A tiny ALiBi config with the real models' initializer_range (0.02; tiny_config's 0.1 makes random models
    far more sensitive to weight noise than trained ones)."""
    base = dict(hidden=256, heads=4, intermediate=384, vocab=128, layers=2, max_position=64, torch_dtype="float32")
    base.update(kw)
    return dataclasses.replace(tiny_config(**base), initializer_range=0.02)


def cosine(a, b):
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    config = cfg()
    model = BaichuanForCausalLM.from_config(config, seed=0)
    return write_checkpoint(tmp_path_factory.mktemp("float"), model, config, "safetensors-sharded")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(float_dir, ids):
    model = BaichuanForCausalLM.from_pretrained(float_dir, progress=False)
    return model(ids).logits


# ----------------------------------------------------------------------------------------------- maths
def test_int8_roundtrip_is_within_half_a_step():
    w = torch.randn(48, 256) * 0.05
    q, s = quantize_int8(w, torch.float32)
    assert q.dtype == torch.int8 and s.shape == (48,)
    err = (dequantize_int8(q, s, torch.float32) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-7).all()


def test_int4_roundtrip_pack_and_edge_cases():
    codes = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    assert torch.equal(QF.unpack_int4(QF.pack_int4(codes)), codes)
    w = torch.randn(32, 256) * 0.05
    w[0] = 0.3  # a constant row (zero range in every group)
    w[1, :128] = 0.0
    p, s, z = quantize_int4(w, 128, torch.float32)
    assert p.dtype == torch.uint8 and p.shape == (32, 128) and s.shape == z.shape == (32, 2)
    deq = dequantize_int4(p, s, z, torch.float32)
    assert torch.isfinite(deq).all()
    assert torch.allclose(deq[0], w[0]) and torch.allclose(deq[1, :128], w[1, :128])
    step = s.repeat_interleave(128, dim=1)
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()


def test_bad_options_are_clear_errors():
    with pytest.raises(QuantizationError, match="group size"):
        quantize_int4(torch.randn(8, 96), 64, torch.float32)
    with pytest.raises(QuantizationError, match="8 or 4"):
        QuantizationConfig(bits=3)
    with pytest.raises(QuantizationError, match="int8"):
        QuantizationConfig.from_option("int2")
    with pytest.raises(QuantizationError, match="quant_method"):
        QuantizationConfig.from_dict({"quant_method": "gptq", "bits": 4})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernels_match_dequantize_fallback(dtype):
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.05
    x = torch.randn(3, 5, 256).to(dtype)
    for cls, args in ((WeightOnlyInt8Linear, ()), (WeightOnlyInt4Linear, (128,))):
        module = cls.from_float(w, dtype, *args)
        fallback = F.linear(x, module.dequantize(dtype))  # plain dequantize-matmul
        module.use_kernel = False
        reference_path = module(x)
        module.use_kernel = True
        kernel = module(x)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        assert torch.allclose(reference_path, fallback, atol=tol, rtol=tol)
        kernel_tol = 3e-2 if cls is WeightOnlyInt4Linear else tol  # int4 runs the CPU kernel in bfloat16
        assert kernel.dtype == dtype
        assert torch.allclose(kernel.float(), fallback.float(), atol=kernel_tol, rtol=kernel_tol), cls.__name__
        if cls is WeightOnlyInt4Linear and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            assert module.kernel == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_products_of_many_rows_are_the_same_weight_only_maths(dtype, monkeypatch):
    """Prefill-sized int8 products (float32 over the dequantized weight, from INT8_WIDEN_ROWS rows) and decode-sized
    ones (the int8 kernel) both give x @ (q * scales).T to the activation dtype's rounding."""
    torch.manual_seed(0)
    module = WeightOnlyInt8Linear.from_float(torch.randn(96, 256) * 0.05, dtype)
    exact = lambda x: (x.double() @ module.dequantize(torch.float64).t())  # noqa: E731
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    monkeypatch.setattr(QF, "INT8_WIDEN_ROWS", 8)
    for rows in (1, 7, 8, 40):  # both sides of the threshold
        x = torch.randn(rows, 256).to(dtype)
        y = module(x)
        assert y.dtype == dtype and y.shape == (rows, 96)
        assert torch.allclose(y.double(), exact(x), atol=tol, rtol=tol), rows
    x = torch.randn(2, 20, 256).to(dtype)  # batch dimensions are kept; rows are counted across them
    assert torch.allclose(module(x).double(), exact(x), atol=tol, rtol=tol)
    q, scales = quantize_int8(torch.randn(96, 256) * 0.05, dtype)  # the codes kept (no fbgemm layout)
    for rows in (7, 40):  # the int8 kernel, then float32 over dequantized blocks
        x = torch.randn(rows, 256).to(dtype)
        want = x.double() @ dequantize_int8(q, scales, torch.float64).t()
        assert torch.allclose(QF.int8_linear(x, q, scales).double(), want, atol=tol, rtol=tol), rows


def test_int4_kernel_layout_converts_back_exactly():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    module = WeightOnlyInt4Linear.from_float(w, torch.float32, 64)
    stored = {k: v.clone() for k, v in module.state_dict().items()}
    y = module(torch.randn(2, 256))  # packs for the CPU kernel, drops the stored codes
    # float32 inputs run the bfloat16 kernel, whose table rounds the scales: the float32 ones are kept
    assert module.kernel == "cpu" and module._kernel[1].dtype == torch.bfloat16 and module.scales is not None
    state = module.state_dict()
    assert set(state) == {"weight", "scales", "zeros"}
    assert all(torch.equal(state[k], stored[k]) for k in stored)
    module.to(torch.float32)  # a move converts back to the stored form
    assert module.kernel is None and torch.equal(module.weight, stored["weight"])
    ref = F.linear(torch.ones(1, 256), module.dequantize())
    # bfloat16 kernel: within 2% of the largest output (int4's own error on such rows is 8-15% of it)
    assert torch.allclose(module(torch.ones(1, 256)), ref, atol=2e-2 * ref.abs().max().item())
    assert y.shape == (2, 64)
    bf16 = WeightOnlyInt4Linear.from_float(w, torch.bfloat16, 64)
    bf16(torch.randn(2, 256).bfloat16())
    assert bf16.kernel == "cpu" and bf16.scales is None  # same dtype: scales and zeros live in the kernel's table


needs_int4_layout = pytest.mark.skipif(
    not (QF.int4_kernel_kind(torch.device("cpu"), 64, 256, 64) == "cpu" and QF.gemv_available()
         and QF.int4_cpu_layout_known()),
    reason="no CPU int4 kernel, generated kernels or known int4 layout here")


@needs_int4_layout
def test_int4_prefills_multiply_the_dequantized_weight(monkeypatch):
    # From INT4_DEQUANT_ROWS rows the CPU int4 product dequantizes by blocks of output rows (a last short block
    # included) and multiplies with oneDNN: the weight-only product within bfloat16 rounding, like the kernel's.
    monkeypatch.setattr(QF, "INT4_DEQUANT_BLOCK", 128)  # 320 rows: blocks of 128, 128, 64
    torch.manual_seed(0)
    module = WeightOnlyInt4Linear.from_float(torch.randn(320, 256) * 0.05, torch.bfloat16, 64)
    exact_w = module.dequantize(torch.float64)
    calls = []
    real = QF.int4_dequantized_mm
    monkeypatch.setattr(QF, "int4_dequantized_mm", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for rows in (QF.INT4_DEQUANT_ROWS - 1, QF.INT4_DEQUANT_ROWS, 300):
        x = torch.randn(rows, 256).bfloat16()
        with torch.inference_mode():
            y = module(x)
        exact = x.double() @ exact_w.t()
        assert y.dtype == torch.bfloat16 and y.shape == (rows, 320)
        assert ((y.double() - exact).norm() / exact.norm()).item() < 5e-3, rows
    assert calls == [QF.INT4_DEQUANT_ROWS, 300]  # fewer rows: the kernel
    for n, k in ((320, 256), (128, 13696)):  # the layout read back exactly, also at the 13B's longest rows
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        assert torch.equal(QF.unpack_int4_from_kernel("cpu", packed, 64, n, k), QF.pack_int4(codes.to(torch.uint8)))


needs_fbgemm = pytest.mark.skipif(not QF.int8_fbgemm_available(), reason="fbgemm's int8 GEMM is not usable here")


@needs_fbgemm
def test_int8_fbgemm_product_is_exact_weight_only_maths():
    # The CPU int8 kernel must compute the weight-only product (float activations), not an 8-bit-activation
    # one: rows with a 1e4 outlier, an all-zero row and tiny values all match float64 to float32 rounding.
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (160, 512), dtype=torch.int8)
    scales = (torch.rand(160) * 0.01 + 1e-3).to(torch.bfloat16)
    x = torch.randn(5, 512).to(torch.bfloat16)
    x[1, 7] = 1e4  # an outlier channel: 8-bit activations would lose every other element of this row
    x[2] = 0
    x[3] *= 1e-20
    packed = QF.pack_int8_for_fbgemm(q, scales)
    y = QF.int8_fbgemm_mm(x, packed)
    exact = x.double() @ (q.double() * scales.double()[:, None]).t()
    for row in range(5):
        err = (y[row].double() - exact[row]).abs().max().item()
        assert err <= 1e-5 * exact[row].abs().max().item(), row
    assert torch.equal(y[2], torch.zeros(160))
    # Each row on its own gives the same numbers as in the batch (a served stream does not depend on the others).
    assert all(torch.equal(QF.int8_fbgemm_mm(x[r:r + 1], packed)[0], y[r]) for r in range(5))
    codes, back = QF.unpack_int8_from_fbgemm(packed)
    assert torch.equal(codes, q) and torch.equal(back.to(torch.bfloat16), scales)


@needs_fbgemm
def test_int8_fbgemm_layout_converts_back_and_keeps_one_copy():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    module = WeightOnlyInt8Linear.from_float(w, torch.bfloat16)
    stored = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(3, 256).to(torch.bfloat16)
    reference = F.linear(x.double(), module.dequantize(torch.float64)).float()
    y = module(x)  # packs for fbgemm and drops the stored codes
    assert module.kernel == "fbgemm" and module.weight is None
    assert torch.allclose(y.float(), reference, rtol=1e-2, atol=1e-3)  # bfloat16 output rounding only
    assert module.nbytes_by_dtype()[torch.int8] == 64 * 256  # the packed weight, counted once
    assert weight_bytes_by_dtype(torch.nn.Sequential(module))["int8"] == 64 * 256
    state = module.state_dict()
    assert set(state) == {"weight", "scales"} and all(torch.equal(state[k], stored[k]) for k in stored)
    fresh = WeightOnlyInt8Linear(256, 64, dtype=torch.bfloat16)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), y)
    module.to(torch.bfloat16)  # a move converts back to the stored form
    assert module.kernel is None and torch.equal(module.weight, stored["weight"])
    # Inputs that need gradients (LoRA over an int8 base) take the differentiable path.
    xg = x.float().requires_grad_()
    module32 = WeightOnlyInt8Linear.from_float(w, torch.float32)
    module32(xg).sum().backward()
    assert xg.grad is not None and module32.kernel is None


# ----------------------------------------------------------------------------------------------- model level
def test_logits_quality_and_official_names(float_dir, reference, ids):
    int8 = BaichuanForCausalLM.from_pretrained(float_dir, quantize="int8", progress=False)
    int4 = BaichuanForCausalLM.from_pretrained(float_dir, quantize="int4", progress=False)
    assert cosine(int8(ids).logits, reference) >= 0.999
    assert cosine(int4(ids).logits, reference) >= 0.93
    names = set(int4.state_dict())
    assert {"model.layers.0.self_attn.W_pack.weight", "model.layers.0.self_attn.W_pack.scales",
            "model.layers.0.self_attn.W_pack.zeros", "lm_head.weight", "model.embed_tokens.weight"} <= names
    assert int4.state_dict()["lm_head.weight"].dtype == torch.float32  # head and embeddings stay float
    assert int8.model.layers[1].mlp.down_proj.weight.dtype == torch.int8


def test_loading_quantizes_like_model_quantize(float_dir, ids):
    loaded = BaichuanForCausalLM.from_pretrained(float_dir, quantize="int4", group_size=64, progress=False)
    later = BaichuanForCausalLM.from_pretrained(float_dir, progress=False).quantize(4, group_size=64)
    a, b = loaded.state_dict(), later.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded(ids).logits, later(ids).logits)
    with pytest.raises(QuantizationError, match="already quantized"):
        later.quantize(8)


@pytest.mark.parametrize("bits,ratio", [(8, 0.27), (4, 0.16)])
def test_weight_bytes_against_float32(float_dir, bits, ratio):
    float_model = BaichuanForCausalLM.from_pretrained(float_dir, progress=False)
    q = BaichuanForCausalLM.from_pretrained(float_dir, quantize=f"int{bits}", progress=False)

    def layer_bytes(m):  # the quantized part: decoder layers, scales and zeros included
        return sum(sum(weight_bytes_by_dtype(layer).values()) for layer in m.model.layers)

    assert layer_bytes(q) <= ratio * layer_bytes(float_model)
    everything = BaichuanForCausalLM.from_pretrained(float_dir, progress=False).quantize(
        bits, quantize_lm_head=True, quantize_embeddings=True)
    total_q = sum(weight_bytes_by_dtype(everything).values())
    assert total_q <= ratio * sum(weight_bytes_by_dtype(float_model).values()) + 4 * 256 * 4  # + float norms


@pytest.mark.parametrize("bits", [8, 4])
def test_saved_folder_reloads_to_identical_logits(float_dir, tmp_path, ids, bits):
    model = BaichuanForCausalLM.from_pretrained(float_dir, torch_dtype="bfloat16", quantize=f"int{bits}",
                                                progress=False)
    before = model(ids).logits  # int4: now in the CPU kernel layout; saving converts back
    model.save_pretrained(tmp_path, max_shard_size="100KB", progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["bits"] == bits and saved["quant_method"] == "baichuan13b-weight-only"
    reloaded = BaichuanForCausalLM.from_pretrained(tmp_path, torch_dtype="bfloat16", progress=False)
    assert isinstance(reloaded.model.layers[0].mlp.up_proj, WeightOnlyInt8Linear if bits == 8 else WeightOnlyInt4Linear)
    assert torch.equal(reloaded(ids).logits, before)
    again = BaichuanForCausalLM.from_pretrained(tmp_path, torch_dtype="bfloat16", quantize=f"int{bits}",
                                                progress=False)  # same quantization asked: loaded as saved
    assert torch.equal(again(ids).logits, before)
    other = "int4" if bits == 8 else "int8"
    with pytest.raises(CheckpointError, match="already quantized"):
        BaichuanForCausalLM.from_pretrained(tmp_path, quantize=other, progress=False)


def test_prequantized_folder_errors_name_the_tensor(float_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = BaichuanForCausalLM.from_pretrained(float_dir, quantize="int8", progress=False)
    model.save_pretrained(tmp_path, progress=False)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.1.mlp.gate_proj.weight"] = tensors["model.layers.1.mlp.gate_proj.weight"].float()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.gate_proj.weight.*int8"):
        BaichuanForCausalLM.from_pretrained(tmp_path, progress=False)
    del tensors["model.layers.1.mlp.gate_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing 1 tensor.*gate_proj.weight"):
        BaichuanForCausalLM.from_pretrained(tmp_path, progress=False)


def test_group_size_must_divide_in_features(tmp_path):
    config = cfg(hidden=192, intermediate=384)
    folder = write_checkpoint(tmp_path, BaichuanForCausalLM.from_config(config, seed=0), config, "bin")
    with pytest.raises(CheckpointError, match="in_features 192 is not divisible.*128"):
        BaichuanForCausalLM.from_pretrained(folder, quantize="int4", progress=False)
    model = BaichuanForCausalLM.from_pretrained(folder, quantize="int4", group_size=64, progress=False)  # .bin
    assert model.model.layers[0].self_attn.o_proj.group_size == 64


def test_device_map_auto_and_dict_on_cpu(float_dir, ids, reference):
    auto = BaichuanForCausalLM.from_pretrained(float_dir, quantize="int8", device_map="auto", progress=False)
    plan = {"model": "cpu", "lm_head": "cpu"}
    by_dict = BaichuanForCausalLM.from_pretrained(float_dir, quantize="int8", device_map=plan, progress=False)
    assert torch.equal(auto(ids).logits, by_dict(ids).logits)


def test_generation_with_quantized_embeddings_and_head(float_dir, ids):
    model = BaichuanForCausalLM.from_pretrained(float_dir, torch_dtype="bfloat16", progress=False)
    model.quantize(4, group_size=32, quantize_lm_head=True, quantize_embeddings=True)
    assert model.dtype == torch.bfloat16 and model.model.embed_tokens.weight.dtype == torch.uint8
    out = model.generate(ids[:1, :5], max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert out.shape == (1, 9)


def test_memory_estimate_is_exact_from_shapes():
    config = ModelConfig.from_name("baichuan-13b")
    h, i, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    linear = L * (4 * h * h + 3 * h * i)
    rows = L * (3 * h + h + 2 * i + h)  # output channels of W_pack, o_proj, gate/up, down
    float_rest = 2 * (2 * V * h + (2 * L + 1) * h)  # embeddings, head, norms in float16
    int8 = estimate_memory(config, dtype=torch.float16, quantize="int8", context=2048, batch=2)
    assert int8.weight_bytes == linear + 2 * rows + float_rest
    int4 = estimate_memory(config, dtype=torch.float16, quantize="int4")
    assert int4.weight_bytes == linear // 2 + 2 * 2 * linear // 128 + float_rest
    assert int8.kv_cache == 2 * L * 2 * 2048 * h * 2


# ----------------------------------------------------------------------------------------------- command line
def test_cli_quantize_then_generate_and_info(float_dir, tiny_tokenizer_dir, tmp_path, capsys):
    tok = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = cfg(vocab=tok.vocab_size)
    src = write_checkpoint(tmp_path / "src", BaichuanForCausalLM.from_config(config, seed=2), config, "safetensors")
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, src / f.name)
    out = tmp_path / "int4"
    assert main(["quantize", "--model", str(src), "--bits", "4", "--group-size", "64", "--output", str(out),
                 "--no-progress"]) == 0
    assert (out / "tokenizer.model").is_file()
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 64
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--no-progress", "--prompt", "The quick", "--max-new-tokens",
                 "5", "--greedy"]) == 0
    from_saved = capsys.readouterr().out
    assert main(["generate", "--model", str(src), "--quantize", "int4", "--group-size", "64", "--no-progress",
                 "--prompt", "The quick", "--max-new-tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out == from_saved  # saved folder == quantize-while-loading
    assert main(["info", "--model", str(out), "--context", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quantization"] == "int4 (group 64)" and report["weights_by_dtype"]["uint8"] > 0
    assert main(["info", "--model", str(out), "--quantize", "int8"]) == 2
    assert "already quantized" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernels_match_fallback(dtype):
    w = torch.randn(256, 512, device="cuda") * 0.05
    x = torch.randn(3, 512, device="cuda", dtype=dtype)
    for module in (WeightOnlyInt8Linear.from_float(w, dtype), WeightOnlyInt4Linear.from_float(w, dtype, 128)):
        expected = F.linear(x.float(), module.dequantize(torch.float32))
        got = module(x)
        assert got.dtype == dtype
        assert torch.allclose(got.float(), expected, atol=5e-2, rtol=5e-2)
        state = module.state_dict()  # converts back from the tinygemm layout exactly
        module.use_kernel = False
        assert torch.allclose(module(x).float(), expected, atol=5e-2, rtol=5e-2)
        assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())

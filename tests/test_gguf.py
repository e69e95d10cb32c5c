"""GGUF export (``baichuan export --format gguf``): the file's layout, read back with the ``gguf`` package, and,
when llama.cpp's Python bindings are installed (``llama_cpp``, see docs/quantization.md), the same logits and greedy
tokens from llama.cpp as from this project, for ALiBi (13B architecture) and RoPE (7B).

llama.cpp chooses the position encoding of its ``baichuan`` architecture from the layer count (40: ALiBi, 32: RoPE),
so the tiny checkpoints are narrow but have exactly those depths.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from checkpoints import tiny_config, write_checkpoint

from baichuan13b.checkpoint import DEMO_MODEL_DIR
from baichuan13b.model import BaichuanForCausalLM

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (extra 'gguf')")

from baichuan13b.cli import main  # noqa: E402
from baichuan13b.export import GGUFExportError, export_gguf  # noqa: E402

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
# (architecture, layers llama.cpp needs for it, heads, hidden, intermediate, layout)
CASES = {
    "alibi": ("alibi", 40, 5, 160, 352, "safetensors-sharded"),  # 5 heads: the non-power-of-two slope rule
    "rope": ("rope", 32, 8, 128, 256, "bin"),
}


def _checkpoint(root, case: str, seed: int = 0):
    arch, layers, heads, hidden, inter, layout = CASES[case]
    from baichuan13b.tokenizer import BaichuanTokenizer

    vocab = BaichuanTokenizer.from_pretrained(DEMO_MODEL_DIR).vocab_size
    cfg = tiny_config(arch, heads=heads, hidden=hidden, layers=layers, vocab=vocab, intermediate=inter,
                      max_position=128, torch_dtype="float32")
    cfg.initializer_range = 0.02  # as the real models: 40 random layers at 0.1 amplify q8_0 rounding chaotically
    model = BaichuanForCausalLM.from_config(cfg, seed=seed)
    folder = write_checkpoint(root / case, model, cfg, layout)
    for name in TOKENIZER_FILES:
        shutil.copy(DEMO_MODEL_DIR / name, folder / name)
    return folder, model.double()


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(case, checkpoint folder, float64 model, {outtype: gguf path}) for f32 and q8_0."""
    root = tmp_path_factory.mktemp("gguf")
    folder, model = _checkpoint(root, request.param)
    files = {t: export_gguf(folder, root / f"{request.param}-{t}.gguf", t, progress=False) for t in ("f32", "q8_0")}
    return request.param, folder, model, files


def _reader_tensors(path):
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


def _field(reader, key):
    f = reader.get_field(key)
    return f.contents() if f is not None else None


def test_layout_names_shapes_and_metadata(exported):
    case, folder, model, files = exported
    cfg = model.config
    reader, tensors = _reader_tensors(files["f32"])
    assert _field(reader, "general.architecture") == "baichuan"
    assert _field(reader, "baichuan.block_count") == cfg.num_hidden_layers
    assert _field(reader, "baichuan.embedding_length") == cfg.hidden_size
    assert _field(reader, "baichuan.feed_forward_length") == cfg.intermediate_size
    assert _field(reader, "baichuan.attention.head_count") == cfg.num_attention_heads
    assert _field(reader, "baichuan.rope.dimension_count") == cfg.head_dim
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert len(_field(reader, "tokenizer.ggml.tokens")) == cfg.vocab_size
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    per_layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{n}.{t}.weight" for n in range(cfg.num_hidden_layers) for t in per_layer}
    assert set(tensors) == expected
    sd = model.state_dict()
    # q is W_pack's first third with each head's halves interleaved (llama.cpp rotates adjacent pairs).
    q = torch.from_numpy(tensors["blk.3.attn_q.weight"].data.copy()).double()
    w_q = sd["model.layers.3.self_attn.W_pack.weight"][: cfg.hidden_size]
    d = cfg.head_dim
    head0 = w_q[:d]
    assert torch.equal(q[0], head0[0].float().double()) and torch.equal(q[1], head0[d // 2].float().double())
    v = torch.from_numpy(tensors["blk.3.attn_v.weight"].data.copy()).double()
    torch.testing.assert_close(v, sd["model.layers.3.self_attn.W_pack.weight"][2 * cfg.hidden_size:].float().double())


def test_q8_0_matrices_are_quantized_and_dequantize_close(exported):
    case, folder, model, files = exported
    _, tensors = _reader_tensors(files["q8_0"])
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    t = tensors["blk.0.ffn_down.weight"]
    w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).double()
    ref = model.state_dict()["model.layers.0.mlp.down_proj.weight"]
    assert (w - ref).abs().max() <= ref.abs().max() / 127 + 1e-6


def test_refuses_layer_counts_llama_cpp_runs_with_another_position_encoding(tmp_path):
    folder = write_checkpoint(tmp_path / "m", BaichuanForCausalLM.from_config(tiny_config(layers=2), seed=0),
                              tiny_config(layers=2), "safetensors")
    with pytest.raises(GGUFExportError, match="40 layers: ALiBi.*has 2 layers.*--allow-position-mismatch"):
        export_gguf(folder, tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--format", "gguf", "--model", "demo", "--output", str(tmp_path / "d.gguf")]) == 2
    assert "--allow-position-mismatch" in capsys.readouterr().err
    assert main(["export", "--format", "gguf", "--model", "demo", "--output", str(tmp_path / "d.gguf"),
                 "--quantize", "int8"]) == 2
    assert "--outtype q8_0" in capsys.readouterr().err
    assert main(["export", "--format", "gguf", "--model", "demo", "--output", str(tmp_path / "d.gguf"),
                 "--allow-position-mismatch", "--no-progress", "--outtype", "q4_0"]) == 0
    assert (tmp_path / "d.gguf").stat().st_size > 0


def test_missing_gguf_package_names_the_extra(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(GGUFExportError, match=r"pip install 'baichuan13b\[gguf\]'"):
        export_gguf("demo", tmp_path / "x.gguf")


# ------------------------------------------------------------------------------------------------ llama.cpp
def _llama(path):
    """llama.cpp (through its Python bindings) on ``path``, float32 KV cache, all logits kept; skips when absent."""
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama.cpp's Python bindings (llama-cpp-python) are not installed")
    except (OSError, RuntimeError) as e:  # installed without a loadable libllama (see LLAMA_CPP_LIB_PATH)
        pytest.skip(f"llama.cpp's library cannot be loaded: {e}")
    try:
        return llama_cpp.Llama(str(path), n_ctx=128, n_batch=128, logits_all=True, verbose=False, n_threads=1,
                               seed=0, type_k=0, type_v=0, flash_attn=False)  # 0 = GGML_TYPE_F32
    except ValueError as e:
        raise AssertionError(f"llama.cpp refused the exported file {path}: {e}") from e


def _llama_logits(llm, ids):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float64))  # [T, vocab]


PROMPT = [5, 17, 300, 42, 999, 7, 1234, 88, 3, 640, 12, 77]


@pytest.mark.slow
def test_llama_cpp_f32_same_logits_and_greedy_tokens(exported):
    case, folder, model, files = exported
    llm = _llama(files["f32"])
    ours = model(torch.tensor([PROMPT])).logits[0]  # [T, vocab] float64
    theirs = _llama_logits(llm, PROMPT)
    torch.testing.assert_close(theirs, ours, atol=2e-3 * ours.abs().max().item(), rtol=0)
    new = 16
    ours_ids = model.float().generate(torch.tensor([PROMPT]), max_new_tokens=new, do_sample=False,
                                      eos_token_id=None, repetition_penalty=1.0)[0, len(PROMPT):].tolist()
    model.double()
    ids = list(PROMPT)
    for _ in range(new):
        ids.append(int(_llama_logits(llm, ids)[-1].argmax()))
    assert ids[len(PROMPT):] == ours_ids


@pytest.mark.slow
def test_llama_cpp_q8_0_logits_cosine(exported):
    case, folder, model, files = exported
    llm = _llama(files["q8_0"])
    ours = model(torch.tensor([PROMPT])).logits[0]
    theirs = _llama_logits(llm, PROMPT)
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)  # [T]
    assert cos.min() >= 0.999, cos


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_the_project(exported):
    case, folder, model, files = exported
    from baichuan13b.tokenizer import BaichuanTokenizer

    tok = BaichuanTokenizer.from_pretrained(folder)
    llm = _llama(files["f32"])
    for text in ["世界上第二高的山峰是哪座", "Hello world, 1234!", "  两个空格\n换行", "K2（乔戈里峰）"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text


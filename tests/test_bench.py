"""The speed benchmark's arithmetic and plumbing (figures themselves are printed, never asserted)."""

import json
import subprocess
import sys

import pytest
import torch

from baichuan13b.bench.speed import copy_bandwidth, measure, random_model, weight_bytes_per_token
from baichuan13b.config import ModelConfig


def tiny():
    return ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=8, max_position=128)


def test_weight_bytes_exclude_the_embedding_table():
    cfg = tiny()
    model = random_model(cfg, torch.bfloat16, "cpu")
    assert model.dtype == torch.bfloat16
    expected = (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size) * 2
    assert weight_bytes_per_token(model) == expected


def test_measure_reports_consistent_figures():
    model = random_model(tiny(), torch.float32, "cpu")
    r = measure(model, name="tiny", batch=2, prompt_len=5, gen_len=6, bandwidth_gbs=10.0)
    assert r.tokens_per_s > 0 and r.aggregate_tokens_per_s == 2 * r.tokens_per_s
    assert abs(r.ms_per_token - 1e3 / r.tokens_per_s) < 1e-6
    assert abs(r.roofline_tokens_per_s - 10.0e9 / r.weight_bytes_per_token) < 1e-6
    assert abs(r.percent_of_roofline - 100 * r.tokens_per_s / r.roofline_tokens_per_s) < 1e-6
    assert r.peak_memory_bytes > 0 and r.time_to_first_token_s > 0
    assert copy_bandwidth(torch.device("cpu"), nbytes=1 << 20, repeats=2) > 0


def test_bench_cli_with_a_config_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny().to_dict()))
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", str(cfg), "--gen-len",
                        "4", "--prompt-len", "3", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "% of roofline" in r.stdout
    data = json.loads(out.read_text())
    assert data[0]["gen_len"] == 4 and data[0]["tokens_per_s"] > 0
    bad = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "neither a preset" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", "baichuan-13b:0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "positive integer" in bad.stderr


def test_random_weights_of_a_preset_with_fewer_layers():
    from baichuan13b.bench.speed import config_from_spec

    full, cut = config_from_spec("baichuan-13b"), config_from_spec("baichuan-13b:2")
    assert cut.num_hidden_layers == 2 and full.num_hidden_layers == 40
    assert (cut.hidden_size, cut.intermediate_size, cut.architectures) == \
        (full.hidden_size, full.intermediate_size, full.architectures)
    with pytest.raises(ValueError, match="positive integer"):
        config_from_spec("baichuan-13b:two")


def _tiny_config_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(ModelConfig(vocab_size=1500, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, max_position=256).to_dict()))
    return cfg


@pytest.mark.parametrize("bits,lm_head", [(8, False), (4, True)])
def test_random_weights_built_quantized_match_a_quantized_float_model(bits, lm_head):
    # Built quantized one matrix at a time (what lets the 13B in int8 fit a 24 GB machine): the same modules and
    # bytes as quantizing the whole float model, random but well-formed codes, and a model that decodes.
    from baichuan13b.quantization import QuantizationConfig
    from baichuan13b.quantization.modules import QUANTIZED_MODULES

    qconfig = QuantizationConfig(bits=bits, group_size=32, quantize_lm_head=lm_head)
    built = random_model(tiny(), torch.bfloat16, "cpu", seed=1, quantize=qconfig)
    after = random_model(tiny(), torch.bfloat16, "cpu", seed=1).quantize(bits, group_size=32,
                                                                         quantize_lm_head=lm_head)
    kinds = lambda m: [(n, type(x).__name__) for n, x in m.named_modules()]  # noqa: E731
    assert kinds(built) == kinds(after)
    assert weight_bytes_per_token(built) == weight_bytes_per_token(after)
    quantized = [m for m in built.modules() if isinstance(m, QUANTIZED_MODULES)]
    assert len(quantized) == 5 * 2 + lm_head  # W_pack, o_proj, gate, up, down per layer
    w = built.model.layers[0].mlp.down_proj.dequantize(torch.float32)  # drawn as the float model's weights
    assert abs(w.std().item() - tiny().initializer_range) < 0.2 * tiny().initializer_range
    ids = torch.randint(3, 128, (1, 5))
    with torch.inference_mode():
        logits = built(ids).logits
    assert torch.isfinite(logits).all() and logits.std() > 0
    assert built.config.extra["quantization_config"]["bits"] == bits


def test_bench_quantize_flag_reports_the_mode(tmp_path):
    r = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", str(_tiny_config_file(tmp_path)),
                        "--gen-len", "3", "--prompt-len", "3", "--quantize", "int8", "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())[0]["quantize"] == "int8"


def test_against_llama_cpp_names_a_missing_binary(tmp_path):
    r = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", str(_tiny_config_file(tmp_path)),
                        "--against-llama-cpp", str(tmp_path / "no-llama-bench")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "no such llama-bench binary" in r.stderr


def test_against_llama_cpp_end_to_end(tmp_path):
    """Runs only where llama.cpp's llama-bench is available ($LLAMA_BENCH or on PATH; see docs/benchmarks.md)."""
    import os
    import shutil

    import pytest

    pytest.importorskip("gguf")
    binary = os.environ.get("LLAMA_BENCH") or shutil.which("llama-bench")
    if not binary:
        pytest.skip("llama-bench not found (set LLAMA_BENCH)")
    out = tmp_path / "vs.json"
    r = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", str(_tiny_config_file(tmp_path)),
                        "--against-llama-cpp", binary, "--threads", "1", "--gen-len", "4", "--prefill-len", "16",
                        "--rounds", "1", "--precisions", "bf16,int8", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "| bf16 / bf16 |" in r.stdout and "| int8 / q8_0 |" in r.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["gguf_type"] for row in rows] == ["bf16", "q8_0"]
    assert all(row["llama_decode"] > 0 and row["ours_decode"] > 0 and row["llama_prefill"] > 0 for row in rows)


def test_int4_group_size_for_the_llama_cpp_comparison_divides_every_layer():
    import argparse

    import pytest

    from baichuan13b.bench.llama_cpp import _int4_group_size

    args = argparse.Namespace(group_size=128)
    assert _int4_group_size(args, ModelConfig.from_name("baichuan-232m")) == 64  # intermediate 2752 = 43 * 64
    assert _int4_group_size(args, ModelConfig.from_name("baichuan-13b")) == 128
    with pytest.raises(ValueError, match="no group size"):
        _int4_group_size(args, ModelConfig(hidden_size=80, intermediate_size=176, num_attention_heads=5))


def test_kernel_benchmark_prints_every_kernel_it_has(capsys):
    import pytest

    from baichuan13b.bench import kernels

    assert kernels.main(["--shape", "64x128", "--rows", "1,3", "--matrices", "2", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    names = {r.split(" | ")[0][2:] for r in rows[1:]}
    assert {"bf16 F.linear", "fp32 F.linear"} <= names and len(rows) - 1 == 2 * len(names)  # one line per row count
    with pytest.raises(SystemExit):
        kernels.main(["--shape", "64", "--rows", "1"])  # a clear usage error, not a traceback


def test_original_loop_baseline_gives_our_greedy_tokens():
    """The original-code baseline is the same model computed the original way: same greedy tokens (float32)."""
    from baichuan13b.bench.original import original_stream
    from baichuan13b.generation import stream_tokens

    model = random_model(tiny(), torch.float32, "cpu", seed=3)
    ids = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    ours = torch.stack(list(stream_tokens(model, ids, max_new_tokens=12, eos_token_id=None, do_sample=False,
                                          repetition_penalty=1.0)), 1)
    theirs = torch.stack(list(original_stream(model, ids, max_new_tokens=12)), 1)
    assert torch.equal(ours, theirs)


def test_original_loop_baseline_refuses_what_the_original_code_is_not():
    from baichuan13b.bench.original import original_stream
    from baichuan13b.config import ROPE_ARCHITECTURE
    from baichuan13b.cpu_linear import pack_linear_weights

    rope = random_model(ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=8, architectures=[ROPE_ARCHITECTURE]), torch.float32, "cpu")
    with pytest.raises(ValueError, match="ALiBi"):
        next(original_stream(rope, torch.tensor([[5, 6]]), max_new_tokens=2))
    for layout in ("packed", "streamed"):  # the original has neither: its kernels are PyTorch's plain ones
        packed = random_model(tiny(), torch.float32, "cpu")
        if pack_linear_weights(packed, (torch.float32,), layout=layout):
            with pytest.raises(ValueError, match="plain nn.Linear"):
                next(original_stream(packed, torch.tensor([[5, 6]]), max_new_tokens=2))


def test_bench_against_original_prints_the_ratio(tmp_path):
    r = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", str(_tiny_config_file(tmp_path)),
                        "--gen-len", "4", "--prompt-len", "3", "--against-original", "--rounds", "2",
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("round ") == 4 and "decode ours / original:" in r.stdout
    assert [row["name"] for row in json.loads((tmp_path / "r.json").read_text())] == ["ours", "original"]
    bad = subprocess.run([sys.executable, "-m", "baichuan13b", "bench", "--random-weights", str(_tiny_config_file(tmp_path)),
                          "--against-original", "--batch", "2"], capture_output=True, text=True, timeout=180)
    assert bad.returncode != 0 and "--batch 1" in bad.stderr

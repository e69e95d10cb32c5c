"""Tensor parallelism on 2 gloo processes (CPU) gives the same logits and tokens as one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from baichuan13b.config import ALIBI_ARCHITECTURE, ROPE_ARCHITECTURE, ModelConfig
from baichuan13b.generation import generate
from baichuan13b.model import BaichuanForCausalLM
from baichuan13b.tensor_parallel import apply_tensor_parallel


def _config(arch):
    return ModelConfig(architectures=[arch], vocab_size=97, hidden_size=80, intermediate_size=112,
                       num_hidden_layers=2, num_attention_heads=10, max_position=64, initializer_range=0.2)


def _worker(rank, world, port, arch, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = BaichuanForCausalLM.from_config(_config(arch), seed=0)
        apply_tensor_parallel(model)
        ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        mask[1, :3] = 0
        with torch.inference_mode():
            logits = model(ids, attention_mask=mask).logits
        tokens = generate(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
        torch.save({"logits": logits, "tokens": tokens}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown, as the CLI does under torchrun: gloo sometimes aborts a finished rank there.
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("arch", [ALIBI_ARCHITECTURE, ROPE_ARCHITECTURE])
def test_two_gloo_ranks_equal_one_process(arch, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), arch, str(tmp_path)), nprocs=2, join=True)
    model = BaichuanForCausalLM.from_config(_config(arch), seed=0)
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.inference_mode():
        ref = model(ids, attention_mask=mask).logits
    ref_tokens = generate(model, ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["logits"], ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(got["tokens"], ref_tokens)


def test_indivisible_heads_is_a_clear_error():
    model = BaichuanForCausalLM.from_config(_config(ALIBI_ARCHITECTURE), seed=0)
    with pytest.raises(ValueError, match="divisible by 3"):
        apply_tensor_parallel(model, rank=0, world=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    import shutil

    from checkpoints import write_checkpoint

    from baichuan13b.tokenizer import BaichuanTokenizer

    tok = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = ModelConfig(architectures=[ALIBI_ARCHITECTURE], vocab_size=tok.vocab_size, hidden_size=64,
                      intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, max_position=128,
                      initializer_range=0.2, torch_dtype="float32")
    model = BaichuanForCausalLM.from_config(cfg, seed=4)
    folder = write_checkpoint(tmp_path_factory.mktemp("tp"), model, cfg, "safetensors",
                              generation_config=dict(max_new_tokens=8, user_token_id=3, assistant_token_id=4))
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_generate_and_chat_under_torchrun(model_dir):
    import subprocess
    import sys

    def run(*args, nproc=None, stdin=None):
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                     "--master_port", str(_free_port()), "-m", "baichuan13b"] if nproc
                    else [sys.executable, "-m", "baichuan13b"])
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(launcher + list(args) + ["--model", str(model_dir), "--no-progress"], input=stdin,
                           capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    single = run("generate", "--prompt", "The quick brown", "--max-new-tokens", "6")
    assert run("generate", "--prompt", "The quick brown", "--max-new-tokens", "6", nproc=2) == single
    chat_single = run("chat", stdin="hello\nclear\n你好\n")
    assert run("chat", nproc=2, stdin="hello\nclear\n你好\n") == chat_single


# ------------------------------------------------------------------------ each rank reads only its slices
@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    from checkpoints import LAYOUTS, write_checkpoint

    model = BaichuanForCausalLM.from_config(_config(ALIBI_ARCHITECTURE), seed=3)
    root = tmp_path_factory.mktemp("tp-layouts")
    return {layout: write_checkpoint(root / layout, model, _config(ALIBI_ARCHITECTURE), layout, shards=2)
            for layout in LAYOUTS}


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded"])
@pytest.mark.parametrize("rank", [0, 1])
def test_sliced_load_equals_load_then_shard(float_dir, layout, rank):
    from baichuan13b.checkpoint import load_model

    whole = apply_tensor_parallel(load_model(float_dir[layout], progress=False), rank=rank, world=2)
    sliced = load_model(float_dir[layout], progress=False, tensor_parallel=(rank, 2))
    expected = dict(whole.named_parameters())
    got = dict(sliced.named_parameters())
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert got["model.layers.0.self_attn.W_pack.weight"].shape == (3 * 40, 80)  # 5 of the 10 heads
    assert got["model.layers.0.mlp.down_proj.weight"].shape == (80, 56)
    assert torch.equal(sliced.model.alibi_slopes, whole.model.alibi_slopes)
    assert sliced.tensor_parallel == (rank, 2)
    attn = sliced.model.layers[0].self_attn
    assert (attn.num_heads, attn.W_pack.out_features, sliced.model.layers[0].mlp.down_proj.in_features) == (5, 120, 56)


def test_sliced_load_reads_no_whole_parallel_tensor(float_dir, monkeypatch):
    """safetensors: the parallel weights are read with get_slice; get_tensor only for the replicated ones."""
    import safetensors

    from baichuan13b.checkpoint import load_model
    from baichuan13b.tensor_parallel import shard_ranges

    whole_reads: list[str] = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.handle = real_open(*a, **k)

        def __enter__(self):
            self.f = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_slice(self, name):
            return self.f.get_slice(name)

        def get_tensor(self, name):
            whole_reads.append(name)
            return self.f.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    load_model(float_dir["safetensors-sharded"], progress=False, tensor_parallel=(1, 2))
    config = _config(ALIBI_ARCHITECTURE)
    assert whole_reads and not [n for n in whole_reads if shard_ranges(config, n, 1, 2) is not None]


def test_sliced_load_names_a_mismatched_tensor(tmp_path):
    import dataclasses

    from checkpoints import write_checkpoint

    from baichuan13b.checkpoint import CheckpointError, load_model

    model = BaichuanForCausalLM.from_config(_config(ALIBI_ARCHITECTURE), seed=0)
    wrong = dataclasses.replace(_config(ALIBI_ARCHITECTURE), intermediate_size=120)  # the weights have 112
    folder = write_checkpoint(tmp_path / "m", model, wrong, "safetensors")
    with pytest.raises(CheckpointError, match=r"_proj.weight has shape \[(112, 80|80, 112)\], the model expects \[(120, 80|80, 120)\]"):
        load_model(folder, progress=False, tensor_parallel=(0, 2))


def _int8_worker(rank, world, port, folder, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from baichuan13b.checkpoint import load_model

        model = load_model(folder, progress=False, quantize="int8", tensor_parallel=(rank, world))
        ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            logits = model(ids).logits
        torch.save({"logits": logits, "qtype": type(model.model.layers[0].mlp.down_proj).__name__},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    os._exit(0)


def test_int8_under_tensor_parallelism_quantizes_each_shard(float_dir, tmp_path):
    from baichuan13b.checkpoint import load_model

    folder = str(float_dir["safetensors"])
    mp.spawn(_int8_worker, args=(2, _free_port(), folder, str(tmp_path)), nprocs=2, join=True)
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref_int8 = load_model(folder, progress=False, quantize="int8")(ids).logits
        ref_float = load_model(folder, progress=False)(ids).logits
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert got[0]["qtype"] != "Linear"  # really quantized
    torch.testing.assert_close(got[0]["logits"], got[1]["logits"], atol=0, rtol=0)  # ranks agree exactly
    # Per-shard scales differ from whole-row scales only in the row-parallel layers: int8-level differences.
    err_tp = (got[0]["logits"] - ref_float).abs().max().item()
    err_one = (ref_int8 - ref_float).abs().max().item()
    assert err_tp <= 3 * err_one + 1e-4, (err_tp, err_one)
    assert (got[0]["logits"].argmax(-1) == ref_int8.argmax(-1)).float().mean() > 0.9

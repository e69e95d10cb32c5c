"""Loading and saving checkpoints in the official layouts (tiny models, CPU, seconds)."""

from __future__ import annotations

import collections
import json
import os
import random
import re

import pytest
import torch
from checkpoints import (
    LAYOUTS,
    REFERENCE,
    SHAPES,
    rope_inv_freq_tensors,
    shard_names,
    state_dict_of,
    tiny_config,
    write_checkpoint,
    write_tensors,
)

from baichuan13b.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    find_weight_files,
    iter_tensors,
    load_model,
    parse_size,
    plan_devices,
    resolve_dtype,
    resolve_model_path,
    save_model,
)
from baichuan13b.config import ModelConfig
from baichuan13b.generation import GenerationConfig
from baichuan13b.model import BaichuanForCausalLM

IDS = torch.tensor([[1, 5, 17, 99, 3, 42, 7, 64, 11, 2], [1, 8, 8, 8, 120, 0, 33, 21, 90, 4]])


def make_model(shape: str = "alibi-8h", seed: int = 0, **kw) -> BaichuanForCausalLM:
    return BaichuanForCausalLM.from_config(tiny_config(**SHAPES[shape], **kw), seed=seed)


def logits(model: BaichuanForCausalLM, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids.to(model.device)).logits.float().cpu()


def assert_same_weights(model: BaichuanForCausalLM, reference: BaichuanForCausalLM) -> None:
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


def load(folder, **kw) -> BaichuanForCausalLM:
    kw.setdefault("progress", False)
    return BaichuanForCausalLM.from_pretrained(folder, **kw)


# ------------------------------------------------------------------------------------------ loading, all layouts
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_load_every_layout_and_shape(tmp_path, layout, shape):
    source = make_model(shape, seed=1)
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, layout)
    model = load(folder, torch_dtype=torch.float32)
    assert_same_weights(model, source)
    assert torch.equal(logits(model), logits(source))
    assert not model.training
    assert model.config.position_embedding == source.config.position_embedding
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert torch.equal(model.model.alibi_slopes, source.model.alibi_slopes)
    assert torch.equal(model.model.rope_inv_freq, source.model.rope_inv_freq)
    assert isinstance(model.generation_config, GenerationConfig)


def test_files_in_layouts_are_named_like_the_official_ones(tmp_path):
    source = make_model()
    names = {layout: sorted(p.name for p in write_checkpoint(tmp_path / layout, source, source.config, layout)
                            .iterdir()) for layout in LAYOUTS}
    assert names["bin"] == ["config.json", "pytorch_model.bin"]
    assert names["bin-sharded"] == ["config.json", "pytorch_model-00001-of-00003.bin",
                                    "pytorch_model-00002-of-00003.bin", "pytorch_model-00003-of-00003.bin",
                                    "pytorch_model.bin.index.json"]
    assert names["safetensors"] == ["config.json", "model.safetensors"]
    assert names["safetensors-sharded"][-1] == "model.safetensors.index.json"
    fmt, files = find_weight_files(tmp_path / "bin-sharded")
    assert fmt == "bin" and [f.name for f in files] == shard_names("bin", 3)
    found = find_weight_files(tmp_path / "safetensors")
    assert found.format == "safetensors" and found.weight_map is None
    found = find_weight_files(tmp_path / "safetensors-sharded")
    assert set(found.weight_map) == set(source.state_dict())


@pytest.mark.parametrize("dtype,name", [(torch.float32, "float32"), (torch.float16, "fp16"),
                                        (torch.bfloat16, "bf16"), (torch.float16, "half")])
@pytest.mark.parametrize("layout", ["bin-sharded", "safetensors"])
def test_dtype_is_honoured(tmp_path, layout, dtype, name):
    source = make_model(seed=2)
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, layout)
    for torch_dtype in (dtype, name):
        model = load(folder, torch_dtype=torch_dtype)
        assert {p.dtype for p in model.parameters()} == {dtype}
        assert model.dtype == dtype
        for n, p in model.state_dict().items():
            assert torch.equal(p, source.state_dict()[n].to(dtype)), n
        assert torch.isfinite(logits(model)).all()


def test_dtype_defaults_and_auto(tmp_path):
    source = make_model()  # config torch_dtype is bfloat16, like the official 13B
    folder = write_checkpoint(tmp_path / "ckpt", source.to(torch.bfloat16), source.config, "safetensors")
    assert load(folder).dtype == torch.float32  # None means float32
    assert load(folder, torch_dtype="auto").dtype == torch.bfloat16
    assert resolve_dtype("auto", tiny_config(torch_dtype="float16")) == torch.float16
    assert resolve_dtype("torch.bfloat16") == torch.bfloat16
    with pytest.raises(CheckpointError, match="unknown torch_dtype 'int8'"):
        resolve_dtype("int8")
    with pytest.raises(CheckpointError, match="floating"):
        resolve_dtype(torch.int64)


def test_loaded_tensors_do_not_alias_the_file(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "bin")
    model = load(folder, torch_dtype=torch.float32)
    before = logits(model)
    # Overwrite the file on disk: a model still backed by the memory map would change.
    write_tensors(folder / "pytorch_model.bin", {k: torch.zeros_like(v) for k, v in source.state_dict().items()})
    assert torch.equal(logits(model), before)
    assert all(p.is_contiguous() for p in model.parameters())


def test_tied_embeddings_keep_the_tie(tmp_path):
    source = make_model(tie_word_embeddings=True)
    assert source.lm_head.weight is source.model.embed_tokens.weight
    for layout in ("bin", "safetensors-sharded"):
        folder = write_checkpoint(tmp_path / layout, source, source.config, layout)
        model = load(folder, torch_dtype=torch.float16)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert torch.equal(model.lm_head.weight, source.lm_head.weight.half())
    # A .bin written with both names (as torch.save of a tied state dict does) loads too.
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(source.config.to_dict()))
    write_tensors(folder / "pytorch_model.bin", state_dict_of(source))
    model = load(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(logits(model), logits(source))


def test_generation_config_is_read_when_present(tmp_path):
    source = make_model()
    reference = json.loads((REFERENCE / "baichuan-13b" / "generation_config.json").read_text()) \
        if (REFERENCE / "baichuan-13b").is_dir() else {"temperature": 0.3, "top_k": 5, "do_sample": True}
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors", generation_config=reference)
    model = load(folder)
    assert model.generation_config.temperature == reference["temperature"]
    assert model.generation_config.top_k == reference["top_k"]


def test_config_argument_overrides_config_json(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, None, "safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        load(folder)
    model = load_model(folder, config=source.config, progress=False)
    assert torch.equal(logits(model), logits(source))


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    source = make_model()
    folder = write_checkpoint(tmp_path / "my-ckpt", source, source.config, "bin-sharded")
    load(folder, progress=True)
    captured = capsys.readouterr()
    assert "Loading my-ckpt" in captured.err
    assert captured.out == ""
    load(folder, progress=False)
    assert "Loading" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ reference files
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is absent")


@needs_reference
def test_reference_configs_parse():
    c13 = ModelConfig.from_json_file(REFERENCE / "baichuan-13b" / "config.json")
    assert c13.position_embedding == "alibi" and c13.max_position == 4096
    assert (c13.hidden_size, c13.num_attention_heads, c13.num_hidden_layers) == (5120, 40, 40)
    c7 = ModelConfig.from_json_file(REFERENCE / "baichuan-7b" / "config.json")
    assert c7.position_embedding == "rope" and c7.max_position == 4096


@needs_reference
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_tiny_checkpoint_with_the_real_13b_index_structure(tmp_path, fmt):
    """Tensor names and shard files of the real 13B index, at 2 layers: tiny layer 0 plays real layer 14 and
    layer 1 real layer 30, the two layers the real index splits across shards."""
    real = json.loads((REFERENCE / "baichuan-13b" / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert len(real) == 283
    plays = {0: 14, 1: 30}

    def real_name(name: str) -> str:
        return re.sub(r"^model\.layers\.(\d+)\.", lambda m: f"model.layers.{plays[int(m.group(1))]}.", name)

    config = ModelConfig.from_dict({**json.loads((REFERENCE / "baichuan-13b" / "config.json").read_text()),
                                    "hidden_size": 80, "num_attention_heads": 5, "intermediate_size": 96,
                                    "num_hidden_layers": 2, "vocab_size": 128})
    source = BaichuanForCausalLM.from_config(config, seed=3)
    names = list(source.state_dict())
    # Our parameter names are exactly the official ones.
    assert {real_name(n) for n in names} == {n for n in real
                                             if not n.startswith("model.layers.") or int(n.split(".")[2]) in (14, 30)}
    files = sorted(set(real.values()))
    assignment = {n: files.index(real[real_name(n)]) for n in names}
    assert set(assignment.values()) == {0, 1, 2}
    layout = "bin-sharded" if fmt == "bin" else "safetensors-sharded"
    folder = write_checkpoint(tmp_path / "ckpt", source, config, layout, assignment=assignment)
    if fmt == "bin":
        index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
        assert sorted(set(index["weight_map"].values())) == files
        assert set(index) == {"metadata", "weight_map"}
        (folder / "config.json").write_text((REFERENCE / "baichuan-13b" / "config.json").read_text()
                                            .replace('"hidden_size": 5120', '"hidden_size": 80')
                                            .replace('"num_attention_heads": 40', '"num_attention_heads": 5')
                                            .replace('"intermediate_size": 13696', '"intermediate_size": 96')
                                            .replace('"num_hidden_layers": 40', '"num_hidden_layers": 2')
                                            .replace('"vocab_size": 64000', '"vocab_size": 128'))
    model = load(folder, torch_dtype="auto")
    assert model.dtype == torch.bfloat16
    assert torch.equal(logits(model), logits(source.to(torch.bfloat16)))


# ------------------------------------------------------------------------------------------ errors
def _loaded_error(folder, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        load(folder, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_tensor_is_named(tmp_path, layout):
    source = make_model()
    sd = state_dict_of(source)
    del sd["model.layers.1.mlp.up_proj.weight"]
    folder = write_checkpoint(tmp_path / "ckpt", sd, source.config, layout)
    message = _loaded_error(folder)
    assert "missing 1 tensor" in message and "model.layers.1.mlp.up_proj.weight" in message
    with pytest.warns(UserWarning, match="model.layers.1.mlp.up_proj.weight"):
        model = load(folder, strict=False)
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "cpu"
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight)


def test_many_missing_tensors_are_summarised(tmp_path):
    source = make_model()
    sd = {k: v for k, v in state_dict_of(source).items() if "layers.1." not in k}
    folder = write_checkpoint(tmp_path / "ckpt", sd, source.config, "safetensors")
    message = _loaded_error(folder)
    assert "missing 7 tensor(s)" in message and "(and 2 more)" in message


@pytest.mark.parametrize("layout", ["bin", "safetensors-sharded"])
def test_unexpected_tensor_is_named(tmp_path, layout):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, layout,
                              extra={"model.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64)})
    message = _loaded_error(folder)
    assert "unexpected tensor model.layers.0.self_attn.q_proj.weight" in message
    with pytest.warns(UserWarning, match="q_proj"):
        model = load(folder, strict=False)
    assert torch.equal(logits(model), logits(source))


@pytest.mark.parametrize("layout", ["bin-sharded", "safetensors"])
def test_misshaped_tensor_names_both_shapes(tmp_path, layout):
    source = make_model()
    sd = state_dict_of(source)
    sd["model.layers.0.self_attn.W_pack.weight"] = torch.zeros(64, 64)
    folder = write_checkpoint(tmp_path / "ckpt", sd, source.config, layout)
    message = _loaded_error(folder, strict=False)
    assert "model.layers.0.self_attn.W_pack.weight" in message
    assert "[64, 64]" in message and "[192, 64]" in message


def test_config_that_does_not_match_the_weights(tmp_path):
    source = make_model("alibi-8h")
    folder = write_checkpoint(tmp_path / "ckpt", source, tiny_config(**SHAPES["alibi-5h"]), "safetensors")
    assert "expects [128, 80]" in _loaded_error(folder)


def test_rope_inv_freq_buffers_are_skipped(tmp_path):
    source = make_model("rope-8h")
    extra = rope_inv_freq_tensors(source.config)
    for layout in ("bin", "bin-sharded"):
        folder = write_checkpoint(tmp_path / layout, source, source.config, layout, extra=extra)
        if layout == "bin-sharded":
            index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
            assert "model.layers.0.self_attn.rotary_emb.inv_freq" in index["weight_map"]
        model = load(folder)
        assert torch.equal(logits(model), logits(source))
        assert "rotary_emb" not in " ".join(model.state_dict())


def _truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("layout,file", [("bin", "pytorch_model.bin"),
                                         ("bin-sharded", "pytorch_model-00002-of-00003.bin"),
                                         ("safetensors", "model.safetensors"),
                                         ("safetensors-sharded", "model-00003-of-00003.safetensors")])
@pytest.mark.parametrize("damage", ["half", "zero", "garbage", "tail"])
def test_corrupt_files_give_a_one_line_error(tmp_path, layout, file, damage):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, layout)
    path = folder / file
    if damage == "half":
        _truncate(path, 0.5)
    elif damage == "tail":
        _truncate(path, 0.98)
    elif damage == "zero":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x13" + random.Random(0).randbytes(4095))
    message = _loaded_error(folder)
    assert message.startswith(f"checkpoint file {path} is truncated or corrupt: ")
    assert len(message) < 400
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        list(iter_tensors(path))


@pytest.mark.parametrize("offset", [0, 10, 20])
def test_corrupt_pickle_inside_a_valid_zip(tmp_path, offset):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "bin")
    path = folder / "pytorch_model.bin"
    data = bytearray(path.read_bytes())
    start = data.find(b"data.pkl") + 8 + 60 + offset  # into the pickle stream
    data[start : start + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    message = _loaded_error(folder)
    assert message.startswith(f"checkpoint file {path} is truncated or corrupt: ")
    assert "Weights only load failed" not in message and len(message) < 400


def test_bad_safetensors_header(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[8:9] = b"["  # header JSON starts with '{'
    (folder / "model.safetensors").write_bytes(bytes(data))
    message = _loaded_error(folder)
    assert "is truncated or corrupt" in message and "header" in message


def test_index_pointing_to_a_missing_shard(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "bin-sharded")
    (folder / "pytorch_model-00002-of-00003.bin").unlink()
    message = _loaded_error(folder)
    assert "pytorch_model-00002-of-00003.bin" in message and "missing" in message
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00003.bin"):
        find_weight_files(folder)


def test_index_disagreeing_with_its_shards(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors-sharded")
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    # The index says the embeddings live in shard 3, but they are written in shard 1.
    index["weight_map"]["model.embed_tokens.weight"] = "model-00003-of-00003.safetensors"
    index_file.write_text(json.dumps(index))
    message = _loaded_error(folder)
    assert message == ("tensor model.embed_tokens.weight is in shard model-00001-of-00003.safetensors but the "
                       "index model.safetensors.index.json puts it in model-00003-of-00003.safetensors")
    # ... or in shard 1 while it is written in shard 3: shard 1 turns out not to hold it.
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.embed_tokens.weight"] = "model-00001-of-00003.safetensors"
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors"
    index_file.write_text(json.dumps(index))
    message = _loaded_error(folder)
    assert message == ("tensor model.norm.weight is listed in model.safetensors.index.json for shard "
                       "model-00001-of-00003.safetensors but is not in that file")
    # ... or not at all.
    del index["weight_map"]["model.norm.weight"]
    index_file.write_text(json.dumps(index))
    assert "model.norm.weight" in _loaded_error(folder) and "does not list it" in _loaded_error(folder)

    # A tensor listed for a shard that does not hold it.
    folder = write_checkpoint(tmp_path / "ckpt2", source, source.config, "bin-sharded")
    index_file = folder / "pytorch_model.bin.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.layers.0.self_attn.k_proj.weight"] = "pytorch_model-00001-of-00003.bin"
    index_file.write_text(json.dumps(index))
    message = _loaded_error(folder)
    assert "model.layers.0.self_attn.k_proj.weight" in message and "pytorch_model-00001-of-00003.bin" in message


def test_no_weights_lists_what_was_looked_for(tmp_path):
    source = make_model()
    (tmp_path / "config.json").write_text(json.dumps(source.config.to_dict()))
    message = _loaded_error(tmp_path)
    for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                 "pytorch_model.bin"):
        assert name in message


def test_bad_index_json(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "bin-sharded")
    (folder / "pytorch_model.bin.index.json").write_text("{not json")
    assert "not valid JSON" in _loaded_error(folder)
    (folder / "pytorch_model.bin.index.json").write_text('{"metadata": {}}')
    assert "weight_map" in _loaded_error(folder)
    (folder / "pytorch_model.bin.index.json").write_text('{"weight_map": {"lm_head.weight": "../x.bin"}}')
    assert "outside the checkpoint folder" in _loaded_error(folder)


class Payload:
    """Anything that is not a tensor: unpickling it would run arbitrary code in general."""

    def __init__(self):
        self.value = 3


class MyStateDict(collections.OrderedDict):
    pass


@pytest.mark.parametrize("kind", ["object", "odict-subclass"])
def test_pickle_with_non_tensor_objects_is_refused(tmp_path, kind):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors")
    (folder / "model.safetensors").unlink()
    sd = state_dict_of(source)
    if kind == "object":
        sd["payload"] = Payload()
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        torch.save(MyStateDict(sd), folder / "pytorch_model.bin")
    message = _loaded_error(folder)
    assert message.startswith(f"refusing to unpickle {folder / 'pytorch_model.bin'}")
    assert ("Payload" if kind == "object" else "MyStateDict") in message


def test_pickle_that_is_not_a_flat_state_dict(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({"state_dict": state_dict_of(source)}, folder / "pytorch_model.bin")
    assert "not a tensor" in _loaded_error(folder)
    torch.save([1, 2], folder / "pytorch_model.bin")
    assert "holds a list" in _loaded_error(folder)


def test_integer_tensors_are_refused(tmp_path):
    source = make_model()
    sd = state_dict_of(source)
    sd["model.norm.weight"] = torch.ones(64, dtype=torch.int8)
    folder = write_checkpoint(tmp_path / "ckpt", sd, source.config, "safetensors")
    assert "int8" in _loaded_error(folder)


def test_legacy_pickle_format_loads(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state_dict_of(source), folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(logits(load(folder)), logits(source))


# ------------------------------------------------------------------------------------------ resolving paths
def test_resolve_local_folder_and_missing_path(tmp_path):
    assert resolve_model_path(tmp_path) == tmp_path
    assert resolve_model_path(str(tmp_path)) == tmp_path
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_model_path(tmp_path / "absent" / "deeper" / "x")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model_path(tmp_path / "file.bin")


def test_offline_hub_id_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load("no-such-owner/no-such-model")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face hub for 'no-such-owner/no-such-model' (offline")
    assert "download no-such-owner/no-such-model --local-dir no-such-model" in message
    assert "copy the folder here and pass its path" in message


def test_hub_cache_is_used_offline(tmp_path, monkeypatch):
    """A snapshot already in the HF cache loads with HF_HUB_OFFLINE=1 (cache layout built by hand: files in
    blobs/, symlinked from snapshots/<commit>/)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / "models--some-owner--tiny-baichuan"
    commit = "0123456789abcdef0123456789abcdef01234567"
    source = make_model()
    snapshot = write_checkpoint(repo / "snapshots" / commit, source, source.config, "bin-sharded")
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted(snapshot.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        file.rename(blob)
        file.symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    model = load("some-owner/tiny-baichuan")
    assert torch.equal(logits(model), logits(source))


# ------------------------------------------------------------------------------------------ device maps
def test_plan_devices_simple_maps():
    config = tiny_config(layers=4)
    cpu = torch.device("cpu")
    assert set(plan_devices(config, None).values()) == {cpu}
    assert set(plan_devices(config, "cpu").values()) == {cpu}
    assert set(plan_devices(config, "auto", num_gpus=0).values()) == {cpu}
    assert set(plan_devices(config, "cuda:1").values()) == {torch.device("cuda:1")}
    assert set(plan_devices(config, 2).values()) == {torch.device("cuda:2")}
    assert set(plan_devices(config, torch.device("cuda", 0)).values()) == {torch.device("cuda:0")}
    assert list(plan_devices(config, None)) == ["model.embed_tokens", "model.layers.0", "model.layers.1",
                                                "model.layers.2", "model.layers.3", "model.norm", "lm_head"]


@pytest.mark.parametrize("gpus", [1, 2, 3])
def test_plan_devices_auto_splits_the_real_13b_shape(gpus):
    config = ModelConfig.from_name("baichuan-13b")
    plan = plan_devices(config, "auto", num_gpus=gpus)
    assert plan["model.embed_tokens"] == torch.device("cuda:0")
    assert plan["model.norm"] == plan["lm_head"] == torch.device(f"cuda:{gpus - 1}")
    layer_gpus = [plan[f"model.layers.{i}"].index for i in range(40)]
    assert layer_gpus == sorted(layer_gpus)  # contiguous runs
    assert set(layer_gpus) == set(range(gpus))
    # Balanced by bytes: every GPU within one layer of the mean.
    per_gpu = collections.Counter()
    for unit, device in plan.items():
        per_gpu[device.index] += {"model.embed_tokens": 64000 * 5120, "lm_head": 64000 * 5120,
                                  "model.norm": 5120}.get(unit, 4 * 5120**2 + 3 * 5120 * 13696 + 2 * 5120)
    mean = sum(per_gpu.values()) / gpus
    assert all(abs(v - mean) <= 4 * 5120**2 + 3 * 5120 * 13696 for v in per_gpu.values())
    if gpus == 2:
        assert layer_gpus.count(0) == layer_gpus.count(1) == 20


def test_plan_devices_auto_with_tied_embeddings_keeps_head_with_embeddings():
    config = tiny_config(layers=4, tie_word_embeddings=True)
    plan = plan_devices(config, "auto", num_gpus=2)
    assert plan["lm_head"] == plan["model.embed_tokens"] == torch.device("cuda:0")
    with pytest.raises(CheckpointError, match="tied"):
        plan_devices(config, {"model.embed_tokens": 0, "model.layers": 0, "model.norm": 1, "lm_head": 1})


def test_plan_devices_from_dicts():
    config = tiny_config(layers=3)
    plan = plan_devices(config, {"model": "cpu", "model.layers.2": 1, "lm_head": "cuda:1"})
    assert plan["model.embed_tokens"] == plan["model.layers.1"] == plan["model.norm"] == torch.device("cpu")
    assert plan["model.layers.2"] == plan["lm_head"] == torch.device("cuda:1")
    assert set(plan_devices(config, {"": "cpu"}).values()) == {torch.device("cpu")}
    with pytest.raises(CheckpointError, match=r"does not place 2 module\(s\): model.layers.1, lm_head"):
        plan_devices(config, {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.2": "cpu",
                              "model.norm": "cpu"})
    with pytest.raises(CheckpointError, match="'model.layers.7' names no module"):
        plan_devices(config, {"": "cpu", "model.layers.7": "cpu"})
    with pytest.raises(CheckpointError, match="splits 'model.layers.0'"):
        plan_devices(config, {"": "cpu", "model.layers.0.mlp": "cpu"})
    with pytest.raises(CheckpointError, match="not supported"):
        plan_devices(config, {"": "meta"})
    with pytest.raises(CheckpointError, match="not a device"):
        plan_devices(config, {"": "gpu-zero"})


def test_dict_device_map_with_all_cpu_entries_loads_and_runs(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "bin-sharded")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": torch.device("cpu"),
                  "model.norm": "cpu", "lm_head": "cpu"}
    model = load(folder, device_map=device_map)
    assert torch.equal(logits(model), logits(source))
    assert torch.equal(logits(load(folder, device_map="auto" if not torch.cuda.is_available() else "cpu")),
                       logits(source))


def test_dict_device_map_with_an_uncovered_module_errors(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors")
    message = _loaded_error(folder, device_map={"model.embed_tokens": "cpu", "model.layers.0": "cpu",
                                                "model.norm": "cpu", "lm_head": "cpu"})
    assert "model.layers.1" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_map_without_cuda(tmp_path):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "safetensors")
    assert "no CUDA device is visible" in _loaded_error(folder, device_map="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("device_map", ["cuda", "auto", {"": "cpu", "model.layers.1": 0, "lm_head": 0}])
def test_gpu_device_maps(tmp_path, device_map):
    source = make_model()
    folder = write_checkpoint(tmp_path / "ckpt", source, source.config, "bin-sharded")
    model = load(folder, device_map=device_map, torch_dtype=torch.float32)
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "cuda"
    assert torch.allclose(logits(model), logits(source), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ saving
def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_save_round_trip(tmp_path, safe, sharded, shape):
    source = make_model(shape, seed=4)
    source.generation_config = GenerationConfig(temperature=0.3, top_k=5, do_sample=True)
    folder = tmp_path / "saved"
    max_shard = "40KB" if sharded else "10GB"
    source.save_pretrained(folder, safe_serialization=safe, max_shard_size=max_shard, progress=False)
    names = _names(folder)
    stem, ext = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    weights = [n for n in names if n.endswith("." + ext)]
    if sharded:
        n = len(weights)
        assert n > 2
        assert weights == [f"{stem}-{k:05d}-of-{n:05d}.{ext}" for k in range(1, n + 1)]
        index_name = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
        assert names == sorted(["config.json", "generation_config.json", index_name] + weights)
        index = json.loads((folder / index_name).read_text())
        assert set(index) == {"metadata", "weight_map"}
        assert set(index["weight_map"]) == set(source.state_dict())
        assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in source.state_dict().values())
        assert set(index["weight_map"].values()) == set(weights)
    else:
        assert names == sorted(["config.json", "generation_config.json", f"{stem}.{ext}" if safe
                                else "pytorch_model.bin"])
    assert ModelConfig.from_json_file(folder / "config.json").to_dict() == source.config.to_dict()
    model = load(folder)
    assert_same_weights(model, source)
    assert torch.equal(logits(model), logits(source))
    assert model.generation_config.temperature == 0.3 and model.generation_config.top_k == 5
    # Files we wrote are readable by the plain libraries (not only by our loader).
    for w in weights:
        if safe:
            from safetensors.torch import load_file

            assert load_file(str(folder / w))
        else:
            assert torch.load(folder / w, weights_only=True)


def test_save_with_dtype_and_tied_weights(tmp_path):
    source = make_model(tie_word_embeddings=True)
    save_model(source, tmp_path / "out", dtype="bf16", progress=False)
    assert _names(tmp_path / "out") == ["config.json", "model.safetensors"]  # no generation_config set
    names = [n for n, _ in iter_tensors(tmp_path / "out" / "model.safetensors")]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert {t.dtype for _, t in iter_tensors(tmp_path / "out" / "model.safetensors")} == {torch.bfloat16}
    assert source.dtype == torch.float32  # the model itself is unchanged
    model = load(tmp_path / "out", torch_dtype="auto")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(logits(model), logits(source.to(torch.bfloat16)))


def test_save_replaces_an_earlier_layout_and_leaves_no_temp_files(tmp_path):
    source = make_model(seed=5)
    other = make_model(seed=6)
    folder = tmp_path / "out"
    save_model(other, folder, safe_serialization=True, max_shard_size=30_000, progress=False)
    save_model(other, folder, safe_serialization=False, max_shard_size=30_000, progress=False)
    (folder / "tokenizer.model").write_bytes(b"keep me")
    save_model(source, folder, safe_serialization=True, progress=False)
    assert _names(folder) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert torch.equal(logits(load(folder)), logits(source))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_save_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(make_model(), tmp_path / "out", progress=False)
    assert _names(tmp_path / "out") == ["config.json"]


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("200MB") == 200 * 10**6
    assert parse_size("10GB") == 10 * 10**9
    assert parse_size("1.5 gb") == 1_500_000_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500KB") == 500_000
    for bad in ("lots", "10XB", 0, -5, "0MB"):
        with pytest.raises(CheckpointError):
            parse_size(bad)


def test_atomic_writes(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.json", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _names(tmp_path / "sub") == ["a.json"]
    (tmp_path / "plain").write_text("x")  # atomic files get the usual permissions, not mkstemp's 0o600
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777

"""The public API as the README shows it, on a tiny checkpoint in the official layout."""

import shutil

import pytest
import torch
from checkpoints import SHARED, tiny_config, write_checkpoint

from baichuan13b import BaichuanForCausalLM, BaichuanTokenizer, GenerationConfig

OFFICIAL_GEN = {"assistant_token_id": 196, "bos_token_id": 1, "do_sample": True, "eos_token_id": 2,
                "max_new_tokens": 2048, "pad_token_id": 0, "repetition_penalty": 1.1, "temperature": 0.3,
                "top_k": 5, "top_p": 0.85, "user_token_id": 195}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_tokenizer_dir):
    tok = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)
    cfg = tiny_config(vocab=tok.vocab_size, max_position=128)
    model = BaichuanForCausalLM.from_config(cfg, seed=3)
    out = write_checkpoint(tmp_path_factory.mktemp("api"), model, cfg, "bin-sharded",
                           generation_config=dict(OFFICIAL_GEN, user_token_id=3, assistant_token_id=4,
                                                  max_new_tokens=16))
    for f in tiny_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def test_readme_flow(folder):
    tokenizer = BaichuanTokenizer.from_pretrained(folder)
    model = BaichuanForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16, device_map="auto",
                                                progress=False)
    model.generation_config = GenerationConfig.from_pretrained(folder)
    assert model.dtype == torch.bfloat16 and model.device.type in ("cpu", "cuda")
    assert model.generation_config.temperature == 0.3 and model.generation_config.top_k == 5
    messages = [{"role": "user", "content": "世界上第二高的山峰是哪座"}]
    answer = model.chat(tokenizer, messages, seed=0)
    assert isinstance(answer, str)
    steps = list(model.chat(tokenizer, messages, stream=True, seed=0))
    assert (steps[-1] if steps else "") == answer  # same seed, same sampled answer

    batch = tokenizer(["Hello", "今天天气很好，我们去公园散步吧。"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # left padded
    logits = model(batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], tokenizer.vocab_size)
    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5,
                         do_sample=False)
    assert out.shape[0] == 2 and torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert texts[1].startswith("今天天气很好")


def test_float16_load_and_generate(folder):
    model = BaichuanForCausalLM.from_pretrained(folder, torch_dtype="float16", progress=False)
    assert model.dtype == torch.float16
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert out.shape == (1, 7)


@pytest.mark.skipif(not (SHARED / "tokenizer" / "tokenizer.model").is_file(), reason="needs ../shared")
def test_chat_ids_with_the_real_tokenizer():
    from baichuan13b.chat import build_chat_ids

    tok = BaichuanTokenizer.from_pretrained(SHARED / "tokenizer" / "tokenizer.model")
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
            {"role": "user", "content": "世界上第二高的山峰是哪座"}]
    ids = build_chat_ids(tok, msgs, model_max_length=4096, max_new_tokens=2048, user_token_id=195,
                         assistant_token_id=196, eos_token_id=2)
    sp = tok.sp_model if hasattr(tok, "sp_model") else None
    enc = sp.encode if sp is not None else tok.encode
    expected = ([195] + enc("你好") + [196] + enc("你好！有什么可以帮你？") + [2]
                + [195] + enc("世界上第二高的山峰是哪座") + [196])
    assert ids == expected
    assert tok.decode(ids[1:-1]).startswith("你好")

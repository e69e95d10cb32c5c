"""Tests for baichuan13b.tokenizer (pure SentencePiece, no transformers)."""

from __future__ import annotations

import json
import random
import shutil
import sys
import types
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from baichuan13b.tokenizer import BaichuanTokenizer, StreamDecoder

REAL_MODEL = Path(__file__).resolve().parents[2] / "shared" / "tokenizer" / "tokenizer.model"
REAL_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "baichuan-13b"
needs_real = pytest.mark.skipif(not REAL_MODEL.is_file(), reason=f"{REAL_MODEL} not available")

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！",
    "百川大模型是一个开源的中英双语模型。",
    "中文和English混合 text 123",
    "罕见字：鑫龘麤爨齉",  # byte fallback in the tiny model
    "丐 and 😀🚀 emoji 👍🏽",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   spaces\tand\ttabs",
    "line one\nline two\n\n  indented\n",
    "\n\nstarts with newlines",
    " ",
    "",
    "text with </s> and <s> and <unk> literals",
    "e\u0301 combining accent",
]


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tiny_tokenizer_dir: Path) -> BaichuanTokenizer:
    return BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_sp(tiny_tokenizer_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Official-shaped folder: the real tokenizer.model plus the reference configs."""
    if not REAL_MODEL.is_file():
        pytest.skip(f"{REAL_MODEL} not available")
    folder = tmp_path_factory.mktemp("real_tokenizer")
    shutil.copyfile(REAL_MODEL, folder / "tokenizer.model")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (REAL_REFERENCE / name).is_file():
            shutil.copyfile(REAL_REFERENCE / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def real(real_dir: Path) -> BaichuanTokenizer:
    return BaichuanTokenizer.from_pretrained(real_dir)


@pytest.fixture(scope="module")
def real_sp() -> spm.SentencePieceProcessor:
    if not REAL_MODEL.is_file():
        pytest.skip(f"{REAL_MODEL} not available")
    return spm.SentencePieceProcessor(model_file=str(REAL_MODEL))


def _stream(tok: BaichuanTokenizer, ids: list[int], skip: bool = True) -> list[str]:
    dec = tok.stream_decoder(skip_special_tokens=skip)
    chunks = [dec.put(i) for i in ids]
    chunks.append(dec.flush())
    assert dec.text == "".join(chunks)
    return chunks


def _byte_id(sp: spm.SentencePieceProcessor, value: int) -> int:
    idx = sp.piece_to_id(f"<0x{value:02X}>")
    assert sp.is_byte(idx)
    return idx


# ------------------------------------------------------------ basic / vocab
def test_tiny_properties(tiny: BaichuanTokenizer, tiny_sp: spm.SentencePieceProcessor) -> None:
    assert tiny.vocab_size == len(tiny) == tiny_sp.get_piece_size() == 400
    assert (tiny.unk_token_id, tiny.bos_token_id, tiny.eos_token_id) == (0, 1, 2)
    assert tiny.pad_token == "<unk>" and tiny.pad_token_id == 0
    assert tiny.all_special_ids == [1, 2, 0]
    assert tiny.all_special_tokens == ["<s>", "</s>", "<unk>"]
    assert tiny.add_bos_token is False and tiny.add_eos_token is False
    assert tiny.model_max_length == 4096
    vocab = tiny.get_vocab()
    assert len(vocab) == 400 and vocab["<s>"] == 1 and vocab["<0x41>"] == tiny_sp.piece_to_id("<0x41>")
    assert tiny.convert_tokens_to_ids("</s>") == 2
    assert tiny.convert_tokens_to_ids(["<s>", "<reserved_102>"]) == [1, 3]
    assert tiny.convert_tokens_to_ids("no-such-piece") == 0
    assert tiny.convert_ids_to_tokens(2) == "</s>"
    assert tiny.convert_ids_to_tokens([1, 3, 4]) == ["<s>", "<reserved_102>", "<reserved_103>"]
    assert tiny.convert_ids_to_tokens([1, 3, 2], skip_special_tokens=True) == ["<reserved_102>"]
    with pytest.raises(IndexError):
        tiny.convert_ids_to_tokens(10_000)
    assert "BaichuanTokenizer" in repr(tiny)


def test_constructor_defaults(tiny_tokenizer_dir: Path) -> None:
    tok = BaichuanTokenizer(tiny_tokenizer_dir / "tokenizer.model")
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok.all_special_ids == [1, 2, 0]
    # padding falls back to unk when no pad token is set
    out = tok(["a", "a b c"], padding=True)
    assert out["input_ids"][0][0] == 0 and out["attention_mask"][0][0] == 0


def test_from_model_file_path(tiny_tokenizer_dir: Path, tiny: BaichuanTokenizer) -> None:
    tok = BaichuanTokenizer.from_pretrained(str(tiny_tokenizer_dir / "tokenizer.model"))
    assert tok.vocab_size == tiny.vocab_size
    assert tok.encode("你好 world") == tiny.encode("你好 world")


# ----------------------------------------------------------------- encoding
@pytest.mark.parametrize("text", TEXTS)
def test_tiny_round_trip(tiny: BaichuanTokenizer, tiny_sp: spm.SentencePieceProcessor, text: str) -> None:
    ids = tiny.encode(text)
    assert ids == tiny_sp.encode(text)
    assert tiny.tokenize(text) == tiny_sp.encode(text, out_type=str)
    assert tiny.decode(ids) == tiny_sp.decode(ids) == text
    assert tiny.decode(ids, skip_special_tokens=True) == text


def test_tiny_uses_byte_fallback(tiny: BaichuanTokenizer) -> None:
    pieces = tiny.tokenize("鑫")
    assert pieces == ["\u2581", "<0xE9>", "<0x91>", "<0xAB>"]
    assert tiny.decode(tiny.encode("鑫")) == "鑫"


def test_special_token_text_is_plain_text(tiny: BaichuanTokenizer) -> None:
    ids = tiny.encode("</s><s><unk>")
    assert not set(ids) & {0, 1, 2}
    assert tiny.decode(ids) == "</s><s><unk>"
    assert tiny.decode(ids, skip_special_tokens=True) == "</s><s><unk>"


def test_add_bos_eos_from_config(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg["add_eos_token"] = True
    cfg["bos_token"] = "<s>"  # plain string form is accepted too
    cfg_path.write_text(json.dumps(cfg))
    tok = BaichuanTokenizer.from_pretrained(folder)
    body = tok.encode("hello", add_special_tokens=False)
    assert tok.encode("hello") == [1] + body + [2]
    assert tok("hello")["input_ids"] == [1] + body + [2]
    assert tok("hello", add_special_tokens=False)["input_ids"] == body
    assert tok.decode(tok.encode("hello"), skip_special_tokens=True) == "hello"
    assert tok.decode(tok.encode("hello")) == "<s>hello</s>"
    # keyword arguments override the config
    assert BaichuanTokenizer.from_pretrained(folder, add_eos_token=False).encode("hello") == [1] + body


def test_call_single_and_batch(tiny: BaichuanTokenizer) -> None:
    a, b = "hi", "Hello world, 你好"
    ia, ib = tiny.encode(a), tiny.encode(b)
    assert len(ia) < len(ib)
    single = tiny(b)
    assert single == {"input_ids": ib, "attention_mask": [1] * len(ib)}

    unpadded = tiny([a, b])
    assert unpadded["input_ids"] == [ia, ib]
    assert unpadded["attention_mask"] == [[1] * len(ia), [1] * len(ib)]

    n = len(ib) - len(ia)
    for padding in (True, "longest"):
        left = tiny([a, b], padding=padding)
        assert left["input_ids"] == [[0] * n + ia, ib]
        assert left["attention_mask"] == [[0] * n + [1] * len(ia), [1] * len(ib)]
    right = tiny([a, b], padding=True, padding_side="right")
    assert right["input_ids"] == [ia + [0] * n, ib]
    assert right["attention_mask"] == [[1] * len(ia) + [0] * n, [1] * len(ib)]

    pt = tiny([a, b], padding=True, return_tensors="pt")
    assert pt["input_ids"].dtype == torch.long and pt["input_ids"].shape == (2, len(ib))
    assert pt["input_ids"].tolist() == [[0] * n + ia, ib]
    assert pt["attention_mask"].tolist() == left["attention_mask"]
    single_pt = tiny(b, return_tensors="pt")
    assert single_pt["input_ids"].shape == (1, len(ib))

    with pytest.raises(ValueError, match="padding"):
        tiny([a, b], return_tensors="pt")
    with pytest.raises(ValueError):
        tiny([a, b], padding="max_length")
    with pytest.raises(ValueError):
        tiny([a, b], padding=True, padding_side="middle")
    with pytest.raises(TypeError):
        tiny(123)  # type: ignore[arg-type]


# ----------------------------------------------------------------- decoding
def test_decode_special_tokens(tiny: BaichuanTokenizer) -> None:
    body = tiny.encode("Hello world")
    ids = [1] + body + [2, 0] + tiny.encode("你好")
    assert tiny.decode(ids, skip_special_tokens=True) == tiny.sp_model.decode(body + tiny.encode("你好"))
    assert tiny.decode(ids, skip_special_tokens=True) == "Hello world 你好"
    # Literal rendering: sp.decode on runs of ordinary ids, specials as text.
    assert tiny.decode(ids) == "<s>Hello world</s><unk>你好"
    assert tiny.decode([2]) == "</s>"
    assert tiny.decode([2], skip_special_tokens=True) == ""
    assert tiny.decode([]) == ""


def test_decode_accepts_tensors(tiny: BaichuanTokenizer) -> None:
    ids = tiny.encode("张量 tensor")
    assert tiny.decode(torch.tensor(ids)) == "张量 tensor"
    assert tiny.decode(ids[0]) == tiny.sp_model.decode([ids[0]])
    batch = torch.tensor([ids, ids])
    assert tiny.batch_decode(batch) == ["张量 tensor"] * 2
    assert tiny.batch_decode([[1] + ids + [2], ids], skip_special_tokens=True) == ["张量 tensor"] * 2
    with pytest.raises(ValueError):
        tiny.decode(batch)


def test_save_pretrained_round_trip(tiny: BaichuanTokenizer, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "saved")
    again = BaichuanTokenizer.from_pretrained(tmp_path / "saved")
    assert again.encode(TEXTS[4]) == tiny.encode(TEXTS[4])
    assert again.pad_token_id == tiny.pad_token_id and again.add_bos_token == tiny.add_bos_token
    cfg = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert cfg["bos_token"]["__type"] == "AddedToken" and cfg["add_bos_token"] is False


# ---------------------------------------------------------------- streaming
@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_decode(tiny: BaichuanTokenizer, text: str) -> None:
    ids = tiny.encode(text)
    full = tiny.decode(ids, skip_special_tokens=True)
    chunks = _stream(tiny, ids)
    assert "".join(chunks) == full == text
    if "\ufffd" not in full:
        assert not any("\ufffd" in c for c in chunks)


@pytest.mark.parametrize("skip", [True, False])
def test_stream_with_special_tokens(tiny: BaichuanTokenizer, skip: bool) -> None:
    ids = [1] + tiny.encode(" Hello 鑫") + [2, 0] + tiny.encode("  你好\n") + [2]
    chunks = _stream(tiny, ids, skip=skip)
    assert "".join(chunks) == tiny.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in c for c in chunks)


def test_stream_holds_partial_utf8(tiny: BaichuanTokenizer, tiny_sp: spm.SentencePieceProcessor) -> None:
    ids = tiny.encode("a鑫")
    assert [tiny_sp.id_to_piece(i) for i in ids[-3:]] == ["<0xE9>", "<0x91>", "<0xAB>"]
    dec = StreamDecoder(tiny, skip_special_tokens=True)
    outs = [dec.put(i) for i in ids]
    assert outs[-3:] == ["", "", "鑫"]
    assert dec.flush() == ""
    assert dec.text == "a鑫"

    # 4-byte emoji through bytes, leading-space rule at the start of the text.
    emoji = [_byte_id(tiny_sp, b) for b in "😀".encode()]
    ids = [tiny_sp.piece_to_id("\u2581")] + emoji + tiny.encode("x")  # "▁x"
    chunks = _stream(tiny, ids)
    assert chunks[:5] == ["", "", "", "", "😀"]
    assert "".join(chunks) == tiny.decode(ids) == "😀 x"

    # An unfinished character at the end is flushed as U+FFFD, like decode().
    ids = tiny.encode("ok") + emoji[:2]
    dec = tiny.stream_decoder()
    assert "".join(dec.put(i) for i in ids) == "ok"
    rest = dec.flush()
    assert "ok" + rest == tiny.decode(ids) and "\ufffd" in rest


def test_stream_leading_space_pieces(tiny: BaichuanTokenizer, tiny_sp: spm.SentencePieceProcessor) -> None:
    space = tiny_sp.piece_to_id("\u2581")
    word = tiny.encode("a")  # ["▁a"]
    cases = [
        [space, space] + word,
        word + [space, space] + word,
        [1, space] + word,
        [space] + [1] + word + [2, space] + word,
    ]
    for ids in cases:
        for skip in (True, False):
            assert "".join(_stream(tiny, ids, skip)) == tiny.decode(ids, skip_special_tokens=skip), ids


def test_stream_random_ids(tiny: BaichuanTokenizer, tiny_sp: spm.SentencePieceProcessor) -> None:
    """Fuzz: arbitrary mixes of byte pieces (valid and invalid UTF-8), spaces, specials."""
    rng = random.Random(1234)
    byte_ids = [_byte_id(tiny_sp, b) for b in range(256)]
    interesting = byte_ids[0x80:] + byte_ids[0x20:0x30] + [tiny_sp.piece_to_id("\u2581"), 0, 1, 2, 3]
    for _ in range(400):
        ids = []
        for _ in range(rng.randrange(14)):
            r = rng.random()
            if r < 0.5:
                ids.append(rng.choice(interesting))
            elif r < 0.7:
                encoded = rng.choice(["丐", "😀", "é"]).encode()
                ids.extend(byte_ids[b] for b in encoded[: rng.randrange(1, len(encoded) + 1)])
            else:
                ids.append(rng.randrange(tiny.vocab_size))
        for skip in (True, False):
            chunks = _stream(tiny, ids, skip)
            full = tiny.decode(ids, skip_special_tokens=skip)
            assert "".join(chunks) == full, ids
            if "\ufffd" not in full:
                assert not any("\ufffd" in c for c in chunks), ids


class _CountingSP:
    """Proxy around a SentencePieceProcessor recording the size of every decode call."""

    def __init__(self, sp: spm.SentencePieceProcessor) -> None:
        self._sp = sp
        self.calls: list[int] = []

    def decode(self, ids: list[int]) -> str:
        self.calls.append(len(ids))
        return self._sp.decode(ids)

    def __getattr__(self, name: str):
        return getattr(self._sp, name)


def test_stream_work_is_bounded(tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = BaichuanTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = "百川大模型 streams text. 罕见字鑫龘😀\n" * 200
    ids = tok.encode(text)
    assert len(ids) >= 2000
    dec = tok.stream_decoder()
    counter = _CountingSP(tok.sp_model)
    monkeypatch.setattr(tok, "sp_model", counter)
    per_put_ids: list[int] = []
    per_put_calls: list[int] = []
    out = []
    for i in ids:
        counter.calls.clear()
        out.append(dec.put(i))
        per_put_ids.append(sum(counter.calls))
        per_put_calls.append(len(counter.calls))
    out.append(dec.flush())
    assert max(per_put_calls) <= 2
    assert max(per_put_ids) <= 16  # a handful of ids, independent of the stream length
    assert max(per_put_ids[-500:]) <= max(per_put_ids[:500])
    monkeypatch.undo()
    assert "".join(out) == tok.decode(ids) == text


# ------------------------------------------------------------------- errors
def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BaichuanTokenizer.from_pretrained(tmp_path / "no_such_folder")


def test_folder_without_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        BaichuanTokenizer.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value) and "tokenizer.model" in str(info.value)


def test_missing_model_file_constructor(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.model"):
        BaichuanTokenizer(tmp_path / "nope.model")


@pytest.mark.parametrize("payload", [b"", b"this is not a sentencepiece model\x00\xff", b'{"a": 1}'])
def test_corrupt_model(tmp_path: Path, payload: bytes) -> None:
    (tmp_path / "tokenizer.model").write_bytes(payload)
    with pytest.raises(ValueError, match="tokenizer.model"):
        BaichuanTokenizer.from_pretrained(tmp_path)


def test_bad_config(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, folder)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        BaichuanTokenizer.from_pretrained(folder)


def test_unknown_special_token(tiny_tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match="<nope>"):
        BaichuanTokenizer(tiny_tokenizer_dir / "tokenizer.model", eos_token="<nope>")


def test_hub_id_resolved_lazily(tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def resolve_model_path(path_or_id: str) -> str:
        seen.append(path_or_id)
        return str(tiny_tokenizer_dir)

    fake = types.ModuleType("baichuan13b.hub")
    fake.resolve_model_path = resolve_model_path  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "baichuan13b.hub", fake)
    tok = BaichuanTokenizer.from_pretrained("some-org/some-model")
    assert seen == ["some-org/some-model"]
    assert tok.vocab_size == 400


# ------------------------------------------------------- real Baichuan model
@needs_real
def test_real_properties(real: BaichuanTokenizer) -> None:
    assert real.vocab_size == len(real) == 64000
    assert (real.unk_token_id, real.bos_token_id, real.eos_token_id, real.pad_token_id) == (0, 1, 2, 0)
    assert real.add_bos_token is False and real.add_eos_token is False
    assert real.convert_tokens_to_ids(["<reserved_102>", "<reserved_103>"]) == [195, 196]
    assert real.all_special_ids == [1, 2, 0]


@needs_real
def test_real_model_file_path() -> None:
    tok = BaichuanTokenizer.from_pretrained(REAL_MODEL)
    assert tok.vocab_size == 64000 and tok.pad_token_id == 0


@needs_real
@pytest.mark.parametrize("text", TEXTS)
def test_real_round_trip(real: BaichuanTokenizer, real_sp: spm.SentencePieceProcessor, text: str) -> None:
    ids = real.encode(text)
    assert ids == real_sp.encode(text)
    assert real.tokenize(text) == real_sp.encode(text, out_type=str)
    full = real_sp.decode(ids)
    # The real model normalises (e.g. NFKC composes "e\u0301"), so compare with sp.
    assert real.decode(ids) == full
    assert full == text or "\u0301" in text
    chunks = _stream(real, ids)
    assert "".join(chunks) == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in c for c in chunks)


@needs_real
def test_real_known_ids(real: BaichuanTokenizer) -> None:
    assert real.encode("Hello world") == [24568, 1275]
    assert 2 not in real.encode("</s>") and real.decode(real.encode("</s>")) == "</s>"
    # Chat layout: role tokens are ordinary pieces; content encoded with a dummy prefix.
    ids = [195] + real.encode("你好") + [196] + real.encode("你好！") + [2]
    assert real.decode(ids, skip_special_tokens=True) == "<reserved_102> 你好<reserved_103> 你好！"
    assert real.decode(ids) == "<reserved_102> 你好<reserved_103> 你好！</s>"
    assert real.decode(ids[ids.index(196) + 1 :], skip_special_tokens=True) == "你好！"


@needs_real
def test_real_stream_bytes(real: BaichuanTokenizer, real_sp: spm.SentencePieceProcessor) -> None:
    byte = {b: real_sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    ids = real.encode("前缀") + [byte[b] for b in "丐😀".encode()] + real.encode(" 后缀")
    chunks = _stream(real, ids)
    assert "".join(chunks) == real.decode(ids) == real_sp.decode(ids)
    assert not any("\ufffd" in c for c in chunks)


def test_hub_id_fetches_only_tokenizer_files(tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []

    def resolve_model_path(path_or_id: str, allow_patterns: list[str] | None = None) -> Path:
        seen.append(allow_patterns)
        return tiny_tokenizer_dir

    fake = types.ModuleType("baichuan13b.hub")
    fake.resolve_model_path = resolve_model_path  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "baichuan13b.hub", fake)
    BaichuanTokenizer.from_pretrained("some-org/some-model")
    assert seen == [["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"]]

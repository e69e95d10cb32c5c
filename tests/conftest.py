# --- tiny SentencePiece tokenizer fixture (tokenizer tests) -----------------
# Self-contained: trains a small BPE model with byte fallback so tokenizer tests
# (and anything else needing a tokenizer) run without ../shared.
import json as _tok_json

import pytest as _tok_pytest

_TOK_EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a small tokenizer test.",
    "Large language models generate text one token at a time.",
    "Streaming output must never break a character in half.",
    "Numbers like 12345 and 2023 appear too.",
    "    indented code_block = value  # comment",
    "def main():\n    return 0",
]
_TOK_ZH = [
    "你好，世界！",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型一次生成一个词元。",
    "中文和英文混合的句子 with English words 也可以。",
    "百川大模型是一个开源的中英双语模型。",
    "北京是中国的首都，上海是最大的城市。",
    "我喜欢读书、写字和学习新的知识。",
]
# Each rare character occurs once: below character_coverage, so it is encoded
# with byte-fallback pieces <0xNN>.
_TOK_RARE = "鑫龘麤爨齉"


def _tok_added_token(content):
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": True,
    }


@_tok_pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Folder with a tiny Baichuan-shaped tokenizer: tokenizer.model (SentencePiece BPE,
    400 pieces, byte fallback, <unk>=0 <s>=1 </s>=2, <reserved_102>=3 <reserved_103>=4),
    tokenizer_config.json and special_tokens_map.json in the official layout
    (add_bos_token/add_eos_token false, pad_token <unk>)."""
    sentencepiece = _tok_pytest.importorskip("sentencepiece")
    work = tmp_path_factory.mktemp("tiny_tokenizer_train")
    corpus = work / "corpus.txt"
    lines = (_TOK_EN + _TOK_ZH) * 30 + ["罕见字：" + _TOK_RARE]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(work / "tokenizer"),
        model_type="bpe",
        vocab_size=400,
        character_coverage=0.9995,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=["<reserved_102>", "<reserved_103>"],
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    (out / "tokenizer.model").write_bytes((work / "tokenizer.model").read_bytes())
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
        "bos_token": _tok_added_token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _tok_added_token("</s>"),
        "model_max_length": 4096,
        "pad_token": _tok_added_token("<unk>"),
        "sp_model_kwargs": {},
        "tokenizer_class": "BaichuanTokenizer",
        "unk_token": _tok_added_token("<unk>"),
    }
    (out / "tokenizer_config.json").write_text(_tok_json.dumps(config, indent=2), encoding="utf-8")
    special = {}
    for key, content in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "<unk>")):
        entry = _tok_added_token(content)
        del entry["__type"]
        special[key] = entry
    (out / "special_tokens_map.json").write_text(_tok_json.dumps(special, indent=2), encoding="utf-8")
    return out


# --- the serving tests' chat checkpoint (tests/serving_server.py), built and loaded once per session ----------
@_tok_pytest.fixture(scope="session")
def chat_folder(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny chat checkpoint in the official layout (answers run to their length: no eos)."""
    from serving_server import build_chat_folder

    return build_chat_folder(tmp_path_factory.mktemp("serving") / "model", tiny_tokenizer_dir)


@_tok_pytest.fixture(scope="session")
def chat_model(chat_folder):
    """``(model in float64, tokenizer)`` of :func:`chat_folder`: shared, so tests must not change it."""
    from serving_server import load_float64

    return load_float64(chat_folder)

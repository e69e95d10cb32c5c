"""Train the demo model's own SentencePiece tokenizer (BPE with byte fallback) from the demo data."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import sentencepiece as spm

from ..files import atomic_write_bytes, atomic_write_text
from .data import pretraining_lines, training_items

# Control symbols (never produced from text, dropped by decode) for the chat roles, as ids 3 and 4.
USER_TOKEN, ASSISTANT_TOKEN = "<reserved_102>", "<reserved_103>"
USER_TOKEN_ID, ASSISTANT_TOKEN_ID = 3, 4


def corpus_lines() -> list[str]:
    """Every text the demo model is trained on, and nothing held out (a character that occurs only in held-out
    or unknown questions falls back to bytes, as anything else a user types)."""
    lines = list(pretraining_lines())
    for c in training_items():
        for user, assistant in c.turns():
            lines += [user, assistant]
    return lines


def train_tokenizer(folder: str | os.PathLike, vocab_size: int = 1500) -> Path:
    """Train a BPE SentencePiece model with byte fallback and write it, with its configs, to ``folder``.

    Ids: ``<unk>``=0, ``<s>``=1, ``</s>``=2, user token 3, assistant token 4 (the official layout's names and
    the ``tokenizer_config.json`` of Baichuan-13B, ``add_bos_token``/``add_eos_token`` false).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=[USER_TOKEN, ASSISTANT_TOKEN],
        split_digits=True,
        max_sentencepiece_length=4,  # short pieces: held-out phrasings reuse the trained pieces
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=2,
        minloglevel=2,
    )
    atomic_write_bytes(folder / "tokenizer.model", model.getvalue())
    token = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": True}
    config = {"add_bos_token": False, "add_eos_token": False, "bos_token": dict(token, content="<s>"),
              "eos_token": dict(token, content="</s>"), "unk_token": dict(token, content="<unk>"),
              "pad_token": dict(token, content="<unk>"), "clean_up_tokenization_spaces": False,
              "model_max_length": 4096, "sp_model_kwargs": {}, "tokenizer_class": "BaichuanTokenizer"}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    special = {k: {kk: vv for kk, vv in config[k].items() if kk != "__type"}
               for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    if (processor.piece_to_id(USER_TOKEN), processor.piece_to_id(ASSISTANT_TOKEN)) != (USER_TOKEN_ID,
                                                                                       ASSISTANT_TOKEN_ID):
        raise RuntimeError("SentencePiece placed the chat role tokens at unexpected ids")
    return folder

"""Pure SentencePiece tokenizer for Baichuan-13B / Baichuan-7B (no ``transformers``).

The official checkpoints ship ``tokenizer.model`` (a SentencePiece BPE model with
64,000 pieces and byte fallback; ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, the chat
role tokens ``<reserved_102>`` = 195 / ``<reserved_103>`` = 196), together with
``tokenizer_config.json`` and ``special_tokens_map.json``.  :class:`BaichuanTokenizer`
reads those files and reproduces the behaviour of the remote-code
``BaichuanTokenizer`` that ``transformers`` would load, with two deliberate
differences, both documented on the methods concerned:

* :meth:`BaichuanTokenizer.encode` never turns the *text* ``"<s>"``/``"</s>"``/
  ``"<unk>"`` into control ids (the old slow tokenizer split them out of the
  text first).  This prevents a user from injecting control tokens through a
  prompt.  Note that the role tokens ``<reserved_102>``/``<reserved_103>`` are
  ordinary pieces of the SentencePiece model, so ``sp.encode`` itself (and
  therefore this class, exactly like the official tokenizer) maps their literal
  text to ids 195/196; chat templates that care must sanitise user text.
* :meth:`BaichuanTokenizer.decode` renders special tokens as their literal text
  but does not insert the extra space before them that the legacy slow
  tokenizer added.

:class:`StreamDecoder` turns a stream of generated ids into text incrementally,
in O(1) work per token, with output that concatenates to exactly
``tokenizer.decode(all_ids)``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import sentencepiece as spm

from .files import read_json_object

__all__ = [
    "BaichuanTokenizer",
    "StreamDecoder",
    "InvalidTextError",
    "check_text",
    "VOCAB_FILE_NAME",
    "TOKENIZER_CONFIG_NAME",
    "SPECIAL_TOKENS_MAP_NAME",
]

VOCAB_FILE_NAME = "tokenizer.model"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
_TOKENIZER_FILES = (VOCAB_FILE_NAME, TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_MAP_NAME)

PathLike = Union[str, "os.PathLike[str]"]
TextInput = Union[str, Sequence[str]]


class InvalidTextError(ValueError):
    """Text that is not valid Unicode (a lone UTF-16 surrogate, e.g. from the JSON escape ``"\\ud800"`` or from
    undecodable bytes read with ``errors="surrogateescape"``): it has no UTF-8 form, so it cannot be tokenised."""


def check_text(text: str, what: str = "text") -> str:
    """Return ``text`` unchanged when it is valid Unicode; else raise :class:`InvalidTextError` naming ``what``
    and the position of the first lone surrogate. Every path from user text to tokens goes through this check
    (:meth:`BaichuanTokenizer.encode` calls it), so invalid text is refused, never silently altered."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidTextError(
            f"{what} is not valid Unicode: it contains the lone surrogate U+{ord(text[e.start]):04X} at character "
            f"{e.start} (send UTF-8 text; a surrogate escape such as \\ud83d must be followed by its pair)"
        ) from None
    return text


# "name" or "org/name" as used on the Hugging Face Hub.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def _looks_like_hub_id(path: str) -> bool:
    """True when ``path`` could be a Hub repo id rather than a local path."""
    if os.path.isabs(path) or path.startswith((".", "~")) or ".." in path:
        return False
    if path.endswith((".model", ".json")) or "\\" in path:
        return False
    return bool(_HUB_ID_RE.match(path))


def _token_content(value: Any, source: str) -> str | None:
    """Extract the token text from a config entry (plain string or AddedToken dict)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{source}: cannot interpret special token entry {value!r}")


def _as_id_list(ids: Any) -> list[int]:
    """Normalise an int, a sequence of ints or a 0/1-D tensor/array to ``list[int]``."""
    if isinstance(ids, int):
        return [ids]
    if hasattr(ids, "tolist"):  # torch.Tensor, numpy.ndarray
        ndim = getattr(ids, "ndim", None)
        if ndim is not None and ndim > 1:
            raise ValueError(
                f"decode expects a 1-D sequence of ids, got a {ndim}-D array; use batch_decode"
            )
        ids = ids.tolist()
        if isinstance(ids, int):
            return [ids]
    out: list[int] = []
    for i in ids:
        if isinstance(i, (list, tuple)):
            raise ValueError("decode expects a flat sequence of ids; use batch_decode for batches")
        out.append(int(i))
    return out


class BaichuanTokenizer:
    """SentencePiece tokenizer compatible with the official Baichuan-13B/7B tokenizer.

    Args:
        vocab_file: path of the SentencePiece ``tokenizer.model``.
        add_bos_token: prepend ``bos_token`` in :meth:`encode` / :meth:`__call__`
            (the official config sets ``false``).
        add_eos_token: append ``eos_token`` likewise (official: ``false``).
        bos_token: text of the begin-of-sequence token (must be a piece of the model).
        eos_token: text of the end-of-sequence token.
        unk_token: text of the unknown token.
        pad_token: text of the padding token, or ``None`` (the official config uses
            ``"<unk>"``).  When ``None``, padding falls back to ``unk_token_id``.
        model_max_length: maximum context length, informational (not enforced).

    Raises:
        FileNotFoundError: ``vocab_file`` does not exist.
        ValueError: ``vocab_file`` is not a valid SentencePiece model, or a special
            token is not in its vocabulary.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE_NAME}

    def __init__(
        self,
        vocab_file: PathLike,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        bos_token: str | None = "<s>",
        eos_token: str | None = "</s>",
        unk_token: str | None = "<unk>",
        pad_token: str | None = None,
        model_max_length: int = 4096,
    ) -> None:
        vocab_path = Path(vocab_file)
        if not vocab_path.is_file():
            raise FileNotFoundError(f"SentencePiece model file not found: {vocab_path}")
        data = vocab_path.read_bytes()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{vocab_path} is not a valid SentencePiece model file: {e}") from e
        if sp.get_piece_size() <= 0:
            raise ValueError(f"{vocab_path} is not a valid SentencePiece model file: empty vocabulary")

        self.vocab_file: str = str(vocab_path)
        self.sp_model: spm.SentencePieceProcessor = sp
        self.add_bos_token: bool = bool(add_bos_token)
        self.add_eos_token: bool = bool(add_eos_token)
        self.bos_token: str | None = bos_token
        self.eos_token: str | None = eos_token
        self.unk_token: str | None = unk_token
        self.pad_token: str | None = pad_token
        self.model_max_length: int = int(model_max_length)
        self.padding_side: str = "left"

        # Validate the special tokens now so that errors surface at load time.
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            tok = getattr(self, name)
            if tok is not None:
                self._special_token_id(tok, name)

        # Lazily built helpers.
        self._byte_values: dict[int, int] | None = None
        self._stream_helpers: tuple[int, str, int | None, int] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_file={self.vocab_file!r}, vocab_size={self.vocab_size}, "
            f"add_bos_token={self.add_bos_token}, add_eos_token={self.add_eos_token}, "
            f"bos_token={self.bos_token!r}, eos_token={self.eos_token!r}, "
            f"unk_token={self.unk_token!r}, pad_token={self.pad_token!r})"
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: PathLike, **kwargs: Any) -> "BaichuanTokenizer":
        """Load a tokenizer from a folder, a ``.model`` file or a Hub id.

        ``path`` may be a local folder containing ``tokenizer.model`` (and
        optionally ``tokenizer_config.json`` / ``special_tokens_map.json``, which
        are honoured: ``add_bos_token``, ``add_eos_token``, the special tokens,
        ``model_max_length``), the path of a ``.model`` file itself (config files
        next to it are honoured too), or, when it is not an existing local path,
        a Hub id resolved by :func:`baichuan13b.checkpoint.resolve_model_path`.
        Keyword arguments override values read from the config files.

        Raises:
            FileNotFoundError: the path does not exist / the folder has no
                ``tokenizer.model``.
            ValueError: the model or a config file is invalid.
        """
        raw = os.fspath(path)
        p = Path(raw).expanduser()
        if raw == "demo" or not p.exists():  # "demo": the shipped demo model (see checkpoint.resolve_model_path)
            if raw != "demo" and not _looks_like_hub_id(raw):
                raise FileNotFoundError(
                    f"Tokenizer path does not exist: {p} (expected a folder containing "
                    f"{VOCAB_FILE_NAME}, a .model file, or a Hub model id)"
                )
            try:
                from .hub import resolve_model_path
            except ImportError as e:
                raise FileNotFoundError(
                    f"{raw!r} is not a local file or folder, and Hub ids cannot be resolved "
                    f"because baichuan13b.checkpoint is unavailable: {e}"
                ) from e
            # Fetch only the tokenizer files when the resolver supports it.
            if "allow_patterns" in inspect.signature(resolve_model_path).parameters:
                resolved = resolve_model_path(raw, allow_patterns=list(_TOKENIZER_FILES))
            else:
                resolved = resolve_model_path(raw)
            p = Path(resolved)

        if p.is_dir():
            folder = p
            vocab_file = folder / VOCAB_FILE_NAME
            if not vocab_file.is_file():
                raise FileNotFoundError(
                    f"No {VOCAB_FILE_NAME} in folder {folder} (expected file {vocab_file})"
                )
        elif p.is_file():
            vocab_file = p
            folder = p.parent
        else:
            raise FileNotFoundError(
                f"Tokenizer path does not exist: {p} (expected a folder containing {VOCAB_FILE_NAME})"
            )

        init: dict[str, Any] = {"pad_token": "<unk>"}  # as shipped by Baichuan
        config_path = folder / TOKENIZER_CONFIG_NAME
        if config_path.is_file():
            config = read_json_object(config_path)
            for key in ("add_bos_token", "add_eos_token"):
                if key in config and config[key] is not None:
                    init[key] = bool(config[key])
            if isinstance(config.get("model_max_length"), int):
                init["model_max_length"] = config["model_max_length"]
            for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                if key in config:
                    init[key] = _token_content(config[key], str(config_path))
        map_path = folder / SPECIAL_TOKENS_MAP_NAME
        if map_path.is_file():
            special_map = read_json_object(map_path)
            for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
                if key in special_map:
                    init[key] = _token_content(special_map[key], str(map_path))
        init.update(kwargs)
        return cls(vocab_file, **init)

    def save_pretrained(self, folder: PathLike) -> list[str]:
        """Write ``tokenizer.model``, ``tokenizer_config.json`` and ``special_tokens_map.json``
        to ``folder`` in the official layout; returns the written paths."""
        from .files import atomic_write_bytes, atomic_write_text

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        model_path = out / VOCAB_FILE_NAME
        atomic_write_bytes(model_path, self.sp_model.serialized_model_proto())

        def added(tok: str | None) -> dict[str, Any] | None:
            if tok is None:
                return None
            return {
                "__type": "AddedToken",
                "content": tok,
                "lstrip": False,
                "normalized": True,
                "rstrip": False,
                "single_word": True,
            }

        config = {
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
            "bos_token": added(self.bos_token),
            "clean_up_tokenization_spaces": False,
            "eos_token": added(self.eos_token),
            "model_max_length": self.model_max_length,
            "pad_token": added(self.pad_token),
            "sp_model_kwargs": {},
            "tokenizer_class": "BaichuanTokenizer",
            "unk_token": added(self.unk_token),
        }
        config_path = out / TOKENIZER_CONFIG_NAME
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        special_map = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            entry = added(getattr(self, key))
            if entry is not None:
                entry.pop("__type")
                special_map[key] = entry
        map_path = out / SPECIAL_TOKENS_MAP_NAME
        atomic_write_text(map_path, json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")
        return [str(model_path), str(config_path), str(map_path)]

    # --------------------------------------------------------------- vocabulary
    def _special_token_id(self, token: str, name: str = "token") -> int:
        idx = self.sp_model.piece_to_id(token)
        unk = self.sp_model.unk_id()
        if idx == unk and token != self.sp_model.id_to_piece(unk):
            raise ValueError(f"{name} {token!r} is not in the vocabulary of {self.vocab_file}")
        return idx

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the SentencePiece model (64,000 for Baichuan)."""
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        """Same as :attr:`vocab_size`."""
        return self.sp_model.get_piece_size()

    @property
    def bos_token_id(self) -> int | None:
        """Id of ``bos_token`` (1 for Baichuan), or None when unset."""
        return None if self.bos_token is None else self._special_token_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        """Id of ``eos_token`` (2 for Baichuan), or None when unset."""
        return None if self.eos_token is None else self._special_token_id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        """Id of ``unk_token`` (0 for Baichuan), or None when unset."""
        return None if self.unk_token is None else self._special_token_id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        """Id of ``pad_token`` (as shipped ``<unk>`` = 0), or None when unset."""
        return None if self.pad_token is None else self._special_token_id(self.pad_token)

    @property
    def all_special_tokens(self) -> list[str]:
        """Texts of bos/eos/unk/pad tokens (unique, in that order)."""
        out: list[str] = []
        for tok in (self.bos_token, self.eos_token, self.unk_token, self.pad_token):
            if tok is not None and tok not in out:
                out.append(tok)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of bos/eos/unk/pad tokens (unique, in that order)."""
        out: list[int] = []
        for idx in (self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id):
            if idx is not None and idx not in out:
                out.append(idx)
        return out

    def get_vocab(self) -> dict[str, int]:
        """Mapping piece -> id for the whole vocabulary."""
        sp = self.sp_model
        return {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Piece(s) -> id(s); unknown pieces map to ``unk`` (SentencePiece semantics)."""
        if isinstance(tokens, str):
            return self.sp_model.piece_to_id(tokens)
        return [self.sp_model.piece_to_id(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Id(s) -> piece(s).  Raises IndexError for ids outside the vocabulary."""
        if isinstance(ids, int):
            return self.sp_model.id_to_piece(ids)
        id_list = _as_id_list(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.sp_model.id_to_piece(i) for i in id_list if i not in special]

    # ----------------------------------------------------------------- encoding
    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into SentencePiece pieces (no bos/eos added)."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects str, got {type(text).__name__}")
        return self.sp_model.encode(check_text(text), out_type=str)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Encode ``text`` to ids, exactly like ``sp.encode(text)``.

        ``bos``/``eos`` ids are added when ``add_bos_token``/``add_eos_token`` are
        set (both false for the official checkpoints) and ``add_special_tokens``.

        Special-token *strings* appearing in ``text`` (e.g. ``"</s>"``) are encoded
        as plain text, never as control ids: this prevents prompt injection of
        control tokens.  (The legacy HF slow tokenizer split them out of the text.)

        Text that is not valid Unicode (a lone surrogate) raises :class:`InvalidTextError` (a ``ValueError``).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids: list[int] = self.sp_model.encode(check_text(text))
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            if self.add_eos_token and self.eos_token_id is not None:
                ids = ids + [self.eos_token_id]
        return ids

    def _padding_id(self) -> int:
        for idx in (self.pad_token_id, self.unk_token_id):
            if idx is not None:
                return idx
        raise ValueError("cannot pad: neither pad_token nor unk_token is set")

    def __call__(
        self,
        text: TextInput,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        return_tensors: str | None = None,
        padding_side: str = "left",
    ) -> dict[str, Any]:
        """Encode one text or a batch of texts.

        Args:
            text: a string, or a list/tuple of strings.
            add_special_tokens: add bos/eos as configured (see :meth:`encode`).
            padding: ``False``/``"do_not_pad"`` or ``True``/``"longest"`` (pad to the
                longest sequence of the batch).
            return_tensors: ``None`` for Python lists or ``"pt"`` for
                ``torch.LongTensor`` of shape ``(batch, length)`` (``(1, length)``
                for a single string).
            padding_side: ``"left"`` (default; what generation needs) or ``"right"``.
                Padding uses :attr:`pad_token_id` (falls back to ``unk_token_id``).

        Returns:
            ``{"input_ids": ..., "attention_mask": ...}``; mask is 1 for real
            tokens and 0 for padding.
        """
        if padding in (True, "longest"):
            do_pad = True
        elif padding in (False, None, "do_not_pad"):
            do_pad = False
        else:
            raise ValueError(f"unsupported padding={padding!r}; use False, True or 'longest'")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"unsupported return_tensors={return_tensors!r}; use None or 'pt'")

        single = isinstance(text, str)
        if single:
            texts: list[str] = [text]  # type: ignore[list-item]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
        else:
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")

        batch_ids = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        masks = [[1] * len(ids) for ids in batch_ids]
        if do_pad and batch_ids:
            width = max(len(ids) for ids in batch_ids)
            pad_id = self._padding_id()
            for k, ids in enumerate(batch_ids):
                n = width - len(ids)
                if n:
                    if padding_side == "left":
                        batch_ids[k] = [pad_id] * n + ids
                        masks[k] = [0] * n + masks[k]
                    else:
                        batch_ids[k] = ids + [pad_id] * n
                        masks[k] = masks[k] + [0] * n

        if return_tensors == "pt":
            import torch

            lengths = {len(ids) for ids in batch_ids}
            if len(lengths) > 1:
                raise ValueError(
                    "sequences have different lengths; pass padding=True to return tensors"
                )
            width = lengths.pop() if lengths else 0
            return {
                "input_ids": torch.tensor(batch_ids, dtype=torch.long).reshape(len(batch_ids), width),
                "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(len(masks), width),
            }
        if single:
            return {"input_ids": batch_ids[0], "attention_mask": masks[0]}
        return {"input_ids": batch_ids, "attention_mask": masks}

    # ----------------------------------------------------------------- decoding
    def _sp_decode(self, ids: list[int]) -> str:
        """Single point where SentencePiece decoding happens."""
        if not ids:
            return ""
        return self.sp_model.decode(ids)

    def _special_id_to_text(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for tok in (self.bos_token, self.eos_token, self.unk_token, self.pad_token):
            if tok is not None:
                out.setdefault(self._special_token_id(tok), tok)
        return out

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Decode ids to text.

        ``ids`` may be an int, a sequence of ints or a 1-D torch tensor / numpy
        array.  For ordinary ids the result is exactly ``sp.decode(ids)``
        (including SentencePiece's rule that drops the leading "▁" of the text,
        and byte-fallback reassembly).

        With ``skip_special_tokens=True`` the bos/eos/unk/pad ids are dropped
        first.  Otherwise, as in the HF LLaMA-style tokenizer, runs of ordinary
        ids are decoded with ``sp.decode`` and each special token is inserted as
        its literal text (``"<s>"``, ``"</s>"``, ``"<unk>"``); unlike the legacy
        slow tokenizer no extra space is inserted before a special token.
        """
        id_list = _as_id_list(ids)
        special = self._special_id_to_text()
        if skip_special_tokens:
            return self._sp_decode([i for i in id_list if i not in special])
        parts: list[str] = []
        run: list[int] = []
        for i in id_list:
            text = special.get(i)
            if text is None:
                run.append(i)
            else:
                parts.append(self._sp_decode(run))
                parts.append(text)
                run = []
        parts.append(self._sp_decode(run))
        return "".join(parts)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """Decode a batch (list of id lists, or a 2-D tensor) with :meth:`decode`."""
        if hasattr(sequences, "tolist"):
            ndim = getattr(sequences, "ndim", None)
            if ndim is not None and ndim != 2:
                raise ValueError(f"batch_decode expects a 2-D array, got {ndim}-D")
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens=skip_special_tokens) for seq in sequences]

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        """Return a new :class:`StreamDecoder` bound to this tokenizer."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------- streaming internals
    def _byte_table(self) -> dict[int, int]:
        """Map byte-fallback piece id (``<0xNN>``) -> byte value."""
        if self._byte_values is None:
            sp = self.sp_model
            table: dict[int, int] = {}
            for i in range(sp.get_piece_size()):
                if sp.is_byte(i):
                    piece = sp.id_to_piece(i)  # "<0xNN>"
                    table[i] = int(piece[3:-1], 16)
            self._byte_values = table
        return self._byte_values

    def _stream_anchor(self) -> tuple[int, str, int | None, int]:
        """Find helper pieces for context-free window decoding.

        Returns ``(anchor_id, anchor_text, probe_id, probe_len)``:

        * the *anchor* is an ordinary piece without "▁" that decodes to itself;
          prepending it to a window puts SentencePiece's decoder past the
          start-of-text state, so the window decodes as it would mid-text.
        * the *probe* is an ordinary piece starting with "▁"; appending it to a
          window reveals whether the decoder would still strip a leading "▁"
          after the window (``probe_len`` = its decoded length when stripped).
          ``None`` when the model has no such piece (then stripping never matters).
        """
        if self._stream_helpers is not None:
            return self._stream_helpers
        sp = self.sp_model

        def ordinary(i: int) -> bool:
            return not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))

        n = sp.get_piece_size()
        anchor: tuple[int, str] | None = None
        for i in range(n):
            if not ordinary(i):
                continue
            piece = sp.id_to_piece(i)
            if piece and "\u2581" not in piece and sp.decode([i]) == piece and sp.decode([i, i]) == piece * 2:
                anchor = (i, piece)
                break
        if anchor is None:
            raise ValueError(f"{self.vocab_file}: no piece usable as a stream-decoding anchor")
        a_id, a_text = anchor
        probe: tuple[int | None, int] = (None, 0)
        for i in range(n):
            if not ordinary(i):
                continue
            piece = sp.id_to_piece(i)
            if not piece.startswith("\u2581"):
                continue
            rest = piece[1:].replace("\u2581", " ")
            if sp.decode([i]) == rest and sp.decode([a_id, i]) == a_text + " " + rest:
                probe = (i, len(rest))
                break
        self._stream_helpers = (a_id, a_text, probe[0], probe[1])
        return self._stream_helpers


class StreamDecoder:
    """Incremental detokeniser for generated ids.

    Feed ids one at a time with :meth:`put`, which returns only the newly
    completed text (possibly ``""``); call :meth:`flush` at the end.  The
    concatenation of all returned strings equals
    ``tokenizer.decode(all_ids, skip_special_tokens=skip_special_tokens)``
    exactly, including SentencePiece's leading-space rule and byte-fallback
    characters split over several ``<0xNN>`` pieces: a partial UTF-8 character
    is never emitted while more bytes may complete it.

    Technique (prefix offset / read offset): the decoder keeps a short window of
    recent ids ``ids[prefix:]``; ``ids[prefix:read]`` were already emitted.  When
    new ids arrive it decodes the window (positioned mid-text by prepending an
    anchor piece, or as start of text while nothing visible has been decoded),
    emits the difference with the decode of ``ids[prefix:read]``, and slides the
    window (``prefix = read``).  Trailing byte pieces that form an incomplete but
    possibly valid UTF-8 sequence are held back instead of emitting ``"\\ufffd"``.
    The window never holds more than a handful of ids, so each step costs O(1)
    regardless of the stream length.

    Args:
        tokenizer: the :class:`BaichuanTokenizer`.
        skip_special_tokens: drop bos/eos/unk/pad ids (default) or render them as
            their literal text, like :meth:`BaichuanTokenizer.decode`.
    """

    # An incomplete UTF-8 sequence is at most 3 bytes long.
    _MAX_HELD = 3

    def __init__(self, tokenizer: BaichuanTokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = bool(skip_special_tokens)
        self._special = tokenizer._special_id_to_text()
        self._bytes = tokenizer._byte_table()
        self._anchor_id, self._anchor_text, self._probe_id, self._probe_len = tokenizer._stream_anchor()
        self._chunks: list[str] = []
        self._text_cache: str | None = ""
        self.reset()

    def reset(self) -> None:
        """Forget all state and start a new text."""
        self._ids: list[int] = []  # window, ids[0] is at the prefix offset
        self._read = 0  # ids[:read] have been emitted
        self._prefix_text = ""  # decode of ids[:read] in the window's context
        self._at_start = True  # decoder state at the window start is "start of text"
        self._chunks = []
        self._text_cache = ""

    @property
    def text(self) -> str:
        """Everything emitted so far (by put and flush) since construction / reset."""
        if self._text_cache is None:
            self._text_cache = "".join(self._chunks)
        return self._text_cache

    def _emit(self, s: str) -> str:
        if s:
            self._chunks.append(s)
            self._text_cache = None
        return s

    def _decode_window(self, ids: list[int], at_start: bool) -> str:
        if at_start:
            return self.tokenizer._sp_decode(ids)
        text = self.tokenizer._sp_decode([self._anchor_id] + ids)
        if not text.startswith(self._anchor_text):
            raise RuntimeError(
                f"stream decoding invariant broken: anchor {self._anchor_text!r} not preserved in {text!r}"
            )
        return text[len(self._anchor_text):]

    def _held_back(self) -> int:
        """How many trailing ids are byte pieces forming an incomplete UTF-8 sequence."""
        ids = self._ids
        lo = max(self._read, len(ids) - (self._MAX_HELD + 1))
        n_cont = 0
        j = len(ids) - 1
        while j >= lo:
            b = self._bytes.get(ids[j])
            if b is None:
                return 0
            if 0x80 <= b <= 0xBF:  # continuation byte
                n_cont += 1
                j -= 1
                continue
            if 0xC0 <= b <= 0xDF:
                need = 2
            elif 0xE0 <= b <= 0xEF:
                need = 3
            elif 0xF0 <= b <= 0xF7:
                need = 4
            else:
                return 0
            return n_cont + 1 if n_cont + 1 < need else 0
        return 0

    def _advance(self, stop: int) -> str:
        """Emit the text of ``ids[read:stop]`` and slide the window."""
        if stop <= self._read:
            return ""
        new = self._decode_window(self._ids[:stop], self._at_start)
        if not new.startswith(self._prefix_text):
            raise RuntimeError(
                f"stream decoding invariant broken: {new!r} does not extend {self._prefix_text!r}"
            )
        delta = new[len(self._prefix_text):]
        if self._at_start and self._read > 0:
            # Does the decoder still strip a leading "▁" after ids[:read]?
            if self._probe_id is None:
                self._at_start = False
            else:
                probed = self.tokenizer._sp_decode(self._ids[: self._read] + [self._probe_id])
                self._at_start = len(probed) == len(self._prefix_text) + self._probe_len
        del self._ids[: self._read]
        self._read = stop - self._read
        self._prefix_text = delta
        return delta

    def put(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly ``""``)."""
        tid = int(token_id)
        literal = self._special.get(tid)
        if literal is not None:
            if self.skip_special_tokens:
                return ""
            # decode() renders specials literally and decodes the following run
            # from scratch: finish the current run, then start a new one.
            out = self._advance(len(self._ids)) + literal
            self._ids = []
            self._read = 0
            self._prefix_text = ""
            self._at_start = True
            return self._emit(out)
        self._ids.append(tid)
        stop = len(self._ids) - self._held_back()
        return self._emit(self._advance(stop))

    def put_many(self, token_ids: Iterable[int]) -> str:
        """:meth:`put` each id; return the concatenated new text."""
        return "".join(self.put(t) for t in token_ids)

    def flush(self) -> str:
        """Return whatever remains (held-back bytes decode to U+FFFD like decode() does).

        Call at the end of the stream.  Bytes forced out by flush are final, so
        feeding more ids afterwards is only exact when the stream was cut at a
        character boundary; use :meth:`reset` to start a new text.
        """
        return self._emit(self._advance(len(self._ids)))

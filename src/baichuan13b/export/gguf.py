"""Export a checkpoint to GGUF for llama.cpp (and ollama, LM Studio, ...), in llama.cpp's ``baichuan`` layout.

Written with the ``gguf`` package (llama.cpp's own writer; ``pip install 'baichuan13b[gguf]'``). What llama.cpp
expects for its ``baichuan`` architecture:

* tensors ``token_embd``, ``output_norm``, ``output`` and per layer ``blk.N.{attn_norm, attn_q, attn_k, attn_v,
  attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}``; the fused ``W_pack`` is split into q, k and v;
* llama.cpp rotates *adjacent* pairs of a head (the original LLaMA layout) while Baichuan-7B rotates the two
  halves, so the rows of q and k are permuted within each head (``_interleave_halves``); the same permutation of
  q and k leaves ALiBi attention unchanged, so it is applied to both architectures as llama.cpp's converter does;
* llama.cpp chooses the position encoding **from the layer count**: 40 layers run with ALiBi (max bias 8, the
  official slopes), 32 layers with RoPE, any other count with no position encoding at all. Exports whose
  layer count does not give the checkpoint's own encoding are refused unless ``allow_position_mismatch``
  (speed benchmarks only: the numbers would be those of a different model);
* the SentencePiece vocabulary as ``tokenizer.ggml.*`` (model ``llama``: pieces, scores, token types), with
  the special token ids and the tokenizer's ``add_bos_token`` / ``add_eos_token`` and dummy-prefix settings.

Weights are read shard by shard (:func:`baichuan13b.checkpoint.find_weight_files` / ``iter_tensors``) and
written tensor by tensor, so host memory stays near one shard. ``q8_0`` / ``q4_0`` quantize every matrix
(embeddings and ``output`` included, as ``llama-quantize --pure``) in blocks of 32 along a row; a matrix whose
rows are not a multiple of 32 is written as f16 instead (reported). Norm weights stay f32.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import ModelConfig

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
ARCH = "baichuan"
# llama.cpp's baichuan loader: layer count -> the position encoding it runs with.
LLAMA_CPP_POSITION_BY_LAYERS = {40: "alibi", 32: "rope"}


class GGUFExportError(ValueError):
    """The checkpoint cannot be exported as asked (the message names the problem and the option)."""


def require_gguf():
    """Import the ``gguf`` package, or raise an error that names the extra to install."""
    try:
        import gguf
    except ImportError as e:
        raise GGUFExportError("GGUF export needs the gguf package: pip install 'baichuan13b[gguf]'") from e
    return gguf


def llama_cpp_position(num_layers: int) -> str:
    """The position encoding llama.cpp's ``baichuan`` architecture uses for ``num_layers`` layers."""
    return LLAMA_CPP_POSITION_BY_LAYERS.get(num_layers, "none")


def _interleave_halves(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows of q or k [heads * head_dim, in]: per head, the "rotate half" order (first half, second half) becomes
    adjacent pairs (x0, x_{d/2}, x1, x_{d/2+1}, ...), the order llama.cpp's RoPE rotates."""
    out_features = w.shape[0]
    half = out_features // num_heads // 2
    return w.reshape(num_heads, 2, half, *w.shape[1:]).transpose(1, 2).reshape(w.shape)  # [H, half, 2, in]


@dataclass(frozen=True)
class _Target:
    """One GGUF tensor: its name, logical shape [rows, cols] (numpy order) and storage type."""

    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType


def _gguf_name(gguf, tensor, layer: int | None = None) -> str:
    name = gguf.TENSOR_NAMES[tensor]  # e.g. "blk.{bid}.attn_q"
    return (name.format(bid=layer) if layer is not None else name) + ".weight"


def _official_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Official checkpoint tensor name -> shape, for every weight the export needs."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.W_pack.weight": (3 * h, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        })
    return shapes


_LAYER_TENSORS = {"input_layernorm.weight": "ATTN_NORM", "post_attention_layernorm.weight": "FFN_NORM",
                  "self_attn.o_proj.weight": "ATTN_OUT", "mlp.gate_proj.weight": "FFN_GATE",
                  "mlp.up_proj.weight": "FFN_UP", "mlp.down_proj.weight": "FFN_DOWN"}


def _gguf_targets(gguf, name: str, shape: tuple[int, ...], config: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The GGUF (name, shape) pairs that the official tensor ``name`` of ``shape`` becomes."""
    T = gguf.MODEL_TENSOR
    if name == "model.embed_tokens.weight":
        tied = [(_gguf_name(gguf, T.OUTPUT), shape)] if config.tie_word_embeddings else []
        return [(_gguf_name(gguf, T.TOKEN_EMBD), shape)] + tied
    if name == "model.norm.weight":
        return [(_gguf_name(gguf, T.OUTPUT_NORM), shape)]
    if name == "lm_head.weight":
        return [(_gguf_name(gguf, T.OUTPUT), shape)]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    assert m is not None, name
    n, rest = int(m.group(1)), m.group(2)
    if rest == "self_attn.W_pack.weight":
        part = (shape[0] // 3, shape[1])
        return [(_gguf_name(gguf, t, n), part) for t in (T.ATTN_Q, T.ATTN_K, T.ATTN_V)]
    return [(_gguf_name(gguf, T[_LAYER_TENSORS[rest]], n), shape)]


def _converted(gguf, name: str, tensor: torch.Tensor, config: ModelConfig) -> list[tuple[str, torch.Tensor]]:
    """GGUF (name, tensor) pairs for one official tensor (in :func:`_gguf_targets` order)."""
    names = [g for g, _ in _gguf_targets(gguf, name, tuple(tensor.shape), config)]
    if name.endswith("self_attn.W_pack.weight"):
        q, k, v = tensor.chunk(3, dim=0)  # each [hidden, hidden]
        heads = config.num_attention_heads
        return list(zip(names, (_interleave_halves(q, heads), _interleave_halves(k, heads), v)))
    return [(g, tensor) for g in names]


def _storage_type(gguf, shape: tuple[int, ...], outtype: str):
    Q = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return Q.F32  # norms stay f32, as llama.cpp wants them
    wanted = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[outtype]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        return Q.F16  # llama.cpp's converter falls back the same way
    return wanted


def _nbytes(gguf, shape: tuple[int, ...], qtype) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n = 1
    for s in shape:
        n *= s
    return n // block * type_size


def _encode(gguf, tensor: torch.Tensor, qtype):
    """The bytes (as a numpy array) of ``tensor`` stored as ``qtype``."""
    import numpy as np

    Q = gguf.GGMLQuantizationType
    x = tensor.detach().to(torch.float32).contiguous()
    if qtype == Q.F32:
        return x.numpy()
    if qtype == Q.F16:
        return x.to(torch.float16).numpy()
    if qtype == Q.BF16:
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(*x.shape[:-1], -1)
    return gguf.quants.quantize(x.numpy(), qtype)


def _tokenizer_metadata(gguf, writer, folder: Path, config: ModelConfig) -> None:
    """The SentencePiece vocabulary, special ids and encoding settings, as llama.cpp's "llama" tokenizer reads them."""
    from ..tokenizer import BaichuanTokenizer

    try:
        tok = BaichuanTokenizer.from_pretrained(folder)
    except FileNotFoundError as e:
        raise GGUFExportError(f"GGUF export includes the tokenizer, but {folder} has none: {e}") from e
    sp = tok.sp_model
    n = sp.get_piece_size()
    if n > config.vocab_size:
        raise GGUFExportError(f"the tokenizer has {n} pieces, more than the model's vocab_size {config.vocab_size}")
    T = gguf.TokenType
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(config.vocab_size):
        if i >= n:  # embedding rows beyond the tokenizer: never produced by it
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-10000.0)
            types.append(T.UNUSED)
            continue
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(T.UNKNOWN if sp.is_unknown(i) else T.CONTROL if sp.is_control(i)
                     else T.UNUSED if sp.is_unused(i) else T.BYTE if sp.is_byte(i) else T.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for value, add in ((tok.bos_token_id, writer.add_bos_token_id), (tok.eos_token_id, writer.add_eos_token_id),
                       (tok.unk_token_id, writer.add_unk_token_id), (tok.pad_token_id, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(tok.add_bos_token)
    writer.add_add_eos_token(tok.add_eos_token)
    # SentencePiece's dummy prefix ("▁" before the text), read from behaviour rather than the model proto.
    pieces = sp.encode("a", out_type=str)
    writer.add_add_space_prefix(bool(pieces) and pieces[0].startswith("\u2581"))


def export_gguf(path_or_id: str | os.PathLike, output: str | os.PathLike, outtype: str = "f16", *,
                allow_position_mismatch: bool = False, progress: bool = True, name: str | None = None) -> Path:
    """Write the checkpoint ``path_or_id`` (folder or hub id) as a GGUF file ``output`` for llama.cpp.

    ``outtype``: ``f32``, ``f16``, ``bf16``, ``q8_0`` or ``q4_0``; ``name``: ``general.name`` (default: the
    folder's or hub id's name). Returns the path written (atomically: a
    partial file never has the final name).

    Raises:
        GGUFExportError: ``gguf`` is not installed, the checkpoint is quantized by this project (export the float
            checkpoint: GGUF quantizes itself), a tensor is missing or mis-shaped, or llama.cpp would run the
            model with another position encoding (see the module docstring) and ``allow_position_mismatch`` is off.
    """
    from ..checkpoint import find_weight_files, iter_tensors, model_display_name, resolve_model_path
    from ..quantization import QuantizationConfig

    gguf = require_gguf()
    if outtype not in OUTTYPES:
        raise GGUFExportError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    folder = resolve_model_path(path_or_id)
    config = ModelConfig.from_pretrained(folder)
    if QuantizationConfig.of_model_config(config) is not None:
        raise GGUFExportError(f"{path_or_id} holds weights quantized by baichuan quantize; export the float "
                              "checkpoint instead (--outtype q8_0 / q4_0 quantizes for llama.cpp)")
    ours, theirs = config.position_embedding, llama_cpp_position(config.num_hidden_layers)
    if ours != theirs and not allow_position_mismatch:
        raise GGUFExportError(
            f"llama.cpp's baichuan architecture picks the position encoding from the layer count (40 layers: "
            f"ALiBi, 32: RoPE, others: none); this {ours} model has {config.num_hidden_layers} layers, so llama.cpp "
            f"would run it with {theirs} and compute different logits. Only the official 13B/7B shapes export "
            "faithfully (--allow-position-mismatch writes it anyway, for speed measurements)")

    weights = find_weight_files(folder)
    shapes = _official_tensors(config)
    file_of: dict[str, Path] = {}
    if weights.weight_map is not None:
        for name in shapes:
            if name in weights.weight_map:
                file_of[name] = folder / weights.weight_map[name]
    else:
        file_of = {name: weights.files[0] for name in shapes}
    missing = [n for n in shapes if n not in file_of]
    if missing:
        raise GGUFExportError(f"{folder} lacks {len(missing)} tensor(s) for the GGUF export, e.g. {missing[:3]}")

    # Tensor infos come first in a GGUF file, so the order is fixed up front: shard by shard, and within a shard
    # in the official order; each shard is then read once and written in that order.
    files = list(dict.fromkeys(file_of[n] for n in shapes))
    plan: list[tuple[Path, str]] = [(f, n) for f in files for n in shapes if file_of[n] == f]
    targets = [_Target(gname, gshape, _storage_type(gguf, gshape, outtype))
               for _, name in plan for gname, gshape in _gguf_targets(gguf, name, shapes[name], config)]
    fallback = [t.name for t in targets if len(t.shape) == 2 and outtype.startswith("q")
                and t.qtype == gguf.GGMLQuantizationType.F16]

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    writer = gguf.GGUFWriter(partial, ARCH)
    writer.add_name(name or model_display_name(path_or_id))
    writer.add_context_length(config.max_position)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    if ours == "rope":
        writer.add_rope_freq_base(config.rope_theta)
    else:
        writer.add_max_alibi_bias(8.0)  # informative: llama.cpp sets 8 itself for 40-layer baichuan models
    writer.add_tensor_data_layout("Meta AI original pth")
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[outtype]
    writer.add_file_type(ftype)
    _tokenizer_metadata(gguf, writer, folder, config)
    import numpy as np

    for t in targets:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(gguf, t.shape, t.qtype), t.qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        by_name = {t.name: t for t in targets}
        done = 0
        for f in files:
            wanted = {n for p, n in plan if p == f}
            found: dict[str, torch.Tensor] = {}
            for name, tensor in iter_tensors(f):
                if name in wanted:
                    if tuple(tensor.shape) != shapes[name]:
                        raise GGUFExportError(f"{f.name}: {name} has shape {list(tensor.shape)}, the config "
                                              f"implies {list(shapes[name])}")
                    found[name] = tensor
            lost = wanted - found.keys()
            if lost:
                raise GGUFExportError(f"{f.name} lacks {sorted(lost)[:3]} (named by the index)")
            for p, name in plan:
                if p != f:
                    continue
                for gname, tensor in _converted(gguf, name, found.pop(name), config):
                    writer.write_tensor_data(_encode(gguf, tensor, by_name[gname].qtype))
                    done += 1
                if progress:
                    print(f"\rgguf: {done}/{len(targets)} tensors", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        writer.close()
        os.replace(partial, output)
    finally:
        writer.close()
        if partial.exists():
            partial.unlink()
    if fallback and progress:
        print(f"gguf: {len(fallback)} matri{'x' if len(fallback) == 1 else 'ces'} with rows not a multiple of 32 "
              f"written as f16 (e.g. {fallback[0]})", file=sys.stderr)
    return output

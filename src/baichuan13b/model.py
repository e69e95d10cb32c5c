"""Baichuan-13B (ALiBi) and Baichuan-7B (RoPE) in one readable file.

Module and parameter names are exactly those of the official checkpoints, so a state dict or a LoRA adapter maps
one to one::

    model.embed_tokens.weight
    model.layers.N.self_attn.W_pack.weight      # fused q, k, v: [3 * hidden, hidden]
    model.layers.N.self_attn.o_proj.weight
    model.layers.N.mlp.{gate_proj,up_proj,down_proj}.weight
    model.layers.N.{input_layernorm,post_attention_layernorm}.weight
    model.norm.weight
    lm_head.weight

The position encoding comes from ``config.position_embedding`` (itself decided by ``architectures``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache, PagedBatch, PagedKVCache
from .config import ModelConfig
from .errors import ContextLengthError

if TYPE_CHECKING:
    from .generation import GenerationConfig

# Queries per attention block during long prefills: bounds the [batch, heads, block, keys] bias tensor.
ATTENTION_QUERY_BLOCK = 1024


# ---------------------------------------------------------------------------------------------------- positions
def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes exactly as the official Baichuan-13B code computes them, for any head count.

    For a power of two ``n`` the slopes are ``start * start**i`` with ``start = 2 ** (-8 / n)``; otherwise the
    slopes of the closest smaller power of two are followed by every other slope of the next power of two.
    Returns a float32 tensor of shape [num_heads].
    """

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    def interleave(n: int) -> list[float]:
        if math.log2(n).is_integer():
            return power_of_2(n)
        closest = 2 ** math.floor(math.log2(n))
        return power_of_2(closest) + interleave(2 * closest)[0::2][: n - closest]

    return torch.tensor(interleave(num_heads), dtype=torch.float32)


def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Inverse frequencies of rotary embeddings, float32 [head_dim // 2]."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D] by ``positions`` [B, T] (LLaMA / Baichuan-7B "rotate half" convention)."""
    angles = positions.to(torch.float32)[:, None, :, None] * inv_freq.to(x.device)  # [B, 1, T, D/2]
    angles = torch.cat((angles, angles), dim=-1)  # [B, 1, T, D]
    cos, sin = angles.cos(), angles.sin()
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


@dataclass
class AttentionInputs:
    """Everything attention needs besides q/k/v, shared by all layers of one forward pass.

    ``key_valid`` [B, S] marks real (non-padding) keys; ``q_pos`` [1 or B, T] (per row when rows of the cache
    have different lengths) and ``k_pos`` [S] are cache slots.
    The additive bias is built per query block and per device (float32 maths, cast at the end) instead of being
    precomputed as a [heads, context, context] table.
    """

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    key_valid: torch.Tensor | None
    slopes: torch.Tensor | None  # [H] for ALiBi, None for RoPE
    rope_positions: torch.Tensor | None  # [B, T] token positions (padding-aware) for RoPE
    _whole: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def bias(self, i0: int, i1: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive attention bias for queries ``i0:i1``: [B or 1, H or 1, i1 - i0, S].

        The bias of all the queries at once (``T <= ATTENTION_QUERY_BLOCK``) is the same for every layer, so it is
        built once per forward pass, dtype and device, and kept for the next layers (one tensor alive between
        layers, as big as the one each layer would build); blocks of a longer input are built per layer, so that
        memory stays that of one block."""
        whole = i0 == 0 and i1 == self.q_pos.shape[1]
        if whole and (dtype, device) in self._whole:
            return self._whole[(dtype, device)]
        q_pos = self.q_pos[:, i0:i1].to(device)  # [Bq, t]
        k_pos = self.k_pos.to(device)  # [S]
        rel = k_pos[None, None, :] - q_pos[:, :, None]  # [Bq, t, S], <= 0 for past keys
        allowed = (rel <= 0)[:, None]  # [Bq, 1, t, S] causal
        if self.key_valid is not None:
            allowed = allowed & self.key_valid.to(device)[:, None, None, :]  # [B, 1, t, S]
        if self.slopes is not None:
            bias = self.slopes.to(device)[None, :, None, None] * rel[:, None].to(torch.float32)  # [Bq, H, t, S]
        else:
            # float32 maths, float64 for a float64 model (whose mask value does not fit in float32)
            bias = torch.zeros((1, 1) + allowed.shape[-2:], dtype=torch.promote_types(torch.float32, dtype),
                               device=device)
        # A finite minimum (not -inf) keeps fully padded query rows finite instead of NaN.
        bias = bias.masked_fill(~allowed, torch.finfo(dtype).min).to(dtype)
        if whole:
            self._whole[(dtype, device)] = bias
        return bias


# Cached keys (batch x heads x positions x head size) up to which a CPU decode step's attention runs on float32
# copies (see single_query_attention): 4 Mi elements, e.g. 40 heads x 819 positions of 128 (16 MiB per copy).
SINGLE_QUERY_FLOAT32_ELEMENTS = 1 << 22


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query per row, ``q`` [B, H, 1, D] over ``k``, ``v`` [B, H, S, D] with the additive
    ``bias`` [B or 1, H or 1, 1, S]: [B, H, 1, D].

    What ``F.scaled_dot_product_attention`` computes (softmax in float32, or float64 for a float64 model), as
    two batched GEMVs. On
    CPU its flash kernel tiles for many queries and is 2.5-3x slower than this for the one query of a decode
    step (40 heads over 2048 keys: 11.9 ms vs 4.5 ms, bfloat16, 2 threads), which made attention a large part
    of long-context decoding.
    """
    if q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu" \
            and k.numel() <= SINGLE_QUERY_FLOAT32_ELEMENTS:
        # Short caches on CPU: the whole computation on float32 copies, rounded once at the end. oneDNN's bfloat16
        # batched matmul of one query row is slow at a key count it has not seen (each decode step has a new one),
        # and the copies cost less (232M bf16 decode after a 32-token prompt: 70.9-71.0 vs 57.0-65.1 tok/s,
        # after 1,024 tokens 52.1-54.4 vs 44.0-44.3, same process, alternating).
        return single_query_attention(q.float(), k.float(), v.float(), bias).to(q.dtype)
    scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H, 1, S]
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # float32 (float64 stays float64)
    scores = scores.mul_(1.0 / math.sqrt(q.shape[-1])).add_(bias)
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v)  # [B, H, 1, D]


# ---------------------------------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, then cast back to the weight's dtype (as the official code does).
        x32 = x.float()  # one conversion, used twice
        variance = x32.pow(2).mean(-1, keepdim=True)
        x = (x32 * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)
        return self.weight * x


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """Multi-head attention with the fused ``W_pack`` projection (q, k, v stacked in that order)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.hidden_size = config.hidden_size
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        inputs: AttentionInputs,
        inv_freq: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """``start``: the first cache slot written (shared by all rows), shared slots [T] as a tensor
        (static-shape decoding), or a :class:`PagedBatch` (``cache`` is then this layer's block pool)."""
        B, T, _ = x.shape
        qkv = self.W_pack(x)  # [B, T, 3 * hidden]
        qkv = qkv.view(B, T, 3, self.num_heads, self.head_dim)  # [B, T, 3, H, D]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, D]
        if inv_freq is not None:
            q = apply_rope(q, inputs.rope_positions, inv_freq)
            k = apply_rope(k, inputs.rope_positions, inv_freq)
        if isinstance(start, PagedBatch):
            k, v = start.write_and_read(k, v, *cache)  # through the block tables: [B, H, S, D]
        elif cache is not None:
            k_cache, v_cache = cache  # [B, H, S_max, D]
            S = inputs.k_pos.numel()
            if isinstance(start, int):
                k_cache[:, :, start : start + T] = k
                v_cache[:, :, start : start + T] = v
            else:  # static shapes: slots [T] shared by all rows, no host sync
                k_cache.index_copy_(2, start.to(k.device), k)
                v_cache.index_copy_(2, start.to(v.device), v)
            k, v = k_cache[:, :, :S], v_cache[:, :, :S]  # [B, H, S, D]
        if inputs.slopes is None and inputs.key_valid is None and k.shape[2] == T:
            # RoPE, no padding, no cached prefix: plain causal attention, eligible for the flash kernels.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, D]
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.hidden_size))
        outs = []
        for i0 in range(0, T, ATTENTION_QUERY_BLOCK):
            i1 = min(T, i0 + ATTENTION_QUERY_BLOCK)
            bias = inputs.bias(i0, i1, q.dtype, q.device)
            if T == 1 and q.device.type == "cpu":
                outs.append(single_query_attention(q, k, v, bias))
            else:
                outs.append(F.scaled_dot_product_attention(q[:, :, i0:i1], k, v, attn_mask=bias))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, self.hidden_size)  # [B, T, hidden]
        return self.o_proj(y)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, inputs, inv_freq, cache, start):
        x = x + self.self_attn(self.input_layernorm(x), inputs, inv_freq, cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class BaichuanModel(nn.Module):
    """The transformer trunk: ``embed_tokens``, ``layers``, ``norm``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=None)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        # Position tables are derived from the config, not stored in checkpoints.
        self.register_buffer("alibi_slopes", alibi_slopes(config.num_attention_heads), persistent=False)
        self.register_buffer("rope_inv_freq", rope_inv_freq(config.head_dim, config.rope_theta), persistent=False)

    def init_position_buffers(self, device: torch.device | str = "cpu") -> None:
        """(Re)compute the non-persistent position buffers, e.g. after building the model on the meta device."""
        self.alibi_slopes = alibi_slopes(self.config.num_attention_heads).to(device)
        self.rope_inv_freq = rope_inv_freq(self.config.head_dim, self.config.rope_theta).to(device)

    def _check_length(self, S: int, T: int, start: int) -> None:
        limit = self.config.max_position
        if S > limit and not self.config.allow_length_extrapolation:
            raise ContextLengthError(
                f"input of {T} tokens{f' after {start} cached' if start else ''} exceeds the model's context "
                f"of {limit} tokens (config max_position); shorten the input"
                + (" or enable ALiBi extrapolation with model.config.allow_length_extrapolation = True"
                   if self.config.position_embedding == "alibi" else "")
            )

    def _paged_inputs(self, input_ids, attention_mask, batch: PagedBatch):
        """Per-row positions from a :class:`PagedBatch`: row b's queries sit at ``batch.positions[b]`` and see
        keys ``0 .. key_lengths[b] - 1`` of its own block table (rows are never padded on the left)."""
        if attention_mask is not None:
            raise ValueError("attention_mask is not used with a paged cache: rows are never padded")
        B, T = input_ids.shape
        if tuple(batch.positions.shape) != (B, T):
            raise ValueError(f"the paged batch addresses {list(batch.positions.shape)} tokens, input is {[B, T]}")
        device = input_ids.device
        longest = batch.max_key_length
        self._check_length(longest, T, longest - T)
        q_pos = batch.positions.to(device)  # [B, T]
        k_pos = torch.arange(batch.num_keys, device=device)
        inputs = AttentionInputs(
            q_pos=q_pos,
            k_pos=k_pos,
            key_valid=k_pos[None, :] < batch.key_lengths.to(device)[:, None],  # [B, S]
            slopes=self.alibi_slopes if self.config.position_embedding == "alibi" else None,
            rope_positions=q_pos if self.config.position_embedding == "rope" else None,
        )
        return inputs, batch

    def _attention_inputs(self, input_ids, attention_mask, cache, input_pos):
        """Positions, masks and cache write slots for one forward pass, in one of three modes:

        * shared length (default, :class:`KVCache` or no cache): all rows write at ``cache.length`` onwards and
          attend to the filled slots; ``attention_mask`` [B, cached + T] marks left padding;
        * paged (:class:`PagedBatch`: serving, chat, evaluation): every row at its own positions, through its
          block table;
        * static shapes (``input_pos`` [T] given, compiled decoding): rows write at ``input_pos`` and attend
          over the whole preallocated cache, so every step has the same shapes (CUDA-graph friendly);
          ``attention_mask`` is then [B, cache.max_length]. No host synchronisation.
        """
        if isinstance(cache, PagedBatch):
            if input_pos is not None:
                raise ValueError("input_pos is for a KVCache; a paged batch carries its own positions")
            return self._paged_inputs(input_ids, attention_mask, cache)
        B, T = input_ids.shape
        device = input_ids.device
        rope = self.config.position_embedding == "rope"
        if input_pos is not None:
            if cache is None:
                raise ValueError("input_pos needs a shared-length KVCache (static-shape decoding)")
            S = cache.max_length
            q_pos = input_pos.to(device)[None]  # [1, T]
            if attention_mask is not None and attention_mask.shape != (B, S):
                raise ValueError(f"with input_pos, attention_mask must cover the whole cache: [{B}, {S}], "
                                 f"got {list(attention_mask.shape)}")
            key_valid = attention_mask.to(torch.bool) if attention_mask is not None else None
            rope_positions = None
            if rope:
                if key_valid is not None:  # count real tokens only (left padding)
                    counts = key_valid.long().cumsum(-1) - 1  # [B, S]
                    rope_positions = counts.index_select(1, q_pos[0]).clamp(min=0)  # [B, T]
                else:
                    rope_positions = q_pos.expand(B, T)
            write_at: int | torch.Tensor = q_pos[0]
        else:
            start = cache.length if cache is not None else 0
            S = start + T
            self._check_length(S, T, start)
            if cache is not None and S > cache.max_length:
                raise ContextLengthError(f"KV cache holds {cache.max_length} positions, {S} are needed")
            q_pos = torch.arange(start, S, device=device)[None]  # [1, T]
            write_at = start
            key_valid = None
            if attention_mask is not None:
                if attention_mask.shape != (B, S):
                    raise ValueError(
                        f"attention_mask must have shape [batch, cached + new tokens] = [{B}, {S}], "
                        f"got {list(attention_mask.shape)}"
                    )
                key_valid = attention_mask.to(torch.bool)
            rope_positions = None
            if rope:
                if key_valid is not None:
                    # Positions count real tokens only, so a left-padded row matches the unpadded sequence.
                    rope_positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # [B, T]
                else:
                    rope_positions = q_pos.expand(B, T)
        inputs = AttentionInputs(
            q_pos=q_pos,
            k_pos=torch.arange(S, device=device),
            key_valid=key_valid,
            slopes=self.alibi_slopes if self.config.position_embedding == "alibi" else None,
            rope_positions=rope_positions,
        )
        return inputs, write_at

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | PagedBatch | None = None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, hidden]; see :meth:`BaichuanForCausalLM.forward` for the arguments."""
        inputs, write_at = self._attention_inputs(input_ids, attention_mask, cache, input_pos)
        inv_freq = self.rope_inv_freq if self.config.position_embedding == "rope" else None

        x = self.embed_tokens(input_ids)  # [B, T, hidden]
        for i, layer in enumerate(self.layers):
            layer_device = layer.input_layernorm.weight.device
            if x.device != layer_device:  # layers split over devices (device_map)
                x = x.to(layer_device)
            layer_cache = cache.layer(i) if cache is not None else None
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, inputs, inv_freq, layer_cache, write_at, use_reentrant=False
                )
            else:
                x = layer(x, inputs, inv_freq, layer_cache, write_at)
        if isinstance(cache, KVCache) and input_pos is None:
            cache.length += input_ids.shape[1]
        x = x.to(self.norm.weight.device)
        return self.norm(x)


@dataclass
class CausalLMOutput:
    """Result of :meth:`BaichuanForCausalLM.forward`: ``logits`` [batch, seq, vocab] (float32 when a loss is
    computed), ``loss`` when ``labels`` are given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class BaichuanForCausalLM(nn.Module):
    """A Baichuan language model (13B ALiBi or 7B RoPE, by ``config.architectures``).

    Loads the official checkpoints without remote code::

        model = BaichuanForCausalLM.from_pretrained(path, torch_dtype=torch.float16, device_map="auto")
        logits = model(input_ids, attention_mask=mask).logits  # [batch, seq, vocab]
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = BaichuanModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.generation_config: GenerationConfig | None = None
        self.tensor_parallel: tuple[int, int] | None = None  # (rank, world size) once sharded

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: ModelConfig, *, seed: int | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> "BaichuanForCausalLM":
        """A randomly initialised model (normal(0, initializer_range) weights, unit norms)."""
        with torch.device(device or "cpu"):
            model = cls(config)
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * config.initializer_range)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        torch_dtype: torch.dtype | str | None = None,
        device_map: str | dict[str, Any] | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> "BaichuanForCausalLM":
        """Load an official checkpoint folder or hub id (see :func:`baichuan13b.checkpoint.load_model`)."""
        from .loading import load_model

        return load_model(path_or_id, torch_dtype=torch_dtype, device_map=device_map, progress=progress, **kwargs)

    def quantize(self, bits: int, group_size: int = 128, **options: Any) -> "BaichuanForCausalLM":
        """Quantize the weights in place: ``bits`` 8 (int8 per channel) or 4 (int4, groups of ``group_size``).

        See :func:`baichuan13b.quantization.quantize_model` (``options``: ``quantize_lm_head``,
        ``quantize_embeddings``). Returns the model, as the seed's ``quantize`` did.
        """
        from .quantization import QuantizationConfig, quantize_model

        return quantize_model(self, QuantizationConfig(bits=bits, group_size=group_size, **options))

    def save_pretrained(self, folder: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json, weights (safetensors by default) and generation_config.json in the official layout."""
        from .saving import save_model

        save_model(self, folder, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where input ids should live)."""
        return self.model.embed_tokens.weight.device

    @property
    def logits_device(self) -> torch.device:
        """Device of ``lm_head`` (where logits are computed); also right while a quantized ``lm_head`` holds its
        weight in a kernel layout (no ``weight`` tensor then)."""
        head = self.lm_head
        tensor = next(iter(head.parameters()), None)
        if tensor is None:
            tensor = next(iter(head.buffers()))
        return tensor.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (that of the final norm: also right when the embeddings are quantized)."""
        return self.model.norm.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def gradient_checkpointing_enable(self) -> None:
        self.model.gradient_checkpointing = True

    def _layer_devices(self) -> list[torch.device]:
        return [layer.input_layernorm.weight.device for layer in self.model.layers]

    def new_cache(self, batch_size: int, max_length: int | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """A preallocated contiguous KV cache for ``batch_size`` rows of up to ``max_length`` positions."""
        return KVCache(
            num_layers=self.config.num_hidden_layers,
            batch_size=batch_size,
            num_heads=self.model.layers[0].self_attn.num_heads,  # this rank's heads under tensor parallelism
            head_dim=self.config.head_dim,
            max_length=max_length or self.config.max_position,
            dtype=dtype or self.dtype,
            devices=self._layer_devices(),
        )

    def new_paged_cache(self, num_blocks: int, block_size: int = 16,
                        dtype: torch.dtype | None = None) -> PagedKVCache:
        """A pool of ``num_blocks`` KV blocks of ``block_size`` positions (see :mod:`baichuan13b.paged`)."""
        return PagedKVCache(
            num_layers=self.config.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            num_heads=self.model.layers[0].self_attn.num_heads,
            head_dim=self.config.head_dim,
            dtype=dtype or self.dtype,
            devices=self._layer_devices(),
        )

    def kv_bytes_per_position(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of keys and values of one position, all layers (this rank's heads)."""
        heads = self.model.layers[0].self_attn.num_heads
        size = torch.empty((), dtype=dtype or self.dtype).element_size()
        return 2 * self.config.num_hidden_layers * heads * self.config.head_dim * size

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: KVCache | PagedBatch | None = None,
        logits_to_keep: int = 0,
        input_pos: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Logits for ``input_ids`` [B, T].

        Args:
            attention_mask: [B, cached + T], 1 for real tokens and 0 for (left) padding. Optional.
            labels: [B, T] targets; the loss is next-token cross-entropy, positions equal to -100 ignored.
            cache: a :class:`KVCache` (new keys/values are written after ``cache.length`` and it is advanced), or
                a :class:`PagedBatch` (rows at their own positions through their block tables; with
                ``logits_to_keep=1`` each row keeps the logits of its last real token, ``cache.last``).
            logits_to_keep: if > 0, compute logits for the last ``logits_to_keep`` positions only.
            input_pos: [T] cache slots to write, for static-shape (compiled) decoding: attention then spans
                the whole cache, ``attention_mask`` is [B, cache.max_length], and ``cache.length`` is not
                advanced (the caller tracks positions).
        """
        hidden = self.model(input_ids, attention_mask=attention_mask, cache=cache, input_pos=input_pos)  # [B, T, hidden]
        if isinstance(cache, PagedBatch) and logits_to_keep == 1:  # rows end at different queries
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            hidden = hidden[rows, cache.last.to(hidden.device)][:, None]  # [B, 1, hidden]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        hidden = hidden.to(self.logits_device)
        logits = self.lm_head(hidden)  # [B, T, vocab]
        loss = None
        if labels is not None:
            logits = logits.float()
            shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return CausalLMOutput(logits=logits, loss=loss)

    # ------------------------------------------------------------------ high-level API (delegates)
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generation_config: "GenerationConfig | None" = None, **kwargs: Any) -> torch.Tensor:
        """Prompt + new ids [B, T + new] (see :func:`baichuan13b.generation.generate`)."""
        from .generation import generate

        return generate(self, input_ids, attention_mask=attention_mask,
                        generation_config=generation_config or self.generation_config, **kwargs)

    def build_chat_input(self, tokenizer, messages: list[dict[str, str]],
                         max_new_tokens: int | None = None) -> torch.Tensor:
        """Prompt ids [1, n] for a conversation, exactly as the official model builds them."""
        from .chat import build_chat_input

        return build_chat_input(self, tokenizer, messages, max_new_tokens=max_new_tokens)

    def chat(self, tokenizer, messages: list[dict[str, str]], stream: bool = False,
             generation_config: "GenerationConfig | None" = None, **overrides: Any) -> str | Iterator[str]:
        """Answer the last user message; with ``stream=True`` an iterator of the cumulative answer text.

        ``overrides`` update the generation settings for this call (``max_new_tokens=256, temperature=0.7``).
        """
        from .chat import chat

        return chat(self, tokenizer, messages, stream=stream, generation_config=generation_config, **overrides)

"""The decode loop: prefill once into a static KV cache, then one token per step.

One path serves ``generate``, chat, the CLI and the web page. Callers stop early by closing the iterator
(e.g. on Ctrl+C); nothing else needs cleaning up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..errors import ContextLengthError
from .config import GenerationConfig
from .sampling import process_logits, seen_tokens, select_next

if TYPE_CHECKING:
    from ..model import BaichuanForCausalLM


class StopStringMatcher:
    """Finds stop strings in streamed text without ever emitting text that belongs to one.

    ``feed(delta)`` returns ``(safe_text, stopped)``: text that can be shown now, and whether a stop string
    was completed (the stop string and anything after it are dropped). Text that could still be the start of a
    stop string is held back until it is decided; ``flush()`` returns it at the end of the stream.
    """

    def __init__(self, stop_strings: list[str] | tuple[str, ...] = ()):
        self.stop_strings = [s for s in stop_strings if s]
        self.pending = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stop_strings:
            return delta, False
        self.pending += delta
        hits = [(self.pending.find(s), s) for s in self.stop_strings if s in self.pending]
        if hits:
            cut = min(i for i, _ in hits)
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out, True
        # Hold back the longest suffix that is a proper prefix of some stop string.
        hold = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return "" if self.stopped else out


class TextStream:
    """The text of one generated sequence, token by token: what ``stream_text`` shows, reusable by a server.

    ``put(token)`` returns the new text (possibly ``""``); the sequence is ``finished`` at an eos token (whose text
    is never shown) or when a stop string completes (the stop string and what follows are dropped). At the end of
    a sequence that did not finish (length limit), ``close()`` returns the text still held back. Detokenisation is
    incremental (``tokenizer.stream_decoder``): never half a UTF-8 character, constant work per token.
    """

    def __init__(self, tokenizer: Any, eos_token_ids: list[int] | tuple[int, ...] = (),
                 stop_strings: list[str] | tuple[str, ...] = ()):
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=True)
        self.matcher = StopStringMatcher(stop_strings)
        self.eos = set(eos_token_ids)
        self.finished = False

    def put(self, token: int) -> str:
        if self.finished:
            raise ValueError("TextStream.put after the sequence finished")
        if token in self.eos:
            text = self.close()
            self.finished = True
            return text
        text, stopped = self.matcher.feed(self.decoder.put(token))
        self.finished = stopped
        return text

    def close(self) -> str:
        """Text held back (an incomplete character, a possible stop-string prefix) at the end of the stream."""
        if self.finished:
            return ""
        text, _ = self.matcher.feed(self.decoder.flush())
        return text + self.matcher.flush()


def resolve_config(model: "BaichuanForCausalLM", generation_config: GenerationConfig | None,
                   overrides: dict[str, Any]) -> GenerationConfig:
    """The explicit config, else the model's, else defaults from config.json; then ``overrides`` applied."""
    cfg = generation_config or model.generation_config or GenerationConfig.from_model_config(model.config)
    return cfg.update(**overrides) if overrides else cfg


def tokens_that_fit(context: int, prompt_len: int) -> int:
    """New tokens that fit after a prompt of ``prompt_len`` tokens in a context of ``context`` positions.

    The model reads at most ``context`` tokens, and the last new token is sampled from the logits of the last
    position and never read back: ``context - prompt_len + 1`` (0 when the prompt alone is over the context).
    This is the room the official chat format leaves: it keeps ``context - max_new_tokens`` tokens of history,
    then appends the assistant token, and still ``max_new_tokens`` fit.
    """
    return max(0, context - prompt_len + 1)


def _new_token_budget(model: "BaichuanForCausalLM", prompt_len: int, max_new_tokens: int) -> int:
    context = model.config.max_position
    if model.config.allow_length_extrapolation:
        return max_new_tokens
    if prompt_len > context:
        raise ContextLengthError(
            f"prompt of {prompt_len} tokens is longer than the model's context of {context} tokens; shorten "
            f"the prompt"
        )
    return min(max_new_tokens, tokens_that_fit(context, prompt_len))


def decode_step(model: "BaichuanForCausalLM", tokens: torch.Tensor, input_pos: torch.Tensor, cache,
                mask: torch.Tensor) -> torch.Tensor:
    """One decode step at fixed shapes: ``tokens`` [B, 1] written at cache slot ``input_pos`` [1], attention
    over the whole cache with ``mask`` [B, cache.max_length]. Returns logits [B, vocab]."""
    return model(tokens, attention_mask=mask, cache=cache, input_pos=input_pos, logits_to_keep=1).logits[:, -1]


_compiled_steps: dict[str, Any] = {}


def compiled_decode_step(device_type: str):
    """``decode_step`` under ``torch.compile`` (CUDA graphs via ``mode="reduce-overhead"`` on GPUs), compiled
    once per process and device type. Shapes stay fixed from token to token, so it is not recompiled."""
    if device_type not in _compiled_steps:
        mode = "reduce-overhead" if device_type == "cuda" else None
        _compiled_steps[device_type] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _compiled_steps[device_type]


def _static_cache_length(needed: int, context: int) -> int:
    """Round the cache up (multiples of 256, at most the context) so compiled shapes repeat across calls."""
    return max(needed, min(context, -(-needed // 256) * 256))


@torch.inference_mode()
def stream_tokens(
    model: "BaichuanForCausalLM",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    tokenizer: Any = None,
    compile: bool = False,
    **overrides: Any,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, [B] LongTensor, one step at a time.

    Rows that have finished (eos, or a stop string when a ``tokenizer`` is given) yield ``pad_token_id``. The
    number of steps is ``max_new_tokens``, capped by the context length. ``compile=True`` runs the decode
    steps at fixed shapes through ``torch.compile`` (CUDA graphs on GPUs; see :func:`compiled_decode_step`):
    same tokens, less launch overhead; the first call pays the compilation.
    """
    cfg = resolve_config(model, generation_config, overrides)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, T = input_ids.shape
    if T == 0:
        raise ValueError("input_ids is empty: generation needs at least one prompt token")
    if cfg.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the output")
    max_new = _new_token_budget(model, T, int(cfg.max_new_tokens))
    if max_new == 0:
        return
    if compile:
        from ..cpu_linear import has_packed_weights, stream_int8_layers

        if has_packed_weights(model):
            raise ValueError("compile=True needs plain weights: the model's CPU weights are prepacked for eager "
                             "decoding (baichuan13b.cpu_linear.unpack_linear_weights(model), or --cpu-layout streamed)")
        # CPU int8 layers in fbgemm's layout cannot be traced: from now on they stream their stored codes
        stream_int8_layers(model)
    device = model.device
    input_ids = input_ids.to(device)
    cache_len = _static_cache_length(T + max_new, max(model.config.max_position, T + max_new)) if compile \
        else T + max_new
    mask = torch.ones(B, cache_len, dtype=torch.long, device=device)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {list(attention_mask.shape)} != input_ids shape {[B, T]}")
        mask[:, :T] = attention_mask.to(device)

    logits_device = model.logits_device
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=logits_device)
        generator.manual_seed(cfg.seed)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = seen_tokens(input_ids.to(logits_device), mask[:, :T].to(logits_device), model.config.vocab_size)
    eos = torch.tensor(cfg.eos_token_ids, dtype=torch.long, device=logits_device)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_ids or [0])[0]
    finished = torch.zeros(B, dtype=torch.bool, device=logits_device)
    matchers = decoders = None
    if cfg.stop_strings:
        matchers = [StopStringMatcher(cfg.stop_strings) for _ in range(B)]
        decoders = [tokenizer.stream_decoder(skip_special_tokens=True) for _ in range(B)]

    cache = model.new_cache(B, cache_len)
    logits = model(input_ids, attention_mask=mask[:, :T], cache=cache, logits_to_keep=1).logits[:, -1]
    step_fn = compiled_decode_step(device.type) if compile else None
    for step in range(max_new):
        logits = process_logits(logits, seen, cfg)
        nxt = select_next(logits, cfg, generator)  # [B]
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        yield nxt
        if seen is not None:
            seen[torch.arange(B, device=logits_device), nxt] |= ~finished
        finished |= torch.isin(nxt, eos)
        if matchers is not None:
            for row, token in enumerate(nxt.tolist()):
                if not finished[row]:
                    _, stopped = matchers[row].feed(decoders[row].put(token))
                    if stopped:
                        finished[row] = True
        if step == max_new - 1:
            return
        # Only a possible stop needs the host to look at the tokens: without eos and stop strings (benchmarks)
        # the loop never synchronises, so the device runs ahead of Python.
        if (eos.numel() or matchers is not None) and bool(finished.all()):
            return
        S = T + step + 1
        if step_fn is not None:
            pos = torch.tensor([S - 1], device=device)
            logits = step_fn(model, nxt[:, None].to(device), pos, cache, mask).clone()
        else:
            logits = model(nxt[:, None].to(device), attention_mask=mask[:, : S], cache=cache,
                           logits_to_keep=1).logits[:, -1]


def generate(
    model: "BaichuanForCausalLM",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    tokenizer: Any = None,
    **overrides: Any,
) -> torch.Tensor:
    """Generate and return prompt + new ids, [B, T + n].

    Sampling settings come from ``generation_config`` (else ``model.generation_config``), updated by keyword
    ``overrides`` such as ``max_new_tokens=64, do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
    repetition_penalty=1.1, seed=0, stop_strings=["\\n\\n"]``. Batches are left padded, with ``attention_mask``
    marking real tokens; rows that end early are filled with ``pad_token_id``. The eos token (and the token
    completing a stop string) is kept in the output.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    steps = list(stream_tokens(model, input_ids, attention_mask, generation_config, tokenizer, **overrides))
    if not steps:
        return input_ids.clone()
    new = torch.stack(steps, dim=1).to(input_ids.device)  # [B, n]
    return torch.cat([input_ids, new], dim=1)


def stream_text(
    model: "BaichuanForCausalLM",
    tokenizer: Any,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig | None = None,
    **overrides: Any,
) -> Iterator[str]:
    """Yield the new text of one sequence (batch 1) as it is generated, piece by piece.

    Never yields half a UTF-8 character; stops at eos and before any stop string. O(1) work per token for
    detokenisation.
    """
    cfg = resolve_config(model, generation_config, overrides)
    if input_ids.dim() == 2 and input_ids.size(0) != 1:
        raise ValueError("stream_text handles one sequence; use stream_tokens for batches")
    text_stream = TextStream(tokenizer, cfg.eos_token_ids, cfg.stop_strings)
    # Stop strings are handled here on the text, so the token loop does not need to decode a second time.
    tokens = stream_tokens(model, input_ids, None, cfg.update(stop_strings=[]) if cfg.stop_strings else cfg)
    try:
        for step in tokens:
            text = text_stream.put(int(step[0]))
            if text:
                yield text
            if text_stream.finished:
                return
        text = text_stream.close()
        if text:
            yield text
    finally:
        tokens.close()

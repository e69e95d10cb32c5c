"""The serving engine: continuous batching over the paged KV cache, run by one scheduler thread.

Each request is a *sequence* (:class:`baichuan13b.paged.Sequence`) whose keys and values live in blocks of one
:class:`~baichuan13b.cache.PagedKVCache`, reached through its block table (see :mod:`baichuan13b.paged`). One
scheduler iteration:

1. drop aborted sequences (client gone) and return their blocks;
2. plan (:class:`~baichuan13b.paged.Scheduler`): running sequences get blocks for their next tokens (when none is
   free the newest sequence is preempted: requeued, recomputed later from its cached prefix); waiting requests
   are admitted while fewer than ``max_batch`` run and their blocks are free; a new sequence starts from the
   longest cached prefix of its prompt (prefix reuse) and prefills only the rest;
3. prefill: up to ``prefill_chunk`` prompt tokens in total, in one forward (several sequences, right padded), so a
   long prompt is spread over several iterations and never stalls the others; a sequence whose prompt is
   complete samples its first token;
4. decode: one batched forward ``[n, 1]`` over the decoding sequences, every row at its own position;
5. sample each row with its own settings, detokenise, check eos / stop strings / length, and report.
   A failure while sampling or detokenising one row ends that request alone (an error event; the others go on).

Sampling reuses the pure functions of :mod:`baichuan13b.generation`: rows with the same settings go through
``process_logits`` together (every operation there is row-wise), and each sampling row draws from its own
``torch.Generator`` (seeded by the request), so a request's tokens never depend on its batch neighbours. The text
of each sequence comes from :class:`~baichuan13b.generation.TextStream`, as in ``stream_text``. Greedy output
therefore equals ``model.generate`` with the same settings, up to floating-point differences between batch shapes
(matrix products of different sizes may round differently, which can flip an exact near-tie); reuse of a cached
prefix changes nothing but the work done (the cached keys and values are those the prefill would compute).

Log-probabilities (``submit(logprobs=k, echo=...)``, for ``/v1/completions``): with ``echo`` the prefill keeps
the logits of every prompt position and scores each prompt token under the one before it; with ``logprobs`` every
generated token is scored under the logits it was sampled from (:func:`~baichuan13b.serving.logprobs.score_positions`).
They arrive with the final event. ``echo`` with ``max_new_tokens=0`` scores the prompt and generates nothing.

Memory: the pool has ``kv_cache_bytes`` worth of blocks, at most ``max_batch`` full contexts (what the old
slot-per-request cache reserved) and at least one full context, so any admitted request can always finish.
Requests wait in a bounded queue (``max_queue``, then :class:`QueueFullError`). Without the scheduler thread
(:meth:`Engine.start` not called), :meth:`Engine.stream` runs the steps on the calling thread: ``model.chat``
uses the engine that way.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..generation import GenerationConfig, TextStream, process_logits, select_next
from ..generation.decode import tokens_that_fit
from ..generation.sampling import seen_tokens
from ..model import ContextLengthError
from ..paged import BlockManager, ModelRunner, Scheduler, Sequence
from .logprobs import TokenLogprob, score_positions
from .metrics import ServerMetrics

if TYPE_CHECKING:
    from ..model import BaichuanForCausalLM

logger = logging.getLogger("baichuan13b.serving")

DEFAULT_BLOCK_SIZE = 16


class EngineError(RuntimeError):
    """Base of the errors :meth:`Engine.submit` raises when it cannot take a request."""


class QueueFullError(EngineError):
    """The batch is full and the waiting queue is full: try again later."""


class EngineStoppedError(EngineError):
    """The engine is draining or stopped and takes no new requests."""


@dataclass
class Event:
    """What the engine reports about a request, in order: pieces of text, then one final event.

    The final event has ``finish_reason`` (``"stop"``: eos or a stop string; ``"length"``: ``max_new_tokens``
    reached) or ``error`` (the request failed; no more events follow). Token counts are running totals.
    """

    text: str = ""
    finish_reason: str | None = None
    error: BaseException | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_logprobs: list[TokenLogprob] | None = None  # final event, with echo: prompt tokens 1.. (0 has none)
    token_logprobs: list[TokenLogprob] | None = None  # final event, with logprobs: every generated token

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(eq=False, kw_only=True)
class _Request(Sequence):
    """A request: its :class:`~baichuan13b.paged.Sequence` plus sampling and reporting state."""

    id: str
    config: GenerationConfig
    max_new: int
    sink: Callable[[Event], None]
    text: TextStream
    sampling_key: tuple
    generator: torch.Generator | None
    seen: torch.Tensor | None  # [1, vocab] bool, only with a repetition penalty
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    first_token_at: float | None = None
    generated: int = 0
    aborted: bool = False
    done: bool = False
    logprobs: int | None = None  # top alternatives to report per generated token (None: no log-probs)
    echo: bool = False  # score the prompt tokens during prefill
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    token_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def prompt(self) -> list[int]:
        return self.token_ids[: self.num_prompt]


def global_generator(device: torch.device) -> torch.Generator:
    """The process-wide default generator of ``device`` (what sampling without a generator draws from)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


class Engine:
    """Continuous-batching generation for one model over a paged KV cache; thread-safe ``submit`` / ``abort``.

    Args:
        model: the loaded model (its forward is the only compute path).
        tokenizer: its tokenizer (detokenisation and stop strings).
        max_batch: sequences running (decoded together) at most, like vLLM's ``max_num_seqs``.
        max_queue: requests waiting at most; beyond that ``submit`` raises :class:`QueueFullError`.
        max_seq_len: positions per sequence (prompt + new tokens); default and maximum: the model's context.
        prefill_chunk: prompt tokens prefilled per scheduler iteration (the chunk size of chunked prefill).
        kv_cache_bytes: memory for the KV pool (default: ``max_batch`` full contexts); an error if it does not
            hold one full context.
        generation_config: default settings (default: ``model.generation_config``, else from config.json).
        metrics: where to record counters and latencies (a new :class:`ServerMetrics` by default).
        block_size: positions per KV block.
        prefix_cache: reuse the keys and values of cached prompt prefixes (False: every request computes its
            whole prompt; the same results, for comparison and debugging).
        decode_graphs: decode steps at fixed shapes, captured as CUDA graphs (see :mod:`baichuan13b.paged.graphs`;
            the same tokens). Default: on when the model is on one CUDA device; False decodes eagerly (vLLM's
            ``--enforce-eager``); True on a CPU runs the fixed shapes without graphs.
    """

    def __init__(self, model: "BaichuanForCausalLM", tokenizer: Any, *, max_batch: int = 16, max_queue: int = 256,
                 max_seq_len: int | None = None, prefill_chunk: int = 512, kv_cache_bytes: int | None = None,
                 generation_config: GenerationConfig | None = None, metrics: ServerMetrics | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, prefix_cache: bool = True, decode_graphs: bool | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.generation_config = (generation_config or model.generation_config
                                  or GenerationConfig.from_model_config(model.config))
        context = model.config.max_position
        if max_seq_len is not None:
            if max_seq_len < 2:
                raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
            if max_seq_len > context and not model.config.allow_length_extrapolation:
                raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's context of {context} tokens")
            context = max_seq_len
        self.context_length = context
        self.block_size = block_size
        self.block_bytes = model.kv_bytes_per_position() * block_size
        blocks_per_sequence = -(-context // block_size)
        num_blocks = max_batch * blocks_per_sequence
        if kv_cache_bytes is not None:
            num_blocks = min(num_blocks, int(kv_cache_bytes) // self.block_bytes)
            if num_blocks < blocks_per_sequence:
                need = blocks_per_sequence * self.block_bytes
                raise ValueError(
                    f"a KV cache of {kv_cache_bytes / 2**30:.2f} GiB holds no sequence of {context} positions "
                    f"({need / 2**30:.2f} GiB each); give more memory or a smaller max_seq_len")
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
        self.blocks = BlockManager(num_blocks, block_size, prefix_cache=prefix_cache)
        self.scheduler = Scheduler(self.blocks, max_batch=max_batch, prefill_chunk=prefill_chunk)
        self.runner = ModelRunner(model, num_blocks, block_size, decode_graphs=decode_graphs, max_batch=max_batch,
                                  max_blocks=blocks_per_sequence)
        self.cache = self.runner.cache
        self.device = model.device
        self.logits_device = model.logits_device
        self.vocab_size = model.config.vocab_size
        self.metrics = metrics or ServerMetrics()
        self.metrics.add_gauge("baichuan_queue_depth", "Requests waiting to be admitted",
                               lambda: len(self.scheduler.waiting))
        self.metrics.add_gauge("baichuan_running_sequences", "Sequences holding KV blocks",
                               lambda: len(self.scheduler.running))
        self.metrics.add_gauge("baichuan_batch_size", "Sequences in the last decode step", lambda: self.last_batch)
        self.metrics.add_gauge("baichuan_max_batch", "Sequences running at once at most", lambda: self.max_batch)
        self.metrics.add_gauge("baichuan_kv_cache_blocks", f"Blocks of the KV pool ({block_size} positions each)",
                               lambda: self.blocks.num_blocks)
        self.metrics.add_gauge("baichuan_kv_cache_usage_ratio", "Fraction of the KV blocks held by sequences",
                               lambda: self.blocks.num_used / self.blocks.num_blocks)
        self.metrics.add_gauge("baichuan_kv_cache_cached_blocks",
                               "Blocks held by no sequence that keep a cached prefix (evicted when needed)",
                               lambda: self.blocks.num_cached)
        self.last_batch = 0
        self._lock = threading.Condition()
        self._step_lock = threading.Lock()  # one step at a time (scheduler thread or callers of stream())
        self._by_id: dict[str, _Request] = {}
        self._order = itertools.count()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def _waiting(self):
        return self.scheduler.waiting

    @property
    def _running(self) -> list[_Request]:
        return self.scheduler.running  # type: ignore[return-value]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        """Start the scheduler thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="baichuan-engine", daemon=True)
                self._thread.start()
        return self

    def drain(self) -> None:
        """Take no new requests; those in flight run to completion."""
        with self._lock:
            self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler; requests still in flight end with an :class:`EngineStoppedError` event."""
        with self._lock:
            self._accepting = False
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def idle(self) -> bool:
        """True when nothing is waiting or running."""
        with self._lock:
            return not self._waiting and not self._running

    def stats(self) -> dict[str, int]:
        """Requests waiting and running, the batch cap (``slots``), requests tracked, sequences holding KV blocks
        (``filled_rows``), the pool's blocks (``blocks``, ``free_blocks``: including ``cached_blocks``, held by
        no sequence but keeping a prefix), ``preemptions`` and ``prefix_cache_hit_tokens`` so far."""
        with self._lock:
            return {"waiting": len(self._waiting), "running": len(self._running), "slots": self.max_batch,
                    "tracked": len(self._by_id), "filled_rows": sum(1 for s in self._running if s.block_table),
                    "blocks": self.blocks.num_blocks, "free_blocks": self.blocks.num_free,
                    "cached_blocks": self.blocks.num_cached, "preemptions": self.scheduler.preemptions,
                    "prefix_cache_hit_tokens": self.blocks.hit_tokens}

    # ------------------------------------------------------------------ requests
    def new_token_budget(self, prompt_tokens: int, max_new_tokens: int | None, fit: bool = False) -> int:
        """New tokens a request may generate.

        What fits is ``context - prompt_tokens + 1`` (the last new token is never fed back:
        :func:`~baichuan13b.generation.decode.tokens_that_fit`). By default (``max_new_tokens=None``) the configured
        ``max_new_tokens`` capped by what fits. An explicit ``max_new_tokens`` that does not fit is an error, or
        with ``fit`` (chat prompts, which the official format already truncated for the answer) it is capped to
        what fits, as ``model.chat`` does; only a ``max_new_tokens`` over the whole context is still an error.
        """
        ctx = self.context_length
        room = tokens_that_fit(ctx, prompt_tokens)
        if room == 0:
            raise ContextLengthError(
                f"this model's maximum context length is {ctx} tokens, but the prompt has {prompt_tokens} tokens: "
                f"no room is left to generate; shorten the prompt")
        if max_new_tokens is None:
            return min(int(self.generation_config.max_new_tokens), room)
        if fit and max_new_tokens > ctx:
            raise ContextLengthError(
                f"max_tokens {max_new_tokens} is more than this model's maximum context length of {ctx} tokens; "
                f"lower max_tokens")
        if max_new_tokens > room and not fit:
            raise ContextLengthError(
                f"this model's maximum context length is {ctx} tokens, but {prompt_tokens} prompt tokens + "
                f"max_tokens {max_new_tokens} = {prompt_tokens + max_new_tokens} (at most {ctx + 1}: the last "
                f"token is never read back); lower max_tokens or shorten the prompt")
        return min(max_new_tokens, room)

    def check_room(self, pending: int = 0) -> None:
        """Raise what :meth:`submit` would raise now for lack of room (:class:`EngineStoppedError`,
        :class:`QueueFullError`), counting ``pending`` requests about to be submitted: lets a server refuse
        before it spends time on a request (tokenising it)."""
        with self._lock:
            self._check_room(pending)

    def _check_room(self, pending: int = 0) -> None:  # the caller holds the lock
        if not self._accepting:
            raise EngineStoppedError("the server is shutting down and takes no new requests")
        free = self.max_batch - len(self._running)
        if len(self._waiting) + pending >= self.max_queue + max(0, free):
            raise QueueFullError(f"{len(self._running)} requests are running (at most {self.max_batch}) and "
                                 f"{len(self._waiting) + pending} are waiting; retry later")

    def submit(self, prompt_ids: list[int], sink: Callable[[Event], None], config: GenerationConfig | None = None,
               max_new_tokens: int | None = None, request_id: str | None = None, fit: bool = False, *,
               logprobs: int | None = None, echo: bool = False,
               prefix_cache: bool = True, generator: torch.Generator | None = None, tokenizer: Any = None) -> str:
        """Queue a request; ``sink(event)`` is called from the scheduler thread with its :class:`Event` s.

        Args:
            prompt_ids: prompt token ids (e.g. from :func:`baichuan13b.chat.build_chat_input`).
            sink: receives the events; it must return quickly (hand the event to another thread or loop).
            config: sampling, eos and stop strings (default: the engine's ``generation_config``);
                ``config.max_new_tokens`` is not used, see ``max_new_tokens``.
            max_new_tokens: new tokens at most (``None``: the default, see :meth:`new_token_budget`); 0 only
                with ``echo`` (score the prompt, generate nothing).
            fit: cap ``max_new_tokens`` to what fits instead of refusing it (see :meth:`new_token_budget`).
            logprobs: report each generated token's log-probability and its ``logprobs`` likeliest alternatives.
            echo: report the prompt tokens' log-probabilities too (with ``logprobs`` alternatives, 0 if None).
            prefix_cache: False keeps this request out of the prefix cache (always off when the engine's is, and
                with ``echo``: every prompt position is computed to be scored).
            generator: where sampling draws from (default: a new generator seeded by ``config.seed``, else
                randomly).
            tokenizer: detokenises this request (default: the engine's; the same vocabulary).

        Returns the request id (for :meth:`abort`). Raises ``ValueError`` for a bad prompt,
        :class:`~baichuan13b.model.ContextLengthError` when it does not fit, :class:`QueueFullError`,
        :class:`EngineStoppedError`.
        """
        cfg = config or self.generation_config
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty: generation needs at least one token")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for a vocabulary of {self.vocab_size}")
        if echo and max_new_tokens == 0:  # scoring only: the whole context may hold the prompt
            if len(prompt) > self.context_length:
                raise ContextLengthError(f"this model's maximum context length is {self.context_length} tokens, "
                                         f"but the prompt has {len(prompt)} tokens")
            max_new = 0
        else:
            max_new = self.new_token_budget(len(prompt), max_new_tokens, fit)
        if not cfg.greedy and generator is None:
            generator = torch.Generator(device=self.logits_device)
            if cfg.seed is not None:
                generator.manual_seed(cfg.seed)
            else:
                generator.seed()
        seen = None
        if cfg.repetition_penalty != 1.0:
            ids = torch.tensor([prompt], dtype=torch.long, device=self.logits_device)
            seen = seen_tokens(ids, None, self.vocab_size)  # [1, vocab]
        seq = _Request(
            token_ids=prompt, prefix_cache=prefix_cache and not echo, id=request_id or uuid.uuid4().hex,
            order=next(self._order), config=cfg, max_new=max_new,
            sink=sink, text=TextStream(self.tokenizer if tokenizer is None else tokenizer, cfg.eos_token_ids, cfg.stop_strings),
            sampling_key=(cfg.greedy, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty),
            generator=generator, seen=seen, logprobs=logprobs, echo=echo)
        with self._lock:
            self._check_room()
            if seq.id in self._by_id:
                raise ValueError(f"request id {seq.id!r} is already in use")
            if max_new == 0 and not echo:  # nothing to generate (configured max_new_tokens of 0)
                self._emit(seq, Event(finish_reason="length", prompt_tokens=len(prompt)))
                return seq.id
            self.scheduler.add(seq)
            self._by_id[seq.id] = seq
            self._lock.notify_all()
        return seq.id

    def abort(self, request_id: str) -> bool:
        """Stop a request (e.g. its client disconnected); its blocks are returned at the start of the next
        iteration. Returns False when it is unknown or already finished. No event is sent for an aborted
        request."""
        with self._lock:
            seq = self._by_id.get(request_id)
            if seq is None:
                return False
            seq.aborted = True
            if seq not in self._running:  # still waiting (or preempted): forget it now
                self.scheduler.remove(seq)
                del self._by_id[seq.id]
                self.metrics.finished.inc(1, "abort")
            self._lock.notify_all()
            return True

    def stream(self, prompt_ids: list[int], config: GenerationConfig | None = None,
               max_new_tokens: int | None = None, **options: Any) -> Iterator[Event]:
        """Submit and iterate over the events from the calling thread; closing the iterator aborts the request.
        A failed request raises its error. ``options``: ``prefix_cache``, ``generator``, ``tokenizer`` (see
        :meth:`submit`).

        Without the scheduler thread the engine steps on the calling thread (several threads may do so: they
        take turns, and each step advances every request).
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        request_id = self.submit(prompt_ids, events.put, config, max_new_tokens, **options)
        try:
            while True:
                while self._thread is None and events.empty():
                    self.step()
                event = events.get()
                if event.error is not None:
                    raise event.error
                yield event
                if event.final:
                    return
        finally:
            self.abort(request_id)
            if self._thread is None:
                with self._lock:
                    self._drop_aborted()

    # ------------------------------------------------------------------ scheduler
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._running and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    self._fail_all(EngineStoppedError("the server stopped before this request finished"))
                    return
            self.step()

    def step(self) -> None:
        """One scheduler iteration (the scheduler thread's loop body); a failure fails the running requests."""
        with self._step_lock, torch.inference_mode():
            start = time.perf_counter()
            try:
                self._step()
            except Exception as e:  # a bug or a device error: fail what is in flight, keep serving
                logger.exception("engine step failed; failing the %d running request(s)", len(self._running))
                with self._lock:
                    for seq in list(self._running):
                        self._finish(seq, error=e)
            self.metrics.step_seconds.observe(time.perf_counter() - start)

    def _drop_aborted(self) -> None:
        for seq in [s for s in self._running if s.aborted]:
            self.metrics.finished.inc(1, "abort")
            self._release(seq)

    def _step(self) -> None:
        with self._lock:
            self._drop_aborted()
            plan = self.scheduler.schedule()
            now = time.perf_counter()
            for seq in plan.admitted:
                self.metrics.prefix_cache_hit_tokens.inc(seq.num_cached)
                if seq.admitted is None:  # (a preempted sequence was admitted before)
                    seq.admitted = now
                    self.metrics.queue_seconds.observe(now - seq.submitted)
            if plan.preempted:
                self.metrics.preemptions.inc(len(plan.preempted))
                logger.info("preempted %d sequence(s): KV blocks ran out", len(plan.preempted))
        seqs: list[_Request] = []
        rows: list[torch.Tensor] = []
        if plan.prefill:
            try:
                logits = self._prefill_logits(plan.prefill)  # [P, V]
            except Exception as e:
                logger.exception("prefill failed for %d request(s)", len(plan.prefill))
                with self._lock:
                    for seq, _ in plan.prefill:
                        self._finish(seq, error=e)
            else:
                self.scheduler.advance(plan.prefill)
                self.metrics.prompt_tokens.inc(sum(n for _, n in plan.prefill))
                for i, (seq, _) in enumerate(plan.prefill):
                    if seq.num_pending == 0:  # prompt complete: sample the first token
                        if seq.max_new == 0:  # echo with max_tokens 0: the prompt is scored, nothing to generate
                            with self._lock:
                                self._finish(seq, reason="length")
                            continue
                        seqs.append(seq)
                        rows.append(logits[i])
        decoding = [s for s in plan.decode if not s.done]
        if decoding:
            logits = self.runner.run([(s, 1) for s in decoding])  # [n, V]
            self.scheduler.advance([(s, 1) for s in decoding])
            self.last_batch = len(decoding)
            self.metrics.batch_size.observe(len(decoding))
            seqs.extend(decoding)
            rows.extend(logits)
        if seqs:
            logits = torch.stack(rows)  # [len(seqs), V]
            tokens = self._sample(seqs, logits)
            self._score_tokens(seqs, logits, tokens)
            self._accept_tokens(seqs, tokens)

    def _prefill_logits(self, rows: list[tuple[_Request, int]]) -> torch.Tensor:
        """Last-token logits [len(rows), V] of one prefill step. Rows with ``echo`` run alone with the logits of
        every position, which score their prompt tokens (each under the position before it, once even if the
        sequence is recomputed after a preemption)."""
        plain = [(i, r) for i, r in enumerate(rows) if not r[0].echo]
        out: list[torch.Tensor | None] = [None] * len(rows)
        if plain:
            logits = self.runner.run([r for _, r in plain])
            for j, (i, _) in enumerate(plain):
                out[i] = logits[j]
        for i, (seq, n) in enumerate(rows):
            if seq.echo:
                every = self.runner.run([(seq, n)], every_position=True)[0]  # [n, V]
                first = max(seq.num_computed, len(seq.prompt_logprobs))  # position p predicts token p + 1
                targets = seq.prompt[first + 1: seq.num_computed + n + 1]
                seq.prompt_logprobs += score_positions(every[first - seq.num_computed:], targets, seq.logprobs or 0)
                out[i] = every[n - 1]
        return torch.stack(out)

    def _score_tokens(self, seqs: list[_Request], logits: torch.Tensor, tokens: list[int | None]) -> None:
        """Record the log-probability of each sampled token (and its alternatives) for the sequences that asked;
        a failure ends that request alone."""
        failed: list[tuple[_Request, Exception]] = []
        for i, seq in enumerate(seqs):
            if seq.logprobs is not None and not seq.done and tokens[i] is not None:
                try:
                    seq.token_logprobs += score_positions(logits[i: i + 1], [tokens[i]], seq.logprobs)
                except Exception as e:
                    failed.append((seq, e))
                    tokens[i] = None  # not accepted either
        self._fail(failed, "scoring")

    def _sample(self, seqs: list[_Request], logits: torch.Tensor) -> list[int | None]:
        """Next token of each sequence from its logits row ``logits`` [len(seqs), V], with its own settings.

        A group of rows whose sampling fails is sampled again row by row, so that only the rows that fail
        themselves end (with an error event; their entry is ``None``) and their batch neighbours go on.
        """
        groups: dict[tuple, list[int]] = {}
        for i, seq in enumerate(seqs):
            groups.setdefault(seq.sampling_key, []).append(i)
        picked: list[tuple[list[int], torch.Tensor]] = []
        failed: list[tuple[_Request, Exception]] = []
        for idx, members in groups.items():
            rows = logits if len(members) == len(seqs) else logits[members]  # [g, V]
            try:
                picked.append((members, self._sample_group([seqs[i] for i in members], rows)))
            except Exception:
                for j, i in enumerate(members):  # isolate the failing rows
                    try:
                        picked.append(([i], self._sample_group([seqs[i]], rows[j: j + 1])))
                    except Exception as e:
                        failed.append((seqs[i], e))
        out: list[int | None] = [None] * len(seqs)
        if picked:
            values = torch.cat([t for _, t in picked]).tolist()  # one device sync for the whole batch
            for i, v in zip((i for members, _ in picked for i in members), values):
                out[i] = v
        self._fail(failed, "sampling")
        return out

    @staticmethod
    def _sample_group(seqs: list[_Request], rows: torch.Tensor) -> torch.Tensor:
        """Tokens [g] for sequences sharing one sampling setting, from their logits ``rows`` [g, V]."""
        cfg = seqs[0].config
        seen = torch.cat([s.seen for s in seqs]) if cfg.repetition_penalty != 1.0 else None  # [g, V]
        processed = process_logits(rows, seen, cfg)
        if cfg.greedy:
            tokens = select_next(processed, cfg)  # [g]
        else:  # one draw per row from the request's own generator
            tokens = torch.cat([select_next(processed[j: j + 1], cfg, s.generator) for j, s in enumerate(seqs)])
        return tokens

    def _fail(self, failed: list[tuple[_Request, Exception]], stage: str) -> None:
        """End each request of ``failed`` alone with its error (logged here, with the request id)."""
        if not failed:
            return
        with self._lock:
            for seq, error in failed:
                logger.error("%s failed for request %s; ending that request", stage, seq.id, exc_info=error)
                if not seq.done:
                    self._finish(seq, error=error)

    def _accept_tokens(self, seqs: list[_Request], tokens: list[int | None]) -> None:
        now = time.perf_counter()
        finished: list[tuple[_Request, str, str]] = []
        accepted = 0
        failed: list[tuple[_Request, Exception]] = []
        for seq, token in zip(seqs, tokens):
            if seq.aborted or seq.done or token is None:
                continue
            accepted += 1
            seq.generated += 1
            if seq.first_token_at is None:
                seq.first_token_at = now
                self.metrics.ttft_seconds.observe(now - seq.submitted)
            if seq.seen is not None:
                seq.seen[0, token] = True
            try:  # detokenising and stop strings: a failure ends this request alone
                text = seq.text.put(token)
                reason = None
                if seq.text.finished:
                    reason = "stop"
                elif seq.generated >= seq.max_new:
                    text += seq.text.close()
                    reason = "length"
            except Exception as e:
                failed.append((seq, e))
                continue
            if reason is None:
                seq.append(token)  # its keys and values are computed by the next decode step
                self._emit(seq, Event(text=text, prompt_tokens=len(seq.prompt), completion_tokens=seq.generated))
            else:
                seq.done = True
                finished.append((seq, reason, text))
        self.metrics.generation_tokens.inc(accepted)
        self._fail(failed, "detokenising")
        if finished:
            with self._lock:
                for seq, reason, text in finished:
                    self._finish(seq, reason=reason, text=text)

    # ------------------------------------------------------------------ bookkeeping (callers hold the lock)
    def _emit(self, seq: _Request, event: Event) -> None:
        try:
            seq.sink(event)
        except Exception:  # the consumer is gone (e.g. its event loop closed): stop generating for it
            logger.exception("could not deliver an event of request %s; aborting it", seq.id)
            seq.aborted = True

    def _finish(self, seq: _Request, reason: str | None = None, text: str = "",
                error: BaseException | None = None) -> None:
        seq.done = True
        now = time.perf_counter()
        if error is None:
            self.metrics.finished.inc(1, reason)
            self.metrics.e2e_seconds.observe(now - seq.submitted)
            if seq.generated > 1 and seq.first_token_at is not None:
                self.metrics.tpot_seconds.observe((now - seq.first_token_at) / (seq.generated - 1))
        else:
            self.metrics.finished.inc(1, "error")
        if not seq.aborted:
            self._emit(seq, Event(text=text, finish_reason=reason, error=error, prompt_tokens=len(seq.prompt),
                                  completion_tokens=seq.generated,
                                  prompt_logprobs=seq.prompt_logprobs if seq.echo else None,
                                  token_logprobs=seq.token_logprobs if seq.logprobs is not None else None))
        self._release(seq)

    def _release(self, seq: _Request) -> None:
        """Forget ``seq`` and return its blocks (its full blocks stay in the prefix cache)."""
        self.scheduler.remove(seq)
        self._by_id.pop(seq.id, None)

    def _fail_all(self, error: BaseException) -> None:
        for seq in list(self._running) + list(self._waiting):
            self._finish(seq, error=error)

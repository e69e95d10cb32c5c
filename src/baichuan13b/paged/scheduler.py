"""Which sequences run in the next step: admission by free blocks, chunked prefill, preemption. Pure Python.

One call to :meth:`Scheduler.schedule` per engine step:

1. every running sequence gets the blocks for the tokens it runs next (a decoding sequence needs a new block
   every ``block_size`` tokens). When none is free, the newest running sequence is preempted: its blocks are
   freed (its full blocks stay in the prefix cache), it goes back to the front of the waiting queue and is
   recomputed when admitted again (prompt and the tokens generated so far), so it resumes where it stopped;
2. waiting sequences are admitted, first come first served, while fewer than ``max_batch`` run and the blocks
   for all their known tokens (less a cached prefix) are free;
3. the plan: every sequence with one token pending decodes (one batched forward, one token each); sequences with
   more pending tokens (prompts) get up to ``prefill_chunk`` tokens in total, oldest first, so a long prompt is
   spread over several steps and never stalls the decoding ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence


@dataclass
class StepPlan:
    """What one step computes: ``prefill`` (sequence, tokens to run) pairs, ``decode`` sequences (one token
    each), and the sequences ``admitted`` and ``preempted`` while planning."""

    prefill: list[tuple[Sequence, int]] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


class Scheduler:
    """Waiting and running sequences over one :class:`BlockManager`.

    Args:
        block_manager: the pool's blocks.
        max_batch: sequences running at once at most (like vLLM's ``max_num_seqs``).
        prefill_chunk: prompt tokens computed per step at most (chunked prefill).
    """

    def __init__(self, block_manager: BlockManager, max_batch: int, prefill_chunk: int):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.blocks = block_manager
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # arrival order
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Forget ``seq`` (finished or aborted), returning its blocks."""
        if seq in self.running:
            self.running.remove(seq)
            self.blocks.free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        for seq in list(self.running):  # oldest first
            if seq not in self.running:  # preempted for an older one
                continue
            while not self.blocks.can_append(seq):
                victim = max(self.running, key=lambda s: s.order)
                self._preempt(victim)
                plan.preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.blocks.append(seq)
        while self.waiting and len(self.running) < self.max_batch and self.blocks.can_allocate(self.waiting[0]):
            seq = self.waiting.popleft()
            self.blocks.allocate(seq)
            self.running.append(seq)
            plan.admitted.append(seq)
        self.running.sort(key=lambda s: s.order)
        budget = self.prefill_chunk
        for seq in self.running:
            if seq.num_pending == 1:
                plan.decode.append(seq)
            elif seq.num_pending > 1 and budget > 0:
                n = min(budget, seq.num_pending)
                plan.prefill.append((seq, n))
                budget -= n
        return plan

    def advance(self, rows: list[tuple[Sequence, int]]) -> None:
        """Record that ``rows`` (sequence, tokens) were computed: register their newly full blocks."""
        for seq, n in rows:
            seq.num_computed += n
            self.blocks.commit(seq)

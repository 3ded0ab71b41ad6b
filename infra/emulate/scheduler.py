"""The vLLM V1 scheduling policy of one replica, one step at a time, with no notion of time.

This is :mod:`infra.plan.simulate`'s policy written the plain way (one object per request, a loop over the
running batch) so the real-time emulator can drive it step by step and hand tokens to HTTP clients; the
simulation stores decoders arithmetically to replay millions of steps, which a live engine does not need.
The rules are the same (see that module's docstring for the vLLM source they mirror):

1. RUNNING requests first, in admission order; each asks for ``num_tokens - num_computed_tokens`` tokens
   (its prompt chunk, capped by the remaining token budget, or one decode token). KV slots come in blocks of
   ``block_size``; when the free pool is too small the LAST running request is preempted (blocks freed,
   computed tokens forgotten, prepended to the waiting queue), repeatedly, until the request fits or it has
   preempted itself, which ends the RUNNING loop.
2. WAITING requests next, only if nothing was preempted in this step: FCFS while the budget is positive and
   fewer than ``max_num_seqs`` run; admission stops at the first request whose first chunk does not fit.
3. A request samples a token at the end of every step in which its computed tokens reach ``num_tokens``
   (prompt + tokens emitted so far); ``num_tokens`` then grows by one, so the next step computes that token.

Same simplifications as the simulation: no prefix caching (a preempted request recomputes everything), no
admission watermark, no ``long_prefill_token_threshold``, no async scheduling. Requests whose prompt plus
output cannot fit in ``max_model_len`` are refused by the server before they reach the scheduler.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from infra.plan.simulate import EngineConfig, StepBatch

FinishReason = str  # "stop" | "length" | "abort" | "error" (vLLM's finished_reason label values)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. ``output_tokens`` is how many tokens it will emit before it ends."""

    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason  # what ending after ``output_tokens`` means: "length" or "stop"
    computed: int = 0  # num_computed_tokens: tokens whose KV is in the cache
    emitted: int = 0  # tokens sampled so far
    blocks: int = 0  # KV blocks held
    decoding: bool = False  # its (re)prefill is done: it computes one token per step
    preemptions: int = 0
    finished: FinishReason | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what the KV cache must hold before the next token is sampled."""
        return self.prompt_tokens + self.emitted


@dataclass(slots=True)
class Step:
    """What one ``schedule()`` decided: the chunks to compute, and who was preempted or admitted."""

    scheduled: list[tuple[Sequence, int]]
    batch: StepBatch
    preempted: list[Sequence]
    admitted: list[Sequence]  # left the waiting queue in this step (new or resumed)


class Scheduler:
    """Waiting queue, running batch and KV block pool of one replica."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_blocks = config.num_blocks
        self.preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def used_blocks(self) -> int:
        return self.config.num_blocks - self.free_blocks

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence, reason: FinishReason) -> None:
        """End a request now (abort, error): it leaves the queue or the batch and its blocks return."""
        if seq.finished is not None:
            return
        seq.finished = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.free_blocks += seq.blocks
        seq.blocks = 0

    def schedule(self) -> Step | None:
        """One ``Scheduler.schedule`` call; None if nothing runs (everything that wanted to was preempted)."""
        bs = self.config.block_size
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []
        admitted: list[Sequence] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.computed, budget)
            need = _cdiv(seq.computed + n, bs) - seq.blocks
            while need > self.free_blocks:
                victim = self.running.pop()  # vLLM preempts the tail of the running list
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            if preempted and preempted[-1] is seq:
                break  # it preempted itself: the RUNNING loop ends
            self.free_blocks -= need
            seq.blocks += need
            budget -= n
            scheduled.append((seq, n))
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = self.waiting[0]
                n = min(seq.num_tokens, budget)  # computed is 0 in the queue: prompt (+ generated, if resumed)
                need = _cdiv(n, bs)
                if need > self.free_blocks:
                    break
                self.waiting.popleft()
                self.free_blocks -= need
                seq.blocks = need
                budget -= n
                self.running.append(seq)
                scheduled.append((seq, n))
                admitted.append(seq)
        if not scheduled:
            return None
        return Step(scheduled, _batch(scheduled), preempted, admitted)

    def _preempt(self, seq: Sequence) -> None:
        """Recompute preemption: free the blocks, forget the computed tokens, go to the front of the queue."""
        self.free_blocks += seq.blocks
        seq.blocks = 0
        seq.computed = 0
        seq.decoding = False
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def complete(self, step: Step) -> list[Sequence]:
        """The step ran (``update_from_output``): advance computed tokens; return who sampled a token.

        A request that emitted its last token is finished (``finished`` set) and its blocks return to the
        pool. Requests removed while the step ran (aborted) are skipped.
        """
        sampled: list[Sequence] = []
        for seq, n in step.scheduled:
            if seq.finished is not None:
                continue
            seq.computed += n
            if seq.computed < seq.num_tokens:
                continue  # a prompt chunk that was not the last
            seq.decoding = True
            seq.emitted += 1
            sampled.append(seq)
            if seq.emitted >= seq.output_tokens:
                self.remove(seq, seq.finish_reason)
        return sampled


def _batch(scheduled: list[tuple[Sequence, int]]) -> StepBatch:
    """The step-cost model's view of a step (see ``StepBatch``)."""
    prefill_tokens = prefill_seqs = decode_seqs = decode_context = sampled = 0
    attention = 0.0
    for seq, n in scheduled:
        if seq.decoding:
            decode_seqs += 1
            decode_context += seq.computed + n  # its KV span including the token computed now
        else:
            prefill_tokens += n
            prefill_seqs += 1
            attention += n * (seq.computed + n / 2)
        if seq.computed + n == seq.num_tokens:
            sampled += 1
    return StepBatch(
        prefill_tokens=prefill_tokens,
        prefill_attention=attention,
        prefill_seqs=prefill_seqs,
        decode_seqs=decode_seqs,
        decode_context=decode_context,
        sampled_seqs=sampled,
    )

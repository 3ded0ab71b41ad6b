"""A real-time continuous-batching engine for one emulated vLLM replica.

An asyncio task repeats what vLLM's engine core does: schedule a step (:class:`Scheduler`, the V1 policy the
planner's simulation uses), run it, hand one token to every request that sampled. "Running" a step means
sleeping for the time the planner's :class:`StepTimeModel` predicts for that batch, so queueing, batching and
saturation behave like the planned replica, and a load test against the emulator measures what the capacity
model predicts (``tests/emulate`` checks the agreement with ``infra.plan.simulate``).

Time:

- ``time_scale`` multiplies every sleep (0.05: twenty times faster than the GPU). Nothing is rescaled back:
  whatever a client or ``/metrics`` measures is wall-clock and therefore scaled by ``time_scale`` too.
- Steps are laid on a timeline of deadlines (each step ends ``duration`` after the previous one ended, not
  after the engine woke up), so the event loop's timer granularity (~1 ms) and the scheduler's own Python
  time do not add up over thousands of short steps; a step only starts late when the loop was busy. The debt
  is capped at :data:`MAX_LAG_S` of wall time: after a long stall (a paused process) the engine does not burst.
- ``slowdown`` (the "slow" fault) multiplies the predicted step time.

The efficiency override (``compute_scale``, ``bandwidth_scale``: :func:`scaled_step_model`) emulates a GPU
that reaches a different fraction of its peak than the fitted efficiencies say, for ``gpufleet calibrate`` to
recover from benchmark results.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from infra.emulate.scheduler import FinishReason, Scheduler, Sequence, Step
from infra.plan.perf import StepTimeModel
from infra.plan.replica import Replica
from infra.plan.simulate import EngineConfig, StepCostModel

MAX_LAG_S = 0.05  # wall seconds a late engine may catch up on by running steps back to back


class EngineDead(RuntimeError):
    """The engine died (the "crash" fault): no request is accepted any more (vLLM's EngineDeadError)."""


@dataclass(eq=False)
class Request(Sequence):
    """A request's scheduler state plus what the server and the metrics need: its id, limits and events.

    ``events`` receives the index of every token sampled (0, 1, ...) and ``None`` when the request ends
    (``finished`` then says why). Timestamps are on the event loop's monotonic clock, NaN until they happen.
    """

    request_id: str = ""
    max_tokens: int = 0  # the effective limit (the request's max_tokens, or what max_model_len leaves)
    max_tokens_param: int | None = None  # max_tokens as the client sent it
    arrival: float = math.nan
    first_scheduled: float = math.nan
    first_token: float = math.nan
    last_token: float = math.nan
    events: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)

    async def tokens(self) -> AsyncIterator[int]:
        """The token indices as they are sampled; ends when the request finishes (for any reason)."""
        while True:
            index = await self.events.get()
            if index is None:
                return
            yield index


class EngineObserver(Protocol):
    """What the engine reports (the Prometheus metrics implement it). ``now`` is the engine's clock."""

    def on_admitted(self, req: Request, now: float) -> None: ...
    def on_step(self, step: Step, seconds: float) -> None: ...
    def on_token(self, req: Request, now: float) -> None: ...
    def on_finished(self, req: Request, now: float) -> None: ...


def scaled_step_model(step: StepTimeModel, compute_scale: float = 1.0, bandwidth_scale: float = 1.0) -> StepTimeModel:
    """The replica's step-time model with its compute-bound and memory-bound efficiencies multiplied.

    0.8 means the emulated GPU reaches 80% of the efficiency the planner assumes, so its steps are slower.
    The scaling is ``Efficiency.scaled``, the one definition ``gpufleet calibrate`` fits (GEMM and prefill
    attention rates by ``compute_scale``; weight, activation and KV streaming by ``bandwidth_scale``), so a
    calibration run against an emulator started with these factors should recover them. They apply on top of
    whatever the plan's replica already uses (a project calibration included).
    """
    if not (compute_scale > 0 and bandwidth_scale > 0):
        raise ValueError("compute_scale and bandwidth_scale must be > 0")
    if compute_scale == 1.0 and bandwidth_scale == 1.0:
        return step
    return StepTimeModel(step.shape, step.eff.scaled(compute_scale, bandwidth_scale))


class Engine:
    """One replica's engine loop; :meth:`start` it (and submit requests) inside a running event loop."""

    def __init__(
        self,
        config: EngineConfig,
        cost: StepCostModel,
        *,
        time_scale: float = 1.0,
        observer: EngineObserver | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError("time_scale must be > 0")
        self.config = config
        self.cost = cost
        self.time_scale = time_scale
        self.observer = observer
        self.slowdown = 1.0
        self.scheduler = Scheduler(config)
        self.dead = False
        self.closed = False
        self.steps = 0
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_replica(
        cls,
        replica: Replica,
        *,
        compute_scale: float = 1.0,
        bandwidth_scale: float = 1.0,
        time_scale: float = 1.0,
        observer: EngineObserver | None = None,
    ) -> Engine:
        """The engine of a planned replica: its limits and KV capacity, its (optionally rescaled) step times."""
        cost = scaled_step_model(replica.step, compute_scale, bandwidth_scale)
        return cls(replica.engine_config(), cost, time_scale=time_scale, observer=observer)

    # ------------------------------------------------------------------------------------------ state

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks allocated (``vllm:kv_cache_usage_perc``)."""
        return self.scheduler.used_blocks / self.config.num_blocks

    @property
    def frozen(self) -> bool:
        return not self._thawed.is_set()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="emulated-engine")

    async def stop(self) -> None:
        """Stop the loop; requests still in the engine end as aborted, later submissions raise EngineDead."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            assert isinstance(seq, Request)
            self._end(seq, "abort")

    def freeze(self) -> None:
        """Stop stepping (the "hang" fault): in-flight requests get no more tokens until :meth:`thaw`."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def kill(self) -> None:
        """The engine dies: every request in it ends with ``error``; later submissions raise EngineDead."""
        if self.dead:
            return
        self.dead = True
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            assert isinstance(seq, Request)
            self._end(seq, "error")
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ------------------------------------------------------------------------------------------ requests

    def submit(
        self,
        prompt_tokens: int,
        output_tokens: int,
        finish_reason: FinishReason,
        *,
        max_tokens: int | None = None,
        max_tokens_param: int | None = None,
        request_id: str | None = None,
    ) -> Request:
        """Queue a request that will emit ``output_tokens`` tokens and then end with ``finish_reason``."""
        if self.dead or self.closed:
            raise EngineDead("engine is dead" if self.dead else "engine is stopped")
        if prompt_tokens < 1 or output_tokens < 1:
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        req = Request(
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            finish_reason=finish_reason,
            request_id=request_id or f"req-{next(self._ids)}",
            max_tokens=max_tokens or output_tokens,
            max_tokens_param=max_tokens_param,
            arrival=self.now(),
        )
        self.scheduler.add(req)
        self._wake.set()
        return req

    def abort(self, req: Request, reason: FinishReason = "abort") -> None:
        """The client went away (or the server gave up on it): the request leaves the engine now."""
        if req.finished is None:
            self._end(req, reason)

    def _end(self, req: Request, reason: FinishReason) -> None:
        self.scheduler.remove(req, reason)
        req.events.put_nowait(None)
        if self.observer is not None:
            self.observer.on_finished(req, self.now())

    # ------------------------------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:
            self.kill()  # a bug in the engine is an engine death: requests fail and /health says so
            raise

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            await self._thawed.wait()
            if not self.scheduler.has_work:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            step = self.scheduler.schedule()
            if step is None:
                continue  # everything that wanted to run was preempted: schedule again at once (as vLLM)
            now = loop.time()
            for req in step.admitted:
                assert isinstance(req, Request)
                if math.isnan(req.first_scheduled):
                    req.first_scheduled = now
                    if self.observer is not None:
                        self.observer.on_admitted(req, now)
            seconds = self.cost.step_seconds(step.batch) * self.slowdown
            deadline = max(deadline, now - MAX_LAG_S) + seconds * self.time_scale
            await asyncio.sleep(deadline - now)
            await self._thawed.wait()  # a hang freezes the step in flight too
            self._deliver(step, seconds)
            # Why: a client that got its last token sends its next request now; vLLM (and the simulation,
            # with no client overhead) lets it join the very next step. One loop turn lets it submit.
            await asyncio.sleep(0)

    def _deliver(self, step: Step, seconds: float) -> None:
        self.steps += 1
        now = self.now()
        if self.observer is not None:
            self.observer.on_step(step, seconds)
        for seq in self.scheduler.complete(step):
            assert isinstance(seq, Request)
            if math.isnan(seq.first_token):
                seq.first_token = now
            if self.observer is not None:
                self.observer.on_token(seq, now)  # before last_token moves: it measures the inter-token gap
            seq.last_token = now
            seq.events.put_nowait(seq.emitted - 1)
            if seq.finished is not None:
                seq.events.put_nowait(None)
                if self.observer is not None:
                    self.observer.on_finished(seq, now)

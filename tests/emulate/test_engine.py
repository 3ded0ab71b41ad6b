"""The real-time engine behaves like the planned replica: a closed loop run against it in process (time scaled
down) measures the throughput and TPOT that ``infra.plan.simulate`` predicts for the same workload; the
efficiency override and the "slow" fault scale step times; abort and kill free the engine."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass

import pytest

from infra.emulate.engine import Engine, EngineDead, scaled_step_model
from infra.emulate.server import Emulator
from infra.plan.optimize import DeploymentPlan
from infra.plan.perf import StepTimeModel, decode_batch
from infra.plan.simulate import closed_loop, simulate

TIME_SCALE = 0.04


@dataclass(frozen=True)
class Measured:
    output_tokens_per_s: float  # engine time (wall / time_scale)
    mean_tpot_s: float
    mean_ttft_s: float
    preemptions: int


async def run_closed_loop(engine: Engine, concurrency: int, n: int, input_len: int, output_len: int) -> Measured:
    """``concurrency`` clients, each sending its next request as soon as the previous one ended."""
    loop = asyncio.get_running_loop()
    done: list[tuple[float, float, float]] = []
    sent = 0

    async def client() -> None:
        nonlocal sent
        while sent < n:
            sent += 1
            start = loop.time()
            req = engine.submit(input_len, output_len, "length")
            first = None
            async for _ in req.tokens():
                first = first or loop.time()
            assert first is not None and req.emitted == output_len
            done.append((start, first, loop.time()))

    engine.start()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        await engine.stop()
    scale = engine.time_scale
    window = max(end for *_, end in done) - min(start for start, *_ in done)
    return Measured(
        output_tokens_per_s=n * output_len / window * scale,
        mean_tpot_s=statistics.fmean((end - first) / (output_len - 1) for _, first, end in done) / scale,
        mean_ttft_s=statistics.fmean(first - start for start, first, _ in done) / scale,
        preemptions=engine.scheduler.preemptions,
    )


@pytest.mark.parametrize(
    ("concurrency", "n", "input_len", "output_len"),
    [(16, 96, 300, 60),  # decode-bound batches
     (48, 96, 1500, 40)],  # chunked prefill competes with decodes: prefill-heavy steps
)
def test_closed_loop_agrees_with_the_simulation(dev_chat: DeploymentPlan, concurrency: int, n: int, input_len: int,
                                                output_len: int) -> None:
    assert dev_chat.chosen is not None
    replica = dev_chat.chosen.replica
    expected = simulate(closed_loop(concurrency, n, input_len, output_len), replica.engine_config(), replica.step)

    async def scenario() -> Measured:
        return await run_closed_loop(Engine.for_replica(replica, time_scale=TIME_SCALE), concurrency, n,
                                     input_len, output_len)

    measured = asyncio.run(scenario())
    print(f"\nconcurrency {concurrency}: throughput {measured.output_tokens_per_s:.1f} vs "
          f"{expected.output_tokens_per_s:.1f} tok/s, TPOT {measured.mean_tpot_s * 1e3:.2f} vs "
          f"{expected.mean()['tpot_s'] * 1e3:.2f} ms, TTFT {measured.mean_ttft_s * 1e3:.1f} vs "
          f"{expected.mean()['ttft_s'] * 1e3:.1f} ms")
    assert measured.output_tokens_per_s == pytest.approx(expected.output_tokens_per_s, rel=0.10)
    assert measured.mean_tpot_s == pytest.approx(expected.mean()["tpot_s"], rel=0.10)


def test_efficiency_override_slows_steps_like_the_calibration_scaling(dev_chat: DeploymentPlan) -> None:
    assert dev_chat.chosen is not None
    step = dev_chat.chosen.replica.step
    slower = scaled_step_model(step, compute_scale=0.5, bandwidth_scale=0.8)
    assert slower.eff == step.eff.scaled(0.5, 0.8)
    assert scaled_step_model(step) is step
    for seqs in (1, 64):
        batch = decode_batch(seqs, 1000)
        assert slower.step_seconds(batch) > step.step_seconds(batch)
    with pytest.raises(ValueError, match="must be > 0"):
        scaled_step_model(step, compute_scale=0.0)
    emulated = Emulator.for_deployment(dev_chat, compute_scale=0.5, bandwidth_scale=0.8)
    assert isinstance(emulated.engine.cost, StepTimeModel) and emulated.engine.cost.eff == slower.eff


def test_slowdown_scales_step_time(dev_chat: DeploymentPlan) -> None:
    """The "slow" fault: every step takes ``slowdown`` times longer (measured on one request's decode)."""
    assert dev_chat.chosen is not None
    replica = dev_chat.chosen.replica

    async def decode_time(slowdown: float) -> float:
        engine = Engine.for_replica(replica, time_scale=TIME_SCALE)
        engine.slowdown = slowdown
        engine.start()
        req = engine.submit(100, 41, "length")
        async for _ in req.tokens():
            pass
        await engine.stop()
        return (req.last_token - req.first_token) / 40

    normal, slow = asyncio.run(decode_time(1.0)), asyncio.run(decode_time(3.0))
    assert slow / normal == pytest.approx(3.0, rel=0.1)


def test_abort_and_kill_free_the_engine(dev_chat: DeploymentPlan) -> None:
    assert dev_chat.chosen is not None
    replica = dev_chat.chosen.replica

    async def scenario() -> None:
        engine = Engine.for_replica(replica, time_scale=TIME_SCALE)
        engine.start()
        a = engine.submit(100, 1000, "length")
        b = engine.submit(100, 1000, "length")
        async for index in a.tokens():
            if index == 2:
                engine.abort(a)
        assert a.finished == "abort" and 3 <= a.emitted < 1000
        assert engine.num_running == 1 and engine.kv_usage > 0
        engine.kill()
        assert b.finished == "error" and engine.dead
        assert engine.num_running == engine.num_waiting == 0 and engine.kv_usage == 0
        with pytest.raises(EngineDead):
            engine.submit(10, 10, "length")
        await engine.stop()

    asyncio.run(scenario())

"""The emulator's scheduler is the planner's simulation policy: stepped on a virtual clock it must reproduce
``infra.plan.simulate`` exactly (steps, preemptions, per-request latencies), with and without KV pressure."""

from __future__ import annotations

import pytest

from infra.emulate.scheduler import Scheduler, Sequence
from infra.plan.simulate import EngineConfig, LinearStepCost, StepCostModel, closed_loop, simulate

COST = LinearStepCost(fixed_s=0.005, per_prefill_token_s=1e-5, per_decode_seq_s=1e-4, per_decode_context_s=1e-7)


def virtual_closed_loop(
    config: EngineConfig, cost: StepCostModel, *, concurrency: int, n: int, input_len: int, output_len: int
) -> tuple[int, int, float, list[float], list[float]]:
    """Drive the scheduler step by step; a client's next request arrives when its previous one finished."""
    sched = Scheduler(config)
    t, sent = 0.0, 0
    arrival: dict[int, float] = {}
    first: dict[int, float] = {}
    finish: dict[int, float] = {}
    ids: dict[int, int] = {}

    def send(now: float) -> None:
        nonlocal sent
        if sent < n:
            seq = Sequence(input_len, output_len, "length")
            ids[id(seq)], arrival[sent] = sent, now
            sent += 1
            sched.add(seq)

    for _ in range(concurrency):
        send(0.0)
    steps = 0
    while sched.has_work:
        step = sched.schedule()
        if step is None:
            continue
        t += cost.step_seconds(step.batch)
        steps += 1
        for seq in sched.complete(step):
            i = ids[id(seq)]
            if seq.emitted == 1:
                first[i] = t
            if seq.finished is not None:
                finish[i] = t
                send(t)
    ttft = sorted(first[i] - arrival[i] for i in range(n))
    e2e = sorted(finish[i] - arrival[i] for i in range(n))
    return steps, sched.preemptions, t, ttft, e2e


@pytest.mark.parametrize("kv_tokens", [100_000, 3_000, 1_200])
@pytest.mark.parametrize(("concurrency", "n", "input_len", "output_len"),
                         [(8, 40, 300, 60), (24, 60, 700, 120), (4, 10, 1000, 5)])
def test_matches_the_simulation_exactly(kv_tokens: int, concurrency: int, n: int, input_len: int,
                                        output_len: int) -> None:
    config = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, kv_cache_tokens=kv_tokens,
                          max_model_len=1024, block_size=16)
    expected = simulate(closed_loop(concurrency, n, input_len, output_len), config, COST)
    steps, preemptions, end, ttft, e2e = virtual_closed_loop(
        config, COST, concurrency=concurrency, n=n, input_len=input_len, output_len=output_len)
    assert (steps, preemptions) == (expected.steps, expected.preemptions)
    assert end == pytest.approx(expected.simulated_time_s, rel=1e-9)
    assert ttft == pytest.approx(sorted(expected.ttft_s), rel=1e-9, abs=1e-12)
    assert e2e == pytest.approx(sorted(expected.e2e_s), rel=1e-9, abs=1e-12)


def test_kv_pressure_preempts_and_recomputes() -> None:
    config = EngineConfig(max_num_seqs=8, max_num_batched_tokens=256, kv_cache_tokens=640, max_model_len=512,
                          block_size=16)
    sched = Scheduler(config)
    seqs = [Sequence(200, 100, "length") for _ in range(4)]
    for seq in seqs:
        sched.add(seq)
    preempted = 0
    while sched.has_work:
        step = sched.schedule()
        if step is not None:
            preempted += len(step.preempted)
            sched.complete(step)
            assert sched.used_blocks <= config.num_blocks
    assert preempted > 0
    assert all(s.finished == "length" and s.emitted == 100 for s in seqs)
    assert sched.free_blocks == config.num_blocks


def test_remove_frees_blocks_and_skips_the_step_in_flight() -> None:
    config = EngineConfig(max_num_seqs=4, max_num_batched_tokens=256, kv_cache_tokens=4096, max_model_len=1024)
    sched = Scheduler(config)
    a, b = Sequence(100, 10, "stop"), Sequence(100, 10, "stop")
    sched.add(a)
    sched.add(b)
    step = sched.schedule()
    assert step is not None
    sched.remove(a, "abort")
    sampled = sched.complete(step)
    assert sampled == [b]
    assert a.finished == "abort" and a.emitted == 0
    assert sched.running == [b]
    assert sched.used_blocks == b.blocks

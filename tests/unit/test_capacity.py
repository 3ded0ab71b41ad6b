"""How much load a replica carries within an SLO (infra/plan/capacity.py): monotonicity and the
max_rate search checked by re-simulating around its answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.catalog import load_catalog
from infra.plan.capacity import Latency, Traffic, floor_latency, max_rate, probe, saturation
from infra.plan.replica import Precision, Replica, api_overhead_s, build_replica, resolve_limits
from infra.plan.simulate import poisson, simulate
from infra.spec.stack import Slo
from infra.spec.tokens import FixedLengths, LogNormalLengths

catalog = load_catalog()
FP8 = Precision("bfloat16", catalog.quantization["fp8"])
BF16 = Precision()


def replica(model: str, gpu: str, *, tp: int = 1, precision: Precision = BF16, max_model_len: int = 8192) -> Replica:
    a, g = catalog.models[model].architecture, catalog.gpu(gpu)
    assert g is not None
    return build_replica(a, g, tp=tp, precision=precision, limits=resolve_limits(a, g, max_model_len=max_model_len))


def fixed(value: int) -> FixedLengths:
    return FixedLengths.model_validate({"distribution": "fixed", "value": value})


def lognormal(mean: int, p95: int) -> LogNormalLengths:
    return LogNormalLengths.model_validate({"mean": mean, "p95": p95})


def slo(ttft_ms: float, tpot_ms: float, e2e_ms: float | None = None) -> Slo:
    return Slo.model_validate({"ttftP95Ms": ttft_ms, "tpotP95Ms": tpot_ms, "e2eP95Ms": e2e_ms})


CHAT = Traffic.draw(lognormal(800, 3000), lognormal(200, 600), 8192)
FIXED = Traffic.draw(fixed(1000), fixed(200), 8192)


# ------------------------------------------------------------------------------------------ monotonicity


def test_more_gpus_per_replica_never_lower_saturation_throughput() -> None:
    rates = [saturation(replica("llama-3.1-70b", "H100-SXM", tp=tp, precision=FP8), CHAT) for tp in (2, 4, 8)]
    assert rates == sorted(rates)
    assert rates[-1] > 1.5 * rates[0]


def test_more_gpus_per_replica_never_lower_slo_capacity() -> None:
    target = slo(2000, 60)
    found = [max_rate(replica("llama-3.1-70b", "H100-SXM", tp=tp, precision=FP8), CHAT, target) for tp in (2, 4, 8)]
    assert [c.max_qps for c in found] == sorted(c.max_qps for c in found)
    assert found[0].max_qps > 0


@settings(max_examples=12, deadline=None)
@given(short=st.integers(16, 6000), extra=st.integers(1, 6000))
def test_longer_prompts_never_lower_the_floor_ttft(short: int, extra: int) -> None:
    r = replica("llama-3.1-8b", "L40S", max_model_len=16384)
    latencies = [
        floor_latency(r, Traffic.draw(fixed(prompt), fixed(64), 16384)).ttft_ms for prompt in (short, short + extra)
    ]
    assert latencies[1] >= latencies[0]


def test_floor_ttft_grows_substantially_with_the_prompt() -> None:
    r = replica("llama-3.1-8b", "H100-SXM", max_model_len=32768)
    ttft = [floor_latency(r, Traffic.draw(fixed(n), fixed(32), 32768)).ttft_ms for n in (256, 2048, 16384)]
    assert ttft == sorted(ttft)
    assert ttft[2] > 5 * ttft[0]


@pytest.mark.parametrize(
    ("gpu", "traffic"),
    [("L40S", CHAT), ("H100-SXM", FIXED), ("A100-80G", CHAT)],
    ids=["l40s-chat", "h100-fixed", "a100-chat"],
)
def test_a_higher_poisson_rate_never_lowers_mean_ttft(gpu: str, traffic: Traffic) -> None:
    """Same seed, same requests, arrivals scaled in time: rates 1.5× apart up to past saturation.

    (On a finer grid the discrete engine steps make the mean wobble by well under 1%; 0.5% is allowed.)"""
    r = replica("llama-3.1-8b", gpu)
    ceiling = saturation(r, traffic)
    ins, outs = traffic.first(400)
    rates = [ceiling * 0.05 * 1.5**k for k in range(9)]  # 5% .. 128% of saturation
    means = [
        simulate(poisson(rate, 400, ins, outs, seed=7), r.engine_config(api_overhead_s()), r.step).mean()["ttft_s"]
        for rate in rates
    ]
    for (rate, lower), higher in zip(zip(rates, means, strict=True), means[1:], strict=False):
        assert higher >= lower * 0.995, f"mean TTFT fell from {lower * 1000:.1f} ms after {rate:.2f} req/s"
    assert means[-1] > 2 * means[0]


# -------------------------------------------------------------------------------------------- max_rate

CASES = {
    "l40s-ttft-and-tpot": ("llama-3.1-8b", "L40S", CHAT, slo(1000, 60)),
    "h100-tpot-bound": ("llama-3.1-8b", "H100-SXM", FIXED, slo(5000, 20)),
    "a100-e2e-bound": ("llama-3.1-8b", "A100-80G", CHAT, slo(5000, 200, 9000)),
    "h100-70b-fp8-tp2": ("llama-3.1-70b", "H100-SXM", CHAT, slo(800, 50)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_max_rate_meets_the_slo_and_thirty_percent_more_does_not(case: str) -> None:
    model, gpu, traffic, target = CASES[case]
    r = replica(model, gpu, tp=2 if "70b" in model else 1, precision=FP8 if "fp8" in case else BF16)
    cap = max_rate(r, traffic, target)
    # max_qps never exceeds the saturation throughput: the optimizer prices replicas_for(saturation) as a
    # lower bound on an option's cost and prunes on it.
    assert 0 < cap.max_qps <= cap.saturation_qps
    assert cap.at_max is not None
    assert not cap.at_max.misses(target)
    assert not cap.floor.misses(target)

    at = probe(r, traffic, cap.max_qps, seed=0)
    assert at.rejected == 0
    assert at.requests_per_s >= 0.9 * cap.max_qps
    assert Latency.of(at, 95) == cap.at_max
    assert not Latency.of(at, 95).misses(target)

    higher = 1.3 * cap.max_qps
    over = probe(r, traffic, higher, seed=0)
    saturates = over.rejected > 0 or over.requests_per_s < 0.9 * higher
    assert saturates or Latency.of(over, 95).misses(target), (
        f"{higher:.2f} req/s still meets {target} (max_rate said {cap.max_qps:.2f})"
    )


def test_a_stricter_tpot_slo_never_raises_max_qps() -> None:
    r = replica("llama-3.1-8b", "L40S")
    found = [max_rate(r, CHAT, slo(3000, tpot)).max_qps for tpot in (200, 60, 50, 40, 30, 26, 22)]
    assert found == sorted(found, reverse=True)
    assert found[0] > found[-2] > 0
    assert found[-1] == 0.0  # below the floor TPOT (~23 ms) nothing works


def test_a_stricter_ttft_slo_never_raises_max_qps() -> None:
    r = replica("llama-3.1-8b", "A100-80G")
    found = [max_rate(r, CHAT, slo(ttft, 200)).max_qps for ttft in (5000, 1500, 1000, 700, 500)]
    assert found == sorted(found, reverse=True)
    assert found[0] > found[-1]


def test_an_slo_below_the_floor_gives_zero_capacity_and_says_so() -> None:
    r = replica("llama-3.1-8b", "L4")
    cap = max_rate(r, CHAT, slo(50, 5))
    assert cap.max_qps == 0.0
    assert cap.at_max is None
    misses = cap.floor.misses(slo(50, 5))
    assert any(m.startswith("TTFT p95") and "> 50 ms" in m for m in misses)
    assert any(m.startswith("TPOT p95") and "> 5 ms" in m for m in misses)


def test_max_rate_is_deterministic() -> None:
    r = replica("llama-3.1-8b", "L40S")
    assert max_rate(r, CHAT, slo(1000, 60)) == max_rate(r, CHAT, slo(1000, 60))


def test_saturation_is_the_ceiling_of_the_sustainable_poisson_rate() -> None:
    """capacity.py brackets max_qps below the offline-batch throughput because "nothing can go faster".
    A long Poisson run at 1.25× that figure must then fall behind (deliver < 1.05× saturation)."""
    r = replica("llama-3.1-8b", "L40S")
    ceiling = saturation(r, CHAT)
    rate = 1.25 * ceiling
    ins, outs = CHAT.input_lens * 5, CHAT.output_lens * 5
    long_run = simulate(poisson(rate, len(ins), ins, outs, seed=0), r.engine_config(api_overhead_s()), r.step)
    assert long_run.requests_per_s <= 1.05 * ceiling, (
        f"a {len(ins)}-request Poisson run at {rate:.2f} req/s sustains {long_run.requests_per_s:.2f} req/s "
        f"(TTFT p95 {long_run.percentiles(95)['ttft_s'] * 1000:.0f} ms) > saturation_qps {ceiling:.2f}"
    )


@pytest.mark.parametrize(("model", "gpu"), [("llama-3.1-8b", "L40S"), ("qwen2.5-7b", "L4")])
def test_with_an_slo_that_never_binds_max_rate_finds_what_the_replica_sustains(model: str, gpu: str) -> None:
    """With TTFT/TPOT limits of 10 minutes / 10 s only throughput limits the rate: a long Poisson run at
    1.15× max_qps must then fall behind (deliver < 95% of its rate). Otherwise the planner buys replicas
    for load one replica carries."""
    r = replica(model, gpu)
    cap = max_rate(r, CHAT, slo(600_000, 10_000))
    rate = 1.15 * cap.max_qps
    ins, outs = CHAT.input_lens * 5, CHAT.output_lens * 5
    long_run = simulate(poisson(rate, len(ins), ins, outs, seed=0), r.engine_config(api_overhead_s()), r.step)
    p95 = long_run.percentiles(95)
    assert long_run.requests_per_s < 0.95 * rate, (
        f"max_rate says {cap.max_qps:.2f} req/s (saturation {cap.saturation_qps:.2f}), yet {len(ins)} requests "
        f"at {rate:.2f} req/s are served at {long_run.requests_per_s:.2f} req/s with TTFT p95 "
        f"{p95['ttft_s']:.1f} s, TPOT p95 {p95['tpot_s'] * 1000:.0f} ms"
    )


# ------------------------------------------------------------------------------------------ engine speed


def on_engine(engine: str | None, model: str = "llama-3.1-8b", gpu: str = "L40S") -> Replica:
    a, g = catalog.models[model].architecture, catalog.gpu(gpu)
    assert g is not None
    record = catalog.engines[engine] if engine is not None else None
    return build_replica(a, g, limits=resolve_limits(a, g, max_model_len=8192), engine=record)


def test_an_engine_at_factor_one_has_exactly_vllms_capacity() -> None:
    """SGLang's factor is 1.0 (uncalibrated): every figure is vLLM's, bit for bit; only the label differs."""
    target = slo(2000, 60)
    plain = max_rate(on_engine(None), CHAT, target)
    assert max_rate(on_engine("vllm"), CHAT, target) == plain
    assert max_rate(on_engine("sglang"), CHAT, target) == plain


@pytest.mark.parametrize("engine", ["llamacpp", "ollama"])
def test_a_slower_engine_scales_saturation_by_its_factor(engine: str) -> None:
    """Every step at 1/factor of vLLM's time: a closed loop with the engine always full is the same run,
    slowed down, so its steady-state throughput is vLLM's times the factor."""
    factor = catalog.engines[engine].throughput.factor
    vllm, slower = saturation(on_engine("vllm"), CHAT), saturation(on_engine(engine), CHAT)
    assert slower == pytest.approx(factor * vllm, rel=1e-6)


def test_a_slower_engine_decodes_slower_one_request_at_a_time() -> None:
    factor = catalog.engines["llamacpp"].throughput.factor
    vllm, slower = floor_latency(on_engine("vllm"), FIXED), floor_latency(on_engine("llamacpp"), FIXED)
    assert slower.tpot_ms == pytest.approx(vllm.tpot_ms / factor, rel=1e-6)
    # TTFT: the prefill steps slow down, the API server's fixed overhead does not.
    overhead_ms = api_overhead_s() * 1000
    assert slower.ttft_ms - overhead_ms == pytest.approx((vllm.ttft_ms - overhead_ms) / factor, rel=1e-6)


def test_a_slower_engine_carries_less_load_within_the_same_slo() -> None:
    """Capacity under an SLO drops at least about in proportion: the same rate is a higher utilisation
    and every latency is longer, so the SLO binds earlier."""
    target = slo(3000, 80)
    factor = catalog.engines["llamacpp"].throughput.factor
    vllm, slower = max_rate(on_engine("vllm"), CHAT, target), max_rate(on_engine("llamacpp"), CHAT, target)
    assert 0 < slower.max_qps < vllm.max_qps
    assert slower.max_qps <= 1.05 * factor * vllm.max_qps  # bisection resolution ~1%
    assert slower.saturation_qps == pytest.approx(factor * vllm.saturation_qps, rel=1e-6)

"""Physical sanity and monotonicity of the engine-step time model (infra/plan/perf.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.catalog import load_catalog
from infra.catalog.arch_math import embedding_parameters, parameter_count
from infra.catalog.schema import Architecture
from infra.plan.perf import ReplicaShape, StepTimeModel
from infra.plan.replica import Precision, build_replica, resolve_limits
from infra.plan.simulate import StepBatch

catalog = load_catalog()
FP8 = Precision("bfloat16", catalog.quantization["fp8"])
BF16 = Precision()


def arch(name: str) -> Architecture:
    return catalog.models[name].architecture


def model(
    name: str | Architecture,
    gpu: str = "H100-SXM",
    *,
    tp: int = 1,
    fmt: str = "bf16",
    link: str = "nvswitch",
    activation_bytes: int = 2,
    kv_bytes: float = 2,
) -> StepTimeModel:
    a = arch(name) if isinstance(name, str) else name
    g = catalog.gpu(gpu)
    assert g is not None
    return StepTimeModel(ReplicaShape(a, g, tp, fmt, activation_bytes, kv_bytes, link))  # type: ignore[arg-type]


def step_of(name: str, gpu: str, precision: Precision = BF16, tp: int = 1) -> StepTimeModel:
    """The step model of a replica built the way the planner builds it (precision → weight format)."""
    a, g = arch(name), catalog.gpu(gpu)
    assert g is not None
    return build_replica(a, g, tp=tp, precision=precision, limits=resolve_limits(a, g, max_model_len=4096)).step


def decode(seqs: int, context: int) -> StepBatch:
    """``seqs`` sequences decoding one token each, every one attending over ``context`` tokens."""
    return StepBatch(
        prefill_tokens=0,
        prefill_attention=0.0,
        prefill_seqs=0,
        decode_seqs=seqs,
        decode_context=seqs * context,
        sampled_seqs=seqs,
    )


def prefill(tokens: int, before: int = 0) -> StepBatch:
    """One prompt chunk of ``tokens`` after ``before`` already computed tokens (its last chunk)."""
    return StepBatch(
        prefill_tokens=tokens,
        prefill_attention=tokens * (before + tokens / 2),
        prefill_seqs=1,
        decode_seqs=0,
        decode_context=0,
        sampled_seqs=1,
    )


def weight_streaming_seconds(m: StepTimeModel, tokens: int = 1) -> float:
    """Time of one layer's linear layers (no all-reduce, attention or elementwise work)."""
    return sum(m.linear_seconds(tokens, lin.k, lin.n) for lin in (*m.dense_linears, *m.mlp_linears))


# ------------------------------------------------------------------------------------------ basic sanity


def test_an_empty_step_takes_no_time_and_any_other_step_does() -> None:
    m = model("llama-3.1-8b")
    assert m.step_seconds(StepBatch(0, 0.0, 0, 0, 0, 0)) == 0.0
    assert m.step_seconds(decode(1, 1)) > 0
    assert m.step_seconds(prefill(1)) > 0


@pytest.mark.parametrize("gpu", ["H100-SXM", "H200", "A100-80G", "L4"])
def test_step_time_respects_the_roofline_of_the_datasheet(gpu: str) -> None:
    """No step beats peak bandwidth (weights streamed once) or peak bf16 FLOPs (2 per weight per token),
    and a batch-1 decode is within 2× of the naive weights / bandwidth."""
    a = arch("llama-3.1-8b")
    g = catalog.gpu(gpu)
    assert g is not None
    m = model(a, gpu)
    linear = parameter_count(a) - embedding_parameters(a)
    bandwidth_floor = 2 * linear / (g.memory_bandwidth_gbps * 1e9)
    one = m.step_seconds(decode(1, 1000))
    assert bandwidth_floor < one < 2 * bandwidth_floor
    tokens = 8192
    compute_floor = 2 * tokens * linear / (g.bf16_tflops * 1e12)
    big = m.step_seconds(prefill(tokens))
    assert compute_floor < big < 3 * compute_floor


# ------------------------------------------------------------------------------------ monotonicity (PBT)

MODELS = ["llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mixtral-8x7b"]


@st.composite
def step_models(draw: st.DrawFn) -> StepTimeModel:
    name = draw(st.sampled_from(MODELS))
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if arch(name).attention_heads % t == 0]))
    return model(
        name,
        draw(st.sampled_from(["H100-SXM", "A100-80G", "L40S", "H200"])),
        tp=tp,
        fmt=draw(st.sampled_from(["bf16", "fp8", "int8", "int4"])),
        link=draw(st.sampled_from(["nvswitch", "pcie"])),
    )


@st.composite
def batches(draw: st.DrawFn) -> StepBatch:
    prefill_tokens = draw(st.integers(0, 16384))
    decode_seqs = draw(st.integers(0 if prefill_tokens else 1, 1024))
    context = draw(st.integers(1, 32768))
    before = draw(st.integers(0, 32768))
    prefill_seqs = draw(st.integers(1, 8)) if prefill_tokens else 0
    return StepBatch(
        prefill_tokens=prefill_tokens,
        prefill_attention=prefill_tokens * (before + prefill_tokens / 2),
        prefill_seqs=min(prefill_seqs, prefill_tokens),
        decode_seqs=decode_seqs,
        decode_context=decode_seqs * context,
        sampled_seqs=draw(st.integers(0, decode_seqs + prefill_seqs)),
    )


GROWTHS = {
    "more decoders": lambda b, k: replace(
        b, decode_seqs=b.decode_seqs + k, decode_context=b.decode_context + k, sampled_seqs=b.sampled_seqs + k
    ),
    "longer contexts": lambda b, k: replace(b, decode_context=b.decode_context + k * max(1, b.decode_seqs)),
    "more prefill tokens": lambda b, k: replace(
        b, prefill_tokens=b.prefill_tokens + k, prefill_attention=b.prefill_attention + k * (b.prefill_tokens + k)
    ),
    "more prefill attention": lambda b, k: replace(b, prefill_attention=b.prefill_attention + 1000.0 * k),
    "more sampled sequences": lambda b, k: replace(b, sampled_seqs=b.sampled_seqs + k),
}


@settings(max_examples=300, deadline=None)
@given(m=step_models(), batch=batches(), growth=st.sampled_from(sorted(GROWTHS)), k=st.integers(1, 2000))
def test_step_time_is_positive_and_grows_with_every_component(
    m: StepTimeModel, batch: StepBatch, growth: str, k: int
) -> None:
    before = m.step_seconds(batch)
    after = m.step_seconds(GROWTHS[growth](batch, k))
    assert 0 < before < math.inf
    assert after >= before * (1 - 1e-12), growth


@pytest.mark.parametrize("name", MODELS)
def test_decode_step_grows_with_batch_and_context(name: str) -> None:
    m = model(name, tp=2)
    by_batch = [m.step_seconds(decode(n, 2048)) for n in (1, 2, 8, 32, 128, 512)]
    by_context = [m.step_seconds(decode(64, c)) for c in (128, 1024, 8192, 32768)]
    by_prefill = [m.step_seconds(prefill(n)) for n in (16, 256, 2048, 8192, 16384)]
    for series in (by_batch, by_context, by_prefill):
        assert series == sorted(series)
        assert series[-1] > series[0]


@settings(max_examples=200, deadline=None)
@given(
    m=step_models(),
    m1=st.floats(1e-3, 65536),
    m2=st.floats(1e-3, 65536),
    which=st.integers(0, 3),
)
def test_linear_seconds_is_monotone_and_continuous_in_the_token_count(
    m: StepTimeModel, m1: float, m2: float, which: int
) -> None:
    lin = (*m.dense_linears, *m.mlp_linears)[which]
    lo, hi = sorted((m1, m2))
    t_lo, t_hi = m.linear_seconds(lo, lin.k, lin.n), m.linear_seconds(hi, lin.k, lin.n)
    assert 0 < t_lo <= t_hi
    # Continuous (no jump at the bandwidth→compute knee): a relative nudge of M moves the time at most as much.
    nudged = m.linear_seconds(hi * (1 + 1e-7), lin.k, lin.n)
    assert t_hi <= nudged <= t_hi * (1 + 2e-7)


def test_linear_seconds_moves_from_bandwidth_bound_to_compute_bound() -> None:
    m = model("llama-3.1-8b")
    k, n = 4096, 14336 * 2
    small = [m.linear_seconds(t, k, n) for t in (1, 2, 4, 8)]
    assert max(small) / min(small) < 1.05  # streaming the weights dominates: batching is almost free
    large = [m.linear_seconds(t, k, n) for t in (8192, 16384)]
    assert large[1] / large[0] == pytest.approx(2, rel=0.05)  # compute-bound: linear in M


# ----------------------------------------------------------------------------- parallelism and the links


def test_tensor_parallelism_never_increases_weight_streaming_for_a_70b_decode() -> None:
    steps = {tp: model("llama-3.1-70b", tp=tp) for tp in (1, 2, 4, 8)}
    streaming = [weight_streaming_seconds(steps[tp]) for tp in (1, 2, 4, 8)]
    assert streaming == sorted(streaming, reverse=True)
    assert streaming[0] / streaming[-1] > 4  # roughly 1/tp of the bytes per GPU
    assert steps[1]._allreduce_seconds(1) == 0.0
    for tp in (2, 4, 8):
        assert steps[tp]._allreduce_seconds(1) > 0
        assert steps[tp].step_seconds(decode(1, 1000)) < steps[tp // 2].step_seconds(decode(1, 1000))


@pytest.mark.parametrize("tp", [2, 4, 8])
@pytest.mark.parametrize("batch", [decode(1, 1000), decode(64, 2000), prefill(4096)], ids=["b1", "b64", "prefill"])
def test_pcie_makes_a_tensor_parallel_step_slower_than_nvswitch(tp: int, batch: StepBatch) -> None:
    nvswitch = model("llama-3.1-70b", tp=tp, fmt="fp8", link="nvswitch").step_seconds(batch)
    pcie = model("llama-3.1-70b", tp=tp, fmt="fp8", link="pcie").step_seconds(batch)
    assert pcie > nvswitch


def test_the_link_does_not_matter_without_tensor_parallelism() -> None:
    batch = decode(16, 1000)
    assert model("llama-3.1-8b", link="pcie").step_seconds(batch) == model("llama-3.1-8b").step_seconds(batch)


# ------------------------------------------------------------------------------------ precision and GPUs


def test_fp8_weights_decode_faster_than_bf16_on_h100_and_int4_faster_still() -> None:
    bf16 = step_of("llama-3.1-8b", "H100-SXM").step_seconds(decode(1, 1000))
    fp8 = step_of("llama-3.1-8b", "H100-SXM", FP8).step_seconds(decode(1, 1000))
    awq = step_of("llama-3.1-8b", "H100-SXM", Precision(quantization=catalog.quantization["awq"]))
    assert fp8 < 0.8 * bf16
    assert awq.step_seconds(decode(1, 1000)) < fp8


def test_fp8_prefill_uses_fp8_tensor_cores_on_hopper_only() -> None:
    big = prefill(8192)
    hopper = step_of("llama-3.1-8b", "H100-SXM", FP8).step_seconds(big) / step_of(
        "llama-3.1-8b", "H100-SXM"
    ).step_seconds(big)
    ampere = step_of("llama-3.1-8b", "A100-80G", FP8).step_seconds(big) / step_of(
        "llama-3.1-8b", "A100-80G"
    ).step_seconds(big)
    assert hopper < 0.75  # W8A8: twice the tensor-core rate
    assert ampere == pytest.approx(1.0, abs=0.05)  # W8A16 on Ampere: the math stays bf16


def test_float32_weights_stream_twice_the_bytes_of_bf16() -> None:
    """memory.py counts 4 bytes per float32 weight; the step model must stream as many."""
    bf16 = step_of("llama-3.1-8b", "H100-SXM")
    fp32 = step_of("llama-3.1-8b", "H100-SXM", Precision("float32"))
    assert fp32.shape.activation_bytes == 4
    ratio = fp32.step_seconds(decode(1, 1000)) / bf16.step_seconds(decode(1, 1000))
    assert ratio > 1.7, f"float32 batch-1 decode only {ratio:.2f}× bf16 (weights are 2× the bytes)"


@pytest.mark.parametrize("batch", [decode(1, 1000), decode(32, 2000), decode(256, 1000)], ids=["b1", "b32", "b256"])
def test_more_memory_bandwidth_decodes_faster(batch: StepBatch) -> None:
    a100 = model("llama-3.1-8b", "A100-80G").step_seconds(batch)
    h100 = model("llama-3.1-8b", "H100-SXM").step_seconds(batch)
    h200 = model("llama-3.1-8b", "H200").step_seconds(batch)
    assert h200 < h100 < a100


# ------------------------------------------------------------------------------------------ mixture of experts


def dense_twin(moe: Architecture, experts: int) -> Architecture:
    """A dense model of the MoE's shape whose one MLP is ``experts`` experts wide."""
    fields = moe.model_dump(by_alias=True)
    fields.update(experts=None, activeExperts=None, intermediateSize=moe.intermediate_size * experts)
    return Architecture.model_validate(fields)


MIXTRAL = arch("mixtral-8x7b")
DENSE_TOTAL = dense_twin(MIXTRAL, MIXTRAL.experts or 0)
DENSE_ACTIVE = dense_twin(MIXTRAL, MIXTRAL.active_experts or 0)


def test_dense_twins_have_the_moe_parameter_counts() -> None:
    assert parameter_count(DENSE_TOTAL) == pytest.approx(parameter_count(MIXTRAL), rel=1e-3)  # 46.7B
    assert parameter_count(DENSE_ACTIVE) == pytest.approx(12.9e9, rel=0.01)


def test_moe_batch_one_decode_streams_only_the_active_experts() -> None:
    one = decode(1, 1000)
    moe = model(MIXTRAL, tp=2).step_seconds(one)
    total = model(DENSE_TOTAL, tp=2).step_seconds(one)
    active = model(DENSE_ACTIVE, tp=2).step_seconds(one)
    assert moe < 0.5 * total
    assert moe == pytest.approx(active, rel=0.2)


def test_moe_memory_holds_every_expert() -> None:
    h100 = catalog.gpus["H100-SXM"]
    r = build_replica(MIXTRAL, h100, tp=2, limits=resolve_limits(MIXTRAL, h100, max_model_len=4096))
    assert r.weights_gib * 1024**3 == pytest.approx(2 * parameter_count(MIXTRAL))


def test_moe_decode_is_never_slower_than_a_dense_model_of_the_same_total_size() -> None:
    """Whatever the batch, the MoE streams at most all its weights and computes fewer FLOPs than the
    dense twin; vLLM runs the experts in one fused kernel (fused_moe), so it should not be slower."""
    moe, dense = model(MIXTRAL, tp=2), model(DENSE_TOTAL, tp=2)
    times = {
        seqs: (moe.step_seconds(decode(seqs, 1000)), dense.step_seconds(decode(seqs, 1000)))
        for seqs in (1, 2, 4, 8, 16, 32, 64, 256)
    }
    slower = {seqs: f"{m * 1000:.2f} ms vs {d * 1000:.2f} ms" for seqs, (m, d) in times.items() if m > 1.02 * d}
    assert not slower, f"MoE decode slower than its dense twin at batch sizes {slower}"


# ------------------------------------------------------------------------------------------ engine speed


def engine_step(name: str, engine: str | None, gpu: str = "H100-SXM") -> StepTimeModel:
    """The step model of a replica on ``engine`` (a catalog engine; None: no engine given, vLLM's model)."""
    a, g = arch(name), catalog.gpu(gpu)
    assert g is not None
    limits = resolve_limits(a, g, max_model_len=4096)
    record = catalog.engines[engine] if engine is not None else None
    return build_replica(a, g, limits=limits, engine=record).step


BATCHES = (decode(1, 500), decode(64, 2000), prefill(2048), prefill(512, before=3000),
           StepBatch(prefill_tokens=1000, prefill_attention=5e5, prefill_seqs=1, decode_seqs=31,
                     decode_context=31 * 1500, sampled_seqs=32))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_an_engine_at_factor_one_has_exactly_vllms_step_times(engine: str) -> None:
    """vLLM (calibrated) and SGLang (an estimate at 1.0) take bit for bit the time of the model with no engine."""
    assert catalog.engines[engine].throughput.factor == 1.0
    plain, on_engine = engine_step("llama-3.1-8b", None), engine_step("llama-3.1-8b", engine)
    assert [on_engine.step_seconds(b) for b in BATCHES] == [plain.step_seconds(b) for b in BATCHES]
    assert [on_engine.decode_step_affine(n) for n in (1, 7, 256)] == [plain.decode_step_affine(n) for n in (1, 7, 256)]


@pytest.mark.parametrize("engine", ["llamacpp", "ollama"])
def test_a_slower_engine_takes_vllms_step_time_divided_by_its_factor(engine: str) -> None:
    factor = catalog.engines[engine].throughput.factor
    assert factor < 1
    vllm, slower = engine_step("llama-3.1-8b", "vllm"), engine_step("llama-3.1-8b", engine)
    for batch in BATCHES:  # the whole step: layers, LM head and the engine's fixed overhead
        assert slower.step_seconds(batch) == pytest.approx(vllm.step_seconds(batch) / factor, rel=1e-12)
    assert slower.step_seconds(decode(0, 0)) == 0.0


def test_the_decode_fast_path_agrees_with_step_seconds_at_any_engine_speed() -> None:
    """The simulator fast-forwards decode runs with decode_step_affine: it must scale as step_seconds does."""
    for engine in ("vllm", "llamacpp", "ollama"):
        m = engine_step("llama-3.1-8b", engine)
        for seqs, context in ((1, 100), (32, 1500), (300, 4000)):
            a, b = m.decode_step_affine(seqs)
            assert a + b * seqs * context == pytest.approx(m.step_seconds(decode(seqs, context)), rel=1e-12)


def test_the_engine_changes_step_times_not_memory() -> None:
    a, g = arch("llama-3.1-8b"), catalog.gpus["H100-SXM"]
    limits = resolve_limits(a, g, max_model_len=4096)
    vllm = build_replica(a, g, limits=limits, engine=catalog.engines["vllm"])
    ollama = build_replica(a, g, limits=limits, engine=catalog.engines["ollama"])
    assert ollama.memory == vllm.memory
    assert ollama.kv_cache_tokens == vllm.kv_cache_tokens
    assert ollama.limits == vllm.limits
    assert (vllm.engine_estimate, ollama.engine_estimate) == (False, True)
    assert ollama.step.shape.engine_speed == catalog.engines["ollama"].throughput.factor

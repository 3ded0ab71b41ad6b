"""One replica: a model on ``tp`` GPUs with engine limits — its memory, KV capacity and step times.

This is where a profile's precision choices meet the hardware: the quantization method and width decide
the bytes streamed per weight and which tensor cores run the math; the engine limits follow vLLM's own
defaults for the GPU and entry point unless given. The model is vLLM's; a replica of another engine takes
vLLM's step times divided by the engine's catalog throughput factor (memory and limits unchanged), an
estimate unless the engine is calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.catalog.schema import Architecture, Gpu, InferenceEngine, QuantizationMethod
from infra.plan.memory import (
    DTYPE_BYTES,
    GIB,
    EntryPoint,
    ReplicaMemory,
    default_max_num_batched_tokens,
    default_max_num_seqs,
    engine_facts,
    replica_memory,
    tensor_parallel_problem,
)
from infra.plan.perf import Efficiency, GpuLink, ReplicaShape, StepTimeModel, WeightFormat, efficiency_for
from infra.plan.simulate import EngineConfig

if TYPE_CHECKING:
    from infra.calibrate.model import Calibration, GpuCalibration


class DoesNotFit(Exception):
    """The configuration cannot start: the reason is the message, in the user's terms."""


@dataclass(frozen=True)
class Precision:
    dtype: str = "bfloat16"
    quantization: QuantizationMethod | None = None
    weight_bits: int | None = None
    kv_cache_dtype: str = "auto"

    @property
    def bits(self) -> int:
        if self.quantization is None or self.quantization.name == "none":
            return 8 * DTYPE_BYTES[self.dtype]
        return self.weight_bits or self.quantization.weight_bits[0]

    @property
    def weight_format(self) -> WeightFormat:
        bits = self.bits
        if bits >= 32:
            return "fp32"
        if bits >= 16:
            return "bf16"
        # GGUF's 8.5-bit Q8_0 runs like other 8-bit integer weights, its 5-7-bit K-quants like 4-bit ones.
        if bits >= 8:
            return "fp8" if self.quantization is not None and self.quantization.name == "fp8" else "int8"
        return "int4"


@dataclass(frozen=True)
class EngineLimits:
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    max_model_len: int
    block_size: int


def resolve_limits(
    arch: Architecture,
    gpu: Gpu,
    *,
    entry_point: EntryPoint = "api",
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
) -> EngineLimits:
    """vLLM's defaults for what is not given (reference/vllm.md: they depend on the GPU and entry point)."""
    facts = engine_facts()
    return EngineLimits(
        max_num_seqs=max_num_seqs or default_max_num_seqs(gpu),
        max_num_batched_tokens=max_num_batched_tokens or default_max_num_batched_tokens(gpu, entry_point),
        gpu_memory_utilization=gpu_memory_utilization or float(facts["gpuMemoryUtilization"]),
        max_model_len=max_model_len or arch.max_context,
        block_size=int(facts["blockSize"]),
    )


@dataclass(frozen=True)
class Replica:
    arch: Architecture
    gpu: Gpu
    tp: int
    link: GpuLink
    precision: Precision
    limits: EngineLimits
    memory: ReplicaMemory
    step: StepTimeModel
    calibration: GpuCalibration | None = None
    """The project's bench calibration of this GPU, when the step times use it."""
    engine: InferenceEngine | None = None
    """The engine's catalog record when given; None is vLLM as the capacity model knows it (factor 1)."""

    @property
    def kv_cache_tokens(self) -> int:
        return self.memory.kv_capacity_tokens

    @property
    def max_concurrent_full_sequences(self) -> int:
        """Sequences of max_model_len the KV cache holds at once (vLLM logs it as 'maximum concurrency')."""
        return self.kv_cache_tokens // self.limits.max_model_len

    @property
    def weights_gib(self) -> float:
        """Weights of the whole replica (all tensor-parallel shards), GiB."""
        return self.memory.weights * self.tp / GIB

    @property
    def calibrated(self) -> bool:
        """The GPU architecture's efficiencies are fitted to measurements (not the engine: see engine_estimate)."""
        return self.step.eff.calibrated

    @property
    def engine_estimate(self) -> bool:
        """The step times are vLLM's scaled by the engine's throughput factor, not fitted to this engine."""
        return self.engine is not None and not self.engine.throughput.calibrated

    def engine_config(self, request_overhead_s: float = 0.0) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.limits.max_num_seqs,
            max_num_batched_tokens=self.limits.max_num_batched_tokens,
            kv_cache_tokens=self.kv_cache_tokens,
            max_model_len=self.limits.max_model_len,
            block_size=self.limits.block_size,
            request_overhead_s=request_overhead_s,
        )


def api_overhead_s() -> float:
    return float(engine_facts()["apiServerOverheadMs"]) / 1000


def build_replica(
    arch: Architecture,
    gpu: Gpu,
    *,
    tp: int = 1,
    link: GpuLink = "nvswitch",
    precision: Precision = Precision(),
    limits: EngineLimits,
    calibration: Calibration | None = None,
    efficiency: Efficiency | None = None,
    engine: InferenceEngine | None = None,
) -> Replica:
    """A replica that vLLM would start, or ``DoesNotFit`` saying why not.

    Step times use ``efficiency`` if given, else the architecture's efficiencies scaled by ``calibration``'s
    entry for this GPU (see ``efficiency_for``), divided by ``engine``'s throughput factor (vLLM: 1).
    """
    problem = tensor_parallel_problem(arch, tp)
    if problem:
        raise DoesNotFit(problem)
    if limits.max_num_batched_tokens < limits.max_num_seqs:
        # vLLM's SchedulerConfig refuses to start in this case.
        raise DoesNotFit(f"max_num_batched_tokens ({limits.max_num_batched_tokens}) must be >= max_num_seqs "
                         f"({limits.max_num_seqs}), as vLLM requires; lower max-num-seqs too")
    if limits.max_model_len > arch.max_context:
        raise DoesNotFit(f"max_model_len {limits.max_model_len} exceeds the model's context {arch.max_context}")
    memory = replica_memory(
        arch,
        gpu=gpu,
        tp=tp,
        weight_bits=precision.bits,
        dtype=precision.dtype,
        kv_cache_dtype=precision.kv_cache_dtype,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        max_num_seqs=limits.max_num_seqs,
        gpu_memory_utilization=limits.gpu_memory_utilization,
    )
    if not memory.weights_fit:
        need = (memory.weights + memory.reserve) / GIB
        raise DoesNotFit(
            f"weights and runtime need {need:.1f} GiB per GPU, {memory.budget / GIB:.1f} GiB usable "
            f"on {gpu.name} at gpu_memory_utilization {limits.gpu_memory_utilization}"
        )
    if memory.kv_capacity_tokens < limits.max_model_len:
        raise DoesNotFit(
            f"the KV cache holds {memory.kv_capacity_tokens} tokens, less than one "
            f"max_model_len sequence ({limits.max_model_len})"
        )
    kv_bytes = DTYPE_BYTES[precision.dtype if precision.kv_cache_dtype == "auto" else precision.kv_cache_dtype]
    shape = ReplicaShape(
        arch=arch,
        gpu=gpu,
        tp=tp,
        weight_format=precision.weight_format,
        activation_bytes=DTYPE_BYTES[precision.dtype],
        kv_bytes_per_element=kv_bytes,
        link=link,
        engine_speed=engine.throughput.factor if engine is not None else 1.0,
    )
    return Replica(
        arch=arch,
        gpu=gpu,
        tp=tp,
        link=link,
        precision=precision,
        limits=limits,
        memory=memory,
        step=StepTimeModel(shape, efficiency or efficiency_for(gpu, calibration)),
        calibration=calibration.for_gpu(gpu.name) if calibration is not None and efficiency is None else None,
        engine=engine,
    )

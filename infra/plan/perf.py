"""Time of one engine step on one replica, from roofline bounds and fitted efficiencies (fitted to vLLM).

A step runs every layer once over the step's tokens (prefill chunks + one token per decoding sequence):

* linear layers (q/k/v, o, gate/up, down; MoE experts) cost a kernel launch plus the larger of streaming
  their weights at an effective bandwidth and their FLOPs at an effective fraction of dense peak, blended
  by a p-norm so the bandwidth→compute knee is smooth, as the kernel measurements show (calibration:
  h100_kernel_microbench.json, vidur_*_l27b_mlp.csv) — this is the GEMM-size effect;
* decode attention streams each sequence's KV cache (plus a fixed cost per sequence); prefill attention
  is compute (4·heads·head_dim FLOPs per query-key pair);
* elementwise work (norms, rotary, activation, residuals) streams activations;
* tensor parallelism adds two all-reduces per layer over NVLink/NVSwitch or PCIe;
* the LM head runs only for the sequences that sample a token; the engine adds a fixed CPU/launch
  overhead per step.

Efficiencies are per GPU architecture in ``data/efficiency.yaml``, produced by ``scripts/fit_efficiency.py``
from ``../shared/calibration``; architectures without measurements borrow the closest one and are
reported as uncalibrated.

The model is vLLM's. Another engine (SGLang, llama.cpp, ...) runs the same batch at its catalog throughput
factor relative to vLLM (``engines.yaml`` ``throughput.factor``, :attr:`ReplicaShape.engine_speed`): every
step takes vLLM's time divided by the factor. The scheduler, KV cache and memory stay vLLM's, so a replica's
saturation throughput scales by the factor and its step-bound latencies (TPOT, prefill, queueing) by its
inverse; an engine without its own measurements is an estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import yaml

from infra.catalog.schema import Architecture, Gpu
from infra.plan.simulate import StepBatch

if TYPE_CHECKING:
    from infra.calibrate.model import Calibration

GpuLink = Literal["nvswitch", "nvlink-bridge", "pcie"]
WeightFormat = Literal["fp32", "bf16", "fp8", "int8", "int4"]


@dataclass(frozen=True)
class Efficiency:
    """Fitted constants of one GPU architecture (see data/efficiency.yaml for meaning and source)."""

    bandwidth: float
    kernel_latency_us: float
    compute: float
    knee_sharpness: float
    attention_bandwidth: float
    attention_per_seq_us: float
    attention_compute: float
    elementwise_passes: float
    step_overhead_ms: float
    per_seq_overhead_us: float
    allreduce_latency_us: dict[str, float]
    allreduce_bandwidth: float
    int4_compute: float
    calibrated: bool
    source: str

    def scaled(self, compute: float, bandwidth: float) -> Efficiency:
        """These efficiencies with every compute-bound rate (GEMMs, prefill attention) multiplied by ``compute``
        and every memory-bound rate (weight, activation and KV streaming) by ``bandwidth``.

        The one definition of what a calibration's computeScale/bandwidthScale mean: ``gpufleet calibrate`` fits
        them against a real fleet, ``plan`` applies them, an emulator slowed down for tests should use this too.
        """
        return replace(
            self,
            compute=self.compute * compute,
            attention_compute=self.attention_compute * compute,
            bandwidth=self.bandwidth * bandwidth,
            attention_bandwidth=self.attention_bandwidth * bandwidth,
        )


@cache
def _efficiency_data() -> dict[str, Any]:
    text = resources.files("infra.plan").joinpath("data/efficiency.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def efficiency_for(gpu: Gpu, calibration: Calibration | None = None) -> Efficiency:
    """The architecture's fitted efficiencies, scaled by the project's bench calibration of this GPU if any."""
    data = _efficiency_data()
    architectures = data["architectures"]
    name = gpu.architecture if gpu.architecture in architectures else data["fallback"][gpu.architecture]
    fields = dict(architectures[name])
    calibrated = name == gpu.architecture and bool(fields.pop("calibrated"))
    fields.pop("calibrated", None)
    efficiency = Efficiency(**fields, calibrated=calibrated)
    entry = calibration.for_gpu(gpu.name) if calibration is not None else None
    if entry is None:
        return efficiency
    return replace(
        efficiency.scaled(entry.compute_scale, entry.bandwidth_scale),
        calibrated=True,
        source=f"{efficiency.source}; {entry.note}",
    )


# PCIe x16 bandwidth (GB/s, bidirectional) for GPUs whose catalog interconnect is NVLink but that sit in
# a PCIe-only server: Gen4 for Ampere, Gen5 for Hopper (PCI-SIG specifications).
PCIE_BIDIRECTIONAL_GBPS = {"Ampere": 64.0, "Ada": 64.0, "Hopper": 128.0}


def link_bandwidth_gbps(gpu: Gpu, link: GpuLink) -> float:
    """One direction's GPU-to-GPU bandwidth a tensor-parallel all-reduce can use."""
    if link == "pcie":
        bidirectional = (
            gpu.interconnect.bandwidth_gbps
            if gpu.interconnect.kind == "pcie"
            else PCIE_BIDIRECTIONAL_GBPS.get(gpu.architecture, 64.0)
        )
    else:
        bidirectional = gpu.interconnect.bandwidth_gbps
    return bidirectional / 2


@dataclass(frozen=True)
class Linear:
    """One weight matrix of a tensor-parallel shard, with how many of it a layer has."""

    k: int
    n: int
    count: float = 1.0


@dataclass(frozen=True)
class ReplicaShape:
    """Everything the step time depends on, for one tensor-parallel shard of one replica."""

    arch: Architecture
    gpu: Gpu
    tp: int
    weight_format: WeightFormat
    activation_bytes: int
    kv_bytes_per_element: float
    link: GpuLink
    engine_speed: float = 1.0
    """The engine's throughput relative to vLLM's (catalog ``throughput.factor``): a step takes vLLM's time
    divided by it. 1.0 is vLLM, the engine the efficiencies are fitted to."""


class StepTimeModel:
    """``step_seconds(batch)`` for a replica; satisfies the simulator's ``StepCostModel`` protocol."""

    def __init__(self, shape: ReplicaShape, efficiency: Efficiency | None = None) -> None:
        self.shape = shape
        self.eff = efficiency or efficiency_for(shape.gpu)
        arch, tp = shape.arch, shape.tp
        head_dim = arch.resolved_head_dim
        self.heads_per_gpu = arch.attention_heads / tp
        self.kv_heads_per_gpu = max(1.0, arch.kv_heads / tp)
        self.dense_linears = (
            Linear(arch.hidden_size, int((arch.attention_heads + 2 * arch.kv_heads) * head_dim / tp)),
            Linear(int(arch.attention_heads * head_dim / tp), arch.hidden_size),
        )
        self.mlp_linears = (
            Linear(arch.hidden_size, int(2 * arch.intermediate_size / tp)),
            Linear(int(arch.intermediate_size / tp), arch.hidden_size),
        )
        self.kv_bytes_per_token_layer = 2 * self.kv_heads_per_gpu * head_dim * shape.kv_bytes_per_element
        gpu = shape.gpu
        self.bandwidth = gpu.memory_bandwidth_gbps * 1e9 * self.eff.bandwidth
        self.attention_bandwidth = gpu.memory_bandwidth_gbps * 1e9 * self.eff.attention_bandwidth
        peak = self._peak_flops()
        self.compute = peak * self.eff.compute
        self.attention_compute = gpu.bf16_tflops * 1e12 * self.eff.attention_compute
        # INT4 checkpoints carry a 16-bit scale per group of 128 weights (AWQ/GPTQ default group size).
        self.weight_bytes = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 1 / 64}[
            shape.weight_format
        ]
        self.link_bandwidth = link_bandwidth_gbps(gpu, shape.link) * 1e9 * self.eff.allreduce_bandwidth
        self.allreduce_latency = self.eff.allreduce_latency_us["pcie" if shape.link == "pcie" else "nvlink"] * 1e-6
        self._step_overhead = self.eff.step_overhead_ms * 1e-3
        # Decode attention streams each sequence's KV; prefill attention does 4·heads·head_dim FLOPs per
        # query-key pair (QKᵀ and PV, multiply-adds counted twice).
        self._kv_seconds_per_token = self.kv_bytes_per_token_layer / self.attention_bandwidth
        self._attention_per_seq = self.eff.attention_per_seq_us * 1e-6
        self._prefill_attention_seconds = 4.0 * self.heads_per_gpu * head_dim / self.attention_compute
        self._by_tokens: dict[int, float] = {}
        self._by_sampled: dict[int, float] = {}

    def _peak_flops(self) -> float:
        gpu, fmt = self.shape.gpu, self.shape.weight_format
        if fmt == "fp8" and gpu.fp8_tflops is not None:
            return gpu.fp8_tflops * 1e12  # W8A8 on Ada/Hopper: FP8 tensor cores
        if fmt == "int4":
            return gpu.bf16_tflops * 1e12 * self.eff.int4_compute  # Marlin dequantizes in the GEMM
        if fmt == "fp32":
            return gpu.bf16_tflops * 1e12 / 2  # float32 GEMMs run as TF32: half the BF16 tensor rate
        return gpu.bf16_tflops * 1e12  # bf16, or FP8/INT8 weight-only on Ampere (W8A16)

    # -- pieces -------------------------------------------------------------------------------------
    def linear_seconds(self, m: float, k: int, n: int, weight_bytes: float | None = None, launches: float = 1) -> float:
        """One GEMM of M tokens through a K×N weight: launch + p-norm blend of memory and compute time."""
        if m <= 0:
            return 0.0
        per_weight = self.weight_bytes if weight_bytes is None else weight_bytes
        memory = (k * n * per_weight + m * (k + n) * self.shape.activation_bytes) / self.bandwidth
        compute = 2.0 * m * k * n / self.compute
        p = self.eff.knee_sharpness
        return launches * self.eff.kernel_latency_us * 1e-6 + float((memory**p + compute**p) ** (1 / p))

    def _mlp_seconds(self, m: float) -> float:
        arch = self.shape.arch
        if not arch.is_moe:
            return sum(self.linear_seconds(m, lin.k, lin.n) for lin in self.mlp_linears)
        experts = arch.experts or 1
        active = arch.active_experts or 1
        # Distinct experts touched by m tokens routed to `active` of `experts` each (uniform routing).
        touched = experts * (1 - float((1 - active / experts) ** m))
        tokens_per_expert = m * active / touched
        router = self.linear_seconds(m, arch.hidden_size, experts, weight_bytes=self.shape.activation_bytes)
        # vLLM runs all experts of a matrix in one fused MoE kernel: one launch, `touched` experts' work.
        per_expert = sum(self.linear_seconds(tokens_per_expert, lin.k, lin.n, launches=0) for lin in self.mlp_linears)
        return router + touched * per_expert + len(self.mlp_linears) * self.eff.kernel_latency_us * 1e-6

    def _attention_seconds(self, batch: StepBatch) -> float:
        return (
            batch.decode_context * self._kv_seconds_per_token
            + batch.decode_seqs * self._attention_per_seq
            + batch.prefill_attention * self._prefill_attention_seconds
        )

    def _elementwise_seconds(self, m: float) -> float:
        arch = self.shape.arch
        width = arch.hidden_size + arch.intermediate_size / self.shape.tp
        return self.eff.elementwise_passes * m * width * self.shape.activation_bytes / self.bandwidth

    def _allreduce_seconds(self, m: float) -> float:
        tp = self.shape.tp
        if tp == 1 or m <= 0:
            return 0.0
        payload = m * self.shape.arch.hidden_size * self.shape.activation_bytes * 2 * (tp - 1) / tp
        return 2 * (self.allreduce_latency + payload / self.link_bandwidth)  # after attention and after MLP

    def token_seconds(self, m: int) -> float:
        """The part of one layer's time that depends only on the step's token count (memoized: the
        simulator asks for the same few hundred counts millions of times)."""
        if m <= 0:
            return 0.0
        cached = self._by_tokens.get(m)
        if cached is None:
            dense = sum(self.linear_seconds(m, lin.k, lin.n) for lin in self.dense_linears)
            cached = dense + self._mlp_seconds(m) + self._elementwise_seconds(m) + self._allreduce_seconds(m)
            self._by_tokens[m] = cached
        return cached

    def layer_seconds(self, batch: StepBatch) -> float:
        return self.token_seconds(batch.prefill_tokens + batch.decode_seqs) + self._attention_seconds(batch)

    def lm_head_seconds(self, sampled: int) -> float:
        cached = self._by_sampled.get(sampled)
        if cached is None:
            arch = self.shape.arch
            vocab_shard = math.ceil(arch.vocab_size / self.shape.tp)
            cached = self.linear_seconds(
                sampled, arch.hidden_size, vocab_shard, weight_bytes=self.shape.activation_bytes
            )
            cached += sampled * self.eff.per_seq_overhead_us * 1e-6
            self._by_sampled[sampled] = cached
        return cached

    def step_seconds(self, batch: StepBatch) -> float:
        """The whole step (layers, LM head, engine overhead) at the engine's speed relative to vLLM."""
        tokens = batch.prefill_tokens + batch.decode_seqs
        if tokens == 0:
            return 0.0
        vllm_seconds = (
            self.shape.arch.layers * self.layer_seconds(batch)
            + self.lm_head_seconds(batch.sampled_seqs)
            + self._step_overhead
        )
        return vllm_seconds / self.shape.engine_speed  # exact for vLLM (x / 1.0 == x)

    def decode_step_affine(self, decode_seqs: int) -> tuple[float, float]:
        """(a, b) with step_seconds = a + b · decode_context for a decode-only step of ``decode_seqs``
        sequences: lets the simulator fast-forward runs of identical decode steps arithmetically."""
        layers = self.shape.arch.layers
        base = (
            layers * (self.token_seconds(decode_seqs) + decode_seqs * self._attention_per_seq)
            + self.lm_head_seconds(decode_seqs)
            + self._step_overhead
        )
        speed = self.shape.engine_speed  # as in step_seconds: both terms at the engine's speed
        return base / speed, layers * self._kv_seconds_per_token / speed


def decode_batch(seqs: int, context: int) -> StepBatch:
    """A decode-only step: ``seqs`` sequences emit one token each, every one attending over ``context``."""
    return StepBatch(prefill_tokens=0, prefill_attention=0.0, prefill_seqs=0, decode_seqs=seqs,
                     decode_context=seqs * context, sampled_seqs=seqs)


def prefill_chunks(tokens: int, budget: int) -> list[StepBatch]:
    """The steps of one prompt prefilled alone, chunked to the token budget (chunked prefill)."""
    steps, done = [], 0
    while done < tokens:
        chunk = min(budget, tokens - done)
        steps.append(StepBatch(prefill_tokens=chunk, prefill_attention=chunk * (done + chunk / 2), prefill_seqs=1,
                               decode_seqs=0, decode_context=0, sampled_seqs=int(done + chunk == tokens)))
        done += chunk
    return steps


"""Typed records of the data catalogs in ``infra/catalog/data/``.

Every figure in a catalog carries its source and the date it was read (``Sourced``), so a reviewer can
check it and a later session knows when to refresh it.
"""

from __future__ import annotations

from datetime import date
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Source(CatalogModel):
    """Where a figure comes from and when it was read."""

    url: str = Field(min_length=1, description="Datasheet, config.json or price-list address.")
    as_of: date | str = Field(
        alias="asOf",
        description="Date the figure was read or published (YYYY-MM-DD, or a YYYY-MM / range when only "
        "that is known).",
    )
    note: str | None = None


class Interconnect(CatalogModel):
    kind: Literal["nvlink", "pcie"]
    bandwidth_gbps: float = Field(
        alias="bandwidthGBps", gt=0, description="GPU-to-GPU bandwidth in GB/s, bidirectional per GPU."
    )
    generation: str = Field(description="NVLink3/NVLink4 or PCIe Gen4/Gen5.")


class Gpu(CatalogModel):
    name: str
    aliases: tuple[str, ...] = ()
    vendor: Literal["nvidia"] = "nvidia"
    architecture: str = Field(description="Ampere, Ada, Hopper.")
    compute_capability: str = Field(alias="computeCapability", pattern=r"^\d+\.\d+$")
    memory_gib: float = Field(alias="memoryGiB", gt=0, description="Marketed memory size (HBM 'GB' is GiB).")
    memory_type: str = Field(alias="memoryType")
    memory_bandwidth_gbps: float = Field(alias="memoryBandwidthGBps", gt=0)
    bf16_tflops: float = Field(alias="bf16Tflops", gt=0, description="Dense (not sparse) tensor-core BF16.")
    fp8_tflops: float | None = Field(
        alias="fp8Tflops", default=None, gt=0, description="Dense FP8; null = none."
    )
    interconnect: Interconnect
    tdp_watts: float = Field(alias="tdpWatts", gt=0)
    verified: bool = Field(default=True, description="False where no vendor datasheet backs a figure.")
    source: Source

    @property
    def supports_fp8_compute(self) -> bool:
        return self.fp8_tflops is not None


class HourlyPrice(CatalogModel):
    on_demand: float = Field(alias="onDemand", gt=0, description="Linux on-demand $/hour.")
    spot_min: float | None = Field(alias="spotMin", default=None, gt=0)
    spot_max: float | None = Field(alias="spotMax", default=None, gt=0)
    capacity_block: float | None = Field(alias="capacityBlock", default=None, gt=0)
    list_price: bool = Field(
        alias="listPrice",
        default=False,
        description="True where the figure was not re-read from the snapshot.",
    )
    source: Source

    @model_validator(mode="after")
    def _spot_range(self) -> HourlyPrice:
        if (self.spot_min is None) != (self.spot_max is None):
            raise ValueError("spotMin and spotMax go together")
        if self.spot_min is not None and self.spot_max is not None and self.spot_min > self.spot_max:
            raise ValueError("spotMin is above spotMax")
        return self


class InstanceType(CatalogModel):
    name: str
    provider: Literal["aws", "onprem"]
    gpu: str = Field(description="A key of gpus.yaml.")
    gpu_count: int = Field(alias="gpuCount", ge=1)
    gpu_link: Literal["nvswitch", "nvlink-bridge", "pcie"] = Field(
        alias="gpuLink", description="How the GPUs of one instance talk to each other."
    )
    vcpus: int | None = Field(default=None, ge=1)
    memory_gib: float | None = Field(alias="memoryGiB", default=None, gt=0)
    prices: dict[str, HourlyPrice] = Field(
        default_factory=dict,
        description="Region -> price. Empty for on-prem servers: their $/hour comes from the stack's "
        "amortisation (pricing.onprem).",
    )
    source: Source

    @model_validator(mode="after")
    def _priced_unless_onprem(self) -> InstanceType:
        if self.provider == "aws" and not self.prices:
            raise ValueError("an AWS instance type needs at least one regional price")
        if self.provider == "onprem" and self.prices:
            raise ValueError("on-prem servers are priced by the stack's amortisation, not the catalog")
        return self


class Architecture(CatalogModel):
    """Transformer shape numbers, as in a Hugging Face config.json."""

    layers: int = Field(ge=1, description="num_hidden_layers")
    hidden_size: int = Field(alias="hiddenSize", ge=1)
    attention_heads: int = Field(alias="attentionHeads", ge=1, description="num_attention_heads")
    kv_heads: int = Field(alias="kvHeads", ge=1, description="num_key_value_heads")
    head_dim: int | None = Field(alias="headDim", default=None, ge=1, description="Default hidden/heads.")
    intermediate_size: int = Field(alias="intermediateSize", ge=1)
    vocab_size: int = Field(alias="vocabSize", ge=1)
    tied_embeddings: bool = Field(alias="tiedEmbeddings", default=False)
    max_context: int = Field(alias="maxContext", ge=1, description="max_position_embeddings")
    attention_bias: bool = Field(alias="attentionBias", default=False, description="Bias on q/k/v (Qwen2).")
    experts: int | None = Field(default=None, ge=2, description="MoE: routed experts per layer.")
    active_experts: int | None = Field(
        alias="activeExperts", default=None, ge=1, description="MoE: experts per token."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Architecture:
        problems = []
        if self.attention_heads % self.kv_heads:
            problems.append(
                f"attentionHeads ({self.attention_heads}) must be a multiple of kvHeads ({self.kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.attention_heads:
            problems.append("hiddenSize is not a multiple of attentionHeads: give headDim explicitly")
        if (self.experts is None) != (self.active_experts is None):
            problems.append("experts and activeExperts go together (both for a mixture-of-experts model)")
        if self.experts and self.active_experts and self.active_experts > self.experts:
            problems.append("activeExperts cannot exceed experts")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.attention_heads

    @property
    def is_moe(self) -> bool:
        return self.experts is not None


class CatalogLlm(CatalogModel):
    name: str
    hf_repo: str = Field(alias="hfRepo")
    family: str
    published_parameters_b: float = Field(
        alias="publishedParametersB",
        gt=0,
        description="Total parameters in billions, as the model card says.",
    )
    architecture: Architecture
    source: Source


class QuantizationMethod(CatalogModel):
    name: str
    weight_bits: tuple[int, ...] = Field(
        alias="weightBits", description="Allowed weight widths; first = default."
    )
    vllm_name: str | None = Field(alias="vllmName", description="--quantization value; null = none.")
    needs_prequantized_weights: bool = Field(alias="needsPrequantizedWeights")
    min_compute_capability: str | None = Field(
        alias="minComputeCapability", default=None, pattern=r"^\d+\.\d+$"
    )
    format: Literal["safetensors", "gguf"] = Field(
        default="safetensors", description="gguf: a quant type of a GGUF file (llama.cpp, Ollama)."
    )
    source: Source


# -- inference engines (engines.yaml) -----------------------------------------------------------------------

EngineSignal = Literal[
    "ttft_seconds",
    "inter_token_seconds",
    "e2e_seconds",
    "requests_running",
    "requests_waiting",
    "kv_cache_usage",
    "prompt_tokens",
    "generation_tokens",
    "requests_finished",
    "preemptions",
]
"""What the dashboards and alerts read from a replica, whatever its engine calls it."""

ENGINE_SIGNALS: tuple[EngineSignal, ...] = get_args(EngineSignal)


class EngineImage(CatalogModel):
    reference: str = Field(
        pattern=r"^[a-z0-9.-]+(/[a-z0-9._-]+)+:[A-Za-z0-9._-]+$",
        description="registry/repository:tag of the engine's official server image.",
    )
    digest: str | None = Field(
        default=None, pattern=r"^sha256:[0-9a-f]{64}$", description="Pinned digest, where one was read."
    )
    source: Source

    @property
    def pinned(self) -> str:
        return f"{self.reference}@{self.digest}" if self.digest else self.reference


class EngineHealth(CatalogModel):
    path: str = Field(pattern=r"^/", description="Liveness: answers while the server process is healthy.")
    ready_path: str = Field(
        alias="readyPath", pattern=r"^/", description="Readiness: 200 only once the model can serve."
    )
    def ready_for(self, model: str) -> str:
        """The readiness path of a replica serving ``model`` (``{model}`` in readyPath is its name)."""
        return self.ready_path.replace("{model}", model)

    listens_while_loading: bool = Field(
        alias="listensWhileLoading",
        description="False: connections are refused until the weights are loaded (a probe sees 'refused').",
    )
    source: Source


class EngineMetric(CatalogModel):
    name: str = Field(description="The metric family as the engine exposes it (without _total/_bucket).")
    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...] = Field(
        default=(), description="Labels of the metric beyond the engine's constant ones (finished_reason)."
    )
    total_suffix: bool = Field(
        alias="totalSuffix", default=True,
        description="Counters: the sample is <name>_total (Python's prometheus_client, llama.cpp); false where "
        "the exporter writes the bare name (TGI's Rust metrics exporter).",
    )
    note: str | None = None

    def sample(self, suffix: Literal["", "bucket", "sum", "count"] = "") -> str:
        """The exposed sample name: a counter's ``_total`` form, a histogram's ``_bucket``/``_sum``/``_count``."""
        if self.kind == "histogram":
            if not suffix:
                raise ValueError(f"{self.name} is a histogram: name the bucket, sum or count sample")
            return f"{self.name}_{suffix}"
        if suffix:
            raise ValueError(f"{self.name} is a {self.kind}: it has no _{suffix} sample")
        return f"{self.name}_total" if self.kind == "counter" and self.total_suffix else self.name


class EngineOutcomes(CatalogModel):
    """How failed and abandoned requests show in an engine's metrics: label matchers on the requests_finished
    counter, or on a separate failure counter (``failures``) that then counts every request that did not
    finish (the total is requests_finished + failures)."""

    failures: EngineMetric | None = Field(
        default=None, description="A separate counter of failed requests; null = the labels are on requests_finished."
    )
    error: str | None = Field(
        default=None, pattern=r'^[a-z_]+(=|!=|=~|!~)"[^"]*"$',
        description="PromQL matcher of requests the engine failed (burns error budget); null = none exposed.",
    )
    abort: str | None = Field(
        default=None, pattern=r'^[a-z_]+(=|!=|=~|!~)"[^"]*"$',
        description="PromQL matcher of requests the client abandoned (a cancelled stream); null = none exposed.",
    )
    source: Source

    @model_validator(mode="after")
    def _counter(self) -> EngineOutcomes:
        if self.failures is not None and self.failures.kind != "counter":
            raise ValueError("failures is a counter")
        if self.error is None and self.abort is None:
            raise ValueError("outcomes name an error or an abort matcher")
        return self


class EngineMetrics(CatalogModel):
    path: str | None = Field(pattern=r"^/", description="Prometheus endpoint; null = the engine has none.")
    enabled_by: str | None = Field(
        alias="enabledBy", default=None, description="What turns the endpoint on when it is off by default."
    )
    signals: dict[EngineSignal, EngineMetric] = Field(
        default_factory=dict, description="Signal -> the engine's metric; a missing signal is not exposed."
    )
    outcomes: EngineOutcomes | None = Field(
        default=None, description="Failed and aborted requests; null = the engine tells neither apart."
    )
    source: Source

    @model_validator(mode="after")
    def _no_signals_without_endpoint(self) -> EngineMetrics:
        if self.path is None and self.signals:
            raise ValueError("an engine without a metrics endpoint exposes no signals")
        if self.outcomes is not None and "requests_finished" not in self.signals:
            raise ValueError("outcomes are read against requests_finished, which the engine does not expose")
        return self


class EngineCapabilities(CatalogModel):
    tensor_parallel: Literal["yes", "experimental", "no"] = Field(alias="tensorParallel")
    weight_formats: tuple[Literal["safetensors", "gguf"], ...] = Field(
        alias="weightFormats", min_length=1, description="Checkpoint formats the server loads."
    )
    quantizations: tuple[str, ...] = Field(
        description="Keys of quantization.yaml the engine serves (gguf: the GGUF file's own quant type)."
    )
    dtypes: tuple[Literal["bfloat16", "float16", "float32"], ...] = Field(
        min_length=1, description="Activation dtypes (the profile's dtype) the server runs."
    )
    online_quantization: bool = Field(
        alias="onlineQuantization",
        description="Quantizes BF16 weights at load time (fp8, bitsandbytes); false: only pre-quantized checkpoints.",
    )
    kv_cache_dtypes: tuple[Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"], ...] = Field(
        alias="kvCacheDtypes", min_length=1, description="The profile's kvCacheDtype values gpufleet renders."
    )
    api_key: Literal["env", "flag", "none"] = Field(
        alias="apiKey", description="How the server takes a bearer key: an env var, only a flag, or not at all."
    )
    api_key_env: str | None = Field(alias="apiKeyEnv", default=None)
    source: Source

    @model_validator(mode="after")
    def _env_named(self) -> EngineCapabilities:
        if (self.api_key == "env") != (self.api_key_env is not None):
            raise ValueError("apiKeyEnv names the variable exactly when apiKey is env")
        return self


class EngineThroughput(CatalogModel):
    factor: float = Field(gt=0, le=2, description="Saturation throughput of a replica relative to vLLM's.")
    calibrated: bool = Field(
        description="True where the capacity model is fitted to this engine's own measurements "
        "(../shared/calibration); false: vLLM's model scaled by the factor, an estimate."
    )
    source: Source


class InferenceEngine(CatalogModel):
    name: str
    title: str = Field(description="How people write it: vLLM, SGLang, llama.cpp, ...")
    docs: str = Field(pattern=r"^https://", description="The engine's documentation (units' Documentation=).")
    version: str = Field(description="The pinned release: image, flag list and metric names are its.")
    image: EngineImage
    port: int = Field(ge=1, le=65535, description="The server's default port.")
    health: EngineHealth
    metrics: EngineMetrics
    capabilities: EngineCapabilities
    throughput: EngineThroughput
    flags: Source = Field(description="Where the flag list comes from: a generated schema, or docs/source.")
    status: str | None = Field(default=None, description="Upstream status worth knowing (maintenance mode).")

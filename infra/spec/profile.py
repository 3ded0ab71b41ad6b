"""Model profiles (``stacks/models/<name>.yaml``): what is served, independent of where and how much."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from infra.catalog.schema import Architecture
from infra.spec.base import PROFILE_NAME, SpecModel

# `--max-lora-rank` accepts only these values in vLLM 0.33 (../shared/reference/vllm.md); the render
# stage picks the smallest one that covers every adapter's rank.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

HF_REPO = r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$"


class HuggingFaceWeights(SpecModel):
    source: Literal["huggingface"]
    repo: str = Field(pattern=HF_REPO)
    """Repository id, e.g. meta-llama/Llama-3.1-8B-Instruct."""
    revision: str = Field(min_length=1)
    """Commit SHA (recommended: reproducible) or tag/branch."""
    file: str | None = Field(default=None, pattern=r"^[^/].*\.gguf$")
    """One GGUF file in the repository (llama.cpp, Ollama), e.g. Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf."""


class S3Weights(SpecModel):
    source: Literal["s3"]
    uri: str = Field(pattern=r"^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$")
    """s3://bucket/prefix/ holding a Hugging Face-format checkpoint (config.json, safetensors), or the
    s3:// URI of one .gguf file (llama.cpp, Ollama)."""


class LocalWeights(SpecModel):
    source: Literal["local"]
    path: str = Field(pattern=r"^/")
    """Absolute path on the GPU host (on-prem NFS or a baked volume): a checkpoint directory, or one .gguf
    file (llama.cpp, Ollama)."""


def _source_tag(value: Any) -> str | None:
    raw = value.get("source") if isinstance(value, dict) else getattr(value, "source", None)
    return raw if raw in ("huggingface", "s3", "local") else None


WeightsSource = Annotated[
    Annotated[HuggingFaceWeights, Tag("huggingface")]
    | Annotated[S3Weights, Tag("s3")]
    | Annotated[LocalWeights, Tag("local")],
    Discriminator(
        _source_tag,
        custom_error_type="weights_source",
        custom_error_message="source must be huggingface (repo + revision), s3 (uri) or local (path)",
    ),
]


class BaseModelArchitecture(SpecModel):
    """The profile is a fine-tune (or a copy) of a catalog model and shares its architecture."""

    base_model: str = Field(min_length=1)
    """A name from infra/catalog/data/models.yaml, e.g. llama-3.1-8b."""


class ExplicitArchitecture(Architecture):
    """Numbers from the model's config.json, for models the catalog does not know."""

    model_config = SpecModel.model_config


def _architecture_tag(value: Any) -> str:
    has_base = ("baseModel" in value) if isinstance(value, dict) else hasattr(value, "base_model")
    return "base" if has_base else "explicit"


ArchitectureSpec = Annotated[
    Annotated[BaseModelArchitecture, Tag("base")] | Annotated[ExplicitArchitecture, Tag("explicit")],
    Discriminator(_architecture_tag),
]


class LoraAdapter(SpecModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    """The model name clients ask for to get this adapter."""
    weights: WeightsSource
    rank: int = Field(ge=1, le=max(VLLM_MAX_LORA_RANKS))
    """LoRA rank r of the adapter (`r` in its adapter_config.json)."""


# The engines of infra/catalog/data/engines.yaml (a test keeps the two equal): a Literal, so the JSON schema
# offers them to editors.
EngineName = Literal["vllm", "sglang", "tgi", "llamacpp", "ollama", "trtllm"]

EngineArgValue = str | int | float | bool | list[str | int | float] | dict[str, Any]


class ModelProfile(SpecModel):
    name: str = Field(pattern=PROFILE_NAME)
    """Profile name; equals the file name without .yaml."""
    served_model_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_./:]*$")
    """The `model` clients send (OpenAI API); defaults to the profile name."""
    weights: WeightsSource
    architecture: ArchitectureSpec
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Activation and (unquantized) weight dtype."""
    quantization: str = "none"
    """Weight quantization method: a key of infra/catalog/data/quantization.yaml (none, fp8, awq, gptq, ...)."""
    allowed_quantization: list[str] = Field(default_factory=list)
    """Other methods the planner may pick when cheaper, quantizing these weights at load time (fp8);
    methods that need a pre-quantized checkpoint (awq, gptq) cannot be listed here."""
    weight_bits: int | None = None
    """Weight width when the method allows several (gptq: 4 or 8); default: the method's first."""
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    """KV-cache element type; auto = the model dtype. fp8 halves KV memory."""
    max_model_len: int | None = Field(default=None, ge=16, le=10_000_000)
    """Longest prompt + completion served; defaults to the architecture's maxContext."""
    engine: EngineName = "vllm"
    """Inference engine: a key of infra/catalog/data/engines.yaml (image, arguments, health, metrics)."""
    engine_args: dict[str, EngineArgValue] = Field(default_factory=dict)
    """Extra engine flags, names without -- (vLLM: as in `vllm serve --config`; SGLang: launch_server's
    flags; TGI, llama.cpp, TensorRT-LLM: their long options; Ollama: OLLAMA_* variables without the prefix,
    e.g. kv-cache-type for OLLAMA_KV_CACHE_TYPE)."""
    lora_adapters: list[LoraAdapter] = Field(default_factory=list)

    @field_validator("engine_args")
    @classmethod
    def _flag_names(cls, args: dict[str, EngineArgValue]) -> dict[str, EngineArgValue]:
        bad = [name for name in args if not re.fullmatch(r"[a-z0-9][a-z0-9-_]*", name)]
        if bad:
            raise ValueError(
                f"engine flag names are written without leading dashes, lower case: {', '.join(bad)}"
            )
        return args

    @property
    def resolved_served_name(self) -> str:
        return self.served_model_name or self.name

    @property
    def gguf_weights(self) -> bool:
        """The weights are one GGUF file (llama.cpp, Ollama) rather than a checkpoint directory."""
        return weights_file(self.weights) is not None


def weights_file(weights: HuggingFaceWeights | S3Weights | LocalWeights) -> str | None:
    """The GGUF file name of single-file weights, None for a checkpoint directory."""
    if isinstance(weights, HuggingFaceWeights):
        return weights.file
    location = weights.uri if isinstance(weights, S3Weights) else weights.path
    name = location.rstrip("/").rsplit("/", 1)[-1]
    return name if name.endswith(".gguf") else None

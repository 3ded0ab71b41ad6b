"""What a profile asks of its engine that the engine (or gpufleet's rendering of it) cannot do.

Facts come from the engine catalog (``infra/catalog/data/engines.yaml`` capabilities); each issue names the
profile field to change and what would work instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from infra.catalog import Catalog
from infra.catalog.schema import InferenceEngine
from infra.render.vllm_flags import load_engine_schema, validate_engine_args
from infra.spec.engine_limits import pinned_flag
from infra.spec.issues import SpecIssue
from infra.spec.locate import Locator
from infra.spec.profile import HuggingFaceWeights, ModelProfile, S3Weights

GGUF_ENGINES_HINT = "engine llamacpp or ollama serves a GGUF file"
# Ollama pulls `hf.co/<repo>:<quant>` at the repository's head: the only revision it can honour.
OLLAMA_HUB_REVISION = "main"
# llama.cpp options that split one model over several GPUs (-sm row/tensor; layer is pipeline-style).
LLAMACPP_SPLIT_FLAGS = ("split-mode", "sm", "tensor-split", "ts")


def _engines_with(catalog: Catalog, accepts: str, field: str) -> str:
    names = [name for name, e in catalog.engines.items() if accepts in getattr(e.capabilities, field)]
    return ", ".join(names) or "none"


def check_engine(profile: ModelProfile, locator: Locator, catalog: Catalog) -> Iterator[SpecIssue]:
    engine = catalog.engines[profile.engine]
    yield from _check_weights(profile, engine, locator)
    yield from _check_precision(profile, engine, locator, catalog)
    yield from _check_engine_args(profile, engine, locator)
    if profile.lora_adapters and engine.name != "vllm":
        yield locator.issue(("loraAdapters",), f"gpufleet serves LoRA adapters with vLLM only, not {engine.title}",
                            "use engine: vllm for this profile, or merge the adapters into the weights")


def _check_weights(profile: ModelProfile, engine: InferenceEngine, locator: Locator) -> Iterator[SpecIssue]:
    formats = engine.capabilities.weight_formats
    title = engine.title
    if profile.gguf_weights and "gguf" not in formats:
        yield locator.issue(("weights",), f"{title} does not load a GGUF file here", GGUF_ENGINES_HINT
                            + f"; {title} needs a safetensors checkpoint (a repository or directory)")
    elif not profile.gguf_weights and "safetensors" not in formats:
        yield locator.issue(("weights",), f"{title} loads one GGUF file, not a checkpoint directory",
                            "Hub: add weights.file: <name>.gguf; local: the path of the .gguf file")
    if profile.gguf_weights and isinstance(profile.weights, S3Weights):
        yield locator.issue(("weights", "uri"), "GGUF files in S3 are not synced to the hosts",
                            "use the file's Hugging Face repository (weights.file) or a local path")
    weights = profile.weights
    if (engine.name == "ollama" and isinstance(weights, HuggingFaceWeights)
            and weights.revision != OLLAMA_HUB_REVISION):
        yield locator.issue(("weights", "revision"),
                            f"Ollama pulls hf.co/{weights.repo} at its head and cannot pin '{weights.revision}'",
                            f"set revision: {OLLAMA_HUB_REVISION}, or download the file and use source: local "
                            "(or engine: llamacpp, which downloads the pinned revision)")


def _check_precision(
    profile: ModelProfile, engine: InferenceEngine, locator: Locator, catalog: Catalog
) -> Iterator[SpecIssue]:
    caps = engine.capabilities
    methods: list[tuple[tuple[str | int, ...], str]] = [(("quantization",), profile.quantization)]
    methods += [(("allowedQuantization", i), name) for i, name in enumerate(profile.allowed_quantization)]
    for path, name in methods:
        if name in catalog.quantization and name not in caps.quantizations:
            served = ", ".join(caps.quantizations) or "no quantization method"
            others = _engines_with(catalog, name, "quantizations")
            what = "unquantized (none)" if name == "none" else name
            yield locator.issue(path, f"{engine.title} does not serve {what} weights",
                                f"{engine.name} serves {served}; {name} is served by {others}")
    yield from _check_online_quantization(profile, engine, locator, catalog)
    file = profile.weights.file if isinstance(profile.weights, HuggingFaceWeights) else None
    if file is not None and profile.quantization.upper() not in file.upper():
        yield locator.issue(("quantization",), f"{profile.quantization} is not in the file name {file}",
                            "set quantization to the file's quant type (q4_k_m, q8_0, ...): the memory plan "
                            "uses its bits per weight", severity="warning")
    if profile.dtype not in caps.dtypes:
        yield locator.issue(("dtype",), f"{engine.title} does not run {profile.dtype}",
                            f"dtype {' or '.join(caps.dtypes)}")
    if profile.kv_cache_dtype not in caps.kv_cache_dtypes:
        yield locator.issue(("kvCacheDtype",), f"{engine.title} has no {profile.kv_cache_dtype} KV cache",
                            f"kvCacheDtype {' or '.join(caps.kv_cache_dtypes)}")


def _check_online_quantization(
    profile: ModelProfile, engine: InferenceEngine, locator: Locator, catalog: Catalog
) -> Iterator[SpecIssue]:
    """An engine that cannot quantize at load serves only checkpoints made with the method."""
    if engine.capabilities.online_quantization:
        return
    for index, name in enumerate(profile.allowed_quantization):
        if name != profile.quantization and name in engine.capabilities.quantizations:
            yield locator.issue(("allowedQuantization", index), f"{engine.title} does not quantize weights at "
                                f"load time, so it cannot switch these weights to {name}",
                                f"make a profile for a {name} checkpoint instead")
    method = catalog.quantization.get(profile.quantization)
    if (method is not None and method.name != "none" and method.format != "gguf"
            and not method.needs_prequantized_weights):
        yield locator.issue(("quantization",), f"{engine.title} does not quantize weights at load time: the "
                            f"weights must be a {profile.quantization} checkpoint", "point weights at a "
                            f"{profile.quantization} checkpoint (e.g. a ModelOpt export), or set quantization: "
                            "none", severity="warning")


def _check_engine_args(profile: ModelProfile, engine: InferenceEngine, locator: Locator) -> Iterator[SpecIssue]:
    """Against the engine's generated flag schema where there is one (vLLM, SGLang); the rest by rule."""
    schema = load_engine_schema(engine.name)
    if schema is not None and engine.name != "vllm":  # vLLM's are checked with its batch-limit rules (checks.py)
        for problem in validate_engine_args(profile.engine_args, schema):
            yield locator.issue(("engineArgs", problem.flag), problem.message, problem.hint,
                                at_key=problem.message.startswith("unknown"), severity=problem.severity)
    if engine.name == "ollama":
        for name, value in profile.engine_args.items():
            if isinstance(value, list | dict):
                yield locator.issue(("engineArgs", name), "Ollama's settings are environment variables: one "
                                    "value each", f"write {name}: <value> (it becomes OLLAMA_"
                                    f"{name.replace('-', '_').upper()})")
    if engine.capabilities.tensor_parallel != "yes":
        split = next((n for n in profile.engine_args if n.replace("_", "-") in LLAMACPP_SPLIT_FLAGS), None)
        pinned = pinned_flag(engine.name, dict(profile.engine_args), "tensor_parallel_size")
        flag = split or (pinned[0] if pinned else None)
        if flag is not None:
            kind = "is experimental upstream" if engine.capabilities.tensor_parallel == "experimental" else "has none"
            yield locator.issue(("engineArgs", flag), f"{engine.title}'s tensor parallelism {kind}: gpufleet "
                                "plans one GPU per replica", "remove it; a model that needs several GPUs runs "
                                "on vllm, sglang, tgi or trtllm")

"""Text Generation Inference: ``text-generation-launcher`` (the image's entrypoint) with flags from the plan.

No flag schema: the launcher is a Rust binary. The flags used are those of the 3.x launcher reference
(engines.yaml ``flags``); each also reads its UPPER_SNAKE environment variable, which is how the API key
arrives (``API_KEY``).
"""

from __future__ import annotations

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan
from infra.render.engines.common import checkpoint, chosen, launch_of, long_options, with_engine_args
from infra.render.engines.launch import EngineLaunch
from infra.render.hostlayout import CONTAINER_HF_HOME
from infra.spec.profile import HuggingFaceWeights

# gpufleet's quantization methods as --quantize values (bitsandbytes in flight is 4-bit NF4 in gpufleet).
QUANTIZE = {"fp8": "fp8", "awq": "awq", "gptq": "gptq", "compressed-tensors": "compressed-tensors",
            "bitsandbytes": "bitsandbytes-nf4"}
KV_CACHE_DTYPES = {"fp8": "fp8_e4m3fn", "fp8_e4m3": "fp8_e4m3fn", "fp8_e5m2": "fp8_e5m2"}


def planned_flags(plan: DeploymentPlan, engine: InferenceEngine) -> dict[str, object]:
    option = chosen(plan)
    limits, precision = option.replica.limits, option.replica.precision
    profile = plan.profile
    flags: dict[str, object] = {
        "model-id": checkpoint(profile),
        "hostname": "0.0.0.0",
        "port": engine.port,
        "num-shard": option.config.tp,
        "max-total-tokens": limits.max_model_len,
        "max-input-tokens": limits.max_model_len - 1,
        # TGI refuses to start unless one prefill batch can hold the longest prompt.
        "max-batch-prefill-tokens": max(limits.max_num_batched_tokens, limits.max_model_len - 1),
        # The router's admission bound: requests beyond it get 429, which Nginx passes on; vLLM queues instead,
        # so allow the planned batch plus as many waiting.
        "max-concurrent-requests": 2 * limits.max_num_seqs,
        "cuda-memory-fraction": limits.gpu_memory_utilization,
        "dtype": precision.dtype,
    }
    if isinstance(profile.weights, HuggingFaceWeights):
        flags["revision"] = profile.weights.revision
    if option.config.quantization.name in QUANTIZE:
        flags["quantize"] = QUANTIZE[option.config.quantization.name]
    if precision.kv_cache_dtype != "auto":
        flags["kv-cache-dtype"] = KV_CACHE_DTYPES[precision.kv_cache_dtype]
    return flags


def tgi_launch(plan: DeploymentPlan, engine: InferenceEngine) -> EngineLaunch:
    args = tuple(long_options(with_engine_args(planned_flags(plan, engine), plan.profile)))
    return launch_of(plan, engine, program="text-generation-launcher", args=args,
                     env=(("HF_HOME", CONTAINER_HF_HOME),), api_key_env=engine.capabilities.api_key_env)

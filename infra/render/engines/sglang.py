"""SGLang: ``python3 -m sglang.launch_server`` with flags from the plan, checked against SGLang's flag schema.

Command-line arguments, not ``--config``: SGLang's config-file loader keeps keys as written and treats
booleans differently from vLLM's, so the rendered flags go through the same schema check as a profile's
engineArgs (``infra/render/data/sglang-<version>-flags.json``) and are passed as they are checked.
"""

from __future__ import annotations

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan
from infra.render.engines.common import checkpoint, chosen, launch_of, with_engine_args
from infra.render.engines.launch import EngineLaunch
from infra.render.hostlayout import CONTAINER_HF_HOME
from infra.render.vllm_flags import load_engine_schema, to_cli_args
from infra.spec.profile import HuggingFaceWeights

# gpufleet's KV-cache dtypes (the profile's kvCacheDtype) in SGLang's --kv-cache-dtype choices.
KV_CACHE_DTYPES = {"fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}


def planned_flags(plan: DeploymentPlan, engine: InferenceEngine) -> dict[str, object]:
    option = chosen(plan)
    limits, precision = option.replica.limits, option.replica.precision
    profile = plan.profile
    flags: dict[str, object] = {
        "model-path": checkpoint(profile),
        "host": "0.0.0.0",  # inside the container; the host firewall and the LB decide who reaches it
        "port": engine.port,
        "served-model-name": profile.resolved_served_name,
        "tp-size": option.config.tp,
        "context-length": limits.max_model_len,
        "max-running-requests": limits.max_num_seqs,
        # Prefill chunk = vLLM's max-num-batched-tokens: the most prompt tokens one step takes.
        "chunked-prefill-size": limits.max_num_batched_tokens,
        # Weights + KV pool, the share vLLM's gpu-memory-utilization covers (activations are outside both).
        "mem-fraction-static": limits.gpu_memory_utilization,
        "dtype": precision.dtype,
        "enable-metrics": True,  # off by default: /metrics answers 404 without it
    }
    if isinstance(profile.weights, HuggingFaceWeights):
        flags["revision"] = profile.weights.revision
    if option.config.quantization.vllm_name is not None:
        flags["quantization"] = option.config.quantization.vllm_name  # the same method names as vLLM's
    if precision.kv_cache_dtype != "auto":
        flags["kv-cache-dtype"] = KV_CACHE_DTYPES[precision.kv_cache_dtype]
    return flags


def sglang_launch(plan: DeploymentPlan, engine: InferenceEngine) -> EngineLaunch:
    schema = load_engine_schema("sglang")
    assert schema is not None
    flags = with_engine_args(planned_flags(plan, engine), plan.profile)
    # Checked against SGLang's parser: validate already rejected bad engineArgs, so a failure is a gpufleet bug.
    args = ("-m", "sglang.launch_server", *to_cli_args(flags, schema))
    return launch_of(plan, engine, program="python3", entrypoint="python3", args=args,
                     env=(("HF_HOME", CONTAINER_HF_HOME),))

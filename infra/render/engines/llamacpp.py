"""llama.cpp: ``llama-server`` (the server-cuda image's entrypoint) on one GGUF file.

Weights: a Hub file by URL at the pinned revision (``--model-url .../resolve/<revision>/<file>``, cached under
LLAMA_CACHE in the model cache), or a local file under the model cache. No flag schema (a C++ binary): the
options are those of the server README at the pinned build (engines.yaml ``flags``).
"""

from __future__ import annotations

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan
from infra.render.engines.common import (
    chosen,
    gguf_container_path,
    gguf_url,
    launch_of,
    long_options,
    with_engine_args,
)
from infra.render.engines.launch import EngineLaunch
from infra.render.hostlayout import CONTAINER_MODELS
from infra.spec.profile import HuggingFaceWeights

LLAMA_CACHE = f"{CONTAINER_MODELS}/llama.cpp"  # where --model-url downloads land: the host's model cache
ALL_LAYERS = 999  # --n-gpu-layers: more than any model has, i.e. every layer on the GPU


def planned_flags(plan: DeploymentPlan, engine: InferenceEngine) -> dict[str, object]:
    option = chosen(plan)
    limits = option.replica.limits
    profile = plan.profile
    flags: dict[str, object] = {
        "host": "0.0.0.0",
        "port": engine.port,
        "alias": profile.resolved_served_name,
        "n-gpu-layers": ALL_LAYERS,
        # One KV cache shared by every slot (--kv-unified), sized like the plan's KV pool: the slots take what
        # they need, as vLLM's paged cache does; --ctx-size would otherwise be split evenly between slots.
        "kv-unified": True,
        "ctx-size": option.replica.memory.kv_capacity_tokens,
        "parallel": limits.max_num_seqs,
        "batch-size": limits.max_num_batched_tokens,
        "metrics": True,  # off by default
    }
    if isinstance(profile.weights, HuggingFaceWeights):
        flags["model-url"] = gguf_url(profile.weights)
    else:
        flags["model"] = gguf_container_path(profile)
    return flags


def llamacpp_launch(plan: DeploymentPlan, engine: InferenceEngine) -> EngineLaunch:
    args = tuple(long_options(with_engine_args(planned_flags(plan, engine), plan.profile)))
    return launch_of(plan, engine, program="llama-server", args=args, env=(("LLAMA_CACHE", LLAMA_CACHE),),
                     api_key_env=engine.capabilities.api_key_env)

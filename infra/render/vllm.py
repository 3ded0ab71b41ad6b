"""vLLM server configuration per deployment: a `vllm serve --config` YAML file and the argument list.

Planned values (tensor parallelism, limits, precision) come from the plan; the profile's engineArgs
override them last, as a user who pins a flag expects. The API key is never written: vLLM reads it from
the VLLM_API_KEY environment variable, filled from the stack's secret on the host.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from infra.plan.optimize import DeploymentPlan, Option
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONTAINER_CONFIG, VLLM_PORT, adapter_dir, weights_dir
from infra.render.vllm_flags import to_cli_args
from infra.spec.profile import VLLM_MAX_LORA_RANKS, HuggingFaceWeights, LoraAdapter, ModelProfile

VLLM_VERSION = "0.33.0"  # the one vLLM version of the project: image tag, flag schema, metric names
API_KEY_ENV = "VLLM_API_KEY"  # read by `vllm serve` when --api-key is not given


def model_argument(profile: ModelProfile) -> str:
    """The positional MODEL of `vllm serve`: a Hub repo id, or the container path of synced weights."""
    if isinstance(profile.weights, HuggingFaceWeights):
        return profile.weights.repo
    return weights_dir(profile.name)


def _lora_path(profile: ModelProfile, adapter: LoraAdapter) -> str:
    if isinstance(adapter.weights, HuggingFaceWeights):
        return adapter.weights.repo  # vLLM downloads Hub adapters itself
    return adapter_dir(profile.name, adapter.name)


def _lora_flags(profile: ModelProfile) -> dict[str, Any]:
    if not profile.lora_adapters:
        return {}
    largest = max(adapter.rank for adapter in profile.lora_adapters)
    return {
        "enable-lora": True,
        "lora-modules": [f"{a.name}={_lora_path(profile, a)}" for a in profile.lora_adapters],
        # --max-lora-rank takes only these values; the smallest that holds every adapter wastes least memory.
        "max-lora-rank": min(rank for rank in VLLM_MAX_LORA_RANKS if rank >= largest),
    }


def planned_flags(option: Option, profile: ModelProfile) -> dict[str, Any]:
    replica = option.replica
    limits, precision = replica.limits, replica.precision
    flags: dict[str, Any] = {
        "host": "0.0.0.0",  # inside the container; the host firewall and the LB decide who reaches it
        "port": VLLM_PORT,
        "served-model-name": profile.resolved_served_name,
        "tensor-parallel-size": option.config.tp,
        "max-model-len": limits.max_model_len,
        "max-num-seqs": limits.max_num_seqs,
        "max-num-batched-tokens": limits.max_num_batched_tokens,
        "gpu-memory-utilization": limits.gpu_memory_utilization,
        "dtype": precision.dtype,
        # On by default in the V1 engine; written out so the rendered file says what runs.
        "enable-prefix-caching": True,
    }
    if isinstance(profile.weights, HuggingFaceWeights):
        flags["revision"] = profile.weights.revision
    if option.config.quantization.vllm_name is not None:
        flags["quantization"] = option.config.quantization.vllm_name
    if precision.kv_cache_dtype != "auto":
        flags["kv-cache-dtype"] = precision.kv_cache_dtype
    flags.update(_lora_flags(profile))
    return flags


def _normalise(name: str) -> str:
    return name.replace("_", "-")


def server_flags(option: Option, profile: ModelProfile) -> dict[str, Any]:
    """Planned flags, then the profile's engineArgs on top (same flag written with '_' or '-' is one flag)."""
    flags = planned_flags(option, profile)
    for name, value in profile.engine_args.items():
        flags[_normalise(name)] = value
    return dict(sorted(flags.items()))


def config_path(deployment: str) -> str:
    return f"vllm/{deployment}.yaml"


def render_vllm(plan: DeploymentPlan) -> list[Artifact]:
    assert plan.chosen is not None  # render runs on feasible plans only
    name = plan.deployment.name
    flags = server_flags(plan.chosen, plan.profile)
    header = (
        f"# vLLM {VLLM_VERSION} server config for deployment '{name}' (rendered by gpufleet; do not edit).\n"
        f"# Run: vllm serve {model_argument(plan.profile)} --config {CONTAINER_CONFIG}/{config_path(name)}\n"
        f"# The API key comes from ${API_KEY_ENV} in the environment.\n"
    )
    config = header + yaml.safe_dump(flags, sort_keys=True, default_flow_style=False)
    # Every rendered flag and value is checked against the pinned version's parser (validate already
    # rejected bad profile overrides; a failure here is a bug in gpufleet, not in the spec).
    argv = ["vllm", "serve", model_argument(plan.profile), *to_cli_args(flags)]
    return [
        Artifact(config_path(name), "vllm-config", name, config),
        Artifact(f"vllm/{name}.args.json", "vllm-args", name, json.dumps(argv, indent=2) + "\n"),
    ]


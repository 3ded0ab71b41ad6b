"""TensorRT-LLM: ``trtllm-serve`` (PyTorch backend, Hugging Face checkpoints, no engine build) from the plan.

Limits are ``trtllm-serve`` options; what has no option goes into the rendered LLM-API options file
(``engines/<d>.trtllm.yaml``, ``--extra_llm_api_options``): ``return_perf_metrics: true`` mounts the Prometheus
endpoint (/prometheus/metrics), and the KV-cache dtype. No flag schema (the pinned release's wheel is not
published); options as in the trtllm-serve reference (engines.yaml ``flags``). No API key.
"""

from __future__ import annotations

import yaml

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan
from infra.render.artifacts import Artifact
from infra.render.engines.common import checkpoint, chosen, launch_of, long_options, with_engine_args
from infra.render.engines.launch import EngineLaunch, container_config_path
from infra.render.hostlayout import CONTAINER_HF_HOME
from infra.spec.profile import HuggingFaceWeights


def llm_api_options(plan: DeploymentPlan) -> dict[str, object]:
    precision = chosen(plan).replica.precision
    options: dict[str, object] = {"return_perf_metrics": True, "dtype": precision.dtype}
    if precision.kv_cache_dtype != "auto":
        options["kv_cache_config"] = {"dtype": "fp8"}
    if isinstance(plan.profile.weights, HuggingFaceWeights):
        options["revision"] = plan.profile.weights.revision
    return options


def planned_flags(plan: DeploymentPlan, engine: InferenceEngine, options_path: str) -> dict[str, object]:
    option = chosen(plan)
    limits = option.replica.limits
    return {
        "host": "0.0.0.0",
        "port": engine.port,
        "backend": "pytorch",
        "tp_size": option.config.tp,
        "max_seq_len": limits.max_model_len,
        "max_batch_size": limits.max_num_seqs,
        "max_num_tokens": limits.max_num_batched_tokens,
        # A share of the memory left after the weights load (TRT-LLM's default 0.9), where vLLM's fraction is of
        # the whole GPU: the plan's value here gives TRT-LLM a KV pool at least as large as the plan assumed.
        "kv_cache_free_gpu_memory_fraction": limits.gpu_memory_utilization,
        "extra_llm_api_options": options_path,
    }


def trtllm_launch(plan: DeploymentPlan, engine: InferenceEngine) -> EngineLaunch:
    name = plan.deployment.name
    options_path = f"engines/{name}.trtllm.yaml"
    flags = with_engine_args(planned_flags(plan, engine, container_config_path(options_path)), plan.profile,
                             separator="_")
    args = ("trtllm-serve", checkpoint(plan.profile), *long_options(flags))
    header = (f"# TensorRT-LLM {engine.version} LLM-API options of deployment '{name}' (rendered by gpufleet; "
              "do not edit).\n")
    options = header + yaml.safe_dump(llm_api_options(plan), sort_keys=True, default_flow_style=False)
    # The release image's entrypoint runs its command as given: trtllm-serve is the first argument.
    return launch_of(plan, engine, program=None, args=args, env=(("HF_HOME", CONTAINER_HF_HOME),),
                     config_files=(Artifact(options_path, "engine-config", name, options),))

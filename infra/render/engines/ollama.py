"""Ollama: ``ollama serve``, configured by environment variables, and the deployment's model created in it.

``ollama serve`` takes no model or limits: it serves what its store holds, by name. The rendered start script
(``engines/<d>.ollama.sh``, run as the container's command) starts the server, creates the served model from
the rendered Modelfile (``FROM`` the GGUF file, its context length) and keeps the server in the foreground;
the replica is ready once ``GET /v1/models/<served name>`` answers 200, i.e. after the model exists.

Weights: a local GGUF file, or a Hub GGUF repository pulled as ``hf.co/<repo>:<quant type>`` — Ollama pulls
a repository's head, so validate accepts only ``revision: main`` for it (a pinned revision could not be
honoured). No API key (Ollama has none) and no tensor parallelism (validate and the planner keep tp = 1).
"""

from __future__ import annotations

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan
from infra.render.artifacts import Artifact
from infra.render.engines.common import chosen, gguf_container_path, launch_of, shell_words
from infra.render.engines.launch import EngineLaunch, container_config_path
from infra.render.hostlayout import CONTAINER_MODELS
from infra.spec.profile import HuggingFaceWeights, ModelProfile

OLLAMA = "/bin/ollama"
OLLAMA_MODELS = f"{CONTAINER_MODELS}/ollama"  # Ollama's store in the host's model cache: survives restarts


def model_source(profile: ModelProfile, quant: str) -> str:
    if isinstance(profile.weights, HuggingFaceWeights):
        return f"hf.co/{profile.weights.repo}:{quant.upper()}"
    return gguf_container_path(profile)


def modelfile(plan: DeploymentPlan) -> str:
    option = chosen(plan)
    return (
        f"# Ollama model '{plan.profile.resolved_served_name}' of deployment '{plan.deployment.name}' "
        "(rendered by gpufleet; do not edit).\n"
        f"FROM {model_source(plan.profile, option.config.quantization.name)}\n"
        f"PARAMETER num_ctx {option.replica.limits.max_model_len}\n"
    )


def start_script(plan: DeploymentPlan, modelfile_path: str) -> str:
    served = plan.profile.resolved_served_name
    pull = ""
    if isinstance(plan.profile.weights, HuggingFaceWeights):
        pull = f"{shell_words([OLLAMA, 'pull', model_source(plan.profile, chosen(plan).config.quantization.name)])}\n"
    return (
        "#!/bin/sh\n"
        f"# Ollama replica of deployment '{plan.deployment.name}' (rendered by gpufleet; do not edit): start the\n"
        "# server, create the served model from the Modelfile, then wait on the server (the container's life).\n"
        "set -eu\n"
        f"{OLLAMA} serve &\n"
        "server=$!\n"
        "trap 'kill -TERM \"$server\"' TERM INT\n"
        f"until {OLLAMA} list >/dev/null 2>&1; do kill -0 \"$server\"; sleep 1; done\n"
        f"{pull}"
        f"{shell_words([OLLAMA, 'create', served, '-f', modelfile_path])}\n"
        "wait \"$server\"\n"
    )


def environment(plan: DeploymentPlan, engine: InferenceEngine) -> tuple[tuple[str, str], ...]:
    limits = chosen(plan).replica.limits
    env = {
        "OLLAMA_HOST": f"0.0.0.0:{engine.port}",
        "OLLAMA_MODELS": OLLAMA_MODELS,
        "OLLAMA_CONTEXT_LENGTH": str(limits.max_model_len),
        "OLLAMA_NUM_PARALLEL": str(limits.max_num_seqs),
        "OLLAMA_MAX_LOADED_MODELS": "1",  # one model per replica, as every other engine
        # Never unload: the default (5 minutes idle) would make the next request pay the load again.
        "OLLAMA_KEEP_ALIVE": "-1",
    }
    # engineArgs are OLLAMA_* variables without the prefix (kv-cache-type → OLLAMA_KV_CACHE_TYPE).
    for name, value in plan.profile.engine_args.items():
        env["OLLAMA_" + name.replace("-", "_").upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return tuple(sorted(env.items()))


def ollama_launch(plan: DeploymentPlan, engine: InferenceEngine) -> EngineLaunch:
    name = plan.deployment.name
    model_path, script_path = f"engines/{name}.Modelfile", f"engines/{name}.ollama.sh"
    script = start_script(plan, container_config_path(model_path))
    args = (container_config_path(script_path),)
    return launch_of(plan, engine, program="/bin/sh", entrypoint="/bin/sh", args=args,
                     env=environment(plan, engine),
                     config_files=(Artifact(model_path, "engine-config", name, modelfile(plan)),
                                   Artifact(script_path, "engine-config", name, script)))

"""vLLM: the image's entrypoint is ``vllm serve``; the model and the rendered config file
(:func:`infra.render.vllm.render_vllm`) are its arguments, the API key comes from VLLM_API_KEY."""

from __future__ import annotations

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan
from infra.render.engines.launch import EngineLaunch
from infra.render.hostlayout import CONTAINER_CONFIG, CONTAINER_HF_HOME
from infra.render.vllm import API_KEY_ENV, config_path, model_argument, render_vllm


def vllm_launch(plan: DeploymentPlan, engine: InferenceEngine) -> EngineLaunch:
    name = plan.deployment.name
    return EngineLaunch(
        engine=engine, image=engine.image.pinned, entrypoint=None,
        args=(model_argument(plan.profile), "--config", f"{CONTAINER_CONFIG}/{config_path(name)}"),
        env=(("HF_HOME", CONTAINER_HF_HOME),), api_key_env=API_KEY_ENV,
        ready_path=engine.health.ready_for(plan.profile.resolved_served_name),
        files=tuple(render_vllm(plan)),
    )

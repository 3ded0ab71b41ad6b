"""Per-engine launch of a deployment's replicas (see :mod:`infra.render.engines.launch`)."""

from __future__ import annotations

from collections.abc import Callable

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.engines.launch import UNUSED_KEY_VAR, EngineLaunch
from infra.render.engines.llamacpp import llamacpp_launch
from infra.render.engines.ollama import ollama_launch
from infra.render.engines.sglang import sglang_launch
from infra.render.engines.tgi import tgi_launch
from infra.render.engines.trtllm import trtllm_launch
from infra.render.engines.vllm import vllm_launch

Builder = Callable[[DeploymentPlan, InferenceEngine], EngineLaunch]
BUILDERS: dict[str, Builder] = {
    "vllm": vllm_launch,
    "sglang": sglang_launch,
    "tgi": tgi_launch,
    "llamacpp": llamacpp_launch,
    "ollama": ollama_launch,
    "trtllm": trtllm_launch,
}


def engine_launch(plan: DeploymentPlan) -> EngineLaunch:
    return BUILDERS[plan.engine.name](plan, plan.engine)


def render_engines(plan: FleetPlan) -> list[Artifact]:
    """Every deployment's engine files: configs its replicas read and the argv record."""
    return [artifact for d in plan.deployments for artifact in engine_launch(d).files]


__all__ = ["BUILDERS", "UNUSED_KEY_VAR", "EngineLaunch", "engine_launch", "render_engines"]

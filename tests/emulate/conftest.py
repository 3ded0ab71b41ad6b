"""Shared fixtures: the dev stack's planned replica (qwen2.5-7b on one L4), planned once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.plan.optimize import DeploymentPlan, plan_stack
from infra.spec.load import Project, load_stack

ROOT = Path(__file__).resolve().parents[2]


def deployment_plan(stack: str, deployment: str) -> DeploymentPlan:
    fleet = plan_stack(load_stack(Project(ROOT), stack))
    plan = next(p for p in fleet.deployments if p.deployment.name == deployment)
    assert plan.chosen is not None
    return plan


@pytest.fixture(scope="session")
def dev_chat() -> DeploymentPlan:
    return deployment_plan("dev", "chat")


@pytest.fixture(scope="session")
def staging_support() -> DeploymentPlan:
    """A deployment with LoRA adapters and an fp8 KV cache."""
    return deployment_plan("staging", "support")

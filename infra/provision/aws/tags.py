"""Cost-allocation tags: every AWS resource carries the stack and owner, a deployment's resources also the
deployment and model (activate them as cost allocation tags in the Billing console to split the bill)."""

from __future__ import annotations

STACK, OWNER, DEPLOYMENT, MODEL = "gpufleet:stack", "gpufleet:owner", "gpufleet:deployment", "gpufleet:model"


def cost_tags(stack: str, owner: str, deployment: str | None = None, model: str | None = None,
              **extra: str) -> dict[str, str]:
    tags = {STACK: stack, OWNER: owner}
    if deployment is not None:
        tags[DEPLOYMENT] = deployment
        tags[MODEL] = model or ""
    return {**tags, **extra}

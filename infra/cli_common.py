"""What every `gpufleet` subcommand shares: the exit code of user errors, finding the project, and loading a
stack's deployment with the same one-screen messages (infra/cli.py, bench, emulate, calibrate)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from infra.plan.optimize import DeploymentPlan, plan_stack
from infra.spec.issues import SpecError
from infra.spec.load import LoadedStack, Project, load_stack
from infra.spec.pydantic_issues import did_you_mean
from infra.spec.stack import Deployment

USER_ERROR = 2


def fail(lines: list[str]) -> NoReturn:
    """Print a user error (no traceback) and exit 2."""
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(USER_ERROR)


def find_project(start: Path | None) -> Project:
    """The project root: given, or the nearest folder upward with Pulumi.yaml and stacks/."""
    if start is not None:
        return Project(start.resolve())
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file() and (folder / "stacks").is_dir():
            return Project(folder)
    return Project(here)


def load_or_fail(project: Project, stack: str, outcome: str = "") -> LoadedStack:
    """The stack, or exit 2 with its issues; ``outcome`` ends the count line (e.g. "nothing was written")."""
    if stack not in project.stack_names():
        fail([f"error: --stack: unknown stack '{stack}' ({did_you_mean(stack, project.stack_names())})"])
    try:
        return load_stack(project, stack)
    except SpecError as exc:
        count = f"{len(exc.issues)} error(s) in stack '{stack}'" + (f"; {outcome}" if outcome else "")
        fail([*(issue.format() for issue in exc.issues), count + "."])


def deployment_or_fail(loaded: LoadedStack, deployment: str) -> Deployment:
    found = next((d for d in loaded.spec.deployments if d.name == deployment), None)
    if found is None:
        hint = did_you_mean(deployment, [d.name for d in loaded.spec.deployments])
        fail([f"error: --deployment: stack '{loaded.name}' has no deployment '{deployment}' ({hint})"])
    return found


def planned_deployment(stack: str, deployment: str, project_dir: Path | None) -> DeploymentPlan:
    """The plan of one deployment, which must be feasible (emulate and bench run what the plan chose)."""
    loaded = load_or_fail(find_project(project_dir), stack)
    deployment_or_fail(loaded, deployment)
    plan = next(p for p in plan_stack(loaded).deployments if p.deployment.name == deployment)
    if plan.chosen is None:
        fail([f"error: {stack}/{deployment}: the planner found no feasible option "
              f"(`gpufleet plan -s {stack} --explain` says why)"])
    return plan

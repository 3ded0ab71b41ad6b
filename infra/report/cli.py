"""``gpufleet report -s STACK -o DIR``: the cost report of a stack's plan (Markdown, HTML, JSON)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from infra.catalog import load_catalog
from infra.cli_common import fail, find_project
from infra.plan.optimize import plan_stack
from infra.report.cost import fleet_report
from infra.report.document import extras, section, write_report
from infra.report.whatif import WhatIf, cloud_what_if, market_what_ifs, naive_sizing, onprem_what_if
from infra.spec.issues import SpecError
from infra.spec.load import LoadedStack, Project, load_stack


def is_priced_onprem(loaded: LoadedStack) -> bool:
    return loaded.spec.target == "onprem" and loaded.spec.pricing.onprem is not None


def is_cloud(loaded: LoadedStack) -> bool:
    return loaded.spec.target != "onprem"


# What the other side of the on-prem/cloud what-if is: the option naming it, what it must be, the test.
REFERENCES: dict[bool, tuple[str, str, Callable[[LoadedStack], bool]]] = {
    False: ("--onprem-reference", "an onprem stack with pricing.onprem", is_priced_onprem),
    True: ("--cloud-reference", "an aws-ec2 or eks stack", is_cloud),
}


def reference_stack(project: Project, name: str | None, stack: LoadedStack) -> LoadedStack | None:
    """The stack the on-prem/cloud what-if plans under: ``name``, or the project's first stack of the other
    kind (an on-prem stack with amortised pricing for a cloud stack, a cloud stack for an on-prem one); none:
    no such what-if."""
    option, wanted, fits = REFERENCES[stack.spec.target == "onprem"]
    candidates = [name] if name else [s for s in project.stack_names() if s != stack.name]
    for candidate in candidates:
        try:
            loaded = load_stack(project, candidate)
        except SpecError as exc:
            if name:
                fail([issue.format() for issue in exc.issues])
            continue
        if fits(loaded):
            return loaded
        if name:
            fail([f"error: {option} {name}: not {wanted}"])
    return None


def report_command(
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for report.md/.html/.json.")],
    onprem_reference_stack: Annotated[
        str | None, typer.Option("--onprem-reference", help="On-prem stack to price a cloud stack's on-prem "
                                                           "what-if with (default: the first one with pricing).")
    ] = None,
    cloud_reference_stack: Annotated[
        str | None, typer.Option("--cloud-reference", help="Cloud stack whose region and pricing an on-prem "
                                                          "stack's cloud what-if uses (default: the first one).")
    ] = None,
    project_dir: Annotated[Path | None, typer.Option("--project-dir", "-C", help="Project root.")] = None,
) -> None:
    """Write the cost report of a stack's plan: per deployment the chosen configuration and its cost, the
    alternatives, plots, what-ifs and naive sizing. Figures equal `gpufleet plan --json`."""
    project = find_project(project_dir)
    try:
        loaded = load_stack(project, stack)
    except SpecError as exc:
        fail([*(issue.format() for issue in exc.issues), f"{len(exc.issues)} error(s); no report was written."])
    fleet = plan_stack(loaded)
    problems = fleet.problems()
    if any(d.chosen is None for d in fleet.deployments):
        fail([f"error: stack '{stack}' has no feasible plan: " + "; ".join(problems)])
    report = fleet_report(fleet)
    catalog = load_catalog()
    onprem = fleet.spec.target == "onprem"
    reference = reference_stack(project, cloud_reference_stack if onprem else onprem_reference_stack, loaded)
    other_side = cloud_what_if if onprem else onprem_what_if
    sections, extra = [], {}
    for plan, deployment in zip(fleet.deployments, report.deployments, strict=True):
        what_ifs: list[WhatIf] = market_what_ifs(plan, fleet)
        compared = other_side(plan, reference, catalog)
        if compared is not None:
            what_ifs.append(compared)
        naive = naive_sizing(plan)
        sections.append(section(deployment, what_ifs, naive))
        extra[deployment.name] = extras(deployment, what_ifs, naive)
    written = write_report(output, report, sections, extra)
    for note in problems:
        typer.echo(f"warning: {note}", err=True)
    typer.echo(f"wrote {len(written)} files to {output}")

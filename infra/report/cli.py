"""``gpufleet report -s STACK -o DIR``: the cost report of a stack's plan (Markdown, HTML, JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.catalog import load_catalog
from infra.cli_common import fail, find_project
from infra.plan.optimize import plan_stack
from infra.report.cost import fleet_report
from infra.report.document import extras, section, write_report
from infra.report.whatif import WhatIf, market_what_ifs, naive_sizing, onprem_what_if
from infra.spec.issues import SpecError
from infra.spec.load import LoadedStack, Project, load_stack


def onprem_reference(project: Project, name: str | None, stack: str) -> LoadedStack | None:
    """The on-prem stack whose servers and amortisation the what-if uses: ``name``, or the project's first
    onprem stack with on-prem pricing (none: no on-prem what-if)."""
    candidates = [name] if name else [s for s in project.stack_names() if s != stack]
    for candidate in candidates:
        try:
            loaded = load_stack(project, candidate)
        except SpecError as exc:
            if name:
                fail([issue.format() for issue in exc.issues])
            continue
        if loaded.spec.target == "onprem" and loaded.spec.pricing.onprem is not None:
            return loaded
        if name:
            fail([f"error: --onprem-reference {name}: not an onprem stack with pricing.onprem"])
    return None


def report_command(
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for report.md/.html/.json.")],
    onprem_reference_stack: Annotated[
        str | None, typer.Option("--onprem-reference", help="On-prem stack to price the on-prem what-if with.")
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
    reference = onprem_reference(project, onprem_reference_stack, stack) if fleet.spec.target != "onprem" else None
    sections, extra = [], {}
    for plan, deployment in zip(fleet.deployments, report.deployments, strict=True):
        what_ifs: list[WhatIf] = market_what_ifs(plan, fleet)
        onprem = onprem_what_if(plan, reference, catalog)
        if onprem is not None:
            what_ifs.append(onprem)
        naive = naive_sizing(plan)
        sections.append(section(deployment, what_ifs, naive))
        extra[deployment.name] = extras(deployment, what_ifs, naive)
    written = write_report(output, report, sections, extra)
    for note in problems:
        typer.echo(f"warning: {note}", err=True)
    typer.echo(f"wrote {len(written)} files to {output}")

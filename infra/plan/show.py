"""Human-readable plan tables (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan, FleetPlan, Option
from infra.plan.pricing import HOURS_PER_MONTH

ESTIMATE = "≈"
"""Marks the figures of a deployment whose engine the capacity model has no calibration for."""


def _option_row(option: Option, mark: str = "", estimate: bool = False) -> list[str]:
    """One option; with ``estimate`` every figure that follows from the capacity model carries the mark."""
    p = option.predicted
    figures = [
        str(option.replicas),
        f"{option.capacity.max_qps:.2f}",
        f"{p.ttft_ms:.0f} / {p.tpot_ms:.1f}",
        f"{option.utilisation:.0%}",
        f"${option.hourly_usd:,.2f}",
        f"${option.monthly_usd:,.0f}",
        f"${option.usd_per_m_input:.3f} / ${option.usd_per_m_output:.3f}",
    ]
    approx = ESTIMATE if estimate else ""
    return [mark + option.config.label, option.machine.label, *(approx + f for f in figures)]


def estimate_note(engine: InferenceEngine) -> str:
    """The footnote of an estimate: which engine, its factor and where the factor comes from."""
    t = engine.throughput
    return (
        f"{ESTIMATE} estimate: no capacity measurements of {engine.title} {engine.version}; vLLM's model with "
        f"every engine step at {t.factor:g}× vLLM's throughput (source: {t.source.url}, {t.source.as_of})"
    )


HEADERS = [
    "replica",
    "machine",
    "replicas",
    "req/s per replica",
    "TTFT / TPOT p95 ms",
    "util.",
    "$/hour",
    "$/month",
    "$/1M in / out",
]


def deployment_table(plan: DeploymentPlan) -> Table:
    d = plan.deployment
    estimate = plan.estimate
    engine = f", {ESTIMATE} {plan.engine.title}" if estimate else ""
    title = (
        f"{d.name} — {plan.profile.resolved_served_name}: {d.traffic.qps:g} req/s (peak "
        f"{d.traffic.peak_qps:g}), SLO TTFT {d.slo.ttft_p95_ms:g} ms / TPOT {d.slo.tpot_p95_ms:g} ms p95, "
        f"{d.slo.redundancy}{engine}"
    )
    table = Table(title=title, title_justify="left")
    for header in HEADERS:
        left = header in ("replica", "machine")
        table.add_column(header, justify="left" if left else "right", no_wrap=left)
    if plan.chosen:
        table.add_row(*_option_row(plan.chosen, "✔ ", estimate), style="bold")
    for option in plan.alternatives:
        table.add_row(*_option_row(option, "  ", estimate))
    if plan.chosen is None:
        table.add_row("✘ none feasible", f"{len(plan.rejected)} options rejected (--explain)", *[""] * 7, style="red")
    return table


def rejected_table(plan: DeploymentPlan) -> Table:
    table = Table(title=f"{plan.deployment.name}: options not chosen", title_justify="left")
    table.add_column("option", no_wrap=True)
    table.add_column("why", no_wrap=True)
    table.add_column("detail")
    for rejected in plan.rejected:
        table.add_row(rejected.label, rejected.kind, rejected.reason)
    return table


def print_plan(plan: FleetPlan, console: Console, explain: bool = False) -> None:
    console.print(f"[bold]stack {plan.stack}[/bold] ({plan.spec.target})")
    for deployment in plan.deployments:
        console.print(deployment_table(deployment))
        if explain and deployment.rejected:
            console.print(rejected_table(deployment))
        if deployment.estimate:
            console.print(f"  note: {estimate_note(deployment.engine)}", soft_wrap=True)
        chosen = deployment.chosen
        notes = {
            o.config.gpu.name: o.replica.calibration.note
            for o in (chosen, *deployment.alternatives)
            if o is not None and o.replica.calibration is not None
        }
        for gpu, note in notes.items():
            console.print(f"  note: {gpu} {note}")
        if chosen and not chosen.replica.calibrated:
            console.print(
                f"  note: no measurements for {chosen.config.gpu.architecture} GPUs: their "
                "efficiencies are borrowed (estimate)"
            )
        for hint in deployment.hints:
            console.print(f"  hint: {hint}")
    total = plan.monthly_usd
    console.print(
        f"total ${total:,.0f}/month (${total / HOURS_PER_MONTH:,.2f}/hour) of a "
        f"${plan.spec.monthly_budget_usd:,.0f} budget"
    )

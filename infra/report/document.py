"""The cost report as files: ``report.md`` (with ``plots/*.svg``), a self-contained ``report.html`` (the
same tables, plots inline) and ``report.json`` (``plan --json`` verbatim under ``plan``, plus what the
report derives). Tables are built once (:class:`Table`) and written by both the Markdown and HTML writers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from infra.render.templating import TEMPLATES
from infra.report.cost import DeploymentReport, FleetReport
from infra.report.svg import line_chart, stacked_bar
from infra.report.whatif import NaiveSizing, WhatIf

HTML_TEMPLATE = "report/report.html.j2"


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class Plot:
    slug: str
    title: str
    svg: str


@dataclass(frozen=True)
class Section:
    name: str
    model: str
    summary: str
    chosen: Table
    alternatives: Table
    what_ifs: Table
    naive: str
    plots: tuple[Plot, ...]


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


ESTIMATE = "≈"
"""Marks the figures of a deployment whose engine the capacity model has no calibration for (as `plan`)."""


def estimate_mark(deployment: dict[str, Any]) -> str:
    """``≈`` for a deployment of ``plan --json`` whose engine is not calibrated, else nothing."""
    return "" if deployment["engine"]["calibrated"] else ESTIMATE


def estimate_note(deployment: dict[str, Any]) -> str:
    """What an estimate rests on: the engine, its throughput factor and the factor's source."""
    e = deployment["engine"]
    return (f"{ESTIMATE} estimate: no capacity measurements of {e['name']} {e['version']}; vLLM's model with every "
            f"engine step at {e['throughputFactor']:g}× vLLM's throughput (source: {e['source']['url']}, "
            f"{e['source']['asOf']}).")


def chosen_table(report: DeploymentReport) -> Table:
    c, slo = report.plan["chosen"], report.plan["slo"]
    peak = c["predicted_at_peak"]
    m = estimate_mark(report.plan)
    rows = [
        ("GPU × tensor parallelism", f"{c['gpu']} × {c['tensor_parallel_size']}"),
        ("quantization", c["quantization"]),
        ("instance type (market)", f"{c['instance_type']} ({c['market']})"),
        ("replicas / machines", f"{m}{c['replicas']} / {c['machines']}"),
        ("$ per hour", m + usd(c["hourly_usd"])),
        ("$ per month", m + usd(c["monthly_usd"])),
        ("$ per 1M input tokens", f"{m}${c['usd_per_1m_input_tokens']:.4f}"),
        ("$ per 1M output tokens", f"{m}${c['usd_per_1m_output_tokens']:.4f}"),
        ("utilisation at target load", m + percent(c["utilisation"])),
        ("headroom at peak load", m + percent(1 - c["peak_utilisation"])),
        ("SLO capacity per replica", f"{m}{c['capacity_qps_per_replica']:g} req/s"),
        ("predicted TTFT p95 at peak", f"{m}{peak['ttft_p95_ms']:,.0f} ms (SLO {slo['ttft_p95_ms']:g} ms)"),
        ("predicted TPOT p95 at peak", f"{m}{peak['tpot_p95_ms']:,.1f} ms (SLO {slo['tpot_p95_ms']:g} ms)"),
    ]
    if m:
        rows.append(("engine", estimate_note(report.plan)))
    return Table(("", "chosen"), tuple(rows))


def _option_row(option: dict[str, Any], chosen: bool, mark: str = "") -> tuple[str, ...]:
    label = f"{option['gpu']} × {option['tensor_parallel_size']} on {option['instance_type']} ({option['market']})"
    peak = option["predicted_at_peak"]
    return (label + (" — chosen" if chosen else ""), mark + str(option["replicas"]), str(option["machines"]),
            mark + usd(option["monthly_usd"]), f"{mark}${option['usd_per_1m_output_tokens']:.4f}",
            f"{mark}{peak['ttft_p95_ms']:,.0f} ms", f"{mark}{peak['tpot_p95_ms']:,.1f} ms")


def alternatives_table(report: DeploymentReport) -> Table:
    m = estimate_mark(report.plan)
    rows = [_option_row(report.plan["chosen"], True, m),
            *(_option_row(o, False, m) for o in report.plan["alternatives"])]
    return Table(("option (best per GPU)", "replicas", "machines", "$ per month", "$ per 1M output",
                  "TTFT p95", "TPOT p95"), tuple(rows))


def what_if_table(chosen_monthly: float, what_ifs: list[WhatIf]) -> Table:
    rows = [("as planned", usd(chosen_monthly), "", "")]
    for w in what_ifs:
        delta = "" if w.monthly_usd is None else f"{(w.monthly_usd - chosen_monthly) / chosen_monthly * 100:+.0f} %"
        rows.append((w.name, usd(w.monthly_usd), delta, w.note))
    return Table(("what if", "$ per month", "vs plan", "note"), tuple(rows))


def naive_text(naive: NaiveSizing, chosen: dict[str, Any]) -> str:
    ratio = naive.monthly_usd / chosen["monthly_usd"] if chosen["monthly_usd"] else float("nan")
    return (f"Naive sizing (memory bandwidth ÷ weight bytes = {naive.tokens_per_s:,.0f} tokens/s per replica, "
            f"one request at a time: {naive.qps_per_replica:.3f} req/s per replica) would buy {naive.replicas} "
            f"replicas on {naive.machines} × {chosen['instance_type']} for {usd(naive.monthly_usd)}/month, "
            f"{ratio:.1f}× the plan's {usd(chosen['monthly_usd'])}: batching is what the plan pays less for.")


def plots(report: DeploymentReport) -> tuple[Plot, ...]:
    name = report.name
    memory = stacked_bar(f"{name}: memory of one GPU ({report.plan['chosen']['gpu']})", "GiB",
                         [(p.name, p.gib) for p in report.memory], report.memory_total_gib)
    return (Plot(f"{name}-cost", report.cost_curve.title, line_chart(report.cost_curve)),
            Plot(f"{name}-latency", report.latency_curve.title, line_chart(report.latency_curve)),
            Plot(f"{name}-memory", f"{name}: memory of one GPU", memory))


def section(report: DeploymentReport, what_ifs: list[WhatIf], naive: NaiveSizing) -> Section:
    chosen = report.plan["chosen"]
    m = estimate_mark(report.plan)
    summary = (f"{m}{chosen['replicas']} × {chosen['gpu']}×{chosen['tensor_parallel_size']} on "
               f"{chosen['machines']} × {chosen['instance_type']}: {m}{usd(chosen['monthly_usd'])}/month, "
               f"{report.plan['traffic']['qps']:g} req/s mean")
    if m:
        summary += f" ({ESTIMATE} estimate: see engine)"
    return Section(report.name, report.plan["served_model_name"], summary, chosen_table(report),
                   alternatives_table(report), what_if_table(chosen["monthly_usd"], what_ifs),
                   naive_text(naive, chosen), plots(report))


def fleet_table(report: FleetReport) -> Table:
    rows = [(d["name"], d["served_model_name"], estimate_mark(d) + usd(d["chosen"]["monthly_usd"]),
             f"{estimate_mark(d)}${d['chosen']['usd_per_1m_output_tokens']:.4f}") for d in report.plan["deployments"]]
    total_mark = ESTIMATE if any(estimate_mark(d) for d in report.plan["deployments"]) else ""
    rows.append(("total", "", total_mark + usd(report.plan["monthly_usd"]), ""))
    return Table(("deployment", "model", "$ per month", "$ per 1M output"), tuple(rows))


def budget_line(report: FleetReport) -> str:
    total, budget = report.plan["monthly_usd"], report.plan["budget_usd"]
    return (f"Monthly cost {usd(total)} of a {usd(budget)} budget ({total / budget * 100:.1f} %). GPU instances "
            "only: load balancers, NAT, monitoring and control planes are not in these figures.")


def markdown(report: FleetReport, sections: list[Section]) -> str:
    out = [f"# Cost report: stack {report.stack} ({report.plan['target']})", "", budget_line(report), "",
           fleet_table(report).markdown(), ""]
    for s in sections:
        out += [f"## Deployment {s.name} ({s.model})", "", s.summary, "", s.chosen.markdown(), "",
                "### Alternatives: each GPU's cheapest way to meet the same SLO", "", s.alternatives.markdown(), "",
                "### What-ifs", "", s.what_ifs.markdown(), "", "### Naive sizing", "", s.naive, "", "### Plots", ""]
        out += [f"![{p.title}](plots/{p.slug}.svg)" for p in s.plots]
        out.append("")
    return "\n".join(out)


@cache
def _html_environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                              autoescape=True, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def html(report: FleetReport, sections: list[Section]) -> str:
    # Our own SVG (every text in it escaped by infra/report/svg.py): inserted as markup, not as text.
    svg = {p.slug: Markup(p.svg) for s in sections for p in s.plots}
    return _html_environment().get_template(HTML_TEMPLATE).render(
        stack=report.stack, target=report.plan["target"], budget=budget_line(report), fleet=fleet_table(report),
        sections=sections, svg=svg)


def json_document(report: FleetReport, extras: dict[str, dict[str, Any]]) -> str:
    return json.dumps({"stack": report.stack, "plan": report.plan, "deployments": extras}, indent=2,
                      sort_keys=True) + "\n"


def extras(report: DeploymentReport, what_ifs: list[WhatIf], naive: NaiveSizing) -> dict[str, Any]:
    return {
        "cost_curve": {s.name: [list(p) for p in s.points] for s in report.cost_curve.series},
        "latency_curve": {s.name: [list(p) for p in s.points] for s in report.latency_curve.series},
        "memory_gib": {p.name: round(p.gib, 3) for p in report.memory},
        "what_ifs": [asdict(w) for w in what_ifs],
        "naive_sizing": asdict(naive),
    }


def write_report(out: Path, report: FleetReport, sections: list[Section],
                 extra: dict[str, dict[str, Any]]) -> list[Path]:
    (out / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    for s in sections:
        for p in s.plots:
            path = out / "plots" / f"{p.slug}.svg"
            path.write_text(p.svg + "\n", encoding="utf-8")
            written.append(path)
    for name, text in (("report.md", markdown(report, sections)), ("report.html", html(report, sections)),
                       ("report.json", json_document(report, extra))):
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written

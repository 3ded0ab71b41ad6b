"""The numbers of the cost report, from the plan (pure: no I/O).

Every figure of the chosen configuration and of the alternatives is ``plan --json``'s (:func:`fleet_json`),
so the report and the plan never disagree. What the report adds is derived from the same plan objects:

- **cost vs target QPS** per option: its replica's SLO capacity is a property of the replica, not of the
  traffic, so the replicas (and machines, and $) needed at another QPS follow from the planner's own
  :func:`replicas_needed` and :func:`fleet_cost`; points beyond ``replicas.max`` are left out;
- **latency vs load** of the chosen replica: the planner's simulator at per-replica rates up to saturation
  (the capacity search's seed and request sample), with the SLO lines;
- **memory** of one GPU of the chosen replica: weights, runtime reserve, KV cache, what is left;
- **what-ifs** (infra/report/whatif.py) and the **naive sizing**.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra.catalog import load_catalog
from infra.catalog.loader import Catalog
from infra.plan.capacity import Latency, probe
from infra.plan.memory import GIB
from infra.plan.optimize import (
    DeploymentPlan,
    FleetPlan,
    Option,
    deployment_traffic,
    fleet_cost,
    replicas_needed,
)
from infra.plan.pricing import HOURS_PER_MONTH
from infra.plan.serialize import fleet_json
from infra.report.svg import LineChart, Reference, Series
from infra.spec.checks import resolve_architecture

# Target QPS multiples the cost curve is drawn at (the plan's target is 1).
QPS_MULTIPLES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
# Per-replica load points of the latency curve, as fractions of the replica's saturation rate.
LOAD_FRACTIONS = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97)


@dataclass(frozen=True)
class MemoryPart:
    name: str
    gib: float


@dataclass(frozen=True)
class DeploymentReport:
    name: str
    plan: dict[str, Any]
    """The deployment's entry of ``plan --json``."""
    cost_curve: LineChart
    latency_curve: LineChart
    memory: tuple[MemoryPart, ...]
    memory_total_gib: float


def option_label(option: Option) -> str:
    return option.label


def monthly_at(plan: DeploymentPlan, option: Option, qps: float) -> float | None:
    """$/month of ``option`` serving ``qps`` (mean) within the SLO, or None past replicas.max."""
    d = plan.deployment
    peak = qps * d.traffic.peak_qps / d.traffic.qps
    replicas = replicas_needed(d, peak, option.target_qps_per_replica)
    if replicas > d.replicas.max:
        return None
    _, hourly = fleet_cost(option.config, option.machine, replicas)
    return hourly * HOURS_PER_MONTH


def cost_curve(plan: DeploymentPlan) -> LineChart:
    assert plan.chosen is not None
    target = plan.deployment.traffic.qps
    series = []
    for option in (plan.chosen, *plan.alternatives):
        points = [(target * m, cost) for m in QPS_MULTIPLES
                  if (cost := monthly_at(plan, option, target * m)) is not None]
        series.append(Series(option.label, points))
    return LineChart(f"{plan.deployment.name}: cost to meet the SLO vs target load", "target QPS (mean)",
                     "$ per month", series, (Reference("planned", target, axis="x"),))


def latency_curve(plan: DeploymentPlan, catalog: Catalog) -> LineChart:
    """p95 TTFT and TPOT of one chosen replica against its load, with the SLO lines and the planned load."""
    chosen = plan.chosen
    assert chosen is not None
    arch = resolve_architecture(plan.profile, catalog)
    assert arch is not None
    traffic = deployment_traffic(plan.deployment, plan.profile, arch)
    saturation = chosen.capacity.saturation_qps
    rates = [saturation * f for f in LOAD_FRACTIONS]
    latencies = [Latency.of(probe(chosen.replica, traffic, rate, seed=0), 95) for rate in rates]
    slo = plan.deployment.slo
    per_replica_peak = plan.deployment.traffic.peak_qps / chosen.replicas
    return LineChart(
        f"{plan.deployment.name}: predicted p95 latency of one replica vs its load ({chosen.config.label})",
        "requests per second per replica", "milliseconds",
        [Series("TTFT p95", list(zip(rates, (lat.ttft_ms for lat in latencies), strict=True))),
         Series("TPOT p95", list(zip(rates, (lat.tpot_ms for lat in latencies), strict=True)))],
        (Reference(f"TTFT SLO {slo.ttft_p95_ms:g} ms", slo.ttft_p95_ms),
         Reference(f"TPOT SLO {slo.tpot_p95_ms:g} ms", slo.tpot_p95_ms),
         Reference("planned peak", per_replica_peak, axis="x")))


def memory_parts(option: Option) -> tuple[tuple[MemoryPart, ...], float]:
    """One GPU of the replica: weights (its shard), vLLM's runtime reserve (activations, logits, CUDA
    context), the KV cache, and the memory vLLM leaves unused (1 - gpu_memory_utilization)."""
    memory, gpu = option.replica.memory, option.config.gpu
    kv = memory.kv_capacity_tokens * memory.kv_per_token
    parts = (MemoryPart("weights", memory.weights / GIB), MemoryPart("runtime reserve", memory.reserve / GIB),
             MemoryPart("KV cache", kv / GIB), MemoryPart("not used by vLLM", gpu.memory_gib - memory.budget / GIB))
    return parts, gpu.memory_gib


def deployment_report(plan: DeploymentPlan, planned: dict[str, Any], catalog: Catalog) -> DeploymentReport:
    assert plan.chosen is not None
    parts, total = memory_parts(plan.chosen)
    return DeploymentReport(plan.deployment.name, planned, cost_curve(plan), latency_curve(plan, catalog),
                            parts, total)


@dataclass(frozen=True)
class FleetReport:
    stack: str
    plan: dict[str, Any]
    """``plan --json`` of the stack."""
    deployments: tuple[DeploymentReport, ...]


def fleet_report(fleet: FleetPlan) -> FleetReport:
    """The report of a feasible plan (the caller refuses infeasible ones, as render does)."""
    catalog = load_catalog()
    planned = fleet_json(fleet)
    by_name = {d["name"]: d for d in planned["deployments"]}
    return FleetReport(fleet.stack, planned, tuple(deployment_report(d, by_name[d.deployment.name], catalog)
                                                   for d in fleet.deployments))

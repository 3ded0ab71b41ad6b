"""Prometheus rules: `promtool check rules` on every example stack and on a mixed-engine fleet, and `promtool test
rules` with a firing and a non-firing case for every alert of the prod stack and of the mixed fleet (each engine's
own metric names, from the catalog), generated here from the plan (thresholds come from the plan, not from the
rendered text), plus expression tests of the recording rules.

promtool is required (scripts/install-system-deps.sh installs Debian's `prometheus`): a missing tool is a
failure, never a skip, in CI and locally.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.catalog import load_catalog
from infra.catalog.schema import EngineMetric, EngineSignal, InferenceEngine
from infra.plan.optimize import DeploymentPlan, FleetPlan, plan_stack
from infra.render.prometheus_rules import (
    ERROR_BUDGET,
    FAST_BURN,
    RULES_PATH,
    SIGNAL_RECORDS,
    SLOW_BURN,
    UNMONITORED_SLOS,
    VLLM_PREFIX_CACHE,
    render_prometheus_rules,
    rules_document,
)
from infra.render.stack import render_fleet
from infra.render.telemetry import ENGINE_LABEL, NGINX_RESPONSES, NGINX_UPSTREAM_SECONDS
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["dev", "staging", "prod", "onprem-a800", "engines"]
METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
TIMEOUT_S = 60
UNIT_TIMEOUT_S = 300  # prod's ~60 unit tests, each evaluating every group over an hour of samples


def require_promtool() -> str:
    return require_tool("promtool")  # apt: prometheus


ENGINES = list(load_catalog().engines)
MIXED = "mixed"
"""Not a stack: prod's plan with one more deployment per engine (see :func:`mixed_plan`)."""


@cache
def plan_for(stack: str) -> FleetPlan:
    if stack == MIXED:
        return mixed_plan()
    return plan_stack(load_stack(Project(ROOT), stack))


def with_engine(d: DeploymentPlan, engine: str) -> DeploymentPlan:
    """``d`` renamed ``<name>-<engine>`` and run on ``engine`` (the plan's numbers stay: rules only need them)."""
    return dataclasses.replace(d, deployment=d.deployment.model_copy(update={"name": f"{d.deployment.name}-{engine}"}),
                               profile=d.profile.model_copy(update={"engine": engine}))


def mixed_plan() -> FleetPlan:
    """prod's deployments (vLLM) plus its first deployment (which has an E2E SLO) once per other engine."""
    prod = plan_for("prod")
    others = [with_engine(prod.deployments[0], engine) for engine in ENGINES if engine != "vllm"]
    return dataclasses.replace(prod, deployments=[*prod.deployments, *others])


def rules_text(stack: str) -> str:
    [artifact] = render_prometheus_rules(plan_for(stack))
    return artifact.content


def rules_of(stack: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(rules_text(stack))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def signal(d: DeploymentPlan, name: EngineSignal) -> EngineMetric | None:
    return d.engine.metrics.signals.get(name)


def run_promtool(*args: str, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_promtool(), *args], check=False, capture_output=True, text=True, timeout=timeout)


# -- static checks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", [*STACKS, MIXED])
def test_promtool_check_rules(stack: str, tmp_path: Path) -> None:
    path = tmp_path / "gpufleet.rules.yaml"
    path.write_text(rules_text(stack), encoding="utf-8")
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_render_fleet_includes_rules(stack: str) -> None:
    [artifact] = [a for a in render_fleet(plan_for(stack)) if a.kind == "prometheus-rules"]
    assert artifact.path == RULES_PATH
    assert artifact.content == rules_text(stack)


def test_render_is_deterministic() -> None:
    assert rules_text("prod") == render_prometheus_rules(plan_for("prod"))[0].content


@pytest.mark.parametrize("stack", STACKS)
def test_only_pinned_vllm_metric_names(stack: str) -> None:
    with METRICS_TSV.open(encoding="utf-8") as f:
        exposed = {sample for row in csv.DictReader(f, delimiter="\t")
                   for sample in row["exposed_samples"].split(",")}
    used = {name for rule in rules_of(stack) for name in re.findall(r"(?<![\w:])vllm:[a-z0-9_]+", rule["expr"])}
    assert used, "no vLLM metric used"
    assert used <= exposed, f"not exposed by the pinned vLLM: {sorted(used - exposed)}"


def allowed_samples(engine: InferenceEngine) -> set[str]:
    """Every sample name of the engine's catalog signals (and failure counter); vLLM's prefix-cache pair."""
    metrics = list(engine.metrics.signals.values())
    if engine.metrics.outcomes is not None and engine.metrics.outcomes.failures is not None:
        metrics.append(engine.metrics.outcomes.failures)
    names = {m.sample("bucket") if m.kind == "histogram" else m.sample() for m in metrics}
    if engine.name == "vllm":
        names |= {f"{name}_total" for name in VLLM_PREFIX_CACHE}
    return names


def test_every_engine_metric_read_is_a_catalog_signal_of_that_engine() -> None:
    """Every raw series a rule reads with inference_engine="<engine>" is one of that engine's catalog samples,
    and every engine of the mixed fleet with an endpoint is read."""
    catalog = load_catalog()
    seen: dict[str, set[str]] = {}
    for rule in rules_of(MIXED):
        for name, matchers in re.findall(r"(?<![\w:])([A-Za-z_][\w:]*)\{([^}]*)\}", rule["expr"]):
            engine = re.search(r'inference_engine="(\w+)"', matchers)
            if engine is None:
                assert not name.startswith(("vllm:", "sglang:", "tgi_", "llamacpp:", "trtllm_")), (rule, name)
                continue
            assert 'job="engine"' in matchers, rule
            assert name in allowed_samples(catalog.engines[engine.group(1)]), (engine.group(1), name)
            seen.setdefault(engine.group(1), set()).add(name)
    assert set(seen) == {name for name, e in catalog.engines.items() if e.metrics.path is not None}
    assert seen["tgi"] >= {"tgi_request_success", "tgi_request_failure", "tgi_request_duration_bucket"}


def test_one_rule_group_per_engine_and_one_rule_per_series() -> None:
    doc = rules_document(plan_for(MIXED))
    groups = [g["name"] for g in doc["groups"]]
    assert [g.removeprefix("gpufleet-engine-") for g in groups if g.startswith("gpufleet-engine-")] == [
        e for e in ENGINES if e != "ollama"]  # Ollama has no metrics: no group
    prod_groups = [g["name"] for g in rules_document(plan_for("prod"))["groups"]]
    assert [g for g in prod_groups if g.startswith("gpufleet-engine-")] == ["gpufleet-engine-vllm"]
    for group in doc["groups"]:  # within a group (one engine), each record name once
        records = [r["record"] for r in group["rules"] if "record" in r and "labels" not in r]
        assert len(records) == len(set(records)), group["name"]
    for group in doc["groups"]:
        if group["name"].startswith("gpufleet-engine-"):
            engine = load_catalog().engines[group["name"].removeprefix("gpufleet-engine-")]
            expected = {SIGNAL_RECORDS[s].format(q="p95") for s in engine.metrics.signals if s in SIGNAL_RECORDS}
            assert expected <= {r["record"] for r in group["rules"]}, group["name"]


def test_plan_info_and_unmonitored_slos() -> None:
    plan = plan_for(MIXED)
    rules = [r for r in rules_of(MIXED) if r.get("record", "").startswith("gpufleet:")]
    for d in plan.deployments:
        engine = d.engine
        name = d.deployment.name
        [info] = [r for r in rules if r["record"] == "gpufleet:plan_info" and r["labels"]["deployment"] == name]
        assert info["labels"] == {"deployment": name, "inference_engine": engine.name,
                                  "engine_version": engine.version, "model": d.profile.resolved_served_name}
        unmonitored = {r["labels"]["slo"] for r in rules
                       if r["record"] == "gpufleet:slo_unmonitored" and r["labels"]["deployment"] == name}
        assert unmonitored == {slo for slo, sig in UNMONITORED_SLOS.items() if sig not in engine.metrics.signals}
    assert {d.engine.name for d in plan.deployments
            if any(r["labels"].get("deployment") == d.deployment.name for r in rules
                   if r["record"] == "gpufleet:slo_unmonitored")} == {"tgi", "llamacpp", "ollama"}


def expected_alerts(d: DeploymentPlan) -> set[str]:
    """The deployment alerts its engine's signals allow (module doc of prometheus_rules)."""
    signals = d.engine.metrics.signals
    out = set(DEPLOYMENT_SCENARIOS)
    if d.deployment.slo.e2e_p95_ms is None:
        out.discard("GpufleetE2eP95AboveSlo")
    for alert, needs in (("GpufleetTtftP95AboveSlo", ("ttft_seconds",)),
                         ("GpufleetTpotP95AboveSlo", ("inter_token_seconds",)),
                         ("GpufleetQueueGrowingKvCacheFull", ("requests_waiting", "kv_cache_usage")),
                         ("GpufleetPreemptions", ("preemptions",))):
        if not all(n in signals for n in needs):
            out.discard(alert)
    if d.engine.metrics.path is None:
        out -= {"GpufleetBackendDown", "GpufleetAllBackendsDown"}
    return out


def test_alert_texts_name_the_deployments_engine() -> None:
    plan = plan_for(MIXED)
    for d in plan.deployments:
        engine = d.engine
        alerts = [r for r in rules_of(MIXED) if r.get("labels", {}).get("deployment") == d.deployment.name
                  and "alert" in r]
        text = yaml.safe_dump(alerts)
        if engine.name != "vllm":
            assert "vLLM" not in text and "vllm" not in text and "max_num_seqs" not in text, d.deployment.name
        if engine.metrics.path is not None:
            assert engine.title in text, d.deployment.name


@pytest.mark.parametrize("stack", [*STACKS, MIXED])
def test_alerts_have_labels_and_annotations(stack: str) -> None:
    plan = plan_for(stack)
    names = {d.deployment.name for d in plan.deployments}
    alerts = [r for r in rules_of(stack) if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}, alert["alert"]
        assert all(len(text) > 20 for text in alert["annotations"].values()), alert["alert"]
        assert "http" not in alert["annotations"]["runbook"]
        if alert["alert"] not in FLEET_SCENARIOS:
            assert alert["labels"]["deployment"] in names, alert["alert"]
    for d in plan.deployments:  # every deployment gets the alerts its engine's signals allow
        expected = expected_alerts(d)
        if d.engine.name == "vllm":
            assert expected == set(DEPLOYMENT_SCENARIOS) - (
                {"GpufleetE2eP95AboveSlo"} if d.deployment.slo.e2e_p95_ms is None else set())
        assert {a["alert"] for a in alerts if a["labels"].get("deployment") == d.deployment.name} == expected
    if stack == "prod":
        assert any(a["alert"] == "GpufleetE2eP95AboveSlo" for a in alerts)


# -- promtool unit tests -----------------------------------------------------------------------------------

Series = list[dict[str, str]]


@dataclass(frozen=True)
class Case:
    series: Series
    eval_time: str
    labels: list[dict[str, str]]
    """Labels of each expected alert (without severity/deployment rule labels); empty = must not fire."""


@dataclass(frozen=True)
class Scenario:
    firing: Case
    quiet: Case
    more: tuple[Case, ...] = ()
    """Further cases (firing or not), e.g. another way the same alert must fire."""


def engine_labels(d: DeploymentPlan, replica: int = 0) -> str:
    """A replica's target labels (deployment, model, inference_engine) as the scrape config sets them."""
    name = d.deployment.name
    return (f'job="engine",inference_engine="{d.profile.engine}",deployment="{name}",'
            f'instance="{name}-{replica}:8000",model="{d.profile.resolved_served_name}"')


def series(metric: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{metric}{{{labels}}}", "values": values}


def upstream_buckets(d: DeploymentPlan, low: str, high: str, slow: bool) -> Series:
    lab = f'job="nginx-log",instance="lb-1:3903",deployment="{d.deployment.name}"'
    return [series(f"{NGINX_UPSTREAM_SECONDS}_bucket", f'{lab},le="{low}"', "0x60" if slow else "0+10x60"),
            series(f"{NGINX_UPSTREAM_SECONDS}_bucket", f'{lab},le="{high}"', "0+10x60"),
            series(f"{NGINX_UPSTREAM_SECONDS}_bucket", f'{lab},le="+Inf"', "0+10x60")]


def latency(name: EngineSignal, slo_s: float) -> Callable[[DeploymentPlan], Scenario]:
    """Observations all in (slo/2, 2·slo] put p95 at ~1.9·slo; all in (0, slo/2] at ~0.48·slo. Without the
    engine's histogram (E2E only), the LB's upstream-time histogram."""
    def make(d: DeploymentPlan) -> Scenario:
        low, high = repr(slo_s / 2), repr(slo_s * 2)
        metric = signal(d, name)

        def case(slow: bool) -> Series:
            if metric is None:
                return upstream_buckets(d, low, high, slow)
            bucket, lab = metric.sample("bucket"), engine_labels(d)
            return [series(bucket, f'{lab},le="{low}"', "0x60" if slow else "0+10x60"),
                    series(bucket, f'{lab},le="{high}"', "0+10x60"),
                    series(bucket, f'{lab},le="+Inf"', "0+10x60")]
        return Scenario(Case(case(True), "30m", [{}]), Case(case(False), "30m", []))
    return make


# A concrete label of a finished and of a failed request, per engine with an error signal (the catalog's
# error matcher selects the second, not the first).
OUTCOME_LABELS = {"vllm": ('finished_reason="stop"', 'finished_reason="error"'),
                  "tgi": ("", 'err="generation"'),
                  "trtllm": ('finished_reason="stop"', None)}


def finished(d: DeploymentPlan, per_min: float) -> Series:
    """The engine's finished-request counter at ``per_min`` (nothing where the engine has none)."""
    metric = signal(d, "requests_finished")
    if metric is None:
        return []
    ok = OUTCOME_LABELS.get(d.profile.engine, ("", None))[0]
    return [series(metric.sample(), ",".join(filter(None, (engine_labels(d), ok))), f"0+{per_min!r}x60")]


def outcomes(d: DeploymentPlan, error_share: float) -> Series:
    """100 requests/min, ``error_share`` of them failed: counted by the engine where it can, else as 500s by
    the LB (the engine then only sees the successes)."""
    per_min = 100
    errors = error_share * per_min
    engine = d.engine
    failed_label = OUTCOME_LABELS.get(engine.name, ("", None))[1]
    if engine.metrics.outcomes is None or engine.metrics.outcomes.error is None or failed_label is None:
        return finished(d, per_min - errors) + responses(d, error_share, "500")
    counter = engine.metrics.outcomes.failures or engine.metrics.signals["requests_finished"]
    return [*finished(d, per_min - errors),
            series(counter.sample(), f"{engine_labels(d)},{failed_label}", f"0+{errors!r}x60")]


def responses(d: DeploymentPlan, share: float, error_status: str) -> Series:
    """What mtail counts from the LB's access log: `share` of 100 requests/min answered with error_status."""
    per_min = 100
    lab = f'job="nginx-log",instance="lb-1:3903",deployment="{d.deployment.name}"'
    return [series(NGINX_RESPONSES, lab + ',status="200"', f"0+{per_min * (1 - share)!r}x60"),
            series(NGINX_RESPONSES, lab + f',status="{error_status}"', f"0+{per_min * share!r}x60")]


def fast_burn(d: DeploymentPlan) -> Scenario:
    threshold = FAST_BURN * ERROR_BUDGET
    return Scenario(Case(outcomes(d, threshold * 1.4), "30m", [{}]),
                    Case(outcomes(d, threshold * 0.7), "30m", []),
                    more=(  # 502s that never reached the engine burn budget; client errors (429) do not
                        Case(finished(d, 100) + responses(d, threshold * 1.4, "502"), "30m", [{}]),
                        Case(finished(d, 100) + responses(d, 0.5, "429"), "30m", [])))


def slow_burn(d: DeploymentPlan) -> Scenario:
    threshold = SLOW_BURN * ERROR_BUDGET
    return Scenario(Case(outcomes(d, threshold * 1.5), "40m", [{}]),
                    Case(outcomes(d, threshold * 0.5), "40m", []))


def gauge(d: DeploymentPlan, name: EngineSignal, values: str) -> dict[str, str]:
    metric = signal(d, name)
    assert metric is not None
    return series(metric.sample(), engine_labels(d), values)


def queue_kv(d: DeploymentPlan) -> Scenario:
    def case(kv: str) -> Series:
        return [gauge(d, "requests_waiting", "0+1x60"), gauge(d, "kv_cache_usage", f"{kv}x60")]
    return Scenario(Case(case("0.97"), "30m", [{}]), Case(case("0.5"), "30m", []))


def preemptions(d: DeploymentPlan) -> Scenario:
    return Scenario(Case([gauge(d, "preemptions", "0+1x60")], "30m", [{}]),
                    Case([gauge(d, "preemptions", "0x60")], "30m", []))


def up_labels(d: DeploymentPlan, replica: int) -> str:
    return engine_labels(d, replica).split(",model=")[0]


def up_series(d: DeploymentPlan, r0: str, r1: str) -> Series:
    if d.engine.metrics.path is None:
        return []  # no scrape target, no `up`
    return [series("up", up_labels(d, 0), f"{r0}x60"), series("up", up_labels(d, 1), f"{r1}x60")]


def backend_down(d: DeploymentPlan) -> Scenario:
    down = {"job": "engine", "inference_engine": d.profile.engine, "instance": f"{d.deployment.name}-0:8000"}
    return Scenario(Case(up_series(d, "0", "1"), "30m", [down]), Case(up_series(d, "1", "1"), "30m", []))


def all_down(d: DeploymentPlan) -> Scenario:
    return Scenario(Case(up_series(d, "0", "0"), "30m", [{}]), Case(up_series(d, "0", "1"), "30m", []),
                    more=(Case([], "30m", [{}]),))  # no target discovered at all: absent()


def load_above(d: DeploymentPlan) -> Scenario:
    """Finished requests at 1.5x / 0.5x the capacity; without an engine counter, the LB's 200s (and its 429s,
    which must not count)."""
    assert d.chosen is not None
    capacity = d.chosen.target_qps_per_replica * d.chosen.replicas

    def case(factor: float) -> Series:
        per_min = round(capacity * factor * 60, 3)
        if signal(d, "requests_finished") is not None:
            return finished(d, per_min)
        lab = f'job="nginx-log",instance="lb-1:3903",deployment="{d.deployment.name}"'
        return [series(NGINX_RESPONSES, lab + ',status="200"', f"0+{per_min!r}x60"),
                series(NGINX_RESPONSES, lab + ',status="429"', f"0+{per_min!r}x60")]
    return Scenario(Case(case(1.5), "40m", [{}]), Case(case(0.5), "40m", []))


def e2e_latency(d: DeploymentPlan) -> Scenario:
    assert d.deployment.slo.e2e_p95_ms is not None
    return latency("e2e_seconds", d.deployment.slo.e2e_p95_ms / 1000)(d)


DEPLOYMENT_SCENARIOS: dict[str, Callable[[DeploymentPlan], Scenario]] = {
    "GpufleetE2eP95AboveSlo": e2e_latency,  # only for deployments whose SLO sets e2eP95Ms
    "GpufleetTtftP95AboveSlo": lambda d: latency("ttft_seconds", d.deployment.slo.ttft_p95_ms / 1000)(d),
    "GpufleetTpotP95AboveSlo": lambda d: latency("inter_token_seconds", d.deployment.slo.tpot_p95_ms / 1000)(d),
    "GpufleetErrorBudgetFastBurn": fast_burn,
    "GpufleetErrorBudgetSlowBurn": slow_burn,
    "GpufleetQueueGrowingKvCacheFull": queue_kv,
    "GpufleetPreemptions": preemptions,
    "GpufleetBackendDown": backend_down,
    "GpufleetAllBackendsDown": all_down,
    "GpufleetLoadAboveCapacity": load_above,
}

GPU = {"job": "dcgm", "instance": "gpu-host-1:9400", "gpu": "0", "UUID": "GPU-0000", "Hostname": "gpu-host-1",
       "deployment": "chat"}
GPU_LABELS = ",".join(f'{k}="{v}"' for k, v in GPU.items())
LB = {"job": "nginx", "instance": "lb-1:9113"}
LB_LABELS = ",".join(f'{k}="{v}"' for k, v in LB.items())


def gpu_case(values: dict[str, str], fires: bool) -> Case:
    return Case([series(metric, GPU_LABELS, v) for metric, v in values.items()], "30m", [GPU] if fires else [])


FLEET_SCENARIOS: dict[str, Scenario] = {
    "GpufleetLoadBalancerDown": Scenario(
        Case([series("up", LB_LABELS, "1x60"), series("nginx_up", LB_LABELS, "0x60")], "30m", [LB]),
        Case([series("up", LB_LABELS, "1x60"), series("nginx_up", LB_LABELS, "1x60")], "30m", [])),
    "GpufleetGpuXidError": Scenario(gpu_case({"DCGM_FI_DEV_XID_ERRORS": "0x10 79x50"}, True),
                                    gpu_case({"DCGM_FI_DEV_XID_ERRORS": "0x60"}, False)),
    "GpufleetGpuTemperatureHigh": Scenario(gpu_case({"DCGM_FI_DEV_GPU_TEMP": "90x60"}, True),
                                           gpu_case({"DCGM_FI_DEV_GPU_TEMP": "70x60"}, False)),
    "GpufleetGpuMemoryHigh": Scenario(
        gpu_case({"DCGM_FI_DEV_FB_USED": "78000x60", "DCGM_FI_DEV_FB_FREE": "1000x60"}, True),
        gpu_case({"DCGM_FI_DEV_FB_USED": "70000x60", "DCGM_FI_DEV_FB_FREE": "11000x60"}, False)),
}


def alert_test(rule: dict[str, Any], case: Case) -> dict[str, Any]:
    expected = [{"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": rule["annotations"]}
                for labels in case.labels]
    return {"name": f"{rule['alert']} {rule['labels'].get('deployment', '')} {'fires' if expected else 'quiet'}",
            "interval": "1m", "input_series": case.series,
            "alert_rule_test": [{"alertname": rule["alert"], "eval_time": case.eval_time, "exp_alerts": expected}]}


def unit_tests(plan: FleetPlan, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One promtool test per case. Every other deployment has healthy replicas (up 1) in each case, so the
    case's deployment is the only one that can fire."""
    by_name = {d.deployment.name: d for d in plan.deployments}
    tests = []
    for rule in alerts:
        own = rule["labels"].get("deployment")
        healthy = [s for d in plan.deployments if d.deployment.name != own for s in up_series(d, "1", "1")]
        if rule["alert"] in FLEET_SCENARIOS:
            scenario = FLEET_SCENARIOS[rule["alert"]]
        else:
            scenario = DEPLOYMENT_SCENARIOS[rule["alert"]](by_name[own])
        for case in (scenario.firing, scenario.quiet, *scenario.more):
            tests.append(alert_test(rule, Case(case.series + healthy, case.eval_time, case.labels)))
    return tests


def recording_tests(plan: FleetPlan) -> list[dict[str, Any]]:
    """The recorded series a dashboard reads: cost per 1M output tokens, error ratio, hit rate, replicas.
    Rates are whole numbers per second so sums over series are exact whatever their order."""
    d, other = plan.deployments[:2]
    assert d.chosen is not None
    name = d.deployment.name
    lab = engine_labels(d)
    def out(record: str) -> str:
        return f'{record}{{deployment="{name}"}}'
    cost = d.chosen.hourly_usd / 3.6  # $/h over 3.6 M tokens/h
    return [{
        "name": "recording rules", "interval": "1m",
        "input_series": [
            series("vllm:generation_tokens_total", lab, "0+60000x60"),  # 1000 tokens/s
            series("vllm:request_success_total", lab + ',finished_reason="stop"', "0+5880x60"),
            series("vllm:request_success_total", lab + ',finished_reason="abort"', "0+60x60"),
            series("vllm:request_success_total", lab + ',finished_reason="error"', "0+60x60"),
            series("vllm:prefix_cache_queries_total", lab, "0+400x60"),
            series("vllm:prefix_cache_hits_total", lab, "0+100x60"),
            *up_series(d, "1", "0"),
            *responses(d, 0.03, "503"),
            *responses(other, 0, "500")[:1],  # only 200s logged for the other deployment: no 5xx series
            series(f"{NGINX_UPSTREAM_SECONDS}_bucket", f'job="nginx-log",deployment="{name}",le="1"', "0+50x60"),
            series(f"{NGINX_UPSTREAM_SECONDS}_bucket", f'job="nginx-log",deployment="{name}",le="2"', "0+100x60"),
            series(f"{NGINX_UPSTREAM_SECONDS}_bucket", f'job="nginx-log",deployment="{name}",le="+Inf"', "0+100x60"),
        ],
        "promql_expr_test": [
            {"expr": "deployment:engine_usd_per_m_output_tokens:rate5m", "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:engine_usd_per_m_output_tokens:rate5m"), "value": cost}]},
            {"expr": "deployment:engine_request_errors:ratio_rate5m", "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:engine_request_errors:ratio_rate5m"), "value": 0.01}]},
            {"expr": "deployment:engine_request_aborts:ratio_rate5m", "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:engine_request_aborts:ratio_rate5m"), "value": 0.01}]},
            {"expr": "deployment:engine_requests:rate5m", "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:engine_requests:rate5m"), "value": 100}]},
            {"expr": "deployment:engine_prefix_cache_hits:ratio_rate5m", "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:engine_prefix_cache_hits:ratio_rate5m"), "value": 0.25}]},
            {"expr": out("deployment:nginx_http_errors:ratio_rate5m"), "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:nginx_http_errors:ratio_rate5m"), "value": 0.03}]},
            {"expr": f'deployment:nginx_http_errors:ratio_rate5m{{deployment="{other.deployment.name}"}}',
             "eval_time": "30m",  # 0, not "no data", before the first 5xx
             "exp_samples": [{"labels": f'deployment:nginx_http_errors:ratio_rate5m'
                                        f'{{deployment="{other.deployment.name}"}}', "value": 0}]},
            # the worse of vLLM's 1% and Nginx's 3%
            {"expr": out("deployment:request_errors:ratio_rate1h"), "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:request_errors:ratio_rate1h"), "value": 0.03}]},
            {"expr": 'deployment:nginx_http_responses:rate5m{status="503"}', "eval_time": "30m",
             "exp_samples": [{"labels": f'deployment:nginx_http_responses:rate5m{{deployment="{name}",status="503"}}',
                              "value": 0.05}]},
            {"expr": "deployment:nginx_upstream_seconds:p50_5m", "eval_time": "30m",  # half the requests within 1 s
             "exp_samples": [{"labels": out("deployment:nginx_upstream_seconds:p50_5m"), "value": 1}]},
            {"expr": "deployment:engine_replicas_up:sum", "eval_time": "30m",
             "exp_samples": [{"labels": out("deployment:engine_replicas_up:sum"), "value": 1}]},
        ],
    }]


def engine_recording_tests(plan: FleetPlan) -> list[dict[str, Any]]:
    """Each deployment's engine fed its own raw metric names (one replica): every counter at 100/s, every gauge
    at 3, every histogram with half its observations within 1 s and all within 2 s. Each recorded series of
    SIGNAL_RECORDS equals that where the engine has the signal and is absent where it has not; the error and
    abort ratios come from the engine's outcome labels or failure counter."""
    inputs: Series = []
    checks: list[dict[str, Any]] = []
    for d in plan.deployments:
        engine = d.engine
        lab = engine_labels(d)
        for name, metric in engine.metrics.signals.items():
            if metric.kind == "counter":
                ok = OUTCOME_LABELS.get(engine.name, ("", None))[0] if name == "requests_finished" else ""
                inputs.append(series(metric.sample(), ",".join(filter(None, (lab, ok))), "0+6000x60"))
            elif metric.kind == "gauge":
                inputs.append(series(metric.sample(), lab, "3x60"))
            else:
                inputs += [series(metric.sample("bucket"), f'{lab},le="{le}"', values)
                           for le, values in (("1", "0+50x60"), ("2", "0+100x60"), ("+Inf", "0+100x60"))]
        for name, template in SIGNAL_RECORDS.items():
            metric = engine.metrics.signals.get(name)
            record = template.format(q="p50")
            value = {None: None, "counter": 100, "gauge": 3, "histogram": 1}[metric.kind if metric else None]
            selector = f'{record}{{deployment="{d.deployment.name}"}}'
            checks.append({"expr": selector, "eval_time": "30m",
                           "exp_samples": [] if value is None else [{"labels": selector, "value": value}]})
        outcomes = engine.metrics.outcomes
        errors = f'deployment:engine_request_errors:ratio_rate5m{{deployment="{d.deployment.name}"}}'
        aborts = f'deployment:engine_request_aborts:ratio_rate5m{{deployment="{d.deployment.name}"}}'
        if engine.name == "tgi":  # 6000 successes/min, 60 engine failures, 60 validation failures (the client's)
            assert outcomes is not None and outcomes.failures is not None
            inputs += [series(outcomes.failures.sample(), f'{lab},err="generation"', "0+60x60"),
                       series(outcomes.failures.sample(), f'{lab},err="validation"', "0+60x60")]
            checks += [{"expr": errors, "eval_time": "30m", "exp_samples": [{"labels": errors, "value": 1 / 102}]},
                       # no dropped request yet: 0, not "no data"
                       {"expr": aborts, "eval_time": "30m", "exp_samples": [{"labels": aborts, "value": 0}]}]
        elif engine.name == "trtllm":  # cancelled streams are aborts; no error label: no engine error series
            finished_metric = engine.metrics.signals["requests_finished"]
            inputs.append(series(finished_metric.sample(), f'{lab},finished_reason="cancelled"', "0+1500x60"))
            requests = f'deployment:engine_requests:rate5m{{deployment="{d.deployment.name}"}}'
            [check] = [c for c in checks if c["expr"] == requests]
            check["exp_samples"] = [{"labels": requests, "value": 125}]  # 100/s stopped + 25/s cancelled
            checks += [{"expr": errors, "eval_time": "30m", "exp_samples": []},
                       {"expr": aborts, "eval_time": "30m", "exp_samples": [{"labels": aborts, "value": 0.2}]}]
        elif outcomes is None:
            checks.append({"expr": errors, "eval_time": "30m", "exp_samples": []})
    return [{"name": "recording rules per engine", "interval": "1m", "input_series": inputs,
             "promql_expr_test": checks}]


def engine_labelled(plan: FleetPlan, tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The expected samples of series an engine's rules record carry that engine (the rules' static label)."""
    engine_records = {rule["record"] for group in rules_document(plan)["groups"]
                      if group["name"].startswith("gpufleet-engine-") for rule in group["rules"]}
    engines = {d.deployment.name: d.profile.engine for d in plan.deployments}
    for test in tests:
        for check in test.get("promql_expr_test", []):
            for sample in check["exp_samples"]:
                name, _, rest = sample["labels"].partition("{")
                deployment = re.search(r'deployment="([^"]+)"', rest)
                if name in engine_records and deployment and 'inference_engine="' not in rest:
                    engine = engines[deployment.group(1)]
                    sample["labels"] = f'{name}{{{rest.rstrip("}")},inference_engine="{engine}"}}'
    return tests


def run_unit_tests(plan: FleetPlan, rules_yaml: str, alerts: list[dict[str, Any]], extra: list[dict[str, Any]],
                   tmp_path: Path) -> None:
    tests = engine_labelled(plan, unit_tests(plan, alerts) + extra)
    assert len(tests) >= 2 * len(alerts) + len(extra)
    tmp_path.mkdir(exist_ok=True)
    rules = tmp_path / "gpufleet.rules.yaml"
    rules.write_text(rules_yaml, encoding="utf-8")
    spec = tmp_path / "gpufleet.rules.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False), encoding="utf-8")
    result = run_promtool("test", "rules", str(spec), timeout=UNIT_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]


def test_promtool_unit_tests_every_alert(tmp_path: Path) -> None:
    alerts = [r for r in rules_of("prod") if "alert" in r]
    run_unit_tests(plan_for("prod"), rules_text("prod"), alerts, recording_tests(plan_for("prod")), tmp_path)


def belongs_elsewhere(group: dict[str, Any], d: DeploymentPlan) -> bool:
    """Every rule of ``group`` is labelled with another deployment (its alerts) or another engine (its records)."""
    def other(labels: dict[str, str]) -> bool:
        return (labels.get("deployment", d.deployment.name) != d.deployment.name
                or labels.get(ENGINE_LABEL, d.profile.engine) != d.profile.engine)
    return all(other(rule.get("labels", {})) for rule in group["rules"])


def test_promtool_unit_tests_every_alert_of_every_engine(tmp_path: Path) -> None:
    """The mixed fleet's rule file: every alert of each engine's deployment fires and stays quiet on that engine's
    own metric names (or on the LB's series where the engine has no signal), and every engine's recorded series;
    then the fleet-wide alerts on the whole file. A deployment's tests run on the file less the groups of other
    deployments and engines (Prometheus evaluates groups independently): promtool evaluates every group at
    every step of every test, so the whole file for each of ~200 tests took 60-90 s. One deployment per engine:
    prod's other vLLM deployments are tested on prod's file above."""
    plan, text = plan_for(MIXED), rules_text(MIXED)
    groups = yaml.safe_load(text)["groups"]
    first_per_engine: dict[str, DeploymentPlan] = {}
    for d in plan.deployments:
        first_per_engine.setdefault(d.profile.engine, d)
    tested = set()
    for engine, d in first_per_engine.items():
        own_groups = [g for g in groups if not belongs_elsewhere(g, d)]
        alerts = [r for g in own_groups for r in g["rules"]
                  if "alert" in r and r["labels"].get("deployment") == d.deployment.name]
        alone = dataclasses.replace(plan, deployments=[d])
        run_unit_tests(alone, yaml.safe_dump({"groups": own_groups}, sort_keys=False), alerts,
                       engine_recording_tests(alone), tmp_path / d.deployment.name)
        if alerts:
            tested.add(engine)
    assert tested == set(ENGINES)
    fleet_alerts = [r for g in groups for r in g["rules"] if "alert" in r and "deployment" not in r["labels"]]
    assert fleet_alerts
    run_unit_tests(plan, text, fleet_alerts, [], tmp_path / "fleet")

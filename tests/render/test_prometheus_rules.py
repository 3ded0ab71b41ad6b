"""Prometheus rules: `promtool check rules` on every example stack, and `promtool test rules` with a firing and
a non-firing case for every alert of the prod stack, generated here from the plan (thresholds come from the
plan, not from the rendered text), plus expression tests of the recording rules.

promtool is required (scripts/install-system-deps.sh installs Debian's `prometheus`): a missing tool is a
failure, never a skip, in CI and locally.
"""

from __future__ import annotations

import csv
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan.optimize import DeploymentPlan, FleetPlan, plan_stack
from infra.render.prometheus_rules import (
    ERROR_BUDGET,
    FAST_BURN,
    RULES_PATH,
    SLOW_BURN,
    render_prometheus_rules,
)
from infra.render.stack import render_fleet
from infra.render.telemetry import NGINX_RESPONSES, NGINX_UPSTREAM_SECONDS
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["dev", "staging", "prod", "onprem-a800"]
METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
TIMEOUT_S = 60


def require_promtool() -> str:
    return require_tool("promtool")  # apt: prometheus


@cache
def plan_for(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def rules_text(stack: str) -> str:
    [artifact] = render_prometheus_rules(plan_for(stack))
    return artifact.content


def rules_of(stack: str) -> list[dict[str, Any]]:
    doc = yaml.safe_load(rules_text(stack))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_promtool(), *args], check=False, capture_output=True, text=True, timeout=TIMEOUT_S)


# -- static checks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
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


@pytest.mark.parametrize("stack", STACKS)
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
    for d in plan.deployments:  # every deployment gets its SLO alerts
        no_e2e = {"GpufleetE2eP95AboveSlo"} if d.deployment.slo.e2e_p95_ms is None else set()
        expected = set(DEPLOYMENT_SCENARIOS) - no_e2e
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


def vllm_labels(d: DeploymentPlan, replica: int = 0) -> str:
    name = d.deployment.name
    return (f'job="engine",deployment="{name}",instance="{name}-{replica}:8000",'
            f'model_name="{d.profile.resolved_served_name}",engine="0"')


def series(metric: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{metric}{{{labels}}}", "values": values}


def latency(family: str, slo_s: float) -> Callable[[DeploymentPlan], Scenario]:
    """Observations all in (slo/2, 2·slo] put p95 at ~1.9·slo; all in (0, slo/2] at ~0.48·slo."""
    def make(d: DeploymentPlan) -> Scenario:
        low, high = repr(slo_s / 2), repr(slo_s * 2)

        def case(slow: bool) -> Series:
            lab = vllm_labels(d)
            return [series(f"{family}_bucket", f'{lab},le="{low}"', "0x60" if slow else "0+10x60"),
                    series(f"{family}_bucket", f'{lab},le="{high}"', "0+10x60"),
                    series(f"{family}_bucket", f'{lab},le="+Inf"', "0+10x60")]
        return Scenario(Case(case(True), "30m", [{}]), Case(case(False), "30m", []))
    return make


def outcomes(d: DeploymentPlan, error_share: float) -> Series:
    per_min = 100
    errors = error_share * per_min
    return [series("vllm:request_success_total", vllm_labels(d) + ',finished_reason="stop"',
                   f"0+{per_min - errors!r}x60"),
            series("vllm:request_success_total", vllm_labels(d) + ',finished_reason="error"', f"0+{errors!r}x60")]


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
                    more=(  # 502s that never reached vLLM burn budget; client errors (429) do not
                        Case(outcomes(d, 0) + responses(d, threshold * 1.4, "502"), "30m", [{}]),
                        Case(outcomes(d, 0) + responses(d, 0.5, "429"), "30m", [])))


def slow_burn(d: DeploymentPlan) -> Scenario:
    threshold = SLOW_BURN * ERROR_BUDGET
    return Scenario(Case(outcomes(d, threshold * 1.5), "40m", [{}]),
                    Case(outcomes(d, threshold * 0.5), "40m", []))


def queue_kv(d: DeploymentPlan) -> Scenario:
    def case(kv: str) -> Series:
        return [series("vllm:num_requests_waiting", vllm_labels(d), "0+1x60"),
                series("vllm:kv_cache_usage_perc", vllm_labels(d), f"{kv}x60")]
    return Scenario(Case(case("0.97"), "30m", [{}]), Case(case("0.5"), "30m", []))


def preemptions(d: DeploymentPlan) -> Scenario:
    return Scenario(Case([series("vllm:num_preemptions_total", vllm_labels(d), "0+1x60")], "30m", [{}]),
                    Case([series("vllm:num_preemptions_total", vllm_labels(d), "0x60")], "30m", []))


def up_series(d: DeploymentPlan, r0: str, r1: str) -> Series:
    return [series("up", vllm_labels(d, 0).split(",model_name")[0], f"{r0}x60"),
            series("up", vllm_labels(d, 1).split(",model_name")[0], f"{r1}x60")]


def backend_down(d: DeploymentPlan) -> Scenario:
    down = {"job": "engine", "instance": f"{d.deployment.name}-0:8000"}
    return Scenario(Case(up_series(d, "0", "1"), "30m", [down]), Case(up_series(d, "1", "1"), "30m", []))


def all_down(d: DeploymentPlan) -> Scenario:
    return Scenario(Case(up_series(d, "0", "0"), "30m", [{}]), Case(up_series(d, "0", "1"), "30m", []),
                    more=(Case([], "30m", [{}]),))  # no target discovered at all: absent()


def load_above(d: DeploymentPlan) -> Scenario:
    assert d.chosen is not None
    capacity = d.chosen.target_qps_per_replica * d.chosen.replicas

    def case(factor: float) -> Series:
        per_min = round(capacity * factor * 60, 3)
        return [series("vllm:request_success_total", vllm_labels(d) + ',finished_reason="stop"',
                       f"0+{per_min!r}x60")]
    return Scenario(Case(case(1.5), "40m", [{}]), Case(case(0.5), "40m", []))


def e2e_latency(d: DeploymentPlan) -> Scenario:
    assert d.deployment.slo.e2e_p95_ms is not None
    return latency("vllm:e2e_request_latency_seconds", d.deployment.slo.e2e_p95_ms / 1000)(d)


DEPLOYMENT_SCENARIOS: dict[str, Callable[[DeploymentPlan], Scenario]] = {
    "GpufleetE2eP95AboveSlo": e2e_latency,  # only for deployments whose SLO sets e2eP95Ms
    "GpufleetTtftP95AboveSlo": lambda d: latency("vllm:time_to_first_token_seconds",
                                                 d.deployment.slo.ttft_p95_ms / 1000)(d),
    "GpufleetTpotP95AboveSlo": lambda d: latency("vllm:inter_token_latency_seconds",
                                                 d.deployment.slo.tpot_p95_ms / 1000)(d),
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
    lab = vllm_labels(d)
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


def test_promtool_unit_tests_every_alert(tmp_path: Path) -> None:
    plan = plan_for("prod")
    rules = tmp_path / "gpufleet.rules.yaml"
    rules.write_text(rules_text("prod"), encoding="utf-8")
    alerts = [r for r in rules_of("prod") if "alert" in r]
    tests = unit_tests(plan, alerts) + recording_tests(plan)
    assert len(tests) >= 2 * len(alerts) + 1
    spec = tmp_path / "gpufleet.rules.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False), encoding="utf-8")
    result = run_promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]

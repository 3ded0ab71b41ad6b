"""prometheus.yml and the EKS monitors: `promtool check config` on the rendered config together with the
rules and file_sd files written the way provisioning writes them; the job and label contract between the
scrape config and the rules; the prometheus-operator objects of the EKS stack."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan.optimize import FleetPlan, plan_stack
from infra.render.prometheus_config import (
    POD_MONITORS_PATH,
    PROMETHEUS_RULE_PATH,
    SERVICE_MONITORS_PATH,
    PrometheusLayout,
    dcgm_targets,
    deployment_labels,
    host_targets,
    render_prometheus_config,
    targets_file,
    vllm_targets,
)
from infra.render.prometheus_rules import RULES_PATH, render_prometheus_rules, rules_document
from infra.render.telemetry import DCGM_JOB, ENGINE_JOB, NGINX_JOB, NGINX_LOG_JOB, NODE_JOB
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
HOST_STACKS = ["dev", "staging", "onprem-a800", "engines"]
TIMEOUT_S = 60


@cache
def plan_for(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], check=False, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def install(plan: FleetPlan, root: Path) -> Path:
    """Lay out the monitoring host's files as provisioning does: config, rules, and file_sd files for two
    replicas per deployment, one LB and the GPU hosts."""
    layout = PrometheusLayout(config_dir=str(root))
    [config] = render_prometheus_config(plan, layout)
    (root / "prometheus.yml").write_text(config.content, encoding="utf-8")
    [rules] = render_prometheus_rules(plan)
    (root / "rules").mkdir()
    (root / "rules" / Path(RULES_PATH).name).write_text(rules.content, encoding="utf-8")
    targets = root / "targets"
    targets.mkdir()
    for index, d in enumerate(plan.deployments):
        hosts = [f"10.0.{index}.1", f"10.0.{index}.2:8001"]
        (targets / targets_file(ENGINE_JOB, d.deployment.name)).write_text(vllm_targets(d, hosts), encoding="utf-8")
        (targets / targets_file(DCGM_JOB, d.deployment.name)).write_text(dcgm_targets(d, hosts[:1]),
                                                                          encoding="utf-8")
    for job in (NGINX_JOB, NGINX_LOG_JOB):
        (targets / targets_file(job)).write_text(host_targets(job, ["10.0.9.1"]), encoding="utf-8")
    (targets / targets_file(NODE_JOB)).write_text(host_targets(NODE_JOB, ["10.0.9.1", "10.0.0.1"]),
                                                  encoding="utf-8")
    return root / "prometheus.yml"


@pytest.mark.parametrize("stack", HOST_STACKS)
def test_promtool_check_config(stack: str, tmp_path: Path) -> None:
    config = install(plan_for(stack), tmp_path)
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(group["rules"]) for group in rules_document(plan_for(stack))["groups"])
    assert "SUCCESS: 1 rule files found" in result.stdout  # the rules glob found the file ...
    assert f"SUCCESS: {rules} rules found" in result.stdout  # ... and promtool checked every rule in it


def test_promtool_rejects_a_broken_targets_file(tmp_path: Path) -> None:
    """The check is real: a file_sd file that is not a list of target groups fails it."""
    config = install(plan_for("staging"), tmp_path)
    (tmp_path / "targets" / targets_file(NODE_JOB)).write_text('{"targets": "10.0.0.1:9100"}', encoding="utf-8")
    assert promtool("check", "config", str(config)).returncode != 0


def jobs_in_rules(plan: FleetPlan) -> set[str]:
    exprs = [rule["expr"] for group in rules_document(plan)["groups"] for rule in group["rules"]]
    return {job for expr in exprs for job in re.findall(r'job="([^"]+)"', expr)}


@pytest.mark.parametrize("stack", HOST_STACKS)
def test_every_job_the_rules_read_is_scraped(stack: str, tmp_path: Path) -> None:
    plan = plan_for(stack)
    config = yaml.safe_load(render_prometheus_config(plan, PrometheusLayout(config_dir=str(tmp_path)))[0].content)
    scraped = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs_in_rules(plan) <= scraped
    assert {ENGINE_JOB, NGINX_JOB, NGINX_LOG_JOB, NODE_JOB, DCGM_JOB} <= scraped
    assert config["global"]["external_labels"] == {"stack": stack}
    assert config["rule_files"] == [f"{tmp_path}/rules/*.yaml"]


def test_file_sd_labels_come_from_the_plan() -> None:
    plan = plan_for("onprem-a800")
    d = plan.deployments[0]
    assert d.chosen is not None
    [group] = json.loads(vllm_targets(d, ["gpu-a800-01", "gpu-a800-01:8001", "gpu-a800-01"]))
    assert group["targets"] == ["gpu-a800-01:8000", "gpu-a800-01:8001"]  # sorted, deduplicated, default port
    assert group["labels"] == {"deployment": d.deployment.name, "model": d.profile.resolved_served_name,
                               "inference_engine": "vllm", "gpu_type": d.chosen.config.gpu.name,
                               "instance_type": d.chosen.machine.instance.name,
                               "tensor_parallel": str(d.chosen.config.tp)}
    assert json.loads(host_targets(NODE_JOB, [])) == []  # no host yet: an empty, valid file


def exporter_labels() -> set[str]:
    """Labels the exporters put on their own series: a target label of the same name would overwrite them."""
    with METRICS_TSV.open(encoding="utf-8") as f:
        vllm = {label for row in csv.DictReader(f, delimiter="\t") for label in row["labels"].split(",")}
    dcgm = {"gpu", "UUID", "device", "modelName", "Hostname", "pci_bus_id", "DCGM_FI_DRIVER_VERSION"}
    return vllm | dcgm | {"le", "quantile"}


@pytest.mark.parametrize("stack", [*HOST_STACKS, "prod"])
def test_target_labels_never_overwrite_an_exporter_label(stack: str) -> None:
    for d in plan_for(stack).deployments:
        assert not set(deployment_labels(d)) & exporter_labels()


# -- EKS ---------------------------------------------------------------------------------------------------

def eks_documents() -> dict[str, list[dict[str, Any]]]:
    return {a.path: list(yaml.safe_load_all(a.content)) for a in render_prometheus_config(plan_for("prod"))}


def snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), key)


def relabel_config(relabeling: dict[str, Any]) -> dict[str, Any]:
    return {snake(key): value for key, value in relabeling.items()}


def test_eks_renders_monitors_instead_of_a_config() -> None:
    docs = eks_documents()
    assert set(docs) == {SERVICE_MONITORS_PATH, POD_MONITORS_PATH, PROMETHEUS_RULE_PATH}
    plan = plan_for("prod")
    monitors = docs[SERVICE_MONITORS_PATH]
    assert sorted(m["spec"]["selector"]["matchLabels"]["gpufleet.dev/deployment"] for m in monitors) == sorted(
        d.deployment.name for d in plan.deployments)
    for doc in (d for docs_ in docs.values() for d in docs_):
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # the operator's selector
    assert docs[PROMETHEUS_RULE_PATH][0]["spec"] == rules_document(plan)


def test_eks_relabelings_are_valid_prometheus_relabel_configs(tmp_path: Path) -> None:
    """The operator copies relabelings into Prometheus' config: promtool checks them there."""
    docs = eks_documents()
    endpoints = [e for m in docs[SERVICE_MONITORS_PATH] for e in m["spec"]["endpoints"]]
    endpoints += [e for m in docs[POD_MONITORS_PATH] for e in m["spec"]["podMetricsEndpoints"]]
    jobs = [{"job_name": f"endpoint-{i}", "static_configs": [{"targets": ["127.0.0.1:1"]}],
             "relabel_configs": [relabel_config(r) for r in e.get("relabelings", [])],
             "metric_relabel_configs": [relabel_config(r) for r in e.get("metricRelabelings", [])]}
            for i, e in enumerate(endpoints)]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}), encoding="utf-8")
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(docs[PROMETHEUS_RULE_PATH][0]["spec"]), encoding="utf-8")
    assert promtool("check", "rules", str(rules)).returncode == 0


def test_eks_jobs_match_the_rules() -> None:
    docs = eks_documents()
    endpoints = [e for m in docs[SERVICE_MONITORS_PATH] for e in m["spec"]["endpoints"]]
    endpoints += [e for m in docs[POD_MONITORS_PATH] for e in m["spec"]["podMetricsEndpoints"]]
    jobs = {r["replacement"] for e in endpoints for r in e["relabelings"] if r["targetLabel"] == "job"}
    assert jobs_in_rules(plan_for("prod")) <= jobs | {NODE_JOB}  # node-exporter: kube-prometheus-stack's own


def test_eks_dcgm_series_get_the_deployment_of_the_pod_using_the_gpu() -> None:
    [dcgm] = [m for m in eks_documents()[POD_MONITORS_PATH] if m["metadata"]["name"] == "gpufleet-dcgm"]
    [rule] = dcgm["spec"]["podMetricsEndpoints"][0]["metricRelabelings"]
    regex = re.compile(rule["regex"])  # Prometheus anchors relabel regexes, as fullmatch does
    match = regex.fullmatch("gpufleet;gpufleet-vllm-chat-70b-5d9f8c7b6-x2k4p")
    assert match is not None and match.group(1) == "chat-70b"
    assert regex.fullmatch("kube-system;gpufleet-vllm-chat-70b-5d9f8c7b6-x2k4p") is None
    assert regex.fullmatch("gpufleet;gpufleet-lb-5d9f8c7b6-x2k4p") is None

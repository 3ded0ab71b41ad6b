"""How Prometheus finds what to scrape (kind ``prometheus-config`` and, on EKS, ``k8s-manifest``).

EC2 and on-prem — rendered file: ``prometheus/prometheus.yml`` (installed as
``/etc/gpufleet/prometheus/prometheus.yml`` on the monitoring host, with the rules of
:mod:`infra.render.prometheus_rules` under ``rules/``). Every job reads file_sd files:

- ``targets/engine-<deployment>.json`` — the deployment's replicas (``host:port``, port = 8000 + slot);
- ``targets/nginx.json`` and ``targets/nginx-log.json`` — each LB host's prometheus-nginx-exporter (9113)
  and mtail (3903);
- ``targets/node.json`` — every host's node_exporter (9100);
- ``targets/dcgm-<deployment>.json`` — each GPU host's dcgm-exporter (9400), by the deployment it serves.

Written at deploy time, never rendered, exactly like the Nginx upstream files (infra/render/nginx.py): the
provisioning step that knows the addresses (the Ansible role from the inventory on-prem; on EC2 the step
that tracks each Auto Scaling group's instances and also rewrites the Nginx upstreams) writes them with
:func:`file_sd_document`, so Nginx and Prometheus always see the same replicas. The plan supplies every
label; Prometheus re-reads the files on change, no reload needed. The jobs and labels are the contract of
:mod:`infra.render.telemetry`.

EKS — kube-prometheus-stack discovers targets itself: rendered ``k8s/monitoring/servicemonitors.yaml``
(vLLM Services), ``k8s/monitoring/podmonitors.yaml`` (the LB's exporter and mtail sidecars, dcgm-exporter)
and ``k8s/monitoring/prometheus-rules.yaml`` (the same rules as a PrometheusRule). Relabelings give the
series the same ``job`` and ``deployment`` labels as on the other targets, so rules and dashboards are
identical everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from infra.catalog import load_catalog
from infra.hostagent.formats import file_sd
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONFIG_DIR, VLLM_PORT
from infra.render.prometheus_rules import rules_document
from infra.render.telemetry import (
    ALERTMANAGER_PORT,
    DCGM_EXPORTER_PORT,
    DCGM_JOB,
    DEPLOYMENT_LABEL,
    ENGINE_JOB,
    ENGINE_LABEL,
    K8S_APP_LABEL,
    K8S_DEPLOYMENT_LABEL,
    K8S_MONITORING_NAMESPACE,
    K8S_NAMESPACE,
    K8S_PROMETHEUS_RELEASE,
    K8S_VLLM_PORT_NAME,
    MODEL_LABEL,
    MTAIL_PORT,
    NGINX_EXPORTER_PORT,
    NGINX_JOB,
    NGINX_LOG_JOB,
    NODE_EXPORTER_PORT,
    NODE_JOB,
    PROMETHEUS_PORT,
)
from infra.render.templating import render_template

CONFIG_PATH = "prometheus/prometheus.yml"
SERVICE_MONITORS_PATH = "k8s/monitoring/servicemonitors.yaml"
POD_MONITORS_PATH = "k8s/monitoring/podmonitors.yaml"
PROMETHEUS_RULE_PATH = "k8s/monitoring/prometheus-rules.yaml"

# Kubernetes names the EKS target (issue: Pulumi targets) gives its objects; the monitors select them.
K8S_VLLM_APP = "vllm"
K8S_LB_APP = "gpufleet-lb"
K8S_DCGM_APP = "dcgm-exporter"  # the label NVIDIA's dcgm-exporter Helm chart puts on its pods
K8S_LB_EXPORTER_PORT = "nginx-metrics"
K8S_LB_MTAIL_PORT = "mtail-metrics"
K8S_DCGM_PORT = "metrics"  # dcgm-exporter chart's container port name


@dataclass(frozen=True)
class PrometheusLayout:
    """Where Prometheus' files live and how often it works. The defaults are the monitoring host; tests
    render the same plan with a temporary directory and loopback ports."""

    config_dir: str = f"{CONFIG_DIR}/prometheus"
    scrape_interval: str = "15s"
    scrape_timeout: str = "10s"  # vLLM renders /metrics in its API process: allow a busy one time to answer
    evaluation_interval: str = "15s"
    alertmanager: str = f"127.0.0.1:{ALERTMANAGER_PORT}"  # Alertmanager runs beside Prometheus
    prometheus: str = f"127.0.0.1:{PROMETHEUS_PORT}"

    @property
    def rules_dir(self) -> str:
        return f"{self.config_dir}/rules"

    @property
    def targets_dir(self) -> str:
        return f"{self.config_dir}/targets"


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    comment: str
    file_glob: str = ""
    static: str = ""
    metrics_path: str = "/metrics"
    relabel_configs: tuple[dict[str, Any], ...] = ()


def engine_relabelings() -> tuple[dict[str, Any], ...]:
    """Per engine (target label inference_engine): its metrics path where it is not /metrics, and no scrape
    at all for an engine without a Prometheus endpoint (Ollama), whose replicas the discovery still lists."""
    rules: list[dict[str, Any]] = []
    for name, engine in sorted(load_catalog().engines.items()):
        match = {"source_labels": [ENGINE_LABEL], "regex": name}
        if engine.metrics.path is None:
            rules.append({**match, "action": "drop"})
        elif engine.metrics.path != "/metrics":
            rules.append({**match, "target_label": "__metrics_path__", "replacement": engine.metrics.path})
    return tuple(rules)


def scrape_jobs(layout: PrometheusLayout) -> list[ScrapeJob]:
    return [
        ScrapeJob(ENGINE_JOB, "Engine replicas (vLLM, SGLang, ...): metrics stay open where the engine checks a key.",
                  file_glob=f"{ENGINE_JOB}-*.json",
                  relabel_configs=engine_relabelings()),
        ScrapeJob(NGINX_JOB, "prometheus-nginx-exporter on each LB host, reading stub_status on loopback.",
                  file_glob=f"{NGINX_JOB}.json"),
        ScrapeJob(NGINX_LOG_JOB, "mtail on each LB host: status codes and upstream times from the access log.",
                  file_glob=f"{NGINX_LOG_JOB}.json"),
        ScrapeJob(NODE_JOB, "node_exporter on every host.", file_glob=f"{NODE_JOB}.json"),
        ScrapeJob(DCGM_JOB, "dcgm-exporter on every GPU host: utilisation, memory, power, temperature, XID.",
                  file_glob=f"{DCGM_JOB}-*.json"),
        ScrapeJob("prometheus", "Prometheus itself (rule evaluation failures, TSDB).", static=layout.prometheus),
        ScrapeJob("alertmanager", "Alertmanager: failed notifications.", static=layout.alertmanager),
    ]


def render_prometheus_config(plan: FleetPlan, layout: PrometheusLayout | None = None) -> list[Artifact]:
    """prometheus.yml on EC2 and on-prem; the prometheus-operator objects on EKS."""
    if plan.spec.target == "eks":
        return render_kubernetes_monitors(plan)
    return [render_prometheus_yml(plan, layout)]


def render_prometheus_yml(plan: FleetPlan, layout: PrometheusLayout | None = None) -> Artifact:
    """The monitoring host's config (any target: the loopback fleet runs it for an EKS stack too)."""
    layout = layout or PrometheusLayout()
    text = render_template("prometheus/prometheus.yml.j2", stack=plan.stack, layout=layout,
                           jobs=scrape_jobs(layout))
    return Artifact(CONFIG_PATH, "prometheus-config", None, text)


# -- file_sd, written at deploy time ----------------------------------------------------------------------

def targets_file(job: str, deployment: str | None = None) -> str:
    """The file_sd file name of a job (per deployment for vLLM and DCGM), relative to targets_dir."""
    if job in (ENGINE_JOB, DCGM_JOB):
        if deployment is None:
            raise ValueError(f"job {job} has one targets file per deployment")
        return f"{job}-{deployment}.json"
    return f"{job}.json"


def deployment_labels(plan: DeploymentPlan) -> dict[str, str]:
    """Target labels of everything that belongs to one deployment (from the plan)."""
    assert plan.chosen is not None
    return {
        DEPLOYMENT_LABEL: plan.deployment.name,
        MODEL_LABEL: plan.profile.resolved_served_name,
        ENGINE_LABEL: plan.profile.engine,
        # Not `gpu`: dcgm-exporter labels each series with gpu=<index>, and a target label of the same name
        # would overwrite it (the index moves to exported_gpu and alerts no longer say which GPU).
        "gpu_type": plan.chosen.config.gpu.name,
        "instance_type": plan.chosen.machine.instance.name,
        "tensor_parallel": str(plan.chosen.config.tp),
    }


def file_sd_document(targets: Iterable[str], labels: dict[str, str], port: int) -> str:
    """The content of a file_sd JSON file: `targets` are host names or IPs ("host:port" keeps its port).
    The format is infra/hostagent/formats.py's, which the discovery agent of the cloud targets writes too."""
    return file_sd(targets, labels, port)


def vllm_targets(plan: DeploymentPlan, replicas: Iterable[str]) -> str:
    """file_sd for a deployment's replicas ("host:port" per slot, or bare hosts for slot 0)."""
    return file_sd_document(replicas, deployment_labels(plan), VLLM_PORT)


def dcgm_targets(plan: DeploymentPlan, hosts: Iterable[str]) -> str:
    return file_sd_document(hosts, deployment_labels(plan), DCGM_EXPORTER_PORT)


def host_targets(job: str, hosts: Iterable[str]) -> str:
    """file_sd for the per-host exporters without a deployment (nginx, nginx-log, node)."""
    ports = {NGINX_JOB: NGINX_EXPORTER_PORT, NGINX_LOG_JOB: MTAIL_PORT, NODE_JOB: NODE_EXPORTER_PORT}
    return file_sd_document(hosts, {}, ports[job])


# -- EKS: prometheus-operator objects ----------------------------------------------------------------------

def _metadata(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": K8S_MONITORING_NAMESPACE,
            "labels": {"release": K8S_PROMETHEUS_RELEASE, "app.kubernetes.io/part-of": "gpufleet"}}


def _set_label(label: str, value: str) -> dict[str, Any]:
    return {"action": "replace", "targetLabel": label, "replacement": value}


def service_monitor(plan: DeploymentPlan) -> dict[str, Any]:
    """Engine replicas of one deployment: its Service (labels app=vllm, deployment=<name>), port `http`, the
    engine's metrics path."""
    name = plan.deployment.name
    labels = deployment_labels(plan)
    path = plan.engine.metrics.path
    assert path is not None  # render_kubernetes_monitors leaves out engines without metrics
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(f"gpufleet-vllm-{name}"),
        "spec": {
            "namespaceSelector": {"matchNames": [K8S_NAMESPACE]},
            "selector": {"matchLabels": {K8S_APP_LABEL: K8S_VLLM_APP, K8S_DEPLOYMENT_LABEL: name}},
            "endpoints": [{
                "port": K8S_VLLM_PORT_NAME,
                "path": path,
                "interval": "15s",
                # The operator names the job after the Service; the rules expect job="engine".
                "relabelings": [_set_label("job", ENGINE_JOB),
                                *(_set_label(key, value) for key, value in sorted(labels.items()))],
            }],
        },
    }


def pod_monitors(plans: Sequence[DeploymentPlan]) -> list[dict[str, Any]]:
    lb = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata("gpufleet-lb"),
        "spec": {
            "namespaceSelector": {"matchNames": [K8S_NAMESPACE]},
            "selector": {"matchLabels": {K8S_APP_LABEL: K8S_LB_APP}},
            "podMetricsEndpoints": [
                {"port": K8S_LB_EXPORTER_PORT, "interval": "15s", "relabelings": [_set_label("job", NGINX_JOB)]},
                {"port": K8S_LB_MTAIL_PORT, "interval": "15s", "relabelings": [_set_label("job", NGINX_LOG_JOB)]},
            ],
        },
    }
    # dcgm-exporter (DaemonSet on GPU nodes) labels each GPU's series with the pod using it (namespace, pod);
    # vLLM pods are named gpufleet-vllm-<deployment>-<replicaset hash>-<pod hash>.
    deployments = "|".join(sorted(p.deployment.name for p in plans))
    dcgm = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata("gpufleet-dcgm"),
        "spec": {
            "namespaceSelector": {"any": True},
            "selector": {"matchLabels": {K8S_APP_LABEL: K8S_DCGM_APP}},
            "podMetricsEndpoints": [{
                "port": K8S_DCGM_PORT,
                "interval": "15s",
                # The exporter's pod/namespace labels name the GPU's user, not the exporter: keep them.
                "honorLabels": True,
                "relabelings": [_set_label("job", DCGM_JOB)],
                "metricRelabelings": [{
                    "action": "replace",
                    "sourceLabels": ["namespace", "pod"],
                    "regex": f"{K8S_NAMESPACE};gpufleet-vllm-({deployments})-[a-z0-9]+-[a-z0-9]+",
                    "targetLabel": DEPLOYMENT_LABEL,
                    "replacement": "$1",
                }],
            }],
        },
    }
    return [lb, dcgm]


def prometheus_rule(plan: FleetPlan) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _metadata(f"gpufleet-{plan.stack}"),
        "spec": rules_document(plan),
    }


class _K8sDumper(yaml.SafeDumper):
    pass


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Scripts and config files inside manifests stay readable in a review: block literals, not folded quotes.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_K8sDumper.add_representer(str, _literal)


def k8s_documents(docs: Iterable[dict[str, Any]], stack: str) -> str:
    header = f"# Generated by gpufleet from stack {stack}: do not edit.\n"
    return header + yaml.dump_all(list(docs), Dumper=_K8sDumper, sort_keys=False, width=120, explicit_start=True)


def has_metrics(plan: DeploymentPlan) -> bool:
    return plan.engine.metrics.path is not None


def render_kubernetes_monitors(plan: FleetPlan) -> list[Artifact]:
    planned = [d for d in plan.deployments if d.chosen is not None]
    return [
        Artifact(SERVICE_MONITORS_PATH, "k8s-manifest", None,
                 k8s_documents((service_monitor(d) for d in planned if has_metrics(d)), plan.stack)),
        Artifact(POD_MONITORS_PATH, "k8s-manifest", None, k8s_documents(pod_monitors(planned), plan.stack)),
        Artifact(PROMETHEUS_RULE_PATH, "k8s-manifest", None, k8s_documents([prometheus_rule(plan)], plan.stack)),
    ]

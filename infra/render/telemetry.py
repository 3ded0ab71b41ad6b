"""The monitoring contract: scrape jobs, exporter ports, target labels and metric names.

One place that the scrape config (``prometheus_config``), the rules (``prometheus_rules``), the dashboards
(``dashboards``), the Alertmanager routes, the mtail program and the tests all import, so a job or label
renamed here is renamed everywhere.

Every scraped series carries the target label ``deployment`` where it belongs to one deployment (engine
replicas always; GPU hosts when dedicated to one deployment), and Prometheus adds the external label
``stack``. Engine replicas also carry ``inference_engine`` (vllm, sglang, ...). vLLM itself adds
``model_name`` (the served model name) and ``engine``; SGLang adds ``model_name``.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- jobs ---------------------------------------------------------------------------------------------------
ENGINE_JOB = "engine"  # every inference-engine replica's metrics (vLLM, SGLang, ...; path per engine)
NGINX_JOB = "nginx"  # Debian prometheus-nginx-exporter reading the LB's stub_status
NGINX_LOG_JOB = "nginx-log"  # mtail reading the LB's JSON access log: status codes and upstream times
NODE_JOB = "node"  # prometheus-node-exporter on every host
DCGM_JOB = "dcgm"  # NVIDIA dcgm-exporter on every GPU host

# -- target labels ------------------------------------------------------------------------------------------
DEPLOYMENT_LABEL = "deployment"
MODEL_LABEL = "model"  # the served model name, also on GPU-host targets, for the dashboards' model variable
# The engine (a key of engines.yaml) on every engine target. Not `engine`: vLLM labels its own series with
# `engine` (the engine core's index), which a target label of that name would overwrite.
ENGINE_LABEL = "inference_engine"

# -- exporter ports (each exporter's own default, so a stock install matches) --------------------------------
NGINX_EXPORTER_PORT = 9113  # prometheus-nginx-exporter -web.listen-address default
MTAIL_PORT = 3903  # mtail -port default
NODE_EXPORTER_PORT = 9100  # prometheus-node-exporter default
DCGM_EXPORTER_PORT = 9400  # dcgm-exporter default
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093

# -- exporter images of the aws-ec2 GPU hosts (on-prem, the gpu_host role installs the same dcgm-exporter;
# tests check the two pins agree). Pinned: a new exporter release renames or drops series the rules use.
# Sources: github.com/NVIDIA/dcgm-exporter (tags "<DCGM>-<exporter>-<base>"), github.com/prometheus/node_exporter.
DCGM_EXPORTER_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04"
NODE_EXPORTER_IMAGE = "quay.io/prometheus/node-exporter:v1.9.1"

# -- metrics the mtail program derives from the Nginx access log (templates/mtail/nginx.mtail.j2) ------------
NGINX_RESPONSES = "gpufleet_nginx_http_responses_total"
"""Counter by ``deployment`` (empty for requests Nginx answers before routing) and ``status`` (the code)."""
NGINX_UPSTREAM_SECONDS = "gpufleet_nginx_upstream_response_seconds"
"""Histogram by ``deployment``: ``$upstream_response_time`` of proxied requests (whole stream)."""
NGINX_UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# -- Kubernetes (EKS): labels the vLLM Service/Pods carry, selected by the ServiceMonitor/PodMonitor ----------
K8S_NAMESPACE = "gpufleet"
K8S_MONITORING_NAMESPACE = "monitoring"
K8S_APP_LABEL = "app.kubernetes.io/name"
K8S_DEPLOYMENT_LABEL = "gpufleet.dev/deployment"
K8S_VLLM_PORT_NAME = "http"
# kube-prometheus-stack's Prometheus selects ServiceMonitors/PodMonitors/PrometheusRules by its Helm
# release label (serviceMonitorSelector defaults to `release: <release name>`).
K8S_PROMETHEUS_RELEASE = "kube-prometheus-stack"
# kube-prometheus-stack's Grafana sidecar loads every ConfigMap with this label (grafana.sidecar.dashboards).
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"


@dataclass(frozen=True)
class FileSdTarget:
    """One entry of a Prometheus file_sd JSON file."""

    targets: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]

    def as_json(self) -> dict[str, object]:
        return {"targets": list(self.targets), "labels": dict(self.labels)}

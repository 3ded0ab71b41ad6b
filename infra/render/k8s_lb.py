"""The Nginx load balancer of an eks stack as Kubernetes objects (kind ``k8s-manifest``; pure render).

Rendered file ``k8s/lb/loadbalancer.yaml``, in apply order: the ServiceAccount, Role and RoleBinding of the
upstream writer, the ConfigMaps (the rendered ``nginx.conf``, ``gpufleet.js`` and mtail program, the writer's
configuration; the writer's code), the Deployment, its PodDisruptionBudget and the ``LoadBalancer`` Service.

The pod runs the same image, nginx and njs as every other target (``images/lb``: Debian's nginx 1.22 that the
tests run ``nginx -t`` with), with the same rendered ``nginx.conf``, at the same paths as on a host:

- ``upstreams`` (native sidecar, an init container with ``restartPolicy: Always``): ``hostagent.endpoints``
  turns the ready endpoints of each deployment's Service (EndpointSlices) into
  ``/etc/gpufleet/nginx/upstreams/<deployment>.conf``, checks with ``nginx -t`` and reloads. Why not a
  ClusterIP Service as the upstream: kube-proxy would pick the replica, so neither ``least_conn`` nor the
  session-affinity hash of the rendered upstream would mean anything; and open-source nginx re-resolves
  upstream names (``server ... resolve``) only from 1.27.3. Its startup probe holds nginx back until the
  first pass has written every upstream file (nginx refuses to start on a missing include).
- ``nginx``: the image's command; ``/healthz`` for the probes; SIGQUIT (the image's STOPSIGNAL) lets
  streamed completions finish within the grace period, after a preStop sleep that lets the NLB and
  kube-proxy stop sending new connections.
- ``nginx-exporter`` and ``mtail``: Debian's prometheus-nginx-exporter and mtail from the same image, on the
  ports the rendered PodMonitor scrapes (jobs ``nginx`` and ``nginx-log``).
- ``logs``: nginx writes its logs into a shared emptyDir (mtail must read the access log as a file); this
  container prints the error log (``kubectl logs ... -c logs``) and rotates both logs at
  :data:`ROTATE_BYTES` (rename, then SIGUSR1: nginx reopens; mtail follows the rename).

The Service is an NLB through the Kubernetes AWS cloud provider's ``service.beta.kubernetes.io/aws-load-
balancer-*`` annotations (no extra controller to install): TLS with the stack's ACM certificate ends on the
NLB, internal when only private networks are clients, ``externalTrafficPolicy: Local`` so Nginx sees the
client's address for its allow-list. The API-key hashes (Secret :data:`KEY_HASHES_SECRET`) are written at
deploy time from the stack's secret, as on every target.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Any

from infra.hostagent import endpoints, layout
from infra.plan.optimize import FleetPlan
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONFIG_DIR, VLLM_PORT
from infra.render.k8s_workloads import PART_OF, PRESTOP_SLEEP_S, SYSTEM_NODE_LABELS, workload_name
from infra.render.mtail import PROGS_DIR, render_mtail
from infra.render.nginx import (
    NLB_TLS_POLICY,
    NginxLayout,
    lb_replicas,
    private_clients_only,
    read_timeout_s,
    render_nginx,
)
from infra.render.prometheus_config import K8S_LB_APP, K8S_LB_EXPORTER_PORT, K8S_LB_MTAIL_PORT, k8s_documents
from infra.render.telemetry import (
    K8S_APP_LABEL,
    K8S_NAMESPACE,
    K8S_VLLM_PORT_NAME,
    MTAIL_PORT,
    NGINX_EXPORTER_PORT,
)
from infra.spec.stack import AcmCertificate

LB_PATH = "k8s/lb/loadbalancer.yaml"
NAME = K8S_LB_APP
CONFIG = f"{NAME}-config"
AGENT = f"{NAME}-agent"
# The Secret of accepted API-key hashes (key :data:`KEY_HASHES_KEY`), written by the provisioner.
KEY_HASHES_SECRET = f"{NAME}-api-key-hashes"
KEY_HASHES_KEY = "api-key-hashes.map"
# The containers that run the LB image (the provisioner sets the image it built on each).
LB_IMAGE_CONTAINERS = ("upstreams", "nginx", "nginx-exporter", "mtail", "logs")
LB_IMAGE = "gpufleet-lb"  # in the render; at deploy time the digest-pinned image the program pushed

NGINX = NginxLayout()
ENDPOINTS_CONFIG = f"{CONFIG_DIR}/endpoints.json"
READY_FILE = "/run/gpufleet/upstreams.ready"
WRITER_INTERVAL_S = 5  # a new replica takes minutes to load its model: seconds of discovery delay are noise
AGENT_MODULES = ("__init__.py", "files.py", "formats.py", "endpoints.py")  # what endpoints imports
HOSTAGENT_DIR = Path(endpoints.__file__).resolve().parent
ROTATE_BYTES = 256 * 1024 * 1024
ROTATE_CHECK_S = 60
LOGS_LIMIT = "2Gi"  # two generations of each log at ROTATE_BYTES, with room: the emptyDir's eviction limit
# nginx's master keeps root to bind port 80 and drop workers to www-data: only the capabilities that needs
# (Docker's default set minus what nginx never uses).
NGINX_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "NET_BIND_SERVICE", "SETGID", "SETUID"]
# Ports (the rendered nginx.conf listens on HTTP only when TLS ends on the NLB).
HTTP_PORT = "http"
SERVICE_PORTS = {"acm": {"https": 443}, "none": {"http": 80}}
# In-tree AWS cloud provider annotations (kubernetes/cloud-provider-aws, "Service annotations").
NLB = "service.beta.kubernetes.io/aws-load-balancer"


def _metadata(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": K8S_NAMESPACE, "labels": {K8S_APP_LABEL: NAME, **PART_OF}}


def nginx_files(plan: FleetPlan) -> dict[str, str]:
    """nginx.conf and gpufleet.js by file name: the same render as every other target's."""
    return {posixpath.basename(a.path): a.content for a in render_nginx(plan, NGINX)}


def writer_config(plan: FleetPlan) -> dict[str, Any]:
    deployments = {d.deployment.name: (workload_name(d.deployment.name), K8S_VLLM_PORT_NAME, VLLM_PORT)
                   for d in plan.deployments}
    return endpoints.config_document(
        namespace=K8S_NAMESPACE, deployments=deployments, upstreams_dir=NGINX.upstream_dir,
        nginx_conf=f"{NGINX.config_dir}/nginx.conf", pid_file=NGINX.pid_file, ready_file=READY_FILE,
        interval_s=WRITER_INTERVAL_S)


def config_map(plan: FleetPlan, mtail_program: str) -> dict[str, Any]:
    data = {**nginx_files(plan), "nginx.mtail": mtail_program,
            "endpoints.json": json.dumps(writer_config(plan), indent=2, sort_keys=True) + "\n"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(CONFIG), "data": data}


def agent_config_map() -> dict[str, Any]:
    """The writer's code: the hostagent modules it imports (standard library only), as the hosts get them."""
    data = {module: (HOSTAGENT_DIR / module).read_text(encoding="utf-8") for module in AGENT_MODULES}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(AGENT), "data": data}


def rbac() -> list[dict[str, Any]]:
    """The writer lists and watches EndpointSlices of the namespace: nothing else."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(NAME),
            "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["get", "list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _metadata(NAME),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
               "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": K8S_NAMESPACE}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(NAME)}
    return [account, role, binding]


def _mount(volume: str, path: str, sub_path: str | None = None, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": volume, "mountPath": path}
    if sub_path is not None:
        mount["subPath"] = sub_path
    if read_only:
        mount["readOnly"] = True
    return mount


def nginx_mounts() -> list[dict[str, Any]]:
    """What nginx (and `nginx -t` in the writer) reads, at the paths of the rendered nginx.conf. Single files
    by subPath: a directory volume over /etc/gpufleet/nginx would hide the upstreams mount point under a
    read-only ConfigMap. subPath files never update in place; the pod template's checksum rolls the pods."""
    return [
        _mount("config", f"{NGINX.config_dir}/nginx.conf", "nginx.conf", read_only=True),
        _mount("config", NGINX.script, "gpufleet.js", read_only=True),
        _mount("key-hashes", NGINX.key_hash_file, KEY_HASHES_KEY, read_only=True),
        _mount("upstreams", NGINX.upstream_dir),
        _mount("run", posixpath.dirname(NGINX.pid_file)),
    ]


def _security(capabilities: list[str] | None = None) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": capabilities or []}}


def _resources(cpu: str, memory: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def writer_container() -> dict[str, Any]:
    return {
        "name": "upstreams",
        "image": LB_IMAGE,
        "restartPolicy": "Always",  # a native sidecar: started before nginx, running beside it
        "command": ["python3", "-m", "hostagent.endpoints", "--config", ENDPOINTS_CONFIG],
        "env": [{"name": "PYTHONPATH", "value": layout.AGENT_DIR}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "volumeMounts": [*nginx_mounts(), _mount("config", ENDPOINTS_CONFIG, "endpoints.json", read_only=True),
                         _mount("agent", f"{layout.AGENT_DIR}/hostagent", read_only=True)],
        # nginx starts once every upstream file exists (the first pass wrote them and `nginx -t` passed).
        "startupProbe": {"exec": {"command": ["test", "-f", READY_FILE]}, "periodSeconds": 2,
                         "failureThreshold": 60},
        "resources": _resources("50m", "64Mi"),
        "securityContext": _security(NGINX_CAPABILITIES),  # `nginx -t` opens files as nginx's master does
    }


def _http_probe(failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/healthz", "port": HTTP_PORT}, "periodSeconds": 5, "timeoutSeconds": 2,
            "failureThreshold": failures}


def nginx_container() -> dict[str, Any]:
    return {
        "name": "nginx",
        "image": LB_IMAGE,
        "ports": [{"name": HTTP_PORT, "containerPort": NGINX.http_port, "protocol": "TCP"}],
        "volumeMounts": [*nginx_mounts(), _mount("logs", NGINX.log_dir)],
        "readinessProbe": _http_probe(2),
        "livenessProbe": _http_probe(6),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
        "resources": _resources("1", "1Gi"),
        "securityContext": _security(NGINX_CAPABILITIES),
    }


def exporter_container() -> dict[str, Any]:
    # Debian's prometheus-nginx-exporter 0.11 takes single-dash flags (as the nginx_lb role's defaults file).
    return {
        "name": "nginx-exporter",
        "image": LB_IMAGE,
        "command": ["prometheus-nginx-exporter",
                    f"-nginx.scrape-uri=http://127.0.0.1:{NGINX.status_port}/stub_status",
                    f"-web.listen-address=:{NGINX_EXPORTER_PORT}"],
        "ports": [{"name": K8S_LB_EXPORTER_PORT, "containerPort": NGINX_EXPORTER_PORT, "protocol": "TCP"}],
        "resources": _resources("20m", "32Mi"),
        "securityContext": {**_security(), "runAsUser": 65534, "runAsNonRoot": True},
    }


def mtail_container() -> dict[str, Any]:
    return {
        "name": "mtail",
        "image": LB_IMAGE,
        # --emit_prog_label=false: the rendered rules expect no prog="nginx.mtail" label (as on the hosts).
        "command": ["mtail", "--progs", PROGS_DIR, "--logs", f"{NGINX.log_dir}/access.log",
                    "--port", str(MTAIL_PORT), "--emit_prog_label=false"],
        "ports": [{"name": K8S_LB_MTAIL_PORT, "containerPort": MTAIL_PORT, "protocol": "TCP"}],
        "volumeMounts": [_mount("config", f"{PROGS_DIR}/nginx.mtail", "nginx.mtail", read_only=True),
                         _mount("logs", NGINX.log_dir, read_only=True)],
        "resources": _resources("100m", "128Mi"),
        "securityContext": {**_security(), "runAsUser": 65534, "runAsNonRoot": True},
    }


def rotate_script() -> str:
    """Print nginx's error log; rotate each log past ROTATE_BYTES (one old generation), then SIGUSR1 tells
    nginx's master to reopen its logs (nginx docs, "Controlling nginx": USR1 re-opens log files)."""
    logs = " ".join(f"{NGINX.log_dir}/{name}" for name in ("access.log", "error.log"))
    return "\n".join([
        "set -u",
        f"touch {NGINX.log_dir}/error.log",
        f"tail -F -n 0 {NGINX.log_dir}/error.log &",
        f"while sleep {ROTATE_CHECK_S}; do",
        f"  for log in {logs}; do",
        f'    if [ -f "$log" ] && [ "$(stat -c %s "$log")" -gt {ROTATE_BYTES} ]; then',
        '      mv -f "$log" "$log.1"',
        f'      kill -USR1 "$(cat {NGINX.pid_file})"',
        "    fi",
        "  done",
        "done",
    ]) + "\n"


def logs_container() -> dict[str, Any]:
    return {
        "name": "logs",
        "image": LB_IMAGE,
        "command": ["bash", "-c", rotate_script()],
        "volumeMounts": [_mount("logs", NGINX.log_dir), _mount("run", posixpath.dirname(NGINX.pid_file))],
        "resources": _resources("10m", "32Mi"),
        "securityContext": _security(),  # root like nginx's master, whose logs it renames and signals
    }


def volumes() -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": CONFIG}},
        {"name": "agent", "configMap": {"name": AGENT}},
        {"name": "key-hashes", "secret": {"secretName": KEY_HASHES_SECRET}},
        {"name": "upstreams", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        {"name": "logs", "emptyDir": {"sizeLimit": LOGS_LIMIT}},
    ]


def _spread(key: str) -> dict[str, Any]:
    return {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {K8S_APP_LABEL: NAME}}}


def grace_s(plan: FleetPlan) -> int:
    """The preStop sleep, then the longest generation a draining nginx lets finish."""
    return PRESTOP_SLEEP_S + max(read_timeout_s(d) for d in plan.deployments)


def deployment(plan: FleetPlan, checksum: str) -> dict[str, Any]:
    labels = {K8S_APP_LABEL: NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(NAME),
        "spec": {
            "replicas": lb_replicas(plan),
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                # The config files are subPath mounts, which never update: a changed render rolls the pods.
                "metadata": {"labels": {**labels, **PART_OF},
                             "annotations": {"gpufleet.dev/config-sha256": checksum}},
                "spec": {
                    "serviceAccountName": NAME,
                    # The writer signals nginx's master (`nginx -s reload`), and the logs container too.
                    "shareProcessNamespace": True,
                    "nodeSelector": SYSTEM_NODE_LABELS,
                    "topologySpreadConstraints": [_spread("topology.kubernetes.io/zone"),
                                                  _spread("kubernetes.io/hostname")],
                    "terminationGracePeriodSeconds": grace_s(plan),
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": [writer_container()],
                    "containers": [nginx_container(), exporter_container(), mtail_container(),
                                   logs_container()],
                    "volumes": volumes(),
                },
            },
        },
    }


def disruption_budget() -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(NAME),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {K8S_APP_LABEL: NAME}},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def service_annotations(plan: FleetPlan) -> dict[str, str]:
    network = plan.spec.network
    # The cloud provider's NLB registers the nodes as instance targets with its default 300 s deregistration
    # delay; a draining pod keeps serving its streams for terminationGracePeriodSeconds behind it.
    annotations = {
        f"{NLB}-type": "nlb",
        f"{NLB}-cross-zone-load-balancing-enabled": "true",
    }
    if private_clients_only(network.allowed_client_cidrs):
        annotations[f"{NLB}-internal"] = "true"
    tls = network.tls
    if isinstance(tls, AcmCertificate):
        annotations[f"{NLB}-ssl-cert"] = tls.arn
        annotations[f"{NLB}-ssl-ports"] = "https"
        annotations[f"{NLB}-ssl-negotiation-policy"] = NLB_TLS_POLICY
    return dict(sorted(annotations.items()))


def service(plan: FleetPlan) -> dict[str, Any]:
    ports = SERVICE_PORTS[plan.spec.network.tls.source]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**_metadata(NAME), "annotations": service_annotations(plan)},
        "spec": {
            "type": "LoadBalancer",
            "selector": {K8S_APP_LABEL: NAME},
            # Local: the NLB reaches nginx without a second hop that would replace the client's address,
            # which nginx's allow-list and rate limits are keyed on.
            "externalTrafficPolicy": "Local",
            "loadBalancerSourceRanges": sorted(plan.spec.network.allowed_client_cidrs),
            "ports": [{"name": name, "port": port, "targetPort": HTTP_PORT, "protocol": "TCP"}
                      for name, port in ports.items()],
        },
    }


def lb_objects(plan: FleetPlan, mtail_program: str) -> list[dict[str, Any]]:
    maps = [config_map(plan, mtail_program), agent_config_map()]
    checksum = hashlib.sha256(json.dumps([m["data"] for m in maps], sort_keys=True).encode()).hexdigest()
    return [*rbac(), *maps, deployment(plan, checksum), disruption_budget(), service(plan)]


def render_k8s_lb(plan: FleetPlan) -> list[Artifact]:
    if plan.spec.target != "eks":
        return []
    (mtail,) = [a.content for a in render_mtail(plan)]
    return [Artifact(LB_PATH, "k8s-manifest", None, k8s_documents(lb_objects(plan, mtail), plan.stack))]

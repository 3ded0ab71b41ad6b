"""The eks load balancer (infra/render/k8s_lb.py): every object passes kubernetes-validate --strict; the pod
mounts exactly what the rendered nginx.conf reads; the shipped writer code and configuration run as shipped;
the sidecars' command lines are accepted by the real Debian programs the image installs; the Service asks
for the NLB the stack's network section describes."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import crossplane
import kubernetes_validate
import pytest
import yaml

from infra.hostagent import endpoints
from infra.plan.optimize import FleetPlan, plan_stack
from infra.render.k8s_lb import (
    AGENT,
    CONFIG,
    ENDPOINTS_CONFIG,
    KEY_HASHES_KEY,
    KEY_HASHES_SECRET,
    LB_IMAGE_CONTAINERS,
    LB_PATH,
    NLB,
    READY_FILE,
    grace_s,
    render_k8s_lb,
    rotate_script,
)
from infra.render.k8s_workloads import PRESTOP_SLEEP_S, render_k8s_workloads, workload_name
from infra.render.nginx import render_nginx
from infra.render.prometheus_config import K8S_LB_APP, POD_MONITORS_PATH, render_kubernetes_monitors
from infra.render.telemetry import K8S_APP_LABEL
from infra.spec.load import Project, load_stack
from tests.pulumi.stacks import edited_project
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"
KINDS = ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget",
         "Service"]


@cache
def plan_for(stack: str, project: Project | None = None) -> FleetPlan:
    return plan_stack(load_stack(project or Project(ROOT), stack))


def objects(plan: FleetPlan) -> list[dict[str, Any]]:
    (artifact,) = render_k8s_lb(plan)
    assert artifact.path == LB_PATH and artifact.kind == "k8s-manifest"
    return [d for d in yaml.safe_load_all(artifact.content) if d]


@cache
def prod() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in objects(plan_for("prod"))}


def lb_pod() -> dict[str, Any]:
    spec: dict[str, Any] = prod()[("Deployment", K8S_LB_APP)]["spec"]["template"]["spec"]
    return spec


def containers() -> dict[str, dict[str, Any]]:
    pod = lb_pod()
    return {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}


def mounted_files(container: dict[str, Any], tmp: Path) -> dict[str, Path]:
    """The container's mounts materialised under ``tmp``: mount path -> the local file or directory, with
    the ConfigMaps' and the key-hash Secret's contents at their subPaths."""
    volumes = {v["name"]: v for v in lb_pod()["volumes"]}
    maps = {d["metadata"]["name"]: d["data"] for (kind, _), d in prod().items() if kind == "ConfigMap"}
    found = {}
    for mount in container.get("volumeMounts", []):
        local = tmp / mount["mountPath"].lstrip("/")
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = maps[volume["configMap"]["name"]]
            if "subPath" in mount:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(data[mount["subPath"]])
            else:
                local.mkdir(parents=True, exist_ok=True)
                for key, value in data.items():
                    (local / key).write_text(value)
        elif "secret" in volume:
            assert volume["secret"]["secretName"] == KEY_HASHES_SECRET and mount["subPath"] == KEY_HASHES_KEY
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("0" * 64 + " 1;\n")
        else:
            local.mkdir(parents=True, exist_ok=True)
        found[mount["mountPath"]] = local
    return found


# -- shape and schema ---------------------------------------------------------------------------------------

def test_only_eks_stacks_render_a_kubernetes_lb() -> None:
    for stack in ("dev", "staging", "onprem-a800"):
        assert render_k8s_lb(plan_for(stack)) == []
    assert [d["kind"] for d in objects(plan_for("prod"))] == KINDS


def test_every_object_passes_strict_validation() -> None:
    for doc in objects(plan_for("prod")):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_writer_may_only_read_endpoint_slices() -> None:
    (rule,) = prod()[("Role", K8S_LB_APP)]["rules"]
    assert rule == {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"]}
    binding = prod()[("RoleBinding", K8S_LB_APP)]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": lb_pod()["serviceAccountName"],
                                    "namespace": "gpufleet"}]


# -- the same nginx as every target, fed by the writer -----------------------------------------------------

def test_nginx_config_is_the_render_of_every_target() -> None:
    data = prod()[("ConfigMap", CONFIG)]["data"]
    for artifact in render_nginx(plan_for("prod")):
        assert data[posixpath.basename(artifact.path)] == artifact.content


def nginx_paths() -> dict[str, list[str]]:
    """What the rendered nginx.conf reads and writes, by directive (crossplane's parse of the real file)."""
    text = prod()[("ConfigMap", CONFIG)]["data"]["nginx.conf"]
    found: dict[str, list[str]] = {}

    def walk(block: list[dict[str, Any]]) -> None:
        for d in block:
            if d["directive"] in ("include", "js_import", "pid", "access_log", "error_log", "load_module"):
                found.setdefault(d["directive"], []).append(d["args"][-1] if d["directive"] != "access_log"
                                                             else d["args"][0])
            walk(d.get("block", []))

    parsed = crossplane.parse(str(write_tmp(text)), single=True, check_ctx=False, check_args=False)
    walk(parsed["config"][0]["parsed"])
    return found


def write_tmp(text: str) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpufleet-k8s-lb-{os.getpid()}.conf"
    path.write_text(text)
    return path


def test_nginx_and_the_writer_mount_what_nginx_conf_reads() -> None:
    paths = nginx_paths()
    includes = [p for p in paths["include"] if p.startswith("/etc/gpufleet/")]
    assert "/etc/gpufleet/nginx/api-key-hashes.map" in includes
    for name in ("nginx", "upstreams"):
        mounts = [m["mountPath"] for m in containers()[name]["volumeMounts"]]
        for path in [*includes, *(p.split(" ")[-1] for p in paths["js_import"]), *paths["pid"]]:
            target = path.split("/*")[0].removesuffix("/<deployment>.conf")
            assert any(target == m or target.startswith(m + "/") or posixpath.dirname(target) == m
                       for m in mounts), (name, path)
    # nginx writes its logs into the volume mtail reads and the logs container rotates.
    logs = {m["mountPath"] for m in containers()["mtail"]["volumeMounts"] if m["name"] == "logs"}
    assert {posixpath.dirname(p) for p in paths["access_log"] if p.startswith("/")} <= logs


def test_writer_configuration_names_every_deployments_service() -> None:
    document = json.loads(prod()[("ConfigMap", CONFIG)]["data"]["endpoints.json"])
    config = endpoints.parse_config({**document, "api_url": "https://kubernetes.default.svc"})
    plan = plan_for("prod")
    services = {d["metadata"]["name"]: d for a in render_k8s_workloads(plan)
                for d in yaml.safe_load_all(a.content) if d and d["kind"] == "Service"}
    for deployment in plan.deployments:
        name = deployment.deployment.name
        wanted = document["deployments"][name]
        assert wanted["service"] == workload_name(name) and wanted["service"] in services
        assert wanted["port_name"] in [p["name"] for p in services[wanted["service"]]["spec"]["ports"]]
    assert set(document["deployments"]) == {d.deployment.name for d in plan.deployments}
    assert document["ready_file"] == READY_FILE and config is not None
    assert containers()["upstreams"]["command"][-1] == ENDPOINTS_CONFIG


def test_shipped_writer_runs_from_its_config_map_alone(tmp_path: Path) -> None:
    """The agent ConfigMap's modules are all the writer imports: with only them on PYTHONPATH, Debian's
    python3 runs a pass from the shipped configuration; the API is unreachable here, so the pass fails at
    runtime (exit 1), not at import (a missing module) or at configuration (exit 2)."""
    writer = containers()["upstreams"]
    files = mounted_files(writer, tmp_path)
    agent_root = files["/usr/local/lib/gpufleet/hostagent"].parent
    document = json.loads(files[ENDPOINTS_CONFIG].read_text())
    document.update(api_url="http://127.0.0.1:9", token_file=str(tmp_path / "token"),
                    upstreams={**document["upstreams"], "dir": str(tmp_path / "upstreams")},
                    ready_file=str(tmp_path / "ready"))
    (tmp_path / "token").write_text("t")
    config = tmp_path / "endpoints.json"
    config.write_text(json.dumps(document))
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    done = subprocess.run([python, "-I", "-B", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from hostagent import endpoints; sys.exit(endpoints.main(sys.argv[2:]))",
                           str(agent_root), "--config", str(config), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot list the endpoints of service gpufleet/gpufleet-vllm-support" in done.stderr
    assert not (tmp_path / "ready").exists()
    assert set(prod()[("ConfigMap", AGENT)]["data"]) == {p.name for p in files["/usr/local/lib/gpufleet/hostagent"]
                                                        .iterdir()}


def test_nginx_t_accepts_the_pods_files_once_the_writer_has_run(tmp_path: Path) -> None:
    """nginx -t with the ConfigMap's nginx.conf, rewritten to the materialised mounts, and the upstream files
    the writer writes before nginx starts (no replica ready yet)."""
    nginx = require_tool("nginx")
    files = mounted_files(containers()["nginx"], tmp_path)
    conf_text = files["/etc/gpufleet/nginx/nginx.conf"].read_text()
    for mount, local in sorted(files.items(), key=lambda kv: -len(kv[0])):
        conf_text = conf_text.replace(mount, str(local))
    conf_text = (conf_text.replace("user www-data;", "")
                 .replace("listen 80 default_server;", "listen 127.0.0.1:18080 default_server;"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    for deployment in plan_for("prod").deployments:
        name = deployment.deployment.name
        (files["/etc/gpufleet/nginx/upstreams"] / f"{name}.conf").write_text(
            endpoints.formats.upstream_conf(name, [], 8000, allow_empty=True))
    done = subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                           "-c", str(conf)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# -- sidecars: the Debian programs the image installs accept their command lines -----------------------------

def _help(tool: str, flag: str) -> str:
    done = subprocess.run([require_tool(tool), flag], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout + done.stderr


@pytest.mark.parametrize(("container", "tool"), [("mtail", "mtail"), ("nginx-exporter", "prometheus-nginx-exporter")])
def test_sidecar_flags_exist_in_the_installed_program(container: str, tool: str) -> None:
    usage = _help(tool, "--help" if tool == "mtail" else "-h")
    command = containers()[container]["command"]
    assert posixpath.basename(command[0]) == tool
    for arg in command[1:]:
        if arg.startswith("-"):
            flag = arg.lstrip("-").split("=")[0]
            assert f"-{flag}" in usage, (tool, flag)


def test_metrics_ports_are_the_pod_monitors() -> None:
    (monitor,) = [d for a in render_kubernetes_monitors(plan_for("prod")) if a.path == POD_MONITORS_PATH
                  for d in yaml.safe_load_all(a.content) if d and d["metadata"]["name"] == "gpufleet-lb"]
    assert monitor["spec"]["selector"]["matchLabels"] == {K8S_APP_LABEL: K8S_LB_APP}
    ports = {p["name"] for c in containers().values() for p in c.get("ports", [])}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_rotation_script_is_valid_bash(tmp_path: Path) -> None:
    script = tmp_path / "rotate.sh"
    script.write_text(rotate_script())
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = require_tool("shellcheck")
    subprocess.run([shellcheck, "-S", "warning", "-s", "bash", str(script)], check=True)


# -- lifecycle -----------------------------------------------------------------------------------------------

def test_nginx_starts_after_the_writers_first_pass_and_drains_streams() -> None:
    writer = containers()["upstreams"]
    assert writer["restartPolicy"] == "Always"  # a native sidecar: runs beside nginx for the pod's life
    assert writer["startupProbe"]["exec"]["command"] == ["test", "-f", READY_FILE]
    pod = lb_pod()
    assert pod["shareProcessNamespace"] is True
    plan = plan_for("prod")
    assert pod["terminationGracePeriodSeconds"] == grace_s(plan) > PRESTOP_SLEEP_S + 60
    deployment = prod()[("Deployment", K8S_LB_APP)]
    assert deployment["spec"]["replicas"] == 2  # prod asks n+1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    images = {c["image"] for name, c in containers().items() if name in LB_IMAGE_CONTAINERS}
    assert images == {"gpufleet-lb"} and set(containers()) == set(LB_IMAGE_CONTAINERS)


def test_a_changed_render_rolls_the_pods(tmp_path: Path) -> None:
    """The config files are subPath mounts, which never update in place: the template's checksum changes."""
    edited = plan_for("prod", edited_project(tmp_path, "prod", ("qps: 20", "qps: 24")))
    before = prod()[("Deployment", K8S_LB_APP)]["spec"]["template"]["metadata"]["annotations"]
    (after,) = [d["spec"]["template"]["metadata"]["annotations"] for d in objects(edited) if d["kind"] == "Deployment"]
    assert before != after


# -- the NLB ---------------------------------------------------------------------------------------------------

def test_service_is_an_internal_tls_nlb_for_the_allowed_clients() -> None:
    service = prod()[("Service", K8S_LB_APP)]
    spec = plan_for("prod").spec
    annotations = service["metadata"]["annotations"]
    assert annotations[f"{NLB}-type"] == "nlb"
    assert annotations[f"{NLB}-internal"] == "true"  # 10/8 and 172.16/12 only
    assert annotations[f"{NLB}-ssl-cert"] == spec.network.tls.arn  # type: ignore[union-attr]
    assert annotations[f"{NLB}-ssl-ports"] == "https"
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["spec"]["loadBalancerSourceRanges"] == sorted(spec.network.allowed_client_cidrs)
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"}]


def test_without_tls_the_nlb_is_plain_http_and_public_clients_make_it_internet_facing(tmp_path: Path) -> None:
    project = edited_project(tmp_path, "prod", (
        "    allowedClientCidrs: [10.0.0.0/8, 172.16.0.0/12]\n    domain: llm.acme.example\n    tls:\n"
        "      source: acm\n      arn: arn:aws:acm:us-east-1:123456789012:certificate/"
        "5b1d7e0e-8a4f-4f6b-a2a9-0d3c9e1f4b27\n",
        "    allowedClientCidrs: [10.0.0.0/8, 54.240.0.0/16]\n    tls:\n      source: none\n"))
    (service,) = [d for d in objects(plan_for("prod", project)) if d["kind"] == "Service"]
    annotations = service["metadata"]["annotations"]
    assert f"{NLB}-internal" not in annotations and f"{NLB}-ssl-cert" not in annotations
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]

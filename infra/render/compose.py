"""A docker compose file for single-host deployments: the whole fleet on one GPU host.

``compose/docker-compose.yaml`` is rendered when the plan fits one host — every deployment chose the same
instance type and the fleet's GPUs (replicas × tp summed over deployments) fit that machine. Larger
fleets are multi-host (systemd units, cloud-init, k8s) and get no compose file.

- One service ``vllm-<deployment>-<replica>`` per replica: its engine's image and command, GPUs
  reserved with ``deploy.resources.reservations.devices`` (``driver: nvidia``, explicit ``device_ids``,
  handed out in order so no two replicas share a GPU), ``ipc: host`` for tensor parallelism, the key from
  ``/etc/gpufleet/vllm/<deployment>.env`` (mode 0600, written at deploy time, never rendered), the model
  cache and the rendered configs mounted, a healthcheck on the engine's readiness path with a tool its
  image ships (``HEALTHCHECKS``), ``restart: unless-stopped``.
  Replica k of the host publishes ``127.0.0.1:<8000+k>`` — the same host ports the systemd units use.
- ``lb``: the official nginx image (ships njs at the path nginx.conf loads) on the host network, so the
  rendered nginx.conf runs unchanged (ports 80/443, stub_status on 127.0.0.1); its per-deployment upstream
  files are rendered next to the compose file (``compose/upstreams/<deployment>.conf``) and list the
  replicas' loopback ports.
"""

from __future__ import annotations

from typing import Any

import yaml

from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.engines import engine_launch
from infra.render.hostlayout import (
    CONFIG_DIR,
    CONTAINER_CONFIG,
    CONTAINER_MODELS,
    MODEL_CACHE,
    VLLM_PORT,
)
from infra.render.nginx import NginxLayout, upstream_include
from infra.render.systemd import STOP_GRACE_S, env_file, start_timeout_s

COMPOSE_FILE = "compose/docker-compose.yaml"
LB_IMAGE = "nginx:1.28.0"  # official image: Debian-based (user www-data), njs module included
COMPOSE_UPSTREAMS = "compose/upstreams"  # rendered; mounted over the LB's upstream directory


def fits_one_host(plan: FleetPlan) -> bool:
    chosen = [d.chosen for d in plan.deployments]
    if not chosen or any(c is None for c in chosen):
        return False
    machines = {c.machine.instance.name for c in chosen if c is not None}
    gpus = sum(c.replicas * c.config.tp for c in chosen if c is not None)
    first = chosen[0]
    assert first is not None
    return len(machines) == 1 and gpus <= first.machine.instance.gpu_count


def _vllm_service(plan: DeploymentPlan, gpus: list[int], port: int) -> dict[str, Any]:
    assert plan.chosen is not None
    name = plan.deployment.name
    launch = engine_launch(plan)
    health_url = f"http://127.0.0.1:{launch.port}{launch.ready_path}"
    service: dict[str, Any] = {"image": launch.image}
    if launch.entrypoint is not None:
        service["entrypoint"] = [launch.entrypoint]
    service["command"] = list(launch.args)
    if launch.api_key_env is not None:  # engines without a key variable do not get the file
        service["env_file"] = [env_file(name)]
    service["environment"] = dict(launch.env)
    service.update({
        "ipc": "host",
        "ports": [f"127.0.0.1:{port}:{launch.port}"],
        "volumes": [f"{MODEL_CACHE}:{CONTAINER_MODELS}", f"{CONFIG_DIR}:{CONTAINER_CONFIG}:ro"],
        "deploy": {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "device_ids": [str(g) for g in gpus], "capabilities": ["gpu"]},
        ]}}},
        "healthcheck": {
            "test": HEALTHCHECKS[launch.engine.name](health_url),
            "interval": "15s",
            "timeout": "10s",
            "retries": 3,
            "start_period": f"{start_timeout_s(plan)}s",
        },
        "restart": "unless-stopped",
        "stop_grace_period": f"{STOP_GRACE_S}s",
        "labels": {"gpufleet.deployment": name, "gpufleet.engine": launch.engine.name,
                   f"gpufleet.{launch.engine.name}-version": launch.engine.version},
    })
    return service


def _python_probe(url: str) -> list[str]:
    return ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"]


def _curl_probe(url: str) -> list[str]:
    return ["CMD", "curl", "--fail", "--silent", "--output", "/dev/null", url]


def _ollama_probe(url: str) -> list[str]:
    # The Ollama image has neither python3 nor curl; its CLI answers once the served model exists.
    model = url.rsplit("/", 1)[-1]
    return ["CMD", "/bin/ollama", "show", model]


# The probe runs inside the container, so it uses what the engine's image ships: python3 in the Python servers'
# images, curl in TGI's and llama.cpp's (llama.cpp's own HEALTHCHECK uses it), the CLI in Ollama's.
HEALTHCHECKS = {
    "vllm": _python_probe,
    "sglang": _python_probe,
    "trtllm": _python_probe,
    "tgi": _curl_probe,
    "llamacpp": _curl_probe,
    "ollama": _ollama_probe,
}


def render_compose(plan: FleetPlan, layout: NginxLayout | None = None) -> list[Artifact]:
    if not fits_one_host(plan):
        return []
    layout = layout or NginxLayout()
    services: dict[str, Any] = {}
    upstreams: list[Artifact] = []
    next_gpu = 0
    slot = 0
    for deployment in sorted(plan.deployments, key=lambda d: d.deployment.name):
        assert deployment.chosen is not None
        name, tp = deployment.deployment.name, deployment.chosen.config.tp
        addresses = []
        for replica in range(deployment.chosen.replicas):
            port = VLLM_PORT + slot
            services[f"vllm-{name}-{replica}"] = _vllm_service(deployment, list(range(next_gpu, next_gpu + tp)), port)
            addresses.append(f"127.0.0.1:{port}")
            next_gpu += tp
            slot += 1
        upstreams.append(Artifact(f"{COMPOSE_UPSTREAMS}/{name}.conf", "compose", name,
                                  upstream_include(name, addresses)))
    services["lb"] = {
        "image": LB_IMAGE,
        "command": ["nginx", "-c", f"{layout.config_dir}/nginx.conf", "-g", "daemon off;"],
        "network_mode": "host",
        "volumes": [
            f"{layout.config_dir}:{layout.config_dir}:ro",
            f"./upstreams:{layout.upstream_dir}:ro",
            f"{layout.tls_dir}:{layout.tls_dir}:ro",
        ],
        "healthcheck": {
            "test": ["CMD", "curl", "--fail", "--silent", f"http://127.0.0.1:{layout.http_port}/healthz"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
        },
        "restart": "unless-stopped",
        "stop_signal": "SIGQUIT",  # graceful: streams in progress finish
        "stop_grace_period": f"{STOP_GRACE_S}s",
    }
    header = (
        f"# Single-host gpufleet stack '{plan.stack}' (rendered by gpufleet; do not edit).\n"
        f"# Install next to upstreams/ in {CONFIG_DIR}/compose/; keys come from {CONFIG_DIR}/vllm/<deployment>.env.\n"
        "# Run: docker compose -f docker-compose.yaml up -d\n"
    )
    document = {"name": f"gpufleet-{plan.stack}", "services": services}
    content = header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120)
    return [Artifact(COMPOSE_FILE, "compose", None, content), *upstreams]

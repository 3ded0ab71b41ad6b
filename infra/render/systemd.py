"""systemd units for a GPU host: one template unit per deployment for its engine replicas, and the LB.

Layout (paths relative to the render directory; installed under /etc/systemd/system/):

- ``systemd/gpufleet-vllm-<deployment>@.service`` — template unit; the instance is the replica slot on
  the host (0, 1, ...). It runs the deployment's engine (its image, entrypoint and arguments,
  :mod:`infra.render.engines`; vLLM: the pinned ``vllm/vllm-openai``) with ``docker run`` in the foreground
  (``--rm``; systemd owns the lifecycle, not docker's restart policy).
- ``systemd/gpufleet-vllm-<deployment>@<slot>.service.d/slot.conf`` — one drop-in per slot that fits the
  deployment's machine (``gpu_count // tp`` slots): ``GPUFLEET_GPUS`` (the slot's GPU ids, tp×slot …
  tp×slot+tp−1) and ``GPUFLEET_PORT`` (VLLM_PORT + slot on the host). systemd has no arithmetic on ``%i``,
  and a shell wrapper or an ExecStartPre that writes an env file would hide what runs from review and from
  ``systemd-analyze verify``; rendered drop-ins are deterministic, reviewed in the PR diff and verified.
  Provisioning enables ``gpufleet-vllm-<deployment>@<slot>`` for the slots placed on the host. Not for
  on-prem stacks, whose servers several deployments share: there the drop-ins come from the placement
  (infra/render/placement.py, written by the Ansible vllm role from host_vars).
- ``systemd/gpufleet-lb.service`` — the host's Debian nginx (with libnginx-mod-http-js) on the rendered
  ``/etc/gpufleet/nginx/nginx.conf``; the config is tested (``nginx -t``) before every start and reload.

The replica's image, command, port and readiness path are its engine's (:mod:`infra.render.engines`).
The API key never appears: ``/etc/gpufleet/vllm/<deployment>.env`` (``VLLM_API_KEY=...``, or the variable of
the deployment's engine; mode 0600, root) is written at deploy time from the stack's secret and read by
systemd, then handed to the container by name only (``--env VLLM_API_KEY``), so it is not in the unit, the
docker command line or ``ps``. Engines that take no key from the environment do not get it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
from infra.render.nginx import NginxLayout
from infra.render.telemetry import (
    DCGM_EXPORTER_IMAGE,
    DCGM_EXPORTER_PORT,
    NODE_EXPORTER_IMAGE,
    NODE_EXPORTER_PORT,
)
from infra.render.templating import render_template
from infra.render.vllm import VLLM_VERSION

VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
DOCKER = "/usr/bin/docker"  # Debian's docker.io and Docker's docker-ce both install the client here
CURL = "/usr/bin/curl"
NGINX = "/usr/sbin/nginx"
START_STOP_DAEMON = "/sbin/start-stop-daemon"

# Start-up budget of a replica: the unit is "started" only once /health answers (ExecStartPost), so
# TimeoutStartSec must cover loading the weights plus the engine's own start-up (profiling run, CUDA
# graph capture, torch.compile). Weights load at >= 100 MB/s even on a first start that downloads them
# from the Hub (EBS gp3 baseline 125 MB/s); the floor covers small models on a cold host.
ENGINE_STARTUP_S = 300
LOAD_BYTES_PER_S = 100e6
START_TIMEOUT_FLOOR_S = 600
STOP_GRACE_S = 30  # `docker stop --time`: vLLM drains in-flight requests on SIGTERM
HEALTH_RETRY_DELAY_S = 5


def unit_name(deployment: str) -> str:
    """The template unit; `unit_name(d).replace("@", f"@{slot}")` is a replica's instance."""
    return f"gpufleet-vllm-{deployment}@.service"


def instance_name(deployment: str, slot: int) -> str:
    return f"gpufleet-vllm-{deployment}@{slot}.service"


def env_file(deployment: str) -> str:
    """Host path of the deploy-time env file holding the API key (mode 0600, never rendered)."""
    return f"{CONFIG_DIR}/vllm/{deployment}.env"


def container_name(deployment: str, slot: int | str) -> str:
    return f"gpufleet-vllm-{deployment}-{slot}"


def slots_per_machine(plan: DeploymentPlan) -> int:
    assert plan.chosen is not None
    return plan.chosen.machine.instance.gpu_count // plan.chosen.config.tp


def slot_gpus(tp: int, slot: int) -> list[int]:
    return list(range(tp * slot, tp * slot + tp))


def slot_port(slot: int) -> int:
    return VLLM_PORT + slot


def start_timeout_s(plan: DeploymentPlan) -> int:
    assert plan.chosen is not None
    weights = plan.chosen.replica.weights_gib * (1 << 30)
    seconds = ENGINE_STARTUP_S + weights / LOAD_BYTES_PER_S
    return max(START_TIMEOUT_FLOOR_S, 60 * math.ceil(seconds / 60))


@dataclass(frozen=True)
class Slot:
    index: int
    gpus: str
    port: int


def systemd_words(args: tuple[str, ...]) -> str:
    """Arguments as systemd's ExecStart= reads them: `$` doubled (no expansion), quoted where they have spaces."""
    words = []
    for arg in args:
        word = arg.replace("$", "$$")
        words.append(f'"{word}"' if any(c.isspace() for c in word) or not word else word)
    return " ".join(words)


def render_vllm_units(plan: DeploymentPlan, image: str | None = None) -> list[Artifact]:
    """The replica template unit and slot drop-ins of a deployment, whatever its engine.

    ``image``: the image the program built from images/vllm and pushed (infra/provision/images.py), e.g.
    ``<ecr repository>@sha256:...``, used by vLLM deployments; None (the render) and other engines: the
    engine's pinned upstream image."""
    assert plan.chosen is not None  # render runs on feasible plans only
    name = plan.deployment.name
    tp = plan.chosen.config.tp
    timeout = start_timeout_s(plan)
    launch = engine_launch(plan)
    unit = render_template(
        "systemd/replica.service.j2",
        deployment=name,
        title=launch.engine.title,
        version=launch.engine.version,
        docs=launch.engine.docs,
        image=launch.image_or(image),
        entrypoint=launch.entrypoint,
        args=systemd_words(launch.args),
        env=launch.env,
        docker=DOCKER,
        curl=CURL,
        env_file=env_file(name),
        api_key_env=launch.api_key_env,
        container=container_name(name, "%i"),
        config_dir=CONFIG_DIR,
        container_config=CONTAINER_CONFIG,
        model_cache=MODEL_CACHE,
        container_models=CONTAINER_MODELS,
        port=launch.port,
        ready_path=launch.ready_path,
        start_timeout=timeout,
        health_max_time=timeout - 30,
        health_delay=HEALTH_RETRY_DELAY_S,
        stop_grace=STOP_GRACE_S,
        stop_timeout=STOP_GRACE_S + 30,
        weights_gib=round(plan.chosen.replica.weights_gib, 1),
    )
    artifacts = [Artifact(f"systemd/{unit_name(name)}", "systemd-unit", name, unit)]
    for index in range(slots_per_machine(plan)):
        artifacts.append(Artifact(
            f"systemd/{instance_name(name, index)}.d/slot.conf", "systemd-unit", name,
            slot_dropin(name, tp, index, slot_gpus(tp, index), slot_port(index)),
        ))
    return artifacts


def slot_dropin(deployment: str, tp: int, index: int, gpus: list[int] | tuple[int, ...], port: int) -> str:
    """The drop-in of one replica slot: its GPU ids and host port (the Ansible vllm role writes the same
    two lines from an on-prem placement)."""
    slot = Slot(index, ",".join(str(g) for g in gpus), port)
    return render_template("systemd/slot.conf.j2", deployment=deployment, slot=slot, tp=tp)


def render_lb_unit(layout: NginxLayout | None = None) -> list[Artifact]:
    layout = layout or NginxLayout()
    content = render_template(
        "systemd/lb.service.j2",
        nginx=NGINX,
        conf=f"{layout.config_dir}/nginx.conf",
        pid_file=layout.pid_file,
        start_stop_daemon=START_STOP_DAEMON,
    )
    return [Artifact("systemd/gpufleet-lb.service", "systemd-unit", None, content)]


EXPORTER_UNITS = ("gpufleet-dcgm-exporter.service", "gpufleet-node-exporter.service")


def render_gpu_exporter_units() -> list[Artifact]:
    """The aws-ec2 GPU hosts' exporters (dcgm-exporter, node_exporter) as containers: the GPU AMI has docker
    but neither exporter. On-prem, the gpu_host role installs them."""
    units = {
        EXPORTER_UNITS[0]: render_template("systemd/dcgm-exporter.service.j2", docker=DOCKER,
                                           image=DCGM_EXPORTER_IMAGE, port=DCGM_EXPORTER_PORT),
        EXPORTER_UNITS[1]: render_template("systemd/node-exporter.service.j2", docker=DOCKER,
                                           image=NODE_EXPORTER_IMAGE, port=NODE_EXPORTER_PORT),
    }
    return [Artifact(f"systemd/{name}", "systemd-unit", None, text) for name, text in units.items()]


def render_systemd(plan: FleetPlan) -> list[Artifact]:
    artifacts: list[Artifact] = []
    for deployment in plan.deployments:
        units = render_vllm_units(deployment)
        if plan.spec.target == "onprem":
            # Deployments share on-prem servers, so slot N of two deployments would claim the same GPUs and
            # port: the Ansible vllm role writes each replica's drop-in from its placement (host_vars).
            units = [u for u in units if not u.path.endswith("/slot.conf")]
        artifacts.extend(units)
    artifacts.extend(render_lb_unit())
    if plan.spec.target == "aws-ec2":
        artifacts.extend(render_gpu_exporter_units())
    return artifacts

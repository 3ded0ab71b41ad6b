"""systemd units and the single-host compose file: `systemd-analyze verify` on every unit of every example
stack (in a temporary root holding the binaries the units run), the compose file against the official
compose-spec schema (check-jsonschema's vendored copy), and structural assertions on the parsed files.

systemd-analyze and check-jsonschema are required: a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from infra.catalog import load_catalog
from infra.plan.optimize import FleetPlan, plan_stack
from infra.render.artifacts import Artifact
from infra.render.compose import COMPOSE_FILE, fits_one_host, render_compose
from infra.render.engines import engine_launch
from infra.render.hostlayout import VLLM_PORT
from infra.render.placement import place_onprem
from infra.render.stack import render_fleet
from infra.render.systemd import (
    CURL,
    DOCKER,
    NGINX,
    START_STOP_DAEMON,
    START_TIMEOUT_FLOOR_S,
    VLLM_IMAGE,
    render_systemd,
    slot_dropin,
    slots_per_machine,
)
from infra.render.vllm import API_KEY_ENV, VLLM_VERSION
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["dev", "staging", "prod", "onprem-a800", "engines"]
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
SECRET_PATTERN = re.compile(rf"{API_KEY_ENV}\s*[=:]|sk-[A-Za-z0-9]")


require = require_tool


@cache
def plan(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def units(stack: str) -> list[Artifact]:
    return [a for a in render_fleet(plan(stack)) if a.kind == "systemd-unit"]


def parse_unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text.replace("\\\n", " "))
    return parser


def systemd_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root`: the distribution's units (targets the units hang off),
    a docker.service, and stub executables at the paths the units run (verify checks they exist)."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for binary in (DOCKER, CURL, NGINX, START_STOP_DAEMON):
        stub = root / binary.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    if not (root / "usr/lib/systemd/system/docker.service").exists():
        (root / "etc/systemd/system/docker.service").write_text(
            f"[Unit]\nDescription=stand-in for dockerd\n[Service]\nExecStart={DOCKER}\n")
    return root


@pytest.mark.parametrize("stack", STACKS)
def test_every_unit_passes_systemd_analyze_verify(stack: str, tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    if not SYSTEM_UNITS.is_dir():
        pytest.fail(f"{SYSTEM_UNITS} is missing: install the Debian package systemd")
    root = systemd_root(tmp_path)
    for artifact in [*units(stack), *onprem_dropins(stack)]:
        target = root / "etc/systemd/system" / artifact.path.removeprefix("systemd/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(artifact.content)
    # Template units are verified through their instances, each with its slot's drop-in applied.
    names = sorted({p.parent.name.removesuffix(".d") for p in (root / "etc/systemd/system").glob("*@*.service.d/*")})
    names.append("gpufleet-lb.service")
    result = subprocess.run([analyze, "verify", f"--root={root}", *names],
                            capture_output=True, text=True, check=False, timeout=120)
    # Unknown keys and bad values are only warnings with exit 0: any output is a failure.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr)
    assert len(names) > 1


def onprem_dropins(stack: str) -> list[Artifact]:
    """On-prem: the drop-ins the Ansible vllm role writes from the placement (one server's worth each, as
    a server holds at most one instance of a deployment's slot number)."""
    fleet = plan(stack)
    if fleet.spec.target != "onprem":
        return []
    first = place_onprem(fleet, load_catalog())[0].server
    return [Artifact(f"systemd/{p.unit}.d/slot.conf", "systemd-unit", p.deployment,
                     slot_dropin(p.deployment, len(p.gpus), p.slot, p.gpus, p.port))
            for p in place_onprem(fleet, load_catalog()) if p.server == first]


@pytest.mark.parametrize("stack", STACKS)
def test_vllm_units_run_the_pinned_image_on_disjoint_gpus(stack: str) -> None:
    fleet = plan(stack)
    rendered = {a.path: a for a in units(stack)}
    for deployment in fleet.deployments:
        assert deployment.chosen is not None
        name, tp = deployment.deployment.name, deployment.chosen.config.tp
        gpu_count = deployment.chosen.machine.instance.gpu_count
        unit = parse_unit(rendered[f"systemd/gpufleet-vllm-{name}@.service"].content)
        service = unit["Service"]
        start = service["ExecStart"].split()
        assert start[:2] == [DOCKER, "run"] and "--rm" in start and "--ipc=host" in start
        launch = engine_launch(deployment)
        assert f"vllm/vllm-openai:v{VLLM_VERSION}" == VLLM_IMAGE
        assert launch.image in start and (launch.image == VLLM_IMAGE) == (deployment.profile.engine == "vllm")
        if launch.api_key_env is not None:  # by name: the value stays in the env file
            assert start[start.index("--env") + 1] == launch.api_key_env
        else:
            assert not any(v.startswith(launch.key_file_var) for v in start)
        assert service["EnvironmentFile"] == f"/etc/gpufleet/vllm/{name}.env"
        assert any(v.endswith(":/etc/gpufleet:ro") for i, v in enumerate(start) if start[i - 1] == "--volume")
        assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
        assert int(service["TimeoutStartSec"]) >= START_TIMEOUT_FLOOR_S
        assert service["ExecStop"].startswith(f"{DOCKER} stop")
        assert "docker.service" in unit["Unit"]["Requires"] and "network-online.target" in unit["Unit"]["After"]
        if fleet.spec.target == "onprem":  # placed per server (tests/render/test_placement.py)
            assert not any("/slot.conf" in path for path in rendered)
            continue
        slots = slots_per_machine(deployment)
        assert slots >= 1 and slots * tp <= gpu_count
        seen_gpus: set[int] = set()
        ports = set()
        for slot in range(slots):
            dropin = rendered[f"systemd/gpufleet-vllm-{name}@{slot}.service.d/slot.conf"].content
            assert parse_unit(dropin).sections() == ["Service"]
            lines = re.finditer(r"^Environment=(\w+)=(\S+)$", dropin, re.MULTILINE)
            env: dict[str, str] = {m.group(1): m.group(2) for m in lines}
            gpus = [int(g) for g in env["GPUFLEET_GPUS"].split(",")]
            assert gpus == list(range(tp * slot, tp * slot + tp))
            assert all(0 <= g < gpu_count for g in gpus) and not seen_gpus & set(gpus)
            seen_gpus |= set(gpus)
            ports.add(int(env["GPUFLEET_PORT"]))
        assert ports == {VLLM_PORT + s for s in range(slots)}
        assert f"systemd/gpufleet-vllm-{name}@{slots}.service.d/slot.conf" not in rendered


def test_start_timeout_grows_with_the_weights() -> None:
    fleet = plan("prod")
    timeouts = {d.deployment.name: parse_unit(next(
        a.content for a in render_systemd(fleet) if a.path == f"systemd/gpufleet-vllm-{d.deployment.name}@.service"
    ))["Service"]["TimeoutStartSec"] for d in fleet.deployments}
    assert int(timeouts["chat-70b"]) > int(timeouts["support"]) >= START_TIMEOUT_FLOOR_S


def test_lb_unit_runs_host_nginx_on_the_rendered_config() -> None:
    lb = parse_unit(next(a.content for a in units("prod") if a.path == "systemd/gpufleet-lb.service"))
    service = lb["Service"]
    assert service["ExecStart"].startswith(f"{NGINX} -c /etc/gpufleet/nginx/nginx.conf")
    assert service["ExecStartPre"].startswith(f"{NGINX} -t")
    assert "nginx.service" in lb["Unit"]["Conflicts"]


def test_no_api_key_value_in_any_unit_or_compose_file() -> None:
    for stack in STACKS:
        for artifact in render_fleet(plan(stack)):
            if artifact.kind in ("systemd-unit", "compose"):
                assert not SECRET_PATTERN.search(artifact.content), artifact.path


def single_host_plans() -> dict[str, FleetPlan]:
    """dev fits one host as planned; onprem-a800 with one chat-72b replica (4 + 3 of 8 A800s) makes a
    two-deployment host, so GPU packing across deployments is exercised too."""
    onprem = plan("onprem-a800")
    shrunk = [
        dataclasses.replace(d, chosen=dataclasses.replace(d.chosen, replicas=1))
        if d.deployment.name == "chat-72b" and d.chosen is not None else d
        for d in onprem.deployments
    ]
    return {"dev": plan("dev"), "onprem-one-host": dataclasses.replace(onprem, deployments=shrunk)}


def test_compose_is_rendered_only_for_single_host_fleets() -> None:
    rendered = {s: any(a.path == COMPOSE_FILE for a in render_fleet(plan(s))) for s in STACKS}
    assert rendered == {s: fits_one_host(plan(s)) for s in STACKS}
    assert rendered["dev"] and not rendered["prod"]


@pytest.mark.parametrize("name", ["dev", "onprem-one-host"])
def test_compose_file_is_valid_and_packs_gpus_without_overlap(name: str, tmp_path: Path) -> None:
    check = require("check-jsonschema")
    fleet = single_host_plans()[name]
    artifacts = {a.path: a for a in render_compose(fleet)}
    compose_path = tmp_path / "docker-compose.yaml"
    compose_path.write_text(artifacts[COMPOSE_FILE].content)
    result = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(compose_path)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    document = yaml.safe_load(compose_path.read_text())
    services = document["services"]
    gpu_count = next(d.chosen.machine.instance.gpu_count for d in fleet.deployments if d.chosen is not None)
    used: list[str] = []
    ports: list[str] = []
    for deployment in fleet.deployments:
        assert deployment.chosen is not None
        dname = deployment.deployment.name
        replicas = [s for s in services if s.startswith(f"vllm-{dname}-")]
        assert len(replicas) == deployment.chosen.replicas
        upstream = artifacts[f"compose/upstreams/{dname}.conf"].content
        for service_name in replicas:
            service = services[service_name]
            assert service["image"] == f"vllm/vllm-openai:v{VLLM_VERSION}"
            assert service["ipc"] == "host" and service["restart"] == "unless-stopped"
            assert service["env_file"] == [f"/etc/gpufleet/vllm/{dname}.env"]
            assert API_KEY_ENV not in service.get("environment", {})
            assert "/health" in " ".join(service["healthcheck"]["test"])
            (device,) = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["driver"] == "nvidia" and len(device["device_ids"]) == deployment.chosen.config.tp
            used.extend(device["device_ids"])
            (port,) = service["ports"]
            ports.append(port)
            host_port = port.split(":")[1]
            assert f"server 127.0.0.1:{host_port} " in upstream
    assert len(used) == len(set(used)) and all(0 <= int(g) < gpu_count for g in used)
    assert len(ports) == len(set(ports))
    lb = services["lb"]
    assert lb["network_mode"] == "host" and lb["restart"] == "unless-stopped"
    assert "/healthz" in " ".join(lb["healthcheck"]["test"])


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator bites: a wrong type where compose expects a list fails the schema."""
    check = require("check-jsonschema")
    document = yaml.safe_load(next(a.content for a in render_compose(plan("dev")) if a.path == COMPOSE_FILE))
    document["services"]["lb"]["restart"] = ["always"]
    document["services"]["vllm-chat-0"]["gpus_typo"] = 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(broken)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode != 0


def test_systemd_analyze_verify_bites(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    root = systemd_root(tmp_path)
    (root / "etc/systemd/system/bad.service").write_text(
        "[Service]\nExecStart=/usr/bin/does-not-exist\nRestart=sometimes\n")
    result = subprocess.run([analyze, "verify", f"--root={root}", "bad.service"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode != 0 or result.stderr.strip()


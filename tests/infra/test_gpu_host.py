"""pytest-testinfra specs of a converged gpufleet GPU server (roles container_runtime, gpu_host, vllm).

Against the GPU servers after a deploy (the render directory is the inventory's parent)::

    GPUFLEET_API_KEY=... pytest tests/infra --hosts='ansible://gpu_servers' \\
        --ansible-inventory=out/onprem-a800/ansible/inventory.yml

On this machine (tests/ansible/test_gpu_roles.py, after running the vllm role with the emulate engine on the
local copy of onprem-a800, whose GPU servers are all this machine)::

    GPUFLEET_RENDER_DIR=... GPUFLEET_API_KEY=... pytest tests/infra/test_gpu_host.py --hosts=local:// \\
        --infra-groups=gpu_servers

What is expected comes from the render the hosts were converged from, never from the host: the driver
version pinned in the gpu_host role; the GPU count, GPU link (NVSwitch) and placement of each server
(host_vars); the served model names (group_vars).

The one legitimate skip: the hardware specs (driver, nvidia-smi GPU count, Fabric Manager, DCGM) on a host
reached by a local connection that has no NVIDIA device on its PCI bus, i.e. a CI machine. A remote host, or
any host with NVIDIA devices, always gets them, and fails if the driver is missing. The vLLM specs run
everywhere.
"""

from __future__ import annotations

import json
import os
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.probe import http

pytestmark = pytest.mark.infra_group("gpu_servers")

ROOT = Path(__file__).resolve().parents[2]
GPU_HOST_DEFAULTS = ROOT / "ansible/roles/gpu_host/defaults/main.yml"


class Deployed:
    """The render the hosts were converged from: inventory, group_vars, host_vars."""

    def __init__(self, render_dir: Path, api_key: str) -> None:
        self.render_dir = render_dir
        self.api_key = api_key
        ansible = render_dir / "ansible"
        inventory = yaml.safe_load((ansible / "inventory.yml").read_text(encoding="utf-8"))
        self.servers: dict[str, dict[str, Any]] = inventory["all"]["children"]["gpu_servers"]["hosts"]
        self.group_vars = yaml.safe_load((ansible / "group_vars/all.yml").read_text(encoding="utf-8"))
        # Per server: gpufleet_server_type, gpufleet_gpu_count, gpufleet_gpu_link, gpufleet_replicas.
        self.host_vars: dict[str, dict[str, Any]] = {
            name: yaml.safe_load((ansible / f"host_vars/{name}.yml").read_text(encoding="utf-8"))
            for name in self.servers
        }
        self.replicas = {name: v["gpufleet_replicas"] for name, v in self.host_vars.items()}


@pytest.fixture
def deployed(host: Any, request: pytest.FixtureRequest) -> Deployed:
    key = os.environ.get("GPUFLEET_API_KEY")
    if not key:
        pytest.fail("GPUFLEET_API_KEY (the stack's vLLM API key) is needed to check /v1/models")
    render = os.environ.get("GPUFLEET_RENDER_DIR")
    inventory = request.config.getoption("ansible_inventory", default=None)
    if not render and host.backend.NAME == "ansible" and inventory:
        # gpufleet_render_dir is "{{ inventory_dir }}/..": the rendered inventory sits in <render>/ansible/.
        render = str(Path(inventory).resolve().parent.parent)
    if not render:
        pytest.fail("GPUFLEET_RENDER_DIR (the render the host was converged from) is needed on "
                    f"{host.backend.NAME}:// (on ansible:// it is the inventory's parent)")
    return Deployed(Path(render), key)


def _servers_on(host: Any, deployed: Deployed) -> list[str]:
    """The GPU servers this testinfra host is: itself (ansible backend) or all of them (local://, CI)."""
    name = host.backend.get_hostname()
    return [name] if name in deployed.servers else list(deployed.servers)


def _is_local(host: Any) -> bool:
    backend = host.backend
    return backend.NAME == "local" or (backend.NAME == "ansible"
                                       and backend.host.vars.get("ansible_connection") == "local")


@cache
def _driver_version() -> str:
    return str(yaml.safe_load(GPU_HOST_DEFAULTS.read_text(encoding="utf-8"))["gpu_host_driver_version"])


def _require_gpu_hardware(host: Any) -> None:
    nvidia = host.run("grep -lx 0x10de /sys/bus/pci/devices/*/vendor").stdout.split()
    if not nvidia and _is_local(host):
        pytest.skip("no NVIDIA device on this machine's PCI bus (a CI run on local://): the GPU hardware specs "
                    "run on GPU servers only")


def _running(host: Any, service: str) -> bool:
    if host.file("/run/systemd/system").is_directory:  # sd_booted(): systemd is PID 1
        unit = host.service(service)
        return bool(unit.is_running and unit.is_enabled)
    # The vllm role's fallback where systemd is not PID 1: LSB init scripts (start-stop-daemon, pid file).
    status = host.run(f"/etc/init.d/{shlex.quote(service)} status")
    enabled = host.run(f"ls /etc/rc2.d/S*{shlex.quote(service)}")
    return status.rc == 0 and enabled.rc == 0


# ------------------------------------------------------------------------------------------ GPU hardware


def test_driver_is_the_pinned_version(host: Any) -> None:
    _require_gpu_hardware(host)
    versions = host.check_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader").split()
    assert set(versions) == {_driver_version()}


def test_gpu_count_is_the_planned_one(host: Any, deployed: Deployed) -> None:
    _require_gpu_hardware(host)
    (server,) = _servers_on(host, deployed)
    gpus = host.check_output("nvidia-smi --query-gpu=index --format=csv,noheader").split()
    assert len(gpus) == deployed.host_vars[server]["gpufleet_gpu_count"]


def test_fabric_manager_active_on_nvswitch_servers(host: Any, deployed: Deployed) -> None:
    _require_gpu_hardware(host)
    (server,) = _servers_on(host, deployed)
    fabric = host.service("nvidia-fabricmanager")
    if deployed.host_vars[server]["gpufleet_gpu_link"] == "nvswitch":
        assert fabric.is_running and fabric.is_enabled
        package = host.check_output("dpkg-query -W -f '${Version}' 'nvidia-fabricmanager-*'")
        assert package.startswith(_driver_version() + "-")  # Fabric Manager refuses any other version
    else:
        assert not fabric.is_running


def test_persistence_and_dcgm_exporter(host: Any) -> None:
    _require_gpu_hardware(host)
    assert host.service("nvidia-persistenced").is_running
    assert host.service("nvidia-dcgm").is_running
    assert host.service("gpufleet-dcgm-exporter").is_running
    metrics = http(host, "http://127.0.0.1:9400/metrics")
    assert metrics.status == 200 and "DCGM_FI_DEV_GPU_UTIL" in metrics.body


# ------------------------------------------------------------------------------------------ vLLM (everywhere)


def test_every_placed_vllm_replica_is_active(host: Any, deployed: Deployed) -> None:
    for server in _servers_on(host, deployed):
        for r in deployed.replicas[server]:
            service = f"gpufleet-vllm-{r['deployment']}@{r['slot']}"
            assert _running(host, service), f"{server}: {service} is not running and enabled"


def test_every_replica_serves_its_planned_model(host: Any, deployed: Deployed) -> None:
    deployments = deployed.group_vars["gpufleet_deployments"]
    for server in _servers_on(host, deployed):
        address = deployed.servers[server]["ansible_host"]
        for r in deployed.replicas[server]:
            base = f"http://{address}:{r['port']}"
            assert http(host, f"{base}/health").status == 200, (server, r)
            models = http(host, f"{base}/v1/models", headers={"Authorization": f"Bearer {deployed.api_key}"})
            assert models.status == 200, (server, r, models.body)
            ids = [m["id"] for m in json.loads(models.body)["data"]]
            assert ids == [deployments[r["deployment"]]["served_model_name"]], (server, r)
            assert http(host, f"{base}/v1/models").status == 401  # the env file's key is enforced


def test_env_file_is_private(host: Any, deployed: Deployed) -> None:
    for server in _servers_on(host, deployed):
        for deployment in {r["deployment"] for r in deployed.replicas[server]}:
            env = host.file(f"/etc/gpufleet/vllm/{deployment}.env")
            assert env.exists and env.user == "root" and env.mode == 0o600

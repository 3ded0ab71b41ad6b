"""The GPU-server roles: container_runtime and gpu_host in check mode on this machine (no GPU, no NVIDIA or
Docker repository reachable), and the vllm role run FOR REAL with the emulate engine.

(a) ``--list-tasks`` pins what the roles do and in which order; ``--check`` runs them against this Debian
    machine's facts for an NVSwitch server, a PCIe server and an undeclared one (NVSwitch from the PCI bus).
    Check mode never adds a repository, so the package tasks are skipped ("preview") and the planned package
    versions are asserted instead: Fabric Manager equal to the driver, and only on NVSwitch servers.
(b) The vllm role on the local copy of onprem-a800 (real renderer, both GPU servers on loopback): the first
    run converges, the second changes nothing, every placed replica answers /health and /v1/models with the
    planned served model name (and refuses /v1 without the key), the installed units and drop-ins pass
    ``systemd-analyze verify``, and the testinfra specs tests/infra/test_gpu_host.py pass against this machine
    (``--hosts=local:// --infra-groups=gpu_servers``): the vLLM specs run, the GPU hardware specs skip (no
    NVIDIA device here: their one legitimate skip).

All of them change or read this machine through Ansible: xdist group "ansible-local" (one at a time).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible import gpu_helpers
from tests.ansible.gpu_helpers import Converged, run_playbook, task_results, write_playbook
from tests.ansible.runner import BIN, ROOT, XDIST_GROUP, machine_lock
from tests.tooling import require_tool

pytestmark = pytest.mark.xdist_group(XDIST_GROUP)

GPU_HOST_DEFAULTS = yaml.safe_load((ROOT / "ansible/roles/gpu_host/defaults/main.yml").read_text(encoding="utf-8"))
DRIVER = GPU_HOST_DEFAULTS["gpu_host_driver_version"]
BRANCH = GPU_HOST_DEFAULTS["gpu_host_driver_branch"]

# The tasks the two roles run on a GPU server, in order (ansible-playbook --list-tasks).
EXPECTED_TASKS = [
    "Container_runtime | Check the service manager choice",
    "Container_runtime | Install the tools that fetch and check the repository key",
    "Container_runtime | Create the apt keyring directory",
    "Container_runtime | Look for Docker's repository key",
    "Container_runtime | Download Docker's repository key",
    "Container_runtime | Read the key's fingerprint",
    "Container_runtime | Check the key is Docker's release key",
    "Container_runtime | Add Docker's apt repository",
    "Container_runtime | Pin Docker Engine's version",
    "Container_runtime | Refresh the apt cache for the new repository",
    "Container_runtime | Install Docker Engine",
    "Container_runtime | Note whether the engine is there to talk to in this run",
    "Container_runtime | Create /etc/docker",
    "Container_runtime | Write daemon.json",
    "Container_runtime | Enable and start docker",
    "Gpu_host | Work out the distribution, service manager and NVSwitch inputs",
    "Gpu_host | Check the inputs",
    "Gpu_host | Look for NVSwitch devices on the PCI bus",
    "Gpu_host | Decide whether this server has NVSwitch (Fabric Manager)",
    "Gpu_host | Plan the NVIDIA packages",
    "Gpu_host | Create the apt keyring directory",
    "Gpu_host | Look for NVIDIA's repository keys",
    "Gpu_host | Download NVIDIA's repository keys",
    "Gpu_host | Read the keys' fingerprints",
    "Gpu_host | Check the keys are NVIDIA's",
    "Gpu_host | Add NVIDIA's apt repositories",
    "Gpu_host | Hold the driver at",
    "Gpu_host | Note whether the packages can be resolved in this run",
    "Gpu_host | Refresh the apt cache for the new repositories",
    "Gpu_host | Install the NVIDIA driver",
    "Gpu_host | Install Fabric Manager (NVSwitch) of driver",
    "Gpu_host | Install the NVIDIA container toolkit",
    "Gpu_host | Install DCGM",
    "Gpu_host | Reboot into the new driver",
    "Gpu_host | Read the running driver version",
    "Gpu_host | Check the running driver is the pinned one",
    "Gpu_host | Enable the persistence daemon (keeps the GPUs initialised between vLLM restarts)",
    "Gpu_host | Enable Fabric Manager (NVSwitch)",
    "Gpu_host | Enable the DCGM host engine",
    "Gpu_host | Ask nvidia-ctk which docker runtime it would configure",
    "Gpu_host | Read docker's daemon.json",
    "Gpu_host | Check docker's daemon.json has NVIDIA's runtime as nvidia-ctk writes it",
    "Gpu_host | Install the dcgm-exporter unit",
    "Gpu_host | Verify the dcgm-exporter unit",
    "Gpu_host | Apply unit changes before starting dcgm-exporter",
    "Gpu_host | Enable dcgm-exporter on port",
]


@pytest.fixture(scope="module")
def check_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three GPU servers that are all this machine: NVSwitch and PCIe declared (the catalog's gpuLink, as the
    inventory would carry it), and one undeclared (auto: the PCI bus of this machine, which has no NVSwitch)."""
    work = tmp_path_factory.mktemp("gpu-check")
    local = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    inventory = {"all": {"children": {"gpu_servers": {"hosts": {
        "hgx-a800": {**local, "gpufleet_gpu_link": "nvswitch"},
        "pcie-l40s": {**local, "gpufleet_gpu_link": "pcie"},
        "undeclared": local,
    }}}}}
    path = work / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def check_run(check_inventory: Path) -> dict[str, Any]:
    playbook = write_playbook(check_inventory.parent, ["container_runtime", "gpu_host"])
    before = _apt_state()
    doc = run_playbook(playbook, check_inventory, "--check", "--diff")
    assert _apt_state() == before, "a check run changed this machine's apt configuration"
    return doc


def _apt_state() -> list[str]:
    return sorted(str(p) for d in ("/etc/apt/sources.list.d", "/etc/apt/preferences.d", "/etc/apt/keyrings")
                  for p in Path(d).glob("*"))


def test_list_tasks_is_the_planned_sequence(check_inventory: Path) -> None:
    playbook = write_playbook(check_inventory.parent, ["container_runtime", "gpu_host"])
    result = subprocess.run([gpu_helpers.tool("ansible-playbook"), "-i", str(check_inventory), str(playbook),
                             "--list-tasks"], capture_output=True, text=True, env=gpu_helpers.ansible_env(
                                 ANSIBLE_STDOUT_CALLBACK="default"), check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = [m.group(1).strip() for m in re.finditer(r"^\s+(?:\w+ : )?(\S.*?)\tTAGS:", result.stdout, re.M)
              if not m.group(1).startswith("play #")]
    assert len(listed) == len(EXPECTED_TASKS), listed
    for got, want in zip(listed, EXPECTED_TASKS, strict=True):
        assert got.startswith(want), (got, want)


def test_check_mode_runs_clean(check_run: dict[str, Any]) -> None:
    assert check_run["returncode"] == 0, gpu_helpers.failures(check_run) or check_run["stderr"][-3000:]
    for host, stats in check_run["stats"].items():
        assert stats["failures"] == 0 and stats["unreachable"] == 0, (host, stats)
    # What check mode predicts on a fresh host: the repositories and the units would be written.
    for task in ("Add Docker's apt repository", "Add NVIDIA's apt repositories", "Write daemon.json",
                 "Install the dcgm-exporter unit", "Hold the driver at 580.95.05"):
        assert all(r.get("changed") for r in task_results(check_run, task).values()), task


def _planned(check_run: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    return {host: res["ansible_facts"]["_gpu_host_packages"]
            for host, res in task_results(check_run, "Plan the NVIDIA packages").items()}


def _version(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("=")
    return name, version


def test_fabric_manager_matches_the_driver_and_only_on_nvswitch(check_run: dict[str, Any]) -> None:
    planned = _planned(check_run)
    nvswitch = task_results(check_run, "Decide whether this server has NVSwitch (Fabric Manager)")
    assert {h: r["ansible_facts"]["_gpu_host_nvswitch"] for h, r in nvswitch.items()} == {
        "hgx-a800": True, "pcie-l40s": False, "undeclared": False}
    hgx = planned["hgx-a800"]
    driver = dict(_version(s) for s in hgx["driver"])
    fabric = dict(_version(s) for s in hgx["fabricmanager"])
    assert driver == {f"cuda-drivers-{BRANCH}": f"{DRIVER}-*"}
    assert fabric == {f"nvidia-fabricmanager-{BRANCH}": f"{DRIVER}-*"}  # the very version of the driver
    assert planned["pcie-l40s"]["fabricmanager"] == [] and planned["undeclared"]["fabricmanager"] == []
    # The install task is there for the NVSwitch server only (skipped in check mode: no repository yet).
    fm = task_results(check_run, f"Install Fabric Manager (NVSwitch) of driver {DRIVER}")
    assert fm["hgx-a800"]["false_condition"] == "not _gpu_host_preview"  # would install, once the repo exists
    assert fm["pcie-l40s"]["false_condition"] == fm["undeclared"]["false_condition"] == "_gpu_host_nvswitch"
    # This Debian 12 machine gets the debian12 CUDA repository; the undeclared server scanned its PCI bus.
    sources = task_results(check_run, "Add NVIDIA's apt repositories")["hgx-a800"]["results"]
    assert "/compute/cuda/repos/debian12/x86_64/" in sources[0]["diff"][0]["after"]
    assert task_results(check_run, "Look for NVSwitch devices on the PCI bus")["undeclared"]["stdout"] == ""


def test_daemon_json_registers_nvidia_runtime(check_run: dict[str, Any]) -> None:
    for host, result in task_results(check_run, "Write daemon.json").items():
        daemon = json.loads(result["diff"][0]["after"])
        # What `nvidia-ctk runtime configure --runtime=docker` writes (gpu_host checks it on real hosts).
        assert daemon["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "args": []}}, host
        assert daemon["log-driver"] == "local"


# ----------------------------------------------------------------------------------------------- (b) vllm


@pytest.fixture(scope="module")
def converged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converged]:
    with machine_lock():
        converged = gpu_helpers.converge_vllm(request, tmp_path_factory)
        yield converged
        gpu_helpers.cleanup_vllm(converged.replicas)  # before the lock goes


def test_vllm_role_converges(converged: Converged) -> None:
    first = converged.first
    assert first["returncode"] == 0, gpu_helpers.failures(first) or first["stderr"][-3000:]
    assert all(s["changed"] > 0 for s in first["stats"].values()), first["stats"]
    started = task_results(first, "Enable and start the replicas")
    assert {h: len(r["results"]) for h, r in started.items()} == {
        h: len(rs) for h, rs in converged.replicas.items()}


def test_vllm_role_second_run_changes_nothing(converged: Converged) -> None:
    second = converged.second
    assert second["returncode"] == 0, gpu_helpers.failures(second) or second["stderr"][-3000:]
    assert {h: s["changed"] for h, s in second["stats"].items()} == dict.fromkeys(converged.replicas, 0)


def _get(url: str, key: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_emulated_replicas_serve_the_planned_model(converged: Converged) -> None:
    served = 0
    for server, replicas in converged.replicas.items():
        for r in replicas:
            base = f"http://{converged.addresses[server]}:{r['port']}"
            assert _get(f"{base}/health")[0] == 200, (server, r)
            status, body = _get(f"{base}/v1/models", converged.api_key)
            assert status == 200, body
            planned = converged.deployments[r["deployment"]]["served_model_name"]
            assert [m["id"] for m in json.loads(body)["data"]] == [planned]
            assert _get(f"{base}/v1/models")[0] == 401  # the env file's key is enforced
            served += 1
    assert served == sum(d["replicas"] for d in converged.deployments.values())


def test_env_files_are_private(converged: Converged) -> None:
    for deployment in converged.deployments:
        env = Path(f"/etc/gpufleet/vllm/{deployment}.env")
        assert env.stat().st_mode & 0o777 == 0o600
        assert env.read_text(encoding="utf-8") == f"VLLM_API_KEY={converged.api_key}\n"
    # no_log: the key is in no task result of either run.
    assert converged.api_key not in json.dumps(converged.first) + json.dumps(converged.second)


def test_installed_units_verify(converged: Converged, tmp_path: Path) -> None:
    """The role writes the production units and drop-ins even here; the composed instances (rendered template
    unit + slot.conf + engine.conf) pass `systemd-analyze verify`, in a root with docker/curl stand-ins."""
    analyze = require_tool("systemd-analyze")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for path in Path("/etc/systemd/system").glob("gpufleet-vllm-*"):
        (shutil.copytree if path.is_dir() else shutil.copy)(path, units / path.name)
    (units / "docker.service").write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=/usr/bin/docker\n")
    for binary in ("/usr/bin/docker", "/usr/bin/curl", str(BIN / "gpufleet")):
        stub = root / binary.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    names = [f"gpufleet-vllm-{r['deployment']}@{r['slot']}.service"
             for rs in converged.replicas.values() for r in rs]
    for name in names:
        slot = (units / f"{name}.d/slot.conf").read_text(encoding="utf-8")
        assert "GPUFLEET_GPUS=" in slot and "GPUFLEET_PORT=" in slot
    result = subprocess.run([analyze, "verify", f"--root={root}", *names], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


HARDWARE_SPECS = {"test_driver_is_the_pinned_version", "test_gpu_count_is_the_planned_one",
                  "test_fabric_manager_active_on_nvswitch_servers", "test_persistence_and_dcgm_exporter"}
VLLM_SPECS = {"test_every_placed_vllm_replica_is_active", "test_every_replica_serves_its_planned_model",
              "test_env_file_is_private"}


def test_infra_specs_pass_on_this_machine(converged: Converged) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/infra/test_gpu_host.py", "--hosts=local://",
         "--infra-groups=gpu_servers", "-p", "no:cacheprovider", "-p", "no:xdist", "-rA", "-q"],
        cwd=ROOT, env={**gpu_helpers.ansible_env(), "GPUFLEET_RENDER_DIR": str(converged.render_dir),
                       "GPUFLEET_API_KEY": converged.api_key},
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = set(re.findall(r"^PASSED \S+::(\w+)", proc.stdout, re.M))
    skipped = re.findall(r"^SKIPPED \[(\d+)\] \S+:\d+: (.*)$", proc.stdout, re.M)
    assert passed == VLLM_SPECS, proc.stdout
    # Only the hardware specs skip, each for the one documented reason.
    assert sum(int(n) for n, _ in skipped) == len(HARDWARE_SPECS), proc.stdout
    assert all("no NVIDIA device on this machine's PCI bus" in reason for _, reason in skipped), proc.stdout

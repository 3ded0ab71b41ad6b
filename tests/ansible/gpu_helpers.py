"""Running the GPU-server roles (container_runtime, gpu_host, vllm) on this machine (tests/ansible/test_gpu_roles.py).

- ``run_playbook``: ``ansible-playbook`` with a JSON stdout callback, the repo's ansible.cfg and roles; returns
  the parsed document (``plays`` -> ``tasks`` -> ``hosts`` -> result, ``stats``). ansible-core alone has no
  ``json`` callback (it lives in the ansible.posix collection, which is not installed and needs Galaxy), so
  a minimal one with the same document shape is written next to the playbook (``JSON_CALLBACK``).
- ``converge_vllm``: the vllm role run FOR REAL with ``vllm_engine=emulate`` on the local copy of the
  onprem-a800 stack (tests/ansible/localstack.py: the real renderer; GPU servers on 127.0.0.2 and 127.0.0.3),
  twice (the second run must change nothing). The replicas are stopped and every file the role wrote is
  removed when the session ends.

This machine's PID 1 is not systemd (``ansible_service_mgr`` is ``process_api``), so the role takes its
init-script fallback here (see ansible/roles/vllm/templates/vllm-replica.init.j2); on a GPU server it runs
the same replicas as systemd units.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible import localstack
from tests.ansible.runner import BIN, ROOT, env

JSON_CALLBACK = '''
import contextlib
import fcntl
import json
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """One JSON document on stdout at the end: plays -> tasks -> hosts -> result, and the per-host stats.
    Results go through CallbackBase._dump_results, which censors no_log results as the default callback does."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "gpufleet_json"

    def __init__(self):
        super().__init__()
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _start(self, task):
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name()}, "hosts": {}})

    v2_playbook_on_task_start = lambda self, task, is_conditional: self._start(task)
    v2_playbook_on_handler_task_start = _start

    def _record(self, result, **extra):
        data = json.loads(self._dump_results(result._result))
        if "diff" in result._result and not result._result.get("_ansible_no_log"):
            data["diff"] = result._result["diff"]  # --diff output, which _dump_results leaves out
        data.update(extra)
        self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = data

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True, ignore_errors=ignore_errors)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        hosts = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self.plays, "stats": hosts}))
'''


def callback_dir() -> Path:
    directory = Path(tempfile.gettempdir()) / f"gpufleet-ansible-callbacks-{os.getuid()}"
    directory.mkdir(exist_ok=True)
    (directory / "gpufleet_json.py").write_text(JSON_CALLBACK, encoding="utf-8")
    return directory


def ansible_env(**extra: str) -> dict[str, str]:
    """runner.env() with the JSON stdout callback."""
    return env(**{"ANSIBLE_CALLBACK_PLUGINS": str(callback_dir()), "ANSIBLE_STDOUT_CALLBACK": "gpufleet_json",
                  **extra})


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required: pip install -e '.[dev]'")
    return path


def write_playbook(directory: Path, roles: list[str], hosts: str = "gpu_servers") -> Path:
    play = [{"name": "gpufleet GPU roles under test", "hosts": hosts, "become": False, "roles": roles}]
    path = directory / f"play-{'-'.join(roles)}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
    return path


def run_playbook(playbook: Path, inventory: Path, *args: str, timeout: float = 600) -> dict[str, Any]:
    cmd = [tool("ansible-playbook"), "-i", str(inventory), str(playbook), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), timeout=timeout, check=False)
    try:
        doc: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    doc["returncode"] = result.returncode
    doc["stderr"] = result.stderr
    return doc


def task_results(doc: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """host -> result of the task whose name ends with ``name`` (role prefix left out)."""
    for play in doc["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].endswith(name):
                return dict(task["hosts"])
    raise AssertionError(f"no task named {name!r} ran")


def failures(doc: dict[str, Any]) -> list[str]:
    out = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get("failed") and not res.get("ignore_errors"):
                    out.append(f"{host}: {task['task']['name']}: {res.get('msg')}")
    return out


@dataclass(frozen=True)
class Converged:
    render_dir: Path
    inventory: Path
    api_key: str
    first: dict[str, Any]
    second: dict[str, Any]
    replicas: dict[str, list[dict[str, Any]]]
    """GPU server -> its gpufleet_replicas (host_vars), as placed by the renderer."""
    addresses: dict[str, str]
    deployments: dict[str, dict[str, Any]]


def _replicas(render_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    inventory = yaml.safe_load((render_dir / "ansible/inventory.yml").read_text(encoding="utf-8"))
    hosts = inventory["all"]["children"]["gpu_servers"]["hosts"]
    replicas = {}
    for name in hosts:
        host_vars = yaml.safe_load((render_dir / f"ansible/host_vars/{name}.yml").read_text(encoding="utf-8"))
        replicas[name] = host_vars["gpufleet_replicas"]
    return replicas, {name: h["ansible_host"] for name, h in hosts.items()}


def cleanup_vllm(replicas: dict[str, list[dict[str, Any]]]) -> None:
    """Stop the replicas and remove what the vllm role wrote (this machine is a CI machine, not a GPU server)."""
    flat = [r for rs in replicas.values() for r in rs]
    for r in flat:
        name = f"gpufleet-vllm-{r['deployment']}@{r['slot']}"
        script = Path("/etc/init.d") / name
        if script.exists():
            subprocess.run([str(script), "stop"], capture_output=True, check=False, timeout=120)
            subprocess.run(["update-rc.d", "-f", name, "remove"], capture_output=True, check=False, timeout=60)
            script.unlink(missing_ok=True)
        shutil.rmtree(f"/etc/systemd/system/{name}.service.d", ignore_errors=True)
        for leftover in (Path(f"/run/gpufleet/{name}.pid"), Path(f"/var/log/gpufleet/{name}.log")):
            leftover.unlink(missing_ok=True)
    for deployment in {r["deployment"] for r in flat}:
        Path(f"/etc/systemd/system/gpufleet-vllm-{deployment}@.service").unlink(missing_ok=True)
        shutil.rmtree(f"/etc/systemd/system/gpufleet-vllm-{deployment}@.service.d", ignore_errors=True)
        for suffix in ("env", "yaml"):
            Path(f"/etc/gpufleet/vllm/{deployment}.{suffix}").unlink(missing_ok=True)


def converge_vllm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converged:
    """The vllm role, engine emulate, on the local stack: run twice (see module doc). Call it under
    machine_lock(), and keep holding the lock while the replicas are checked."""
    work = tmp_path_factory.mktemp("vllm-role")
    stack = localstack.build(work)
    replicas, addresses = _replicas(stack.render_dir)
    group_vars = yaml.safe_load((stack.render_dir / "ansible/group_vars/all.yml").read_text(encoding="utf-8"))
    request.addfinalizer(lambda: cleanup_vllm(replicas))  # also when a run fails half way (idempotent)
    cleanup_vllm(replicas)  # a previous run killed before its cleanup
    playbook = write_playbook(work, ["vllm"])
    args = [
        "-e", f"@{stack.vault}",
        "-e", "vllm_engine=emulate",
        "-e", f"vllm_emulate_project_dir={ROOT}",
        "-e", f"vllm_emulate_gpufleet={BIN / 'gpufleet'}",
        # Both GPU servers are this machine (127.0.0.2 and .3): each emulator listens on its server's address,
        # so the placement's ports (8000 + first GPU) are used as rendered without clashing.
        "-e", "vllm_emulate_host={{ ansible_host }}",
        "-e", "vllm_health_timeout_s=120",
    ]
    first = run_playbook(playbook, stack.inventory, *args)
    second = run_playbook(playbook, stack.inventory, *args) if first["returncode"] == 0 else first
    return Converged(stack.render_dir, stack.inventory, localstack.API_KEY, first, second, replicas, addresses,
                     group_vars["gpufleet_deployments"])

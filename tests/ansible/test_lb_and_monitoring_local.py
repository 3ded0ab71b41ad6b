"""Real runs of site.yml's load-balancer and monitoring plays on this machine (every host of a local copy of
the onprem-a800 stack is 127.0.0.x with a local connection; see localstack.py), then the testinfra specs of
tests/infra against what they converged.

What CI cannot do is covered differently:
- no systemd as PID 1: gpufleet_service_manager=sysvinit (Debian's init scripts);
- the firewall is not loaded here (it would filter the build machine itself): the rulesets are written and
  checked with `nft -c` by the role (firewall_apply=false), then loaded into a throwaway network namespace;
- no Grafana package (it comes from Grafana's apt repository): a --check run and the task list cover it.

These tests change the machine (packages, /etc/gpufleet, /etc/default/*, running services), which is what CI
is for; teardown stops the services and removes /etc/gpufleet's LB and monitoring directories.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.ansible.localstack import API_KEY, LocalStack, build
from tests.ansible.runner import ROOT, SITE, XDIST_GROUP, Run, env, machine_lock, playbook
from tests.tooling import require_tool

pytestmark = pytest.mark.xdist_group(XDIST_GROUP)

SERVICES = ["nginx", "prometheus-nginx-exporter", "mtail", "prometheus", "prometheus-alertmanager",
            "prometheus-node-exporter"]
# The specs of the two groups converged here (the GPU servers' need the vllm role: tests/ansible/test_gpu_roles.py).
SPECS = ["tests/infra/test_load_balancer.py", "tests/infra/test_monitoring.py"]
CONFIG_DIRS = ["nginx", "tls", "mtail", "prometheus", "alertmanager"]  # under /etc/gpufleet


def ci_vars(out: Path) -> Path:
    path = out / "ci-vars.yml"
    path.write_text(yaml.safe_dump({
        "gpufleet_service_manager": "sysvinit",
        "firewall_apply": False,
        "firewall_ruleset_path": str(out / "nftables-{{ inventory_hostname }}.conf"),
        "monitoring_grafana_enabled": False,
    }), encoding="utf-8")
    return path


def stop_services() -> None:
    for name in SERVICES:
        subprocess.run(["service", name, "stop"], capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    for tool in ("nft", "nginx", "promtool", "amtool", "mtail", "unshare"):  # the roles validate with them
        require_tool(tool)
    built = build(tmp_path_factory.mktemp("ansible-local"))
    with machine_lock():  # from the first converge to the cleanup: see MACHINE_LOCK
        yield built
        stop_services()
        for name in CONFIG_DIRS:
            shutil.rmtree(Path("/etc/gpufleet") / name, ignore_errors=True)


def converge(stack: LocalStack, *extra: str) -> Run:
    return playbook("-i", str(stack.inventory), str(SITE), "--limit", "load_balancers,monitoring",
                    "-e", f"@{stack.vault}", "-e", f"@{ci_vars(stack.render_dir.parent)}", *extra)


@pytest.fixture(scope="module")
def runs(stack: LocalStack) -> tuple[Run, Run]:
    first = converge(stack)
    assert first.returncode == 0, first.output[-20000:]
    second = converge(stack)
    return first, second


def test_first_run_converges(runs):
    first, _ = runs
    recap = first.recap()
    assert set(recap) == {"lb-01", "mon-01"}
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), recap


def test_second_run_changes_nothing(runs):
    _, second = runs
    assert second.returncode == 0, second.output[-20000:]
    recap = second.recap()
    assert set(recap) == {"lb-01", "mon-01"}
    changed = {host: r["changed"] for host, r in recap.items()}
    assert changed == {"lb-01": 0, "mon-01": 0}, second.output[-20000:]


def test_infra_specs_on_local_backend(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *SPECS, "--hosts=local://",
         "--infra-groups=load_balancers,monitoring", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs"],
        cwd=ROOT, env={**env(), "GPUFLEET_API_KEY": API_KEY}, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every spec of the two groups ran, none skipped.
    assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout


def test_infra_specs_select_hosts_by_inventory_group(runs, stack: LocalStack):
    """The operators' command: every host of the inventory, each running the specs of its groups."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *SPECS, "--hosts=ansible://all",
         f"--ansible-inventory={stack.inventory}", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs"],
        cwd=ROOT, env={**env(), "GPUFLEET_API_KEY": API_KEY}, capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped, proc.stdout
    assert any("gpu-a800-01 is not in group load_balancers" in line for line in skipped)
    assert any("lb-01 is not in group monitoring" in line for line in skipped)
    assert not any("lb-01 is not in group load_balancers" in line for line in skipped)


def test_firewall_rulesets_load_in_a_namespace(runs, stack: LocalStack):
    out = stack.render_dir.parent
    run = playbook("-i", str(stack.inventory), str(SITE), "--tags", "firewall",
                   "-e", f"@{stack.vault}", "-e", f"@{ci_vars(out)}")
    assert run.returncode == 0, run.output[-20000:]
    rulesets = {p.stem.removeprefix("nftables-"): p for p in out.glob("nftables-*.conf")}
    assert set(rulesets) == {"gpu-a800-01", "gpu-a800-02", "lb-01", "mon-01"}
    for host, path in rulesets.items():
        # Loaded twice into a fresh network namespace: the kernel accepts it, and a reload replaces
        # gpufleet's table instead of failing on it.
        proc = subprocess.run(["unshare", "--net", "sh", "-ec", f"nft -f {path}; nft -f {path}; nft list ruleset"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"{host}: {proc.stderr}"
        listed = proc.stdout
        assert listed.count("table inet gpufleet") == 1, listed
        assert "policy drop" in listed
        assert "tcp dport 22 ip saddr @admin_v4 accept" in listed
        assert ("tcp dport { 80, 443 } accept" in listed) == (host == "lb-01"), listed
        assert ("chain forward" in listed) == host.startswith("gpu-"), listed
    gpu = rulesets["gpu-a800-02"].read_text(encoding="utf-8")
    # support's three replicas on 127.0.0.3 (ports from host_vars), reachable from the LB and Prometheus only.
    assert "tcp dport { 8000, 8001, 8002 } ip saddr @vllm_clients_v4 accept" in gpu
    assert "elements = { 127.0.0.1 }" in gpu


def test_check_mode_with_grafana(runs, stack: LocalStack):
    """Grafana's tasks in --check, with the key URL pointed at a local file: no request leaves the machine."""
    key = stack.render_dir.parent / "grafana.gpg"
    key.write_text("not a key: check mode never reads it\n", encoding="utf-8")
    run = converge(stack, "--check", "--diff", "-e", "monitoring_grafana_enabled=true",
                   "-e", f"monitoring_grafana_repo_key_url=file://{key}")
    assert run.returncode == 0, run.output[-20000:]
    for task in ("Download Grafana's repository key", "Add Grafana's apt repository", "Install Grafana",
                 "Provision the Prometheus data source and the dashboards folder", "Start and enable Grafana"):
        assert f"Monitoring | {task}" in run.output
    assert "+URIs: https://apt.grafana.com" in run.output  # --diff of the repository file it would write
    assert not Path("/etc/apt/sources.list.d/grafana.sources").exists(), "check mode wrote the repository"
    recap = run.recap()
    assert recap["lb-01"]["changed"] == 0, run.output[-20000:]

"""The on-prem render: replica placement, the Ansible inventory and vars (read back by the real
`ansible-inventory`), and the deploy-time files on-prem can render (upstreams, file_sd targets), checked by
nginx and promtool."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from infra.catalog import load_catalog
from infra.plan.optimize import FleetPlan, plan_stack
from infra.render.artifacts import write_artifacts
from infra.render.placement import NotPlaceable, place_onprem
from infra.render.prometheus_config import PrometheusLayout, render_prometheus_yml
from infra.render.stack import render_fleet
from infra.spec.load import Project, load_stack
from tests.render.test_nginx import install, nginx_args
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACK = "onprem-a800"


@cache
def plan() -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), STACK))


def test_every_planned_replica_is_placed_on_disjoint_gpus() -> None:
    fleet, catalog = plan(), load_catalog()
    placements = place_onprem(fleet, catalog)
    planned = {d.deployment.name: d.chosen.replicas for d in fleet.deployments if d.chosen}
    assert Counter(p.deployment for p in placements) == planned
    gpus_per_server = {s.name: catalog.instances[s.server_type].gpu_count for s in fleet.spec.onprem.gpu_servers}  # type: ignore[union-attr]
    for server, count in gpus_per_server.items():
        mine = [p for p in placements if p.server == server]
        used = [g for p in mine for g in p.gpus]
        assert len(used) == len(set(used)) and all(0 <= g < count for g in used)
        assert len({p.port for p in mine}) == len(mine)  # one port per replica on the server
        assert len({p.unit for p in mine}) == len(mine)  # and one systemd instance
    tp = {d.deployment.name: d.chosen.config.tp for d in fleet.deployments if d.chosen}
    for p in placements:
        assert len(p.gpus) == tp[p.deployment] and p.gpus[0] % len(p.gpus) == 0  # aligned to tp
        assert p.gpus == tuple(range(p.gpus[0], p.gpus[0] + len(p.gpus)))


def test_replicas_beyond_the_site_are_not_placeable() -> None:
    fleet = plan()
    site = fleet.spec.onprem
    assert site is not None
    small = fleet.spec.model_copy(update={"onprem": site.model_copy(update={"gpu_servers": site.gpu_servers[:1]})})
    with pytest.raises(NotPlaceable, match="no server has"):
        place_onprem(dataclasses.replace(fleet, spec=small), load_catalog())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onprem")
    write_artifacts(render_fleet(plan()), out)
    return out


def ansible_inventory(rendered: Path) -> dict[str, Any]:
    result = subprocess.run([require_tool("ansible-inventory"), "-i", str(rendered / "ansible/inventory.yml"),
                             "--list"], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_ansible_reads_the_inventory_and_its_vars(rendered: Path) -> None:
    inventory = ansible_inventory(rendered)
    site = plan().spec.onprem
    assert site is not None
    assert inventory["gpu_servers"]["hosts"] == [s.name for s in site.gpu_servers]
    assert inventory["load_balancers"]["hosts"] == [h.name for h in site.load_balancers]
    assert inventory["monitoring"]["hosts"] == [site.monitoring.name]
    hostvars = inventory["_meta"]["hostvars"]
    placements = place_onprem(plan(), load_catalog())
    for server in site.gpu_servers:
        own = hostvars[server.name]
        assert own["ansible_host"] == server.address
        assert own["gpufleet_stack"] == STACK  # group_vars/all.yml beside the inventory
        assert [(r["deployment"], r["slot"], tuple(r["gpus"]), r["port"]) for r in own["gpufleet_replicas"]] == [
            (p.deployment, p.slot, p.gpus, p.port) for p in placements if p.server == server.name]
        # What gpu_host (Fabric Manager) and the tests/infra specs (GPU count) read: the catalog's server type.
        assert (own["gpufleet_server_type"], own["gpufleet_gpu_count"], own["gpufleet_gpu_link"]) == (
            "onprem-8xa800", 8, "nvswitch")
    lb = hostvars[site.load_balancers[0].name]
    assert lb["gpufleet_api_key"] == "{{ " + plan().spec.api_key.name + " }}"  # a reference, never the value
    assert lb["gpufleet_render_dir"] == "{{ inventory_dir }}/.."


def test_rendered_upstreams_pass_nginx_t(rendered: Path, tmp_path: Path) -> None:
    """nginx.conf with the rendered upstream files instead of deploy-time ones."""
    fleet = plan()
    placements = place_onprem(fleet, load_catalog())
    backends = {d.deployment.name: [p.endpoint for p in placements if p.deployment == d.deployment.name]
                for d in fleet.deployments}
    layout = install(fleet, tmp_path, backends)
    for name in backends:
        ours = (Path(layout.upstream_dir) / f"{name}.conf").read_text()
        assert ours == (rendered / "nginx/upstreams" / f"{name}.conf").read_text()
    result = subprocess.run([*nginx_args(layout), "-t"], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_rendered_targets_pass_promtool(rendered: Path) -> None:
    """prometheus.yml pointed at the render's rules and targets folders: promtool reads every file_sd file."""
    layout = PrometheusLayout(config_dir=str(rendered / "prometheus"))
    config = rendered / "prometheus" / "check.yml"
    config.write_text(render_prometheus_yml(plan(), layout).content)
    result = subprocess.run([require_tool("promtool"), "check", "config", str(config)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    targets = {p.name: json.loads(p.read_text()) for p in (rendered / "prometheus/targets").glob("*.json")}
    engine = [t for name, groups in targets.items() if name.startswith("engine-") for g in groups for t in g["targets"]]
    assert sorted(engine) == sorted(p.endpoint for p in place_onprem(plan(), load_catalog()))


def test_eks_stacks_render_no_ansible() -> None:
    """eks has no hosts to converge (aws-ec2: tests/render/test_ec2_hosts.py)."""
    fleet = plan_stack(load_stack(Project(ROOT), "prod"))
    assert fleet.spec.target == "eks"
    assert not [a for a in render_fleet(fleet) if a.kind == "ansible-vars"]

"""ansible/ passes ansible-lint's production profile (offline) and ansible-playbook's syntax check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.plan.optimize import plan_stack
from infra.render.artifacts import write_artifacts
from infra.render.stack import render_fleet
from infra.spec.load import Project, load_stack
from tests.ansible.runner import ANSIBLE_DIR, BIN, ROOT, SITE, env, playbook


@pytest.fixture(scope="module")
def onprem_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onprem-a800")
    write_artifacts(render_fleet(plan_stack(load_stack(Project(ROOT), "onprem-a800"))), out)
    return out / "ansible" / "inventory.yml"


def test_ansible_lint_production_profile():
    # The profile, offline mode and excluded paths come from .ansible-lint at the root (ansible-lint needs
    # the git repository to find the project's root).
    proc = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--profile", "production", "ansible/"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_yamllint():
    proc = subprocess.run([str(BIN / "yamllint"), "-s", "-f", "parsable", "-c", str(ROOT / ".yamllint.yaml"),
                           str(ANSIBLE_DIR)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_syntax_check_with_the_rendered_inventory(onprem_inventory: Path):
    run = playbook("--syntax-check", "-i", str(onprem_inventory), str(SITE))
    assert run.returncode == 0, run.output


def test_site_plays_every_group_with_its_roles(onprem_inventory: Path):
    run = playbook("--list-tasks", "-i", str(onprem_inventory), str(SITE))
    assert run.returncode == 0, run.output
    plays = run.output.split("play #")[1:]
    heads = [p.splitlines()[0] for p in plays]
    assert [h.split("(", 1)[1].split(")", 1)[0] for h in heads] == [
        "all", "gpu_servers", "load_balancers", "monitoring", "load_balancers:monitoring"]
    for play, roles in zip(plays, [["firewall"], ["container_runtime", "gpu_host", "vllm"], ["nginx_lb"],
                                   ["monitoring"], ["ec2_agent"]], strict=True):
        for role in roles:
            assert f"{role} : " in play, f"role {role} has no task in:\n{play}"
    # Grafana is on by default: its tasks are imported (not included), so they show here.
    assert "Monitoring | Install Grafana" in plays[3]

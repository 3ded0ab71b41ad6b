"""The LB and monitoring hosts of aws-ec2 stacks (infra/render/ec2_hosts.py): their user data through
`cloud-init schema`, shellcheck and `systemd-analyze verify`; their Ansible inventory and variables through
`ansible-inventory` and `ansible-playbook --syntax-check/--list-tasks`; the discovery configuration against
the rendered prometheus.yml and the hostagent's contract. Every tool is required (a missing one fails).
"""

from __future__ import annotations

import ast
import fnmatch
import gzip
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.hostagent import layout
from infra.render.artifacts import Artifact, write_artifacts
from infra.render.cloudinit import USER_DATA_LIMIT
from infra.render.ec2_hosts import (
    AGENT_SOURCE,
    BOOT_MODULES,
    BOOTSTRAP,
    HOST_ROLES,
    ROLE_GROUPS,
    SYNC_UNIT,
    SecretKeys,
    host_user_data_path,
    packed_user_data,
    role_secrets,
)
from infra.render.prometheus_config import PrometheusLayout, deployment_labels, scrape_jobs
from infra.render.stack import render_fleet
from infra.render.systemd import slots_per_machine
from infra.spec.secrets import SecretRef
from tests.ansible.runner import BIN, SITE, env, playbook
from tests.render.test_cloudinit import files, parse, plan, schema
from tests.render.test_systemd_compose import systemd_root
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
EC2_STACKS = ["dev", "staging", "engines"]
PLAY_HOSTS = re.compile(r"play #\d+ \([^)]*\): (?P<name>[^\t\n]+).*?hosts \(\d+\):(?P<hosts>(?:\n {6}\S+)*)", re.S)
SECRET = re.compile(r"\{\{ gpufleet_secrets\['([a-z0-9_]+)'\] \}\}")


@cache
def rendered(stack: str) -> dict[str, Artifact]:
    return {a.path: a for a in render_fleet(plan(stack))}


def group_vars(stack: str) -> dict[str, Any]:
    loaded = yaml.safe_load(rendered(stack)["ansible/group_vars/all.yml"].content)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module", params=EC2_STACKS)
def render_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"ec2-{request.param}")
    write_artifacts(render_fleet(plan(request.param)), out)
    return out


# -- user data ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", EC2_STACKS)
@pytest.mark.parametrize("role", HOST_ROLES)
def test_host_user_data_passes_cloud_init_schema(stack: str, role: str, tmp_path: Path) -> None:
    artifact = rendered(stack)[host_user_data_path(role)]  # type: ignore[arg-type]
    assert len(packed_user_data(artifact.content)) <= USER_DATA_LIMIT
    assert gzip.decompress(packed_user_data(artifact.content)).decode() == artifact.content
    path = tmp_path / f"{role}.yaml"
    path.write_text(artifact.content, encoding="utf-8")
    result = schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"warn|deprecat|error", result.stdout + result.stderr, re.IGNORECASE)


@pytest.mark.parametrize("stack", EC2_STACKS)
@pytest.mark.parametrize("role", HOST_ROLES)
def test_host_user_data_carries_the_host_config_and_the_boot_agent(stack: str, role: str) -> None:
    written = files(parse(rendered(stack)[host_user_data_path(role)]))  # type: ignore[arg-type]
    config = json.loads(written[layout.HOST_CONFIG]["content"])
    assert config == {"role": role, "stack": stack, "region": plan(stack).spec.region,
                      "parameter": layout.bundle_parameter(stack)}
    for name in BOOT_MODULES:
        entry = written[f"{layout.AGENT_DIR}/hostagent/{name}"]
        assert entry["content"].encode() == (AGENT_SOURCE / name).read_bytes()
    assert {f"/etc/systemd/system/{SYNC_UNIT}.service", f"/etc/systemd/system/{SYNC_UNIT}.timer",
            BOOTSTRAP} <= set(written)


def test_boot_modules_are_all_that_sync_imports() -> None:
    """cloud-init brings BOOT_MODULES only: sync's package-relative imports must stay among them."""
    def siblings(name: str) -> set[str]:
        tree = ast.parse((AGENT_SOURCE / name).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {f"{node.module}.py"} if node.module else {f"{a.name}.py" for a in node.names}
        return found
    seen, todo = set(), ["sync.py"]
    while todo:
        name = todo.pop()
        seen.add(name)
        todo += sorted(siblings(name) - seen)
    assert seen | {"__init__.py"} == set(BOOT_MODULES)


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_bootstrap_passes_shellcheck_and_pins_ansible(stack: str) -> None:
    shellcheck = require_tool("shellcheck")
    for role in HOST_ROLES:
        script = files(parse(rendered(stack)[host_user_data_path(role)]))[BOOTSTRAP]  # type: ignore[arg-type]
        assert script["permissions"] == "0755"
        result = subprocess.run([shellcheck, "--severity=style", "--shell=bash", "-"], input=script["content"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout
        assert f'"ansible-core=={layout.ANSIBLE_CORE}"' in script["content"]
        assert f"amazon-ssm-{plan(stack).spec.region}" in script["content"]


def test_the_hosts_ansible_core_is_the_tested_one() -> None:
    pins = re.findall(r'"ansible-core==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pins == [layout.ANSIBLE_CORE]


def test_sync_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    root = systemd_root(tmp_path)
    python = root / "usr/bin/python3"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    written = files(parse(rendered("dev")[host_user_data_path("lb")]))
    for name in (f"{SYNC_UNIT}.service", f"{SYNC_UNIT}.timer"):
        (root / "etc/systemd/system" / name).write_text(written[f"/etc/systemd/system/{name}"]["content"])
    result = subprocess.run([analyze, "verify", f"--root={root}", f"{SYNC_UNIT}.service", f"{SYNC_UNIT}.timer"],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


# -- Ansible inputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", EC2_STACKS)
def test_every_secret_is_fetched_from_an_aws_store(stack: str) -> None:
    variables = group_vars(stack)
    used = set(SECRET.findall(json.dumps(variables)))
    tables = variables["gpufleet_aws_secrets"]
    assert set(tables) == set(HOST_ROLES)
    assert used == {key for table in tables.values() for key in table} and used
    for role, table in tables.items():
        refs = role_secrets(plan(stack).spec, role)
        assert sorted((e["source"], e["name"]) for e in table.values()) == sorted((r.source, r.name) for r in refs)
        assert {entry["source"] for entry in table.values()} <= {"aws-secrets-manager", "aws-ssm-parameter"}
    assert plan(stack).spec.api_key.name in {e["name"] for e in tables["lb"].values()}
    assert "lookup(" not in rendered(stack)["ansible/group_vars/all.yml"].content


def test_secret_keys_refuse_two_secrets_with_one_variable() -> None:
    keys = SecretKeys()
    keys(SecretRef(source="aws-secrets-manager", name="team/api-key"))
    with pytest.raises(ValueError, match="one variable name"):
        keys(SecretRef(source="aws-ssm-parameter", name="team_api_key"))


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_discovery_matches_the_plan_and_prometheus_jobs(stack: str) -> None:
    fleet = plan(stack)
    discovery = group_vars(stack)["gpufleet_discovery"]
    assert (discovery["stack"], discovery["region"]) == (stack, fleet.spec.region)
    for d in fleet.deployments:
        mine = discovery["deployments"][d.deployment.name]
        assert mine["ports"] == [8000 + slot for slot in range(slots_per_machine(d))]
        assert mine["labels"] == deployment_labels(d)
    globs = [job.file_glob for job in scrape_jobs(PrometheusLayout()) if job.file_glob]
    files_written = {job["file"].format(deployment=d.deployment.name)
                     for job in discovery["targets"]["jobs"] for d in fleet.deployments}
    for name in files_written:
        assert any(fnmatch.fnmatch(name, glob) for glob in globs), name
    # Every job of prometheus.yml is fed (a job without a file would scrape nothing, silently).
    for glob in globs:
        assert any(fnmatch.fnmatch(name, glob) for name in files_written), glob
    prefix = "prometheus/targets/"
    initial = {p.removeprefix(prefix) for p in rendered(stack) if p.startswith(prefix)}
    assert initial == files_written
    assert all(json.loads(rendered(stack)[f"prometheus/targets/{n}"].content) == [] for n in initial)


def test_inventory_names_one_local_host_per_role(render_dir: Path) -> None:
    inventory = render_dir / "ansible/inventory.yml"
    proc = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inventory), "--list"], env=env(),
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    for role, group in ROLE_GROUPS.items():
        assert listed[group]["hosts"] == [layout.inventory_host(role)]
        hostvars = listed["_meta"]["hostvars"][layout.inventory_host(role)]
        assert hostvars["ansible_connection"] == "local"
        assert hostvars["nginx_lb_upstreams_from_render"] is False
        assert hostvars["monitoring_targets_from_render"] is False


@pytest.mark.parametrize("role", HOST_ROLES)
def test_site_plays_what_sync_runs_for_the_role(render_dir: Path, role: str) -> None:
    """sync's command line (infra/hostagent/sync.py): --limit the role's host, --skip-tags firewall."""
    inventory = str(render_dir / "ansible/inventory.yml")
    args = ["-i", inventory, str(SITE), "--limit", layout.inventory_host(role), "--skip-tags", "firewall"]  # type: ignore[arg-type]
    check = playbook("--syntax-check", *args)
    assert check.returncode == 0, check.output
    hosts = playbook("--list-hosts", *args)
    assert hosts.returncode == 0, hosts.output
    plays = {m["name"]: m["hosts"].split() for m in PLAY_HOSTS.finditer(hosts.output)}
    me = layout.inventory_host(role)  # type: ignore[arg-type]
    own, other = ("Load balancers", "Monitoring") if role == "lb" else ("Monitoring", "Load balancers")
    assert plays[own] == [me] and plays[other] == [] and plays["Discovery"] == [me]
    listed = playbook("--list-tasks", *args)
    assert listed.returncode == 0, listed.output
    assert "Firewall |" not in listed.output
    assert "Ec2_agent | Install the discovery configuration" in listed.output

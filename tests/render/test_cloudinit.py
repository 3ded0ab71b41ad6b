"""cloud-init user data of aws-ec2 stacks: `cloud-init schema` (Debian package cloud-init) on every rendered
file, shellcheck on every embedded script, and structural assertions on the parsed YAML.

cloud-init and shellcheck are required: a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan.optimize import DeploymentPlan, FleetPlan, plan_stack
from infra.render.artifacts import Artifact
from infra.render.cloudinit import (
    BOOTSTRAP,
    SCRIPT_DIR,
    USER_DATA_LIMIT,
    UnsupportedSecret,
    embedded_artifacts,
    host_path,
    render_cloudinit,
    render_user_data,
)
from infra.render.engines import engine_launch
from infra.render.stack import render_fleet
from infra.render.systemd import (
    VLLM_IMAGE,
    env_file,
    instance_name,
    render_gpu_exporter_units,
    render_vllm_units,
)
from infra.render.telemetry import (
    DCGM_EXPORTER_IMAGE,
    DCGM_EXPORTER_PORT,
    NODE_EXPORTER_IMAGE,
    NODE_EXPORTER_PORT,
)
from infra.render.vllm import API_KEY_ENV, VLLM_VERSION
from infra.spec.load import Project, load_stack
from infra.spec.profile import S3Weights
from infra.spec.secrets import SecretRef
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
EC2_STACKS = ["dev", "staging", "engines"]
SECRET_VALUE = re.compile(rf"{API_KEY_ENV}=[^%]|sk-[A-Za-z0-9]")


require = require_tool


@cache
def plan(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def user_data(stack: str) -> list[tuple[DeploymentPlan, Artifact]]:
    fleet = plan(stack)
    artifacts = {a.deployment: a for a in render_cloudinit(fleet)}
    assert set(artifacts) == {d.deployment.name for d in fleet.deployments}
    return [(d, artifacts[d.deployment.name]) for d in fleet.deployments]


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("cloud-init"), "schema", "--config-file", str(path), "--annotate"],
                          capture_output=True, text=True, check=False)


def files(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = config["write_files"]
    paths = [entry["path"] for entry in entries]
    assert len(paths) == len(set(paths)), "a path is written twice"
    return dict(zip(paths, entries, strict=True))


def parse(artifact: Artifact) -> dict[str, Any]:
    assert artifact.content.startswith("#cloud-config\n")
    config = yaml.safe_load(artifact.content)
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_user_data_passes_cloud_init_schema(stack: str, tmp_path: Path) -> None:
    for _, artifact in user_data(stack):
        path = tmp_path / Path(artifact.path).name
        path.write_text(artifact.content, encoding="utf-8")
        result = schema(path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"Valid cloud-config: {path}", result.stdout
        assert not re.search(r"warn|deprecat|error", result.stdout + result.stderr, re.IGNORECASE)


def test_cloud_init_schema_rejects_a_broken_cloud_config(tmp_path: Path) -> None:
    _, artifact = user_data("dev")[0]
    config = parse(artifact)
    config["write_files"][0]["mode"] = "0644"  # not a write_files key (it is `permissions`)
    broken = tmp_path / "broken.yaml"
    broken.write_text("#cloud-config\n" + yaml.safe_dump(config), encoding="utf-8")
    result = schema(broken)
    assert result.returncode != 0
    assert "write_files" in result.stdout + result.stderr


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_embedded_scripts_pass_shellcheck(stack: str) -> None:
    shellcheck = require("shellcheck")
    for _, artifact in user_data(stack):
        scripts = {p: f for p, f in files(parse(artifact)).items() if p.startswith(SCRIPT_DIR + "/")}
        assert BOOTSTRAP in scripts
        for path, entry in scripts.items():
            assert entry["permissions"] == "0755" and entry["content"].startswith("#!/bin/bash\n")
            assert "set -euo pipefail\n" in entry["content"]
            result = subprocess.run([shellcheck, "--severity=style", "--shell=bash", "-"],
                                    input=entry["content"], capture_output=True, text=True, check=False)
            assert result.returncode == 0, f"{path}:\n{result.stdout}"


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_write_files_are_exactly_the_rendered_config_and_units(stack: str) -> None:
    fleet_artifacts = set(render_fleet(plan(stack)))
    for deployment, artifact in user_data(stack):
        written = files(parse(artifact))
        launch = engine_launch(deployment)
        embedded = [*launch.config_files, *render_vllm_units(deployment), *render_gpu_exporter_units()]
        assert sorted(embedded) == embedded_artifacts(deployment)
        assert set(embedded) <= fleet_artifacts  # the same files `gpufleet render` writes and the PR shows
        expected = {host_path(a): a.content for a in embedded}
        name = deployment.deployment.name
        assert {f"/etc/gpufleet/{a.path}" for a in launch.config_files} <= set(expected)
        assert (f"/etc/gpufleet/vllm/{name}.yaml" in expected) == (deployment.profile.engine == "vllm")
        assert f"/etc/systemd/system/gpufleet-vllm-{name}@.service" in expected
        non_scripts = {p: e for p, e in written.items() if not p.startswith(SCRIPT_DIR + "/")}
        assert set(non_scripts) == set(expected)
        for path, entry in non_scripts.items():
            assert entry["content"].encode() == expected[path].encode(), path
            assert entry["permissions"] == "0644" and entry["owner"] == "root:root"
            assert set(entry) == {"path", "owner", "permissions", "content"}


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_api_key_comes_from_the_secret_at_boot_into_a_0600_env_file(stack: str) -> None:
    secret = plan(stack).spec.api_key
    region = plan(stack).spec.region
    for deployment, artifact in user_data(stack):
        assert not SECRET_VALUE.search(artifact.content)
        script = files(parse(artifact))[f"{SCRIPT_DIR}/fetch-api-key.sh"]["content"]
        target = env_file(deployment.deployment.name)
        assert target not in files(parse(artifact))  # created at boot, never shipped
        assert f"secret={secret.name}\n" in script
        if secret.source == "aws-secrets-manager":
            assert ('aws secretsmanager get-secret-value --secret-id "${secret}" --query SecretString '
                    f"--output text --region {region}") in script
        else:
            assert "aws ssm get-parameter" in script and "--with-decryption" in script
        assert "umask 077\n" in script and 'chmod 0600 "${tmp}"\n' in script
        assert f'mv -f "${{tmp}}" {target}\n' in script
        variable = engine_launch(deployment).key_file_var  # VLLM_API_KEY for vLLM
        assert f"printf '{variable}=%s\\n' \"${{key}}\"" in script  # a builtin: the value is not in argv
        assert "AWS_EC2_METADATA_V1_DISABLED=true" in script
        assert "169.254.169.254" not in artifact.content  # nothing reads instance metadata directly


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_gpus_verified_image_pinned_and_slots_enabled(stack: str) -> None:
    for deployment, artifact in user_data(stack):
        assert deployment.chosen is not None
        config = parse(artifact)
        assert config["runcmd"] == [[BOOTSTRAP]]
        assert config["package_upgrade"] is False
        written = files(config)
        gpu_count = deployment.chosen.machine.instance.gpu_count
        verify = written[f"{SCRIPT_DIR}/verify-host.sh"]["content"]
        assert f'[ "${{found}}" -eq {gpu_count} ]' in verify
        assert "nvidia-ctk --version" in verify and "docker info --format '{{json .Runtimes}}'" in verify
        start = written[f"{SCRIPT_DIR}/start-vllm.sh"]["content"]
        assert VLLM_IMAGE == f"vllm/vllm-openai:v{VLLM_VERSION}" == "vllm/vllm-openai:v0.33.0"
        image = engine_launch(deployment).image  # VLLM_IMAGE for vLLM, the engine's pin otherwise
        assert f"docker pull --quiet {image} " in start
        assert all(found == VLLM_IMAGE for found in re.findall(r"vllm/vllm-openai:[^\s\"']+", artifact.content))
        assert (VLLM_IMAGE in artifact.content) == (deployment.profile.engine == "vllm")
        slots = gpu_count // deployment.chosen.config.tp
        units = " ".join(instance_name(deployment.deployment.name, i) for i in range(slots))
        assert "systemctl daemon-reload\n" in start and f"\nsystemctl enable {units}\n" in start
        assert f"systemctl start --no-block {units}\n" in start
        drop_ins = [p for p in written if p.endswith(".service.d/slot.conf")]
        assert len(drop_ins) == slots
        steps = re.findall(rf"^({SCRIPT_DIR}/\S+\.sh)$", written[BOOTSTRAP]["content"], re.MULTILINE)
        assert steps[0].endswith("/verify-host.sh") and steps[-1].endswith("/start-vllm.sh")
        assert set(steps) == set(written) - {BOOTSTRAP} - {p for p in written if not p.startswith(SCRIPT_DIR)}


@pytest.mark.parametrize("stack", EC2_STACKS)
def test_s3_sync_iff_the_profile_uses_s3(stack: str) -> None:
    for deployment, artifact in user_data(stack):
        profile = deployment.profile
        uris = [w.uri for w in [profile.weights, *(a.weights for a in profile.lora_adapters)]
                if isinstance(w, S3Weights)]
        written = files(parse(artifact))
        sync = written.get(f"{SCRIPT_DIR}/sync-weights.sh")
        assert (sync is not None) == bool(uris) == ("aws s3 sync" in artifact.content)
        for uri in uris:
            assert sync is not None and f"aws s3 sync {uri} /var/lib/gpufleet/models/{profile.name}" in sync["content"]


def test_the_example_stacks_cover_both_weight_sources() -> None:
    assert not any("aws s3 sync" in a.content for _, a in user_data("dev"))
    assert all("aws s3 sync" in a.content for _, a in user_data("staging"))


@pytest.mark.parametrize("stack", ["prod", "onprem-a800"])
def test_only_aws_ec2_stacks_get_user_data(stack: str) -> None:
    assert plan(stack).spec.target != "aws-ec2"
    assert render_cloudinit(plan(stack)) == []
    assert not [a for a in render_fleet(plan(stack)) if a.kind == "cloud-init"]


def test_fleet_render_lists_user_data_and_is_deterministic() -> None:
    fleet = plan("staging")
    listed = [a for a in render_fleet(fleet) if a.kind == "cloud-init"]
    gpu = [a.path for a in listed if not a.path.startswith("cloud-init/roles/")]
    assert gpu == [f"cloud-init/{d.deployment.name}.yaml" for d in fleet.deployments]
    assert render_cloudinit(fleet) == render_cloudinit(fleet)
    # The GPU hosts' user data is sent as it is; the LB and monitoring hosts' gzipped (tests/render/test_ec2_hosts.py).
    assert all(len(a.content.encode()) <= USER_DATA_LIMIT for a in listed if a.path in gpu)


def test_a_secret_the_instance_cannot_read_at_boot_is_refused() -> None:
    fleet = plan("dev")
    spec = fleet.spec.model_copy(update={"api_key": SecretRef(source="pulumi-config", name="gpufleet:apiKey")})
    other = FleetPlan(fleet.stack, spec, fleet.deployments)
    with pytest.raises(UnsupportedSecret, match="aws-secrets-manager"):
        render_user_data(other, fleet.deployments[0])


def test_ssm_parameter_secret_is_read_with_decryption() -> None:
    fleet = plan("dev")
    spec = fleet.spec.model_copy(update={"api_key": SecretRef(source="aws-ssm-parameter", name="/gpufleet/key")})
    artifact = render_user_data(FleetPlan(fleet.stack, spec, fleet.deployments), fleet.deployments[0])
    script = files(parse(artifact))[f"{SCRIPT_DIR}/fetch-api-key.sh"]["content"]
    assert ('aws ssm get-parameter --name "${secret}" --with-decryption --query Parameter.Value --output text '
            f"--region {spec.region}") in script
    assert "secretsmanager" not in script


def test_gpu_hosts_run_the_exporters_the_monitoring_host_scrapes() -> None:
    """dcgm-exporter and node_exporter on the job ports, dcgm-exporter the image the on-prem role pins."""
    units = {a.path: a.content for a in render_gpu_exporter_units()}
    dcgm = units["systemd/gpufleet-dcgm-exporter.service"]
    node = units["systemd/gpufleet-node-exporter.service"]
    assert f"{DCGM_EXPORTER_IMAGE} --address :{DCGM_EXPORTER_PORT}" in dcgm and "--gpus all" in dcgm
    assert NODE_EXPORTER_IMAGE in node and f"--web.listen-address=:{NODE_EXPORTER_PORT}" in node
    defaults = yaml.safe_load((ROOT / "ansible/roles/gpu_host/defaults/main.yml").read_text())
    onprem = defaults["gpu_host_dcgm_exporter_image"].replace("{{ gpu_host_dcgm_version }}",
                                                              defaults["gpu_host_dcgm_version"])
    assert onprem == DCGM_EXPORTER_IMAGE
    for _, artifact in user_data("dev"):
        start = files(parse(artifact))[f"{SCRIPT_DIR}/start-vllm.sh"]["content"]
        exporters = "gpufleet-dcgm-exporter.service gpufleet-node-exporter.service"
        assert f"systemctl enable --now --no-block {exporters}" in start

"""The Pulumi program under mocks: spec -> plan -> render -> the target's resources, and its exports."""

from __future__ import annotations

import base64
import hashlib
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra import program
from infra.plan.optimize import plan_stack
from infra.plan.serialize import fleet_json
from infra.spec.load import Project, load_stack
from tests.pulumi.mocks import RecordingMocks, run_program
from tests.pulumi.stacks import edited_project
from tests.pulumi.test_aws_ec2 import AwsMocks, capacity_block_dev
from tests.pulumi.test_images import REGISTRY, RegistryMocks, fake_digest
from tests.pulumi.test_k8s_objects import NLB_HOSTNAME, SecretStoreMocks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    captured: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", captured.__setitem__)
    return captured


def test_onprem_program_exports_endpoint_dashboards_and_plan(exports: dict[str, Any], tmp_path: Path) -> None:
    pulumi.runtime.set_mocks(RecordingMocks(), project="gpufleet", stack="onprem-a800", preview=False)
    run_program(lambda: program.run(pulumi.get_stack(), render_dir=str(tmp_path)))
    assert exports["target"] == "onprem"
    assert exports["endpoint"] == "https://llm.sh.acme.example/v1"
    assert exports["dashboards"] == "http://10.20.1.31:3000/dashboards/f/gpufleet"
    # The plan summary's numbers are plan --json's.
    planned = fleet_json(plan_stack(load_stack(Project(ROOT), "onprem-a800")))
    summary = exports["plan"]
    assert (summary["monthly_usd"], summary["budget_usd"]) == (planned["monthly_usd"], 40000)
    assert set(summary["deployments"]) == {d["name"] for d in planned["deployments"]}
    for d in planned["deployments"]:
        mine = summary["deployments"][d["name"]]
        assert mine["model"] == d["served_model_name"]
        assert {k: mine[k] for k in program.SUMMARY_KEYS} == {k: d["chosen"][k] for k in program.SUMMARY_KEYS}


class Ec2ProgramMocks(AwsMocks, RegistryMocks):
    """The AWS lookups and outputs of test_aws_ec2, and the ECR repository and pushed image of test_images."""


def test_aws_ec2_program_builds_the_image_uploads_the_bundle_and_exports(exports: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    mocks = Ec2ProgramMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack="staging", preview=False)
    run_program(lambda: program.run("staging", render_dir=str(tmp_path / "staging")))
    assert exports["target"] == "aws-ec2"
    assert run_output(exports["endpoint"]) == "https://llm.staging.acme.example/v1"
    assert run_output(exports["dashboards"]) == "http://localhost:3000/dashboards/f/gpufleet"
    tunnel = run_output(exports["dashboardsTunnel"])
    assert tunnel.startswith("aws ssm start-session --region us-east-1 --target staging-monitoring-id ")
    # The bundle beside the render, named by its sha256, is what the store uploads.
    bundle = tmp_path / "staging.bundle.tar.gz"
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert exports["configBundle"] == sha
    (obj,) = mocks.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    assert obj.inputs["key"] == f"bundles/{sha}.tar.gz"
    # Only images/vllm is built: the LB hosts run Debian's nginx.
    (image,) = mocks.of_type("docker-build:index:Image")
    ref = f"{REGISTRY}/gpufleet-staging-vllm@{fake_digest(image.name)}"
    (template,) = [r for r in mocks.of_type("aws:ec2/launchTemplate:LaunchTemplate") if r.name == "staging-support"]
    assert ref in base64.b64decode(template.inputs["userData"]).decode()


def run_output(value: Any) -> Any:
    """An exported Output's value (the mocks resolved it)."""
    if not isinstance(value, pulumi.Output):
        return value
    found: list[Any] = []
    run_program(lambda: value.apply(found.append))
    return found[0]


def test_capacity_block_without_a_reservation_stops_before_any_resource(exports: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    fleet_dir = tmp_path / "project"
    capacity_block_dev(fleet_dir, reserved=False)
    mocks = Ec2ProgramMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack="dev", preview=False)
    with pytest.raises(pulumi.RunError, match="planned on an EC2 Capacity Block"):
        run_program(lambda: program.run("dev", Project(fleet_dir), render_dir=str(tmp_path / "out")))
    assert mocks.resources == []
    assert not (tmp_path / "out").exists()


class EksProgramMocks(SecretStoreMocks, RegistryMocks):
    """The cluster, secret store and LoadBalancer status of test_k8s_objects, and the registry of test_images."""


def test_eks_program_builds_both_images_applies_the_render_and_exports(exports: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    mocks = EksProgramMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack="prod", preview=False)
    run_program(lambda: program.run("prod", render_dir=str(tmp_path / "prod")))
    assert exports["target"] == "eks"
    assert run_output(exports["endpoint"]) == "https://llm.acme.example/v1"  # the stack's domain
    assert run_output(exports["loadBalancerDnsName"]) == NLB_HOSTNAME
    assert exports["dashboards"] == "http://localhost:3000/d/gpufleet-prod-fleet"
    assert exports["dashboardsTunnel"] == program.GRAFANA_TUNNEL
    (cluster,) = mocks.of_type("aws:eks/cluster:Cluster")
    assert run_output(exports["clusterName"]) == cluster.inputs.get("name", cluster.name)
    assert "svc/kube-prometheus-stack-grafana" in program.GRAFANA_TUNNEL
    # Both images are built, and each runs where it belongs.
    refs = {image.name.removeprefix("prod-"): f"{REGISTRY}/gpufleet-prod-{image.name.removeprefix('prod-')}"
                                                f"@{fake_digest(image.name)}"
            for image in mocks.of_type("docker-build:index:Image")}
    assert set(refs) == {"vllm", "lb"}
    deployments = {r.inputs["metadata"]["name"]: r.inputs for r in mocks.of_type("kubernetes:apps/v1:Deployment")}
    images = {name: {c["name"]: c["image"] for c in d["spec"]["template"]["spec"]["containers"]}
              for name, d in deployments.items()}
    assert images["gpufleet-vllm-chat-70b"]["vllm"] == refs["vllm"]
    assert set(images["gpufleet-lb"].values()) == {refs["lb"]}
    # The render the program applied is the one it wrote.
    assert (tmp_path / "prod" / "k8s" / "lb" / "loadbalancer.yaml").is_file()


def test_endpoint_without_a_domain_is_the_nlb(exports: dict[str, Any], tmp_path: Path) -> None:
    project = edited_project(tmp_path, "prod", ("    domain: llm.acme.example\n", ""))
    pulumi.runtime.set_mocks(EksProgramMocks(), project="gpufleet", stack="prod", preview=False)
    run_program(lambda: program.run("prod", project, render_dir=str(tmp_path / "out")))
    assert run_output(exports["endpoint"]) == f"https://{NLB_HOSTNAME}/v1"


def test_load_balancer_hostname_is_none_until_aws_has_created_it() -> None:
    assert program.load_balancer_hostname(None) is None


def test_main_module_runs_the_program(exports: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(program, "run", lambda stack: exports.setdefault("ran", stack))
    pulumi.runtime.set_mocks(RecordingMocks(), project="gpufleet", stack="onprem-a800", preview=False)
    runpy.run_path(str(ROOT / "infra" / "__main__.py"))
    assert exports["ran"] == "onprem-a800"


def test_invalid_stack_is_a_run_error_with_locations(tmp_path: Path, exports: dict[str, Any]) -> None:
    project = edited_project(tmp_path, "dev", ("gpus: [L4, A10G]", "gpus: [L5, A10G]"))
    pulumi.runtime.set_mocks(RecordingMocks(), project="gpufleet", stack="dev", preview=False)
    with pytest.raises(pulumi.RunError) as raised:
        program.run("dev", project)
    message = str(raised.value)
    assert "stacks/Pulumi.dev.yaml:" in message
    assert "gpufleet:deployments[0].gpus[0]: unknown GPU 'L5'" in message
    assert exports == {}


def test_over_budget_stack_is_a_run_error(tmp_path: Path, exports: dict[str, Any]) -> None:
    project = edited_project(tmp_path, "onprem-a800", ("monthlyBudgetUsd: 40000", "monthlyBudgetUsd: 1000"))
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack="onprem-a800", preview=False)
    with pytest.raises(pulumi.RunError, match="over the budget of \\$1,000"):
        run_program(lambda: program.run("onprem-a800", project, render_dir=str(tmp_path / "out")))
    assert mocks.resources == []
    assert not (tmp_path / "out").exists()

"""The aws-ec2 building blocks under mocks (network, security groups, GPU host profile, one GPU group per
deployment), on the dev example: the resource graph as a reviewed snapshot, the user data as rendered and
accepted by the real `cloud-init schema`, least privilege, and what a replica change touches."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.plan.optimize import FleetPlan, plan_stack
from infra.provision.aws.ec2 import Ec2Fleet
from infra.provision.policy import ResourceView, check_resources, plan_within_budget
from infra.render.stack import render_fleet
from infra.render.systemd import VLLM_IMAGE
from infra.spec.load import Project, load_stack
from tests.pulumi.mocks import RecordingMocks, ensure_event_loop, run_program
from tests.pulumi.snapshots import assert_snapshot
from tests.pulumi.stacks import edited_project
from tests.render.test_cloudinit import schema

ROOT = Path(__file__).resolve().parents[2]
AMI = "ami-0123456789abcdef0"
ACCOUNT = "123456789012"


class AwsMocks(RecordingMocks):
    """Provider-computed outputs the program reads (ids, ARNs, the launch template's version) and the
    lookups (AMI parameter, caller identity, subnets of an existing VPC)."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outputs = super().new_resource(args)
        computed = {"arn": f"arn:aws:mock:::{args.name}", "name": args.name}
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            computed["latestVersion"] = 1
        return rid, {**computed, **outputs}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:ssm/getParameter:getParameter":
            return {"name": args.args["name"], "value": AMI, "type": "String", "arn": "", "id": args.args["name"],
                    "version": 1, "insecureValue": AMI}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "id": ACCOUNT,
                    "userId": "AIDA"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            tier = next(f["values"][0] for f in args.args["filters"] if f["name"] == "tag:gpufleet:tier")
            return {"ids": [f"subnet-{tier}-a", f"subnet-{tier}-b"], "id": "x", "filters": args.args["filters"]}
        return {}


def fleet_of(stack: str, edit: tuple[str, str] | None = None, tmp_path: Path | None = None) -> FleetPlan:
    project = Project(ROOT)
    if edit:
        assert tmp_path is not None
        project = edited_project(tmp_path, stack, edit)
    return plan_stack(load_stack(project, stack))


def provision(fleet: FleetPlan) -> AwsMocks:
    mocks = AwsMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=fleet.stack, preview=False)
    artifacts = render_fleet(fleet)
    run_program(lambda: Ec2Fleet(fleet.stack, fleet=fleet, artifacts=artifacts))
    return mocks


@pytest.fixture(scope="module")
def dev() -> tuple[FleetPlan, AwsMocks]:
    ensure_event_loop()
    fleet = fleet_of("dev")
    return fleet, provision(fleet)


def test_resource_graph_matches_the_reviewed_snapshot(dev: tuple[FleetPlan, AwsMocks]) -> None:
    assert_snapshot("aws-ec2-dev", dev[1].resources)


# AWS resources that take no tags (associations and policies attached to a tagged parent).
UNTAGGABLE = {"aws:ec2/routeTableAssociation:RouteTableAssociation", "aws:iam/rolePolicy:RolePolicy",
              "aws:iam/rolePolicyAttachment:RolePolicyAttachment"}


def test_every_resource_carries_the_cost_tags(dev: tuple[FleetPlan, AwsMocks]) -> None:
    fleet, mocks = dev
    tagged = [r for r in mocks.resources if r.type.startswith("aws:") and r.type not in UNTAGGABLE]
    assert len(tagged) > 20
    for r in tagged:
        tags = r.inputs["tags"]
        pairs = {t["key"]: t["value"] for t in tags} if isinstance(tags, list) else tags  # ASG: a list
        assert pairs["gpufleet:stack"] == "dev" and pairs["gpufleet:owner"] == fleet.spec.owner, r
        if r.type in ("aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group"):
            assert (pairs["gpufleet:deployment"], pairs["gpufleet:model"]) == ("chat", "qwen2.5-7b-instruct"), r


def test_user_data_is_the_render_and_passes_cloud_init_schema(dev: tuple[FleetPlan, AwsMocks],
                                                              tmp_path: Path) -> None:
    fleet, mocks = dev
    rendered = {a.deployment: a.content for a in render_fleet(fleet) if a.kind == "cloud-init"}
    templates = mocks.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert len(templates) == len(fleet.deployments)
    for template in templates:
        deployment = template.name.removeprefix("dev-")
        user_data = base64.b64decode(template.inputs["userData"]).decode()
        assert user_data == rendered[deployment]
        path = tmp_path / f"{deployment}.yaml"
        path.write_text(user_data, encoding="utf-8")
        result = schema(path)
        assert result.returncode == 0 and result.stdout.strip() == f"Valid cloud-config: {path}", result.stdout
        assert template.inputs["imageId"] == AMI


def test_gpu_hosts_are_private_imdsv2_encrypted(dev: tuple[FleetPlan, AwsMocks]) -> None:
    fleet, mocks = dev
    (template,) = mocks.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert template.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    (volume,) = template.inputs["blockDeviceMappings"]
    assert volume["ebs"]["encrypted"] == "true" and volume["ebs"]["volumeType"] == "gp3"
    assert volume["ebs"]["volumeSize"] >= 85 + fleet.deployments[0].chosen.replica.weights_gib  # type: ignore[union-attr]
    (group,) = mocks.of_type("aws:autoscaling/group:Group")
    private = {r.name for r in mocks.of_type("aws:ec2/subnet:Subnet") if r.inputs["tags"]["gpufleet:tier"] == "private"}
    assert {f"{name}-id" for name in private} == set(group.inputs["vpcZoneIdentifiers"])
    chosen = fleet.deployments[0].chosen
    assert chosen is not None
    assert group.inputs["minSize"] == group.inputs["maxSize"] == group.inputs["desiredCapacity"] == chosen.machines
    assert template.inputs["instanceType"] == chosen.machine.instance.name


def test_ingress_is_least_privilege(dev: tuple[FleetPlan, AwsMocks]) -> None:
    fleet, mocks = dev
    rules = mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert rules
    clients = set(fleet.spec.network.allowed_client_cidrs)
    for rule in rules:
        assert rule.inputs["ipProtocol"] == "tcp"
        # Numbers come back from the mocks as floats (protobuf).
        assert not rule.inputs["fromPort"] <= 22 <= rule.inputs["toPort"], "no SSH: SSM only"
        if "cidrIpv4" in rule.inputs:
            # Only the LB's 443/80, only from the clients' networks.
            assert rule.inputs["cidrIpv4"] in clients and rule.inputs["fromPort"] in (80, 443), rule
            assert rule.name.startswith("dev-lb-"), rule
        else:
            assert "referencedSecurityGroupId" in rule.inputs, rule
    vllm = [r for r in rules if r.name.startswith("dev-gpu-") and r.inputs["fromPort"] == 8000]
    assert {r.inputs["referencedSecurityGroupId"] for r in vllm} == {"dev-lb-id", "dev-monitoring-id"}


def test_host_role_reads_only_its_secret(dev: tuple[FleetPlan, AwsMocks]) -> None:
    fleet, mocks = dev
    (policy,) = mocks.of_type("aws:iam/rolePolicy:RolePolicy")
    document = json.loads(policy.inputs["policy"])
    (statement,) = document["Statement"]  # dev's weights come from Hugging Face: no S3 grant
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"] == (f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:"
                                     f"{fleet.spec.api_key.name}-??????")
    attached = {r.inputs["policyArn"] for r in mocks.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    assert attached == {"arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
                        "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"}


def test_replica_change_touches_only_the_group_size(dev: tuple[FleetPlan, AwsMocks], tmp_path: Path) -> None:
    _, mocks = dev
    bigger = fleet_of("dev", ("replicas: {min: 1, max: 2}", "replicas: {min: 2, max: 2}"), tmp_path)
    assert bigger.deployments[0].chosen.machines == 2  # type: ignore[union-attr]
    after = provision(bigger)
    before_by = {(r.type, r.name): r.inputs for r in mocks.resources}
    after_by = {(r.type, r.name): r.inputs for r in after.resources}
    assert set(before_by) == set(after_by)
    changed = {key: sorted(k for k in before_by[key].keys() | after_by[key].keys()
                           if before_by[key].get(k) != after_by[key].get(k))
               for key in before_by if before_by[key] != after_by[key]}
    assert changed == {("aws:autoscaling/group:Group", "dev-chat"): ["desiredCapacity", "maxSize", "minSize"]}


def test_existing_vpc_creates_no_network(tmp_path: Path) -> None:
    fleet = fleet_of("dev", ("  gpufleet:network:\n", "  gpufleet:network:\n    vpcId: vpc-0a1b2c3d4e5f60718\n"),
                     tmp_path)
    mocks = provision(fleet)
    created = {r.type for r in mocks.resources}
    assert not created & {"aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/natGateway:NatGateway"}
    (group,) = mocks.of_type("aws:autoscaling/group:Group")
    assert group.inputs["vpcZoneIdentifiers"] == ["subnet-private-a", "subnet-private-b"]
    groups = mocks.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert groups and all(r.inputs["vpcId"] == "vpc-0a1b2c3d4e5f60718" for r in groups)


def test_every_resource_passes_the_policy_pack(dev: tuple[FleetPlan, AwsMocks], tmp_path: Path) -> None:
    """The pack's rules (infra/provision/policy.py) over every resource the program registers, for the dev
    example and for an existing VPC; and the plan's cost is within the budget."""
    fleet, mocks = dev
    existing = provision(fleet_of("dev", ("  gpufleet:network:\n",
                                          "  gpufleet:network:\n    vpcId: vpc-0a1b2c3d4e5f60718\n"), tmp_path))
    for captured in (mocks, existing):
        views = [ResourceView(r.type, r.name, r.inputs) for r in captured.resources]
        assert check_resources(views) == []
    assert list(plan_within_budget(fleet.monthly_usd, fleet.spec.monthly_budget_usd)) == []


def test_the_policy_pack_catches_a_weakened_launch_template(dev: tuple[FleetPlan, AwsMocks]) -> None:
    """The same check fails when the program's launch template loses IMDSv2 or encryption."""
    _, mocks = dev
    (template,) = mocks.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    weakened = json.loads(json.dumps(template.inputs))
    weakened["metadataOptions"]["httpTokens"] = "optional"
    weakened["blockDeviceMappings"][0]["ebs"]["encrypted"] = "false"
    rules = {v.rule for v in check_resources([ResourceView(template.type, template.name, weakened)])}
    assert rules == {"imdsv2-required", "ebs-encrypted"}


def test_the_built_image_reference_reaches_the_user_data(tmp_path: Path) -> None:
    """The image the program built (an Output) replaces the upstream image in the user data: the units and
    the pull script run exactly that reference, and the rest is the render's."""
    fleet = fleet_of("dev")
    ref = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpufleet-dev-vllm@sha256:" + "ab" * 32
    mocks = AwsMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack="dev", preview=False)
    artifacts = render_fleet(fleet)
    run_program(lambda: Ec2Fleet("dev", fleet=fleet, artifacts=artifacts, vllm_image=pulumi.Output.from_input(ref)))
    (template,) = mocks.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    user_data = base64.b64decode(template.inputs["userData"]).decode()
    (rendered,) = [a.content for a in artifacts if a.kind == "cloud-init"]
    assert VLLM_IMAGE in rendered and VLLM_IMAGE not in user_data
    assert user_data == rendered.replace(VLLM_IMAGE, ref)
    path = tmp_path / "chat.yaml"
    path.write_text(user_data, encoding="utf-8")
    assert schema(path).returncode == 0

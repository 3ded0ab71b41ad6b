"""The aws-ec2 target under mocks (Ec2Fleet on the dev and staging examples): the resource graph as a
reviewed snapshot; every launch template's and instance's user data as rendered and accepted by the real
`cloud-init schema`; least privilege in the security groups and the roles; the load-balancer tier per TLS
source; the config store and its bundle; reserved capacity; what a replica change touches; and every
resource through the policy rules."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.hostagent.layout import ROLE_TAG, bundle_key, bundle_parameter
from infra.plan.optimize import FleetPlan, plan_stack
from infra.provision.aws.bundle import Bundle, write_bundle
from infra.provision.aws.capacity import reservation_problems
from infra.provision.aws.ec2 import Ec2Fleet
from infra.provision.aws.loadbalancer import longest_generation_s
from infra.provision.policy import ResourceView, check_resources, plan_within_budget
from infra.render.artifacts import Artifact
from infra.render.ec2_hosts import host_user_data_path
from infra.render.stack import render_fleet
from infra.render.systemd import VLLM_IMAGE
from infra.spec.load import Project, load_stack
from tests.pulumi.mocks import RecordingMocks, Registered, ensure_event_loop, run_program
from tests.pulumi.snapshots import assert_snapshot
from tests.pulumi.stacks import edited_project
from tests.render.test_cloudinit import schema

ROOT = Path(__file__).resolve().parents[2]
AMI = "ami-0123456789abcdef0"
ACCOUNT = "123456789012"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LISTENER = "aws:lb/listener:Listener"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
NLB = "aws:lb/loadBalancer:LoadBalancer"
POLICY = "aws:iam/rolePolicy:RolePolicy"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
PARAMETER = "aws:ssm/parameter:Parameter"
EXISTING_VPC = ("  gpufleet:network:\n", "  gpufleet:network:\n    vpcId: vpc-0a1b2c3d4e5f60718\n")


class AwsMocks(RecordingMocks):
    """Provider-computed outputs the program reads (ids, ARNs, names, the launch template's version, the
    NLB's DNS name) and the lookups (AMI parameters, caller identity, subnets of an existing VPC)."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outputs = super().new_resource(args)
        computed: dict[str, Any] = {"arn": f"arn:aws:mock:::{args.name}", "name": args.name}
        if args.typ == LAUNCH_TEMPLATE:
            computed["latestVersion"] = 1
        if args.typ == NLB:
            computed["dnsName"] = f"{args.name}-0123456789.elb.us-east-1.amazonaws.com"
        if args.typ == "aws:s3/bucket:Bucket":
            computed |= {"bucket": f"{args.inputs['bucketPrefix']}20261202", "arn": f"arn:aws:s3:::{args.name}"}
        return rid, {**computed, **outputs}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:ssm/getParameter:getParameter":
            return {"name": args.args["name"], "value": AMI, "type": "String", "arn": "", "id": args.args["name"],
                    "version": 1, "insecureValue": AMI}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "id": ACCOUNT,
                    "userId": "AIDA"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            filters = {f["name"]: f["values"][0] for f in args.args["filters"]}
            tier, zone = filters["tag:gpufleet:tier"], filters.get("availability-zone")
            ids = [f"subnet-{tier}-{zone}"] if zone else [f"subnet-{tier}-a", f"subnet-{tier}-b"]
            return {"ids": ids, "id": "x", "filters": args.args["filters"]}
        return super().call(args)


def fleet_of(stack: str, edit: tuple[str, str] | None = None, tmp_path: Path | None = None) -> FleetPlan:
    project = Project(ROOT)
    if edit:
        assert tmp_path is not None
        project = edited_project(tmp_path, stack, edit)
    return plan_stack(load_stack(project, stack))


class Provisioned:
    def __init__(self, fleet: FleetPlan, artifacts: list[Artifact], bundle: Bundle, mocks: AwsMocks) -> None:
        self.fleet, self.artifacts, self.bundle, self.mocks = fleet, artifacts, bundle, mocks

    def of_type(self, typ: str) -> list[Registered]:
        return self.mocks.of_type(typ)

    def named(self, typ: str, name: str) -> Registered:
        (found,) = [r for r in self.mocks.of_type(typ) if r.name == name]
        return found


def provision(fleet: FleetPlan, out: Path, vllm_image: pulumi.Input[str] | None = None) -> Provisioned:
    mocks = AwsMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=fleet.stack, preview=False)
    artifacts = render_fleet(fleet)
    bundle = write_bundle(artifacts, out / f"{fleet.stack}.bundle.tar.gz")
    run_program(lambda: Ec2Fleet(fleet.stack, fleet=fleet, artifacts=artifacts, bundle=bundle,
                                 vllm_image=vllm_image))
    return Provisioned(fleet, artifacts, bundle, mocks)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    ensure_event_loop()
    return provision(fleet_of("dev"), tmp_path_factory.mktemp("dev"))


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    ensure_event_loop()
    return provision(fleet_of("staging"), tmp_path_factory.mktemp("staging"))


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    ensure_event_loop()
    return provision(fleet_of("engines"), tmp_path_factory.mktemp("engines"))


def test_resource_graph_matches_the_reviewed_snapshot(dev: Provisioned, staging: Provisioned) -> None:
    assert_snapshot("aws-ec2-dev", dev.mocks.resources)
    assert_snapshot("aws-ec2-staging", staging.mocks.resources)


# AWS resources that take no tags (associations, policies and settings of a tagged parent).
UNTAGGABLE = {"aws:ec2/routeTableAssociation:RouteTableAssociation", "aws:iam/rolePolicy:RolePolicy",
              "aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:s3/bucketPolicy:BucketPolicy",
              "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
              "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
              "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
              "aws:s3/bucketVersioning:BucketVersioning",
              "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"}


def tag_pairs(resource: Registered) -> dict[str, str]:
    tags = resource.inputs["tags"]
    return {t["key"]: t["value"] for t in tags} if isinstance(tags, list) else tags  # ASG: a list


def test_every_resource_carries_the_cost_tags(dev: Provisioned) -> None:
    tagged = [r for r in dev.mocks.resources if r.type.startswith("aws:") and r.type not in UNTAGGABLE]
    assert len(tagged) > 40
    for r in tagged:
        pairs = tag_pairs(r)
        assert pairs["gpufleet:stack"] == "dev" and pairs["gpufleet:owner"] == dev.fleet.spec.owner, r
    gpu = dev.named(GROUP, "dev-chat")
    assert (tag_pairs(gpu)["gpufleet:deployment"], tag_pairs(gpu)["gpufleet:model"]) == ("chat", "qwen2.5-7b-instruct")


def launch_tag_roles(resource: Registered) -> set[str]:
    specs = resource.inputs["tagSpecifications"]
    assert {s["resourceType"] for s in specs} == {"instance", "volume"}
    return {s["tags"][ROLE_TAG] for s in specs}


def test_instances_carry_the_role_discovery_lists_them_by(dev: Provisioned) -> None:
    assert launch_tag_roles(dev.named(LAUNCH_TEMPLATE, "dev-chat")) == {"gpu"}
    assert launch_tag_roles(dev.named(LAUNCH_TEMPLATE, "dev-lb-hosts")) == {"lb"}
    assert dev.named(INSTANCE, "dev-monitoring").inputs["tags"][ROLE_TAG] == "monitoring"


def user_data_of(resource: Registered) -> str:
    """The user data as cloud-init reads it (the LB and monitoring hosts' is gzipped: ec2_hosts.py)."""
    raw = base64.b64decode(resource.inputs.get("userData") or resource.inputs["userDataBase64"])
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()


@pytest.mark.parametrize("which", ["dev", "staging", "engines"])
def test_user_data_is_the_render_and_passes_cloud_init_schema(which: str, request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    fleet: Provisioned = request.getfixturevalue(which)
    rendered = {a.path: a.content for a in fleet.artifacts if a.kind == "cloud-init"}
    hosts = {**{f"{which}-{d.deployment.name}": f"cloud-init/{d.deployment.name}.yaml"
                for d in fleet.fleet.deployments},
             f"{which}-lb-hosts": host_user_data_path("lb"), f"{which}-monitoring": host_user_data_path("monitoring")}
    booted = {r.name: r for r in (*fleet.of_type(LAUNCH_TEMPLATE), *fleet.of_type(INSTANCE))}
    assert set(booted) == set(hosts)
    for name, path in hosts.items():
        user_data = user_data_of(booted[name])
        assert user_data == rendered[path], name
        file = tmp_path / f"{name}.yaml"
        file.write_text(user_data, encoding="utf-8")
        result = schema(file)
        assert result.returncode == 0 and result.stdout.strip() == f"Valid cloud-config: {file}", result.stdout
        assert booted[name].inputs.get("imageId", booted[name].inputs.get("ami")) == AMI


def test_every_host_is_private_imdsv2_encrypted(dev: Provisioned) -> None:
    private = {f"{r.name}-id" for r in dev.of_type("aws:ec2/subnet:Subnet")
               if r.inputs["tags"]["gpufleet:tier"] == "private"}
    for template in dev.of_type(LAUNCH_TEMPLATE):
        assert template.inputs["metadataOptions"]["httpTokens"] == "required"
        assert template.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
        (volume,) = template.inputs["blockDeviceMappings"]
        assert volume["ebs"]["encrypted"] == "true" and volume["ebs"]["volumeType"] == "gp3"
    for group in dev.of_type(GROUP):
        assert set(group.inputs["vpcZoneIdentifiers"]) == private, group.name
    monitoring = dev.named(INSTANCE, "dev-monitoring")
    assert monitoring.inputs["metadataOptions"]["httpTokens"] == "required"
    assert monitoring.inputs["rootBlockDevice"]["encrypted"] is True
    assert monitoring.inputs["subnetId"] in private
    assert "associatePublicIpAddress" not in monitoring.inputs


def test_gpu_group_is_the_planned_size(dev: Provisioned) -> None:
    chosen = dev.fleet.deployments[0].chosen
    assert chosen is not None
    template, group = dev.named(LAUNCH_TEMPLATE, "dev-chat"), dev.named(GROUP, "dev-chat")
    assert group.inputs["minSize"] == group.inputs["maxSize"] == group.inputs["desiredCapacity"] == chosen.machines
    assert template.inputs["instanceType"] == chosen.machine.instance.name
    assert template.inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] >= 85 + chosen.replica.weights_gib
    assert template.inputs["instanceMarketOptions"] == {"marketType": "spot"}  # dev's plan: spot


def ingress_rules(fleet: Provisioned) -> dict[str, list[dict[str, Any]]]:
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in fleet.of_type(INGRESS):
        role = rule.name.removeprefix(f"{fleet.fleet.stack}-").split("-in-")[0]
        rules.setdefault(role, []).append(rule.inputs)
    return rules


@pytest.mark.parametrize(("which", "client_ports"), [("dev", {80, 443}), ("staging", {443})])
def test_ingress_is_least_privilege(which: str, client_ports: set[int], request: pytest.FixtureRequest) -> None:
    """Clients reach only the NLB's listeners (ACM: 443 alone); the Nginx hosts only from the NLB; vLLM only
    from the LB and monitoring hosts; nothing on SSH; the monitoring host nothing at all."""
    fleet: Provisioned = request.getfixturevalue(which)
    rules = ingress_rules(fleet)
    clients = set(fleet.fleet.spec.network.allowed_client_cidrs)
    for role, inputs in rules.items():
        for rule in inputs:
            assert rule["ipProtocol"] == "tcp"
            assert not rule["fromPort"] <= 22 <= rule["toPort"], "no SSH: SSM only"
            if "cidrIpv4" in rule:
                assert role == "nlb" and rule["cidrIpv4"] in clients, rule
    assert {r["fromPort"] for r in rules["nlb"]} == client_ports
    assert all("cidrIpv4" in r for r in rules["nlb"])
    stack = fleet.fleet.stack
    nginx = [r for r in rules["lb"] if r["fromPort"] in (80, 443)]
    assert {r["referencedSecurityGroupId"] for r in nginx} == {f"{stack}-nlb-id"}
    vllm = [r for r in rules["gpu"] if r["fromPort"] == 8000]
    assert {r["referencedSecurityGroupId"] for r in vllm} == {f"{stack}-lb-id", f"{stack}-monitoring-id"}
    assert "monitoring" not in rules


def statements_of(fleet: Provisioned, role: str) -> list[dict[str, Any]]:
    policy = fleet.named(POLICY, f"{fleet.fleet.stack}-{role}-read")
    return list(json.loads(policy.inputs["policy"])["Statement"])


def test_gpu_role_reads_only_its_secret(dev: Provisioned) -> None:
    (statement,) = statements_of(dev, "gpu")  # dev's weights come from Hugging Face: no S3 grant
    assert statement == {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                         "Resource": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:"
                                     f"{dev.fleet.spec.api_key.name}-??????"}


def bundle_grants(stack: str) -> list[dict[str, Any]]:
    return [
        {"Effect": "Allow", "Action": ["ssm:GetParameter"],
         "Resource": f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter{bundle_parameter(stack)}"},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{stack}-config/bundles/*"},
        {"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"},
    ]


def secret_grant(name: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
            "Resource": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{name}-??????"}


def test_lb_and_monitoring_roles_read_their_bundle_and_their_secrets(staging: Provisioned) -> None:
    spec = staging.fleet.spec
    assert statements_of(staging, "lb") == [*bundle_grants("staging"), secret_grant(spec.api_key.name)]
    assert statements_of(staging, "monitoring") == [*bundle_grants("staging"),
                                                    secret_grant("gpufleet/staging/release-bot-token")]
    attached = {(r.name, r.inputs["policyArn"])
                for r in staging.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")}
    ssm = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    assert attached == {("staging-gpu-ssm", ssm), ("staging-lb-ssm", ssm), ("staging-monitoring-ssm", ssm),
                        ("staging-gpu-ecr", "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly")}


def listeners_of(fleet: Provisioned) -> dict[int, dict[str, Any]]:
    return {int(r.inputs["port"]): r.inputs for r in fleet.of_type(LISTENER)}


def target_ports(fleet: Provisioned) -> dict[str, int]:
    return {f"{r.name}-id": int(r.inputs["port"]) for r in fleet.of_type(TARGET_GROUP)}


def test_nlb_passes_tls_through_to_nginx_for_self_signed(dev: Provisioned) -> None:
    (nlb,) = dev.of_type(NLB)
    assert nlb.inputs["loadBalancerType"] == "network" and nlb.inputs["internal"] is True  # 10.0.0.0/8 only
    assert nlb.inputs["securityGroups"] == ["dev-nlb-id"]
    ports = target_ports(dev)
    listeners = listeners_of(dev)
    assert {port: (inputs["protocol"], ports[inputs["defaultActions"][0]["targetGroupArn"].removeprefix(
        "arn:aws:mock:::") + "-id"]) for port, inputs in listeners.items()} == {443: ("TCP", 443), 80: ("TCP", 80)}
    assert all(inputs["tcpIdleTimeoutSeconds"] > longest_generation_s(dev.fleet) for inputs in listeners.values())


def test_nlb_ends_tls_with_the_acm_certificate(staging: Provisioned) -> None:
    (listener,) = listeners_of(staging).values()
    assert listener["port"] == 443 and listener["protocol"] == "TLS"
    assert listener["certificateArn"] == staging.fleet.spec.network.tls.arn  # type: ignore[union-attr]
    assert listener["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    (target,) = staging.of_type(TARGET_GROUP)
    assert listener["defaultActions"][0]["targetGroupArn"] == f"arn:aws:mock:::{target.name}"
    assert target.inputs["port"] == 80


def test_target_groups_check_healthz_and_drain_the_longest_generation(staging: Provisioned) -> None:
    for target in staging.of_type(TARGET_GROUP):
        check = target.inputs["healthCheck"]
        assert (check["protocol"], check["port"], check["path"]) == ("HTTP", "80", "/healthz")
        assert target.inputs["deregistrationDelay"] == longest_generation_s(staging.fleet)
        assert target.inputs["preserveClientIp"] == "true"


@pytest.mark.parametrize(("which", "hosts"), [("dev", 1), ("staging", 2)])
def test_nginx_hosts_sit_behind_the_nlb(which: str, hosts: int, request: pytest.FixtureRequest) -> None:
    """Two across zones when a deployment asks n+1 (staging), one otherwise; replaced on a failed health check."""
    fleet: Provisioned = request.getfixturevalue(which)
    group = fleet.named(GROUP, f"{which}-lb-hosts")
    assert group.inputs["minSize"] == group.inputs["maxSize"] == group.inputs["desiredCapacity"] == hosts
    assert group.inputs["healthCheckType"] == "ELB"
    assert set(group.inputs["targetGroupArns"]) == {f"arn:aws:mock:::{r.name}" for r in fleet.of_type(TARGET_GROUP)}
    template = fleet.named(LAUNCH_TEMPLATE, f"{which}-lb-hosts")
    assert template.inputs["vpcSecurityGroupIds"] == [f"{which}-lb-id"]
    assert not template.inputs["instanceType"].startswith(("p", "g"))


def test_config_store_holds_this_renders_bundle(dev: Provisioned) -> None:
    (obj,) = dev.of_type(OBJECT)
    assert obj.inputs["key"] == bundle_key(dev.bundle.sha256)
    (parameter,) = dev.of_type(PARAMETER)
    assert parameter.inputs["name"] == bundle_parameter("dev")
    assert json.loads(parameter.inputs["insecureValue"]) == {"bucket": "gpufleet-dev-config-20261202",
                                                     "key": bundle_key(dev.bundle.sha256),
                                                     "sha256": dev.bundle.sha256}
    block = dev.named("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "dev-config")
    assert all(block.inputs[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                                 "restrictPublicBuckets"))
    policy = json.loads(dev.named("aws:s3/bucketPolicy:BucketPolicy", "dev-config").inputs["policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def changed_resources(before: Provisioned, after: Provisioned) -> dict[tuple[str, str], list[str]]:
    before_by = {(r.type, r.name): r.inputs for r in before.mocks.resources}
    after_by = {(r.type, r.name): r.inputs for r in after.mocks.resources}
    assert set(before_by) == set(after_by)
    return {key: sorted(k for k in before_by[key].keys() | after_by[key].keys()
                        if before_by[key].get(k) != after_by[key].get(k))
            for key in before_by if before_by[key] != after_by[key]}


def test_replica_change_touches_the_group_size_and_the_bundle(dev: Provisioned, tmp_path: Path) -> None:
    """More replicas: the GPU group's size, and a new bundle (the LB's rate limits and the Ansible vars name the
    replica count), which the pointer then names. Nothing else."""
    bigger = fleet_of("dev", ("replicas: {min: 1, max: 2}", "replicas: {min: 2, max: 2}"), tmp_path)
    assert bigger.deployments[0].chosen.machines == 2  # type: ignore[union-attr]
    after = provision(bigger, tmp_path)
    assert changed_resources(dev, after) == {
        (GROUP, "dev-chat"): ["desiredCapacity", "maxSize", "minSize"],
        (OBJECT, "dev-config-bundle"): ["key", "source"],
        (PARAMETER, "dev-config"): ["insecureValue"],
    }


def test_unchanged_stack_gives_the_same_bundle(dev: Provisioned, tmp_path: Path) -> None:
    again = write_bundle(render_fleet(fleet_of("dev")), tmp_path / "again.tar.gz")
    assert again.sha256 == dev.bundle.sha256
    assert again.path.read_bytes() == dev.bundle.path.read_bytes()


def test_existing_vpc_creates_no_network(tmp_path: Path) -> None:
    fleet = provision(fleet_of("dev", EXISTING_VPC, tmp_path), tmp_path)
    created = {r.type for r in fleet.mocks.resources}
    assert not created & {"aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/natGateway:NatGateway"}
    assert fleet.named(GROUP, "dev-chat").inputs["vpcZoneIdentifiers"] == ["subnet-private-a", "subnet-private-b"]
    groups = fleet.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert groups and all(r.inputs["vpcId"] == "vpc-0a1b2c3d4e5f60718" for r in groups)


RESERVED = ("      maxTensorParallel: 1\n",
            "      maxTensorParallel: 1\n      capacityReservation: {id: cr-0123456789abcdef0, zone: us-east-1b}\n")


def on_demand_dev(tmp_path: Path) -> Project:
    """dev without spot (a reservation is on-demand or a capacity block, never spot)."""
    return edited_project(tmp_path, "dev", ("    spotAllowed: true        # interruptions are fine in dev\n",
                                            "    spotAllowed: false\n"))


def test_reserved_capacity_pins_the_zone_and_replaces_one_machine_at_a_time(tmp_path: Path) -> None:
    project = on_demand_dev(tmp_path / "p")
    stack_file = project.root / "stacks" / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text(encoding="utf-8").replace(*RESERVED), encoding="utf-8")
    fleet = provision(plan_stack(load_stack(project, "dev")), tmp_path)
    template, group = fleet.named(LAUNCH_TEMPLATE, "dev-chat"), fleet.named(GROUP, "dev-chat")
    assert template.inputs["capacityReservationSpecification"] == {
        "capacityReservationTarget": {"capacityReservationId": "cr-0123456789abcdef0"}}
    assert "instanceMarketOptions" not in template.inputs  # on-demand, into the reservation
    assert group.inputs["vpcZoneIdentifiers"] == ["dev-private-us-east-1b-id"]
    preferences = group.inputs["instanceRefresh"]["preferences"]
    assert (preferences["minHealthyPercentage"], preferences["maxHealthyPercentage"]) == (0, 100)  # one machine


def capacity_block_dev(tmp_path: Path, reserved: bool) -> FleetPlan:
    """dev on A100s bought as a Capacity Block (cheaper than on-demand, and spot is off)."""
    project = on_demand_dev(tmp_path)
    stack_file = project.root / "stacks" / "Pulumi.dev.yaml"
    text = stack_file.read_text(encoding="utf-8")
    for old, new in [("    spotAllowed: false\n", "    capacityBlocksAllowed: true\n"),
                     ("gpus: [L4, A10G]", "gpus: [A100-40G]"), ("monthlyBudgetUsd: 1500", "monthlyBudgetUsd: 20000"),
                     *([RESERVED] if reserved else [])]:
        assert old in text, old
        text = text.replace(old, new)
    stack_file.write_text(text, encoding="utf-8")
    return plan_stack(load_stack(project, "dev"))


def test_a_capacity_block_plan_needs_the_bought_block(tmp_path: Path) -> None:
    unbought = capacity_block_dev(tmp_path / "a", reserved=False)
    assert unbought.deployments[0].chosen.machine.price.market == "capacity-block"  # type: ignore[union-attr]
    (problem,) = reservation_problems(unbought)
    assert "deployment 'chat' is planned on an EC2 Capacity Block (1 x p4d.24xlarge)" in problem
    assert "gpufleet:deployments[0].capacityReservation" in problem
    bought = capacity_block_dev(tmp_path / "b", reserved=True)
    assert reservation_problems(bought) == []
    template = provision(bought, tmp_path).named(LAUNCH_TEMPLATE, "dev-chat")
    assert template.inputs["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert template.inputs["capacityReservationSpecification"]["capacityReservationTarget"] == {
        "capacityReservationId": "cr-0123456789abcdef0"}


def test_every_resource_passes_the_policy_pack(dev: Provisioned, staging: Provisioned, tmp_path: Path) -> None:
    """The pack's rules (infra/provision/policy.py) over every resource the component registers, for both
    examples and an existing VPC; and the plans' costs are within the budgets."""
    existing = provision(fleet_of("dev", EXISTING_VPC, tmp_path), tmp_path)
    for captured in (dev, staging, existing):
        views = [ResourceView(r.type, r.name, r.inputs) for r in captured.mocks.resources]
        assert check_resources(views) == []
        spec = captured.fleet.spec
        assert list(plan_within_budget(captured.fleet.monthly_usd, spec.monthly_budget_usd)) == []


def test_the_policy_pack_catches_a_weakened_launch_template(dev: Provisioned) -> None:
    """The same check fails when the program's launch template loses IMDSv2 or encryption."""
    template = dev.named(LAUNCH_TEMPLATE, "dev-chat")
    weakened = json.loads(json.dumps(template.inputs))
    weakened["metadataOptions"]["httpTokens"] = "optional"
    weakened["blockDeviceMappings"][0]["ebs"]["encrypted"] = "false"
    rules = {v.rule for v in check_resources([ResourceView(template.type, template.name, weakened)])}
    assert rules == {"imdsv2-required", "ebs-encrypted"}


def test_the_built_image_reference_reaches_the_user_data(tmp_path: Path) -> None:
    """The image the program built (an Output) replaces the upstream image in the GPU hosts' user data: the
    units and the pull script run exactly that reference, and the rest is the render's."""
    ref = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpufleet-dev-vllm@sha256:" + "ab" * 32
    fleet = provision(fleet_of("dev"), tmp_path, vllm_image=pulumi.Output.from_input(ref))
    user_data = user_data_of(fleet.named(LAUNCH_TEMPLATE, "dev-chat"))
    rendered = next(a.content for a in fleet.artifacts if a.path == "cloud-init/chat.yaml")
    assert VLLM_IMAGE in rendered and VLLM_IMAGE not in user_data
    assert user_data == rendered.replace(VLLM_IMAGE, ref)
    path = tmp_path / "chat.yaml"
    path.write_text(user_data, encoding="utf-8")
    assert schema(path).returncode == 0

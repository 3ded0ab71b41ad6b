"""The policy rules of infra/provision/policy.py, called directly on synthetic resources, and the pulumi-policy
adapters driven through pulumi_policy's real argument classes (never PolicyPack: it starts a server and
blocks)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pulumi_policy
import pytest
from pulumi_policy.proxy import unknown_checking_proxy

from infra.provision import policy
from infra.provision.policy import (
    AUTOSCALING_GROUP,
    INGRESS_RULE,
    INSTANCE,
    LAUNCH_TEMPLATE,
    NODE_GROUP,
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    STACK,
    VOLUME,
    PolicyContext,
    ResourceView,
    check_cost_tags,
    check_ebs_encrypted,
    check_gpu_instance_types,
    check_imdsv2,
    check_public_ingress,
    check_resources,
    plan_within_budget,
    stack_budget_violations,
)

CTX = PolicyContext.default()
COST_TAGS = {"gpufleet:stack": "dev", "gpufleet:owner": "ml-platform"}
DEPLOYMENT_TAGS = {**COST_TAGS, "gpufleet:deployment": "chat", "gpufleet:model": "qwen2.5-7b-instruct"}


def view(type_: str, props: dict[str, Any], name: str = "res") -> ResourceView:
    return ResourceView(type=type_, name=name, props=props)


def messages(rule: Any, resource: ResourceView) -> list[str]:
    return list(rule(resource, CTX))


def sg_with(rule: dict[str, Any]) -> ResourceView:
    return view(SECURITY_GROUP, {"ingress": [rule], "tags": COST_TAGS}, name="lb-sg")


def good_launch_template(**overrides: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "instanceType": "g6.xlarge",
        "metadataOptions": {"httpTokens": "required", "httpEndpoint": "enabled"},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true", "volumeSize": 200}}],
        "tags": DEPLOYMENT_TAGS,
    }
    return {**props, **overrides}


def good_instance(**overrides: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "instanceType": "c7i.large",
        "metadataOptions": {"httpTokens": "required"},
        "rootBlockDevice": {"encrypted": True, "volumeSize": 50},
        "tags": COST_TAGS,
    }
    return {**props, **overrides}


# ------------------------------------------------------------------ no-public-ingress


@pytest.mark.parametrize("port", [80, 443, 443.0])  # the engine hands numbers over as floats
def test_public_https_and_http_on_one_port_pass(port: float) -> None:
    rule = {"protocol": "tcp", "fromPort": port, "toPort": port, "cidrBlocks": ["0.0.0.0/0"]}
    assert messages(check_public_ingress, sg_with(rule)) == []


def test_public_ssh_is_a_violation_naming_resource_port_and_fix() -> None:
    rule = {"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["10.0.0.0/8", "0.0.0.0/0"]}
    [message] = messages(check_public_ingress, sg_with(rule))
    assert message.startswith("lb-sg: ingress[0] opens tcp port 22 to 0.0.0.0/0")
    assert "allowedClientCidrs" in message


def test_ipv6_anywhere_counts_as_public() -> None:
    rule = {"protocol": "tcp", "fromPort": 8000, "toPort": 8000, "ipv6CidrBlocks": ["::/0"]}
    [message] = messages(check_public_ingress, sg_with(rule))
    assert "to ::/0" in message


def test_full_port_range_open_to_the_world_is_a_violation() -> None:
    rule = {"protocol": "tcp", "fromPort": 0, "toPort": 65535, "cidrBlocks": ["0.0.0.0/0"]}
    [message] = messages(check_public_ingress, sg_with(rule))
    assert "tcp ports 0-65535" in message


def test_a_range_that_merely_contains_443_is_a_violation() -> None:
    rule = {"protocol": "tcp", "fromPort": 80, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}
    assert len(messages(check_public_ingress, sg_with(rule))) == 1


@pytest.mark.parametrize("protocol", ["-1", "all"])
def test_all_protocols_open_to_the_world_is_a_violation_even_on_443(protocol: str) -> None:
    rule = {"protocol": protocol, "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}
    [message] = messages(check_public_ingress, sg_with(rule))
    assert "all protocols and ports" in message


def test_udp_443_is_not_the_load_balancer() -> None:
    rule = {"protocol": "udp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]}
    assert len(messages(check_public_ingress, sg_with(rule))) == 1


def test_private_sources_may_open_any_port() -> None:
    rule = {"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["10.0.0.0/8"], "ipv6CidrBlocks": ["fd00::/8"]}
    assert messages(check_public_ingress, sg_with(rule)) == []


def test_each_offending_inline_rule_is_reported() -> None:
    sg = view(SECURITY_GROUP, {"ingress": [
        {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]},
        {"protocol": "tcp", "fromPort": 9090, "toPort": 9090, "cidrBlocks": ["0.0.0.0/0"]},
        {"protocol": "tcp", "fromPort": 3000, "toPort": 3000, "ipv6CidrBlocks": ["::/0"]},
    ]})
    found = messages(check_public_ingress, sg)
    assert [m.split(" opens")[0] for m in found] == ["res: ingress[1]", "res: ingress[2]"]


def test_vpc_ingress_rule_resource() -> None:
    https = view(INGRESS_RULE, {"ipProtocol": "tcp", "fromPort": 443, "toPort": 443, "cidrIpv4": "0.0.0.0/0"})
    everything = view(INGRESS_RULE, {"ipProtocol": "-1", "cidrIpv6": "::/0"})
    assert messages(check_public_ingress, https) == []
    assert len(messages(check_public_ingress, everything)) == 1


def test_security_group_rule_resource_only_ingress_matters() -> None:
    ingress = {"type": "ingress", "protocol": "6", "fromPort": 8000, "toPort": 8000, "cidrBlocks": ["0.0.0.0/0"]}
    egress = {**ingress, "type": "egress", "protocol": "-1"}
    assert len(messages(check_public_ingress, view(SECURITY_GROUP_RULE, ingress))) == 1
    assert messages(check_public_ingress, view(SECURITY_GROUP_RULE, egress)) == []


def test_lb_ports_come_from_the_context() -> None:
    rule = {"protocol": "tcp", "fromPort": 8443, "toPort": 8443, "cidrBlocks": ["0.0.0.0/0"]}
    ctx = PolicyContext(gpu_instance_types=frozenset(), load_balancer_ports=frozenset({8443}))
    assert list(check_public_ingress(sg_with(rule), ctx)) == []


# ------------------------------------------------------------------ imdsv2-required


@pytest.mark.parametrize("type_", [LAUNCH_TEMPLATE, INSTANCE])
def test_imdsv2_required_passes(type_: str) -> None:
    assert messages(check_imdsv2, view(type_, {"metadataOptions": {"httpTokens": "required"}})) == []


@pytest.mark.parametrize("type_", [LAUNCH_TEMPLATE, INSTANCE])
def test_optional_tokens_allow_imdsv1(type_: str) -> None:
    [message] = messages(check_imdsv2, view(type_, {"metadataOptions": {"httpTokens": "optional"}}, name="gpu-lt"))
    assert message.startswith("gpu-lt: metadataOptions.httpTokens='optional' allows IMDSv1")
    assert 'httpTokens to "required"' in message


def test_missing_metadata_options_is_a_violation() -> None:
    [message] = messages(check_imdsv2, view(LAUNCH_TEMPLATE, {"instanceType": "g6.xlarge"}))
    assert "no metadataOptions.httpTokens" in message


def test_imdsv2_ignores_other_types() -> None:
    assert messages(check_imdsv2, view(VOLUME, {"encrypted": True})) == []


# ------------------------------------------------------------------ ebs-encrypted


def test_encrypted_launch_template_passes() -> None:
    assert messages(check_ebs_encrypted, view(LAUNCH_TEMPLATE, good_launch_template())) == []


def test_unencrypted_second_mapping_is_named() -> None:
    mappings = [
        {"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}},
        {"deviceName": "/dev/xvdb", "ebs": {"volumeSize": 1000}},
        {"deviceName": "/dev/sdc", "virtualName": "ephemeral0"},  # instance store: no EBS to encrypt
    ]
    found = messages(check_ebs_encrypted, view(LAUNCH_TEMPLATE, good_launch_template(blockDeviceMappings=mappings)))
    assert len(found) == 1
    assert "blockDeviceMappings[1] (/dev/xvdb).ebs is not encrypted (encrypted=None)" in found[0]


def test_launch_template_string_false_is_not_encrypted() -> None:
    mappings = [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "false"}}]
    template = view(LAUNCH_TEMPLATE, good_launch_template(blockDeviceMappings=mappings))
    assert len(messages(check_ebs_encrypted, template)) == 1


def test_launch_template_without_mappings_leaves_the_root_volume_unencrypted() -> None:
    props = good_launch_template()
    del props["blockDeviceMappings"]
    [message] = messages(check_ebs_encrypted, view(LAUNCH_TEMPLATE, props))
    assert "no EBS block device mapping" in message


def test_encrypted_instance_passes() -> None:
    props = good_instance(ebsBlockDevices=[{"deviceName": "/dev/sdf", "encrypted": True}])
    assert messages(check_ebs_encrypted, view(INSTANCE, props)) == []


def test_instance_with_an_unencrypted_extra_device() -> None:
    props = good_instance(ebsBlockDevices=[{"deviceName": "/dev/sdf", "encrypted": False}])
    [message] = messages(check_ebs_encrypted, view(INSTANCE, props))
    assert "ebsBlockDevices[0] (/dev/sdf) is not encrypted" in message


def test_instance_without_root_block_device_is_a_violation() -> None:
    props = good_instance()
    del props["rootBlockDevice"]
    [message] = messages(check_ebs_encrypted, view(INSTANCE, props))
    assert "declares no rootBlockDevice" in message


@pytest.mark.parametrize(("encrypted", "violations"), [(True, 0), (False, 1), (None, 1)])
def test_volume(encrypted: bool | None, violations: int) -> None:
    props = {"size": 100} if encrypted is None else {"size": 100, "encrypted": encrypted}
    assert len(messages(check_ebs_encrypted, view(VOLUME, props))) == violations


def _service(ports: list[int], ranges: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "LoadBalancer", "ports": [{"port": p, "protocol": "TCP"} for p in ports]}
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = ranges
    return {"spec": spec}


@pytest.mark.parametrize(("ports", "ranges", "violations"), [
    ([443], ["10.0.0.0/8"], 0),
    ([443, 80], None, 0),  # no ranges: open to everyone, on the load balancer's ports only
    ([443, 8000], None, 1),
    ([8000], ["0.0.0.0/0"], 1),
    ([8000], ["10.0.0.0/8"], 0),
])
def test_kubernetes_load_balancer_service(ports: list[int], ranges: list[str] | None, violations: int) -> None:
    found = messages(check_public_ingress, view("kubernetes:core/v1:Service", _service(ports, ranges)))
    assert len(found) == violations
    assert all("spec.ports[1]" in m or "spec.ports[0]" in m for m in found)


def test_cluster_internal_services_are_not_ingress() -> None:
    internal = {"spec": {"type": "ClusterIP", "ports": [{"port": 8000, "protocol": "TCP"}]}}
    assert messages(check_public_ingress, view("kubernetes:core/v1:Service", internal)) == []


# ------------------------------------------------------------------ cost-tags


@pytest.mark.parametrize("tags", [COST_TAGS, DEPLOYMENT_TAGS])
def test_cost_tags_present(tags: dict[str, str]) -> None:
    assert messages(check_cost_tags, view(LAUNCH_TEMPLATE, {"tags": tags})) == []


@pytest.mark.parametrize("key", ["gpufleet:stack", "gpufleet:owner"])
def test_missing_one_always_required_tag(key: str) -> None:
    tags = {k: v for k, v in DEPLOYMENT_TAGS.items() if k != key}
    [message] = messages(check_cost_tags, view(VOLUME, {"tags": tags}, name="data"))
    assert message.startswith(f"data: missing cost tag(s) {key};")


def test_deployment_tag_requires_the_model_tag_and_vice_versa() -> None:
    with_deployment = {**COST_TAGS, "gpufleet:deployment": "chat"}
    with_model = {**COST_TAGS, "gpufleet:model": "qwen2.5-7b-instruct"}
    [without_model] = messages(check_cost_tags, view(INSTANCE, {"tags": with_deployment}))
    [without_deployment] = messages(check_cost_tags, view(INSTANCE, {"tags": with_model}))
    assert "missing cost tag(s) gpufleet:model;" in without_model
    assert "missing cost tag(s) gpufleet:deployment;" in without_deployment


def test_blank_tag_value_counts_as_missing() -> None:
    tags = {**COST_TAGS, "gpufleet:owner": " "}
    assert len(messages(check_cost_tags, view(INSTANCE, {"tags": tags}))) == 1


def test_known_taggable_type_without_tags_input_is_a_violation() -> None:
    [message] = messages(check_cost_tags, view(NODE_GROUP, {"instanceTypes": ["g6.xlarge"]}))
    assert "gpufleet:stack, gpufleet:owner" in message


@pytest.mark.parametrize("typ", ["aws:iam/role:Role", "aws:eks/addon:Addon",
                                 "aws:eks/podIdentityAssociation:PodIdentityAssociation", "aws:kms/key:Key"])
def test_eks_platform_resources_must_be_tagged(typ: str) -> None:
    """The eks target's roles, add-ons, Pod Identity associations and KMS key carry the cost tags too: an
    untagged one is a violation even when the program passed no tags input at all."""
    assert len(messages(check_cost_tags, view(typ, {}))) == 1
    assert messages(check_cost_tags, view(typ, {"tags": COST_TAGS})) == []


def test_autoscaling_group_tags_are_a_list() -> None:
    tags = [{"key": k, "value": v, "propagateAtLaunch": True} for k, v in COST_TAGS.items()]
    assert messages(check_cost_tags, view(AUTOSCALING_GROUP, {"tags": tags})) == []
    assert len(messages(check_cost_tags, view(AUTOSCALING_GROUP, {"tags": tags[:1]}))) == 1


def test_provider_default_tags_count() -> None:
    resource = ResourceView(VOLUME, "data", {"tags": {"gpufleet:owner": "ml-platform"}},
                            provider_default_tags={"gpufleet:stack": "dev"})
    assert messages(check_cost_tags, resource) == []


def test_untaggable_and_non_aws_resources_are_not_checked() -> None:
    assert messages(check_cost_tags, view(SECURITY_GROUP_RULE, {"type": "ingress"})) == []
    assert messages(check_cost_tags, view("command:local:Command", {"create": "true"})) == []
    assert messages(check_cost_tags, view("kubernetes:core/v1:ConfigMap", {"tags": {}})) == []


def test_other_aws_resources_with_a_tags_input_are_checked() -> None:
    assert len(messages(check_cost_tags, view("aws:s3/bucket:Bucket", {"tags": {}}))) == 1


# ------------------------------------------------------------------ gpu-instance-in-catalog


def test_context_default_reads_the_catalogs_aws_types() -> None:
    assert {"g6.xlarge", "p5.48xlarge"} <= CTX.gpu_instance_types
    assert "onprem-8xa800" not in CTX.gpu_instance_types


@pytest.mark.parametrize("type_", [LAUNCH_TEMPLATE, INSTANCE])
@pytest.mark.parametrize("instance_type", ["g6.xlarge", "p5.48xlarge", "c7i.large", "m7i.xlarge", "inf2.xlarge"])
def test_catalog_gpu_and_non_gpu_types_pass(type_: str, instance_type: str) -> None:
    assert messages(check_gpu_instance_types, view(type_, {"instanceType": instance_type})) == []


@pytest.mark.parametrize("instance_type", ["p9.48xlarge", "g4dn.xlarge", "gr6.4xlarge", "p6-b200.48xlarge"])
def test_gpu_type_outside_the_catalog_is_a_violation(instance_type: str) -> None:
    [message] = messages(check_gpu_instance_types, view(LAUNCH_TEMPLATE, {"instanceType": instance_type}, "gpu-lt"))
    assert message.startswith(f"gpu-lt: GPU instance type {instance_type} is not in the gpufleet catalog")


def test_node_group_instance_types_are_each_checked() -> None:
    group = view(NODE_GROUP, {"instanceTypes": ["g6.xlarge", "g5.xlarge", "p9.48xlarge", "g9.xlarge"]})
    found = messages(check_gpu_instance_types, group)
    assert [m.split()[4] for m in found] == ["p9.48xlarge", "g9.xlarge"]


def test_autoscaling_mixed_instances_overrides_are_checked() -> None:
    overrides = [{"instanceType": "g6.2xlarge"}, {"instanceType": "g4dn.12xlarge"}, {"weightedCapacity": "2"}]
    group = view(AUTOSCALING_GROUP, {"mixedInstancesPolicy": {"launchTemplate": {"overrides": overrides}}})
    [message] = messages(check_gpu_instance_types, group)
    assert "g4dn.12xlarge" in message


# ------------------------------------------------------------------ plan-within-budget


@pytest.mark.parametrize(("monthly", "budget"), [(900.0, 1500.0), (1500.0, 1500.0)])
def test_plan_within_budget_passes(monthly: float, budget: float) -> None:
    assert list(plan_within_budget(monthly, budget)) == []


def test_plan_over_budget_names_both_figures_and_the_fix() -> None:
    [message] = plan_within_budget(1500.01, 1500)
    assert "$1,500.01/month, over the stack's $1,500.00 budget" in message
    assert "gpufleet:monthlyBudgetUsd" in message


def test_nan_cost_fails_closed() -> None:
    assert len(list(plan_within_budget(math.nan, 1500))) == 1


def test_stack_outputs_budget_from_the_export_or_the_config() -> None:
    outputs = {"target": "aws-ec2", "plan": {"monthly_usd": 1200.0, "budget_usd": 1500.0, "deployments": {}}}
    assert list(stack_budget_violations(outputs, None)) == []
    assert len(list(stack_budget_violations(outputs, 1000.0))) == 1  # the configured budget wins


def test_stack_without_a_plan_export_fails_closed() -> None:
    [message] = stack_budget_violations({"target": "aws-ec2"}, 1500.0)
    assert "exports no plan.monthly_usd" in message


# ------------------------------------------------------------------ check_resources


def test_check_resources_runs_every_rule_on_every_resource() -> None:
    resources = [
        view(LAUNCH_TEMPLATE, good_launch_template(), name="gpu-lt"),
        view(INSTANCE, good_instance(), name="lb"),
        view(LAUNCH_TEMPLATE, {"instanceType": "p9.48xlarge", "tags": {}}, name="bad-lt"),
    ]
    found = check_resources(resources, CTX)
    assert {(v.rule, v.resource) for v in found} == {
        ("imdsv2-required", "bad-lt"), ("ebs-encrypted", "bad-lt"), ("cost-tags", "bad-lt"),
        ("gpu-instance-in-catalog", "bad-lt"),
    }
    assert all(v.message.startswith("bad-lt: ") for v in found)


# ------------------------------------------------------------------ the pulumi-policy adapters


def resource_args(type_: str, props: dict[str, Any], name: str,
                  provider: pulumi_policy.PolicyProviderResource | None = None) -> pulumi_policy.ResourceValidationArgs:
    """What pulumi_policy's analyzer builds for one resource: its props behind the unknown-checking proxy."""
    options = pulumi_policy.PolicyResourceOptions(False, [], None, [], pulumi_policy.PolicyCustomTimeouts(0, 0, 0), [])
    urn = f"urn:pulumi:dev::gpufleet::{type_}::{name}"
    return pulumi_policy.ResourceValidationArgs(type_, unknown_checking_proxy(props), urn, name, options, provider)


def collect(policy_: Any, args: Any) -> list[str]:
    reported: list[str] = []
    result = policy_.validate(args, lambda message, urn=None: reported.append(message))
    assert result is None  # synchronous validators
    return reported


@pytest.fixture
def policies() -> dict[str, Any]:
    return {p.name: p for p in policy.pulumi_policies(CTX)}


def test_one_mandatory_policy_per_rule(policies: dict[str, Any]) -> None:
    assert list(policies) == [rule.name for rule in policy.RESOURCE_RULES] + ["plan-within-budget"]
    assert all(p.enforcement_level == pulumi_policy.EnforcementLevel.MANDATORY for p in policies.values())
    assert isinstance(policies["plan-within-budget"], pulumi_policy.StackValidationPolicy)
    assert all(isinstance(policies[r.name], pulumi_policy.ResourceValidationPolicy) for r in policy.RESOURCE_RULES)


BAD_LAUNCH_TEMPLATE = {
    "instanceType": "p9.48xlarge",
    "metadataOptions": {"httpTokens": "optional"},
    "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}},
                            {"deviceName": "/dev/xvdb", "ebs": {"encrypted": "false"}}],
    "tags": {"gpufleet:stack": "dev"},
}


@pytest.mark.parametrize("rule", ["imdsv2-required", "ebs-encrypted", "cost-tags", "gpu-instance-in-catalog"])
def test_resource_policies_report_through_the_adapter(policies: dict[str, Any], rule: str) -> None:
    bad = collect(policies[rule], resource_args(LAUNCH_TEMPLATE, BAD_LAUNCH_TEMPLATE, "gpu-lt"))
    good = collect(policies[rule], resource_args(LAUNCH_TEMPLATE, good_launch_template(), "gpu-lt"))
    assert len(bad) == 1
    assert bad[0].startswith("gpu-lt: ")
    assert good == []


def test_ingress_policy_through_the_adapter(policies: dict[str, Any]) -> None:
    props = {"ingress": [{"protocol": "tcp", "fromPort": 0.0, "toPort": 65535.0, "cidrBlocks": ["0.0.0.0/0"]}]}
    [message] = collect(policies["no-public-ingress"], resource_args(SECURITY_GROUP, props, "fleet-sg"))
    assert message.startswith("fleet-sg: ingress[0] opens tcp ports 0-65535")


def test_adapter_reads_the_providers_json_encoded_default_tags(policies: dict[str, Any]) -> None:
    default_tags = json.dumps({"tags": {"gpufleet:stack": "dev", "gpufleet:owner": "ml-platform"}})
    provider_props = unknown_checking_proxy({"region": "us-east-1", "defaultTags": default_tags})
    provider = pulumi_policy.PolicyProviderResource(
        "pulumi:providers:aws", provider_props, "urn:pulumi:dev::gpufleet::pulumi:providers:aws::aws", "aws")
    args = resource_args(VOLUME, {"encrypted": True}, "data", provider)
    assert collect(policies["cost-tags"], args) == []
    assert len(collect(policies["cost-tags"], resource_args(VOLUME, {"encrypted": True}, "data"))) == 1


def stack_args(outputs: dict[str, Any]) -> pulumi_policy.StackValidationArgs:
    options = pulumi_policy.PolicyResourceOptions(False, [], None, [], pulumi_policy.PolicyCustomTimeouts(0, 0, 0), [])
    urn = "urn:pulumi:dev::gpufleet::pulumi:pulumi:Stack::gpufleet-dev"
    stack = pulumi_policy.PolicyResource(STACK, unknown_checking_proxy(outputs), urn, "gpufleet-dev", options,
                                         None, None, [], {})
    volume = pulumi_policy.PolicyResource(VOLUME, unknown_checking_proxy({"encrypted": True}),
                                          "urn:pulumi:dev::gpufleet::aws:ebs/volume:Volume::data", "data", options,
                                          None, stack, [], {})
    return pulumi_policy.StackValidationArgs([stack, volume])


@pytest.fixture
def configured_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float | None]]:
    """The stack-config budget the budget policy sees (the engine's config is not set in tests)."""
    budget: list[float | None] = [None]
    monkeypatch.setattr(policy, "configured_budget_usd", lambda: budget[0])
    yield budget


def test_budget_policy_reads_the_stack_resources_plan_export(policies: dict[str, Any],
                                                             configured_budget: list[float | None]) -> None:
    reported: list[tuple[str, str | None]] = []
    over = stack_args({"plan": {"monthly_usd": 2100.5, "budget_usd": 1500.0}})
    policies["plan-within-budget"].validate(over, lambda message, urn=None: reported.append((message, urn)))
    [(message, urn)] = reported
    assert "$2,100.50/month, over the stack's $1,500.00 budget" in message
    assert urn == "urn:pulumi:dev::gpufleet::pulumi:pulumi:Stack::gpufleet-dev"
    within = stack_args({"plan": {"monthly_usd": 900, "budget_usd": 1500}})
    assert collect(policies["plan-within-budget"], within) == []
    configured_budget[0] = 800.0  # the stack config's budget wins over the exported one
    assert len(collect(policies["plan-within-budget"], within)) == 1

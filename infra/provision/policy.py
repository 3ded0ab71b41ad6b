"""The fleet's guard rails as policy as code: plain functions over a resource's input properties.

``PolicyPack()`` (pulumi-policy) starts a gRPC server and blocks, so the rules live here as plain functions:
``policy/__main__.py`` only wires them into a pack (:func:`pulumi_policies`), and tests call them directly, or
run every resource captured under Pulumi mocks through :func:`check_resources`.

Rules (each yields actionable messages naming the resource and the fix):

- ``no-public-ingress``: a security-group ingress open to 0.0.0.0/0 or ::/0 must be tcp with from_port ==
  to_port in the load balancer's ports (80, 443). Any other protocol ("-1" = all), port or range is a
  violation. A rule cannot tell the load balancer's group from another from its inputs alone, so 80/443 are
  allowed to be public on any group.
- ``imdsv2-required``: launch templates and instances state ``metadataOptions.httpTokens: required``.
- ``ebs-encrypted``: every EBS device a launch template or instance declares, and every ``ebs.Volume``, has
  ``encrypted`` true; a launch template must declare at least one EBS mapping (its root volume) and an
  instance its ``rootBlockDevice``, because the AMI's default root volume is not encrypted.
- ``cost-tags``: every taggable AWS resource carries ``gpufleet:stack`` and ``gpufleet:owner`` (non-empty),
  and ``gpufleet:deployment`` and ``gpufleet:model`` together or not at all (a resource that belongs to a
  deployment names its model too; a model tag alone cannot be attributed to a deployment). The provider's
  ``defaultTags`` count.
- ``gpu-instance-in-catalog``: an instance type of a GPU family (p*, g*, gr*) must be an AWS instance type
  of the catalog (the planner priced it); other families (load balancer, monitoring hosts) pass.
- ``plan-within-budget`` (stack level): the plan's monthly cost is within the stack's budget.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.catalog.loader import load_catalog

SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
STACK = "pulumi:pulumi:Stack"

TAGGABLE_TYPES = frozenset({
    SECURITY_GROUP, INGRESS_RULE, LAUNCH_TEMPLATE, INSTANCE, VOLUME, NODE_GROUP, AUTOSCALING_GROUP,
    "aws:eks/cluster:Cluster", "aws:lb/loadBalancer:LoadBalancer", "aws:lb/targetGroup:TargetGroup",
    "aws:lb/listener:Listener", "aws:ec2/placementGroup:PlacementGroup",
    # What the eks target adds (cost allocation follows IAM roles and add-ons in the bill's resource tags).
    "aws:iam/role:Role", "aws:eks/addon:Addon", "aws:eks/podIdentityAssociation:PodIdentityAssociation",
    "aws:kms/key:Key",
})
"""Types that must carry cost tags even when the program passed no ``tags`` input (Pulumi then omits it)."""

PUBLIC_CIDRS = ("0.0.0.0/0", "::/0")
GPU_FAMILY = re.compile(r"^(?:p|gr?)\d")
"""p2..p6, g3..g6e, gr6: the EC2 families with NVIDIA/AMD GPUs. inf/trn accelerators are not GPUs."""

STACK_TAG, OWNER_TAG, DEPLOYMENT_TAG, MODEL_TAG = (
    "gpufleet:stack", "gpufleet:owner", "gpufleet:deployment", "gpufleet:model")


@dataclass(frozen=True)
class ResourceView:
    """One resource as the rules see it: type token, logical name, camelCase input properties.

    ``props`` may be pulumi_policy's read-only proxies (Mapping/Sequence, not dict/list, numbers as floats),
    so the rules only use the abstract collection types.
    """

    type: str
    name: str
    props: Mapping[str, Any]
    provider_default_tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyContext:
    gpu_instance_types: frozenset[str]
    always_required_tags: tuple[str, ...] = (STACK_TAG, OWNER_TAG)
    paired_tags: tuple[str, ...] = (DEPLOYMENT_TAG, MODEL_TAG)
    load_balancer_ports: frozenset[int] = frozenset({80, 443})

    @classmethod
    def default(cls) -> PolicyContext:
        """AWS instance types of the packaged catalog; the project's cost tags; the LB's 80 and 443."""
        instances = load_catalog().instances.values()
        return cls(gpu_instance_types=frozenset(it.name for it in instances if it.provider == "aws"))


Check = Callable[[ResourceView, PolicyContext], Iterator[str]]


@dataclass(frozen=True)
class ResourceRule:
    name: str
    description: str
    check: Check


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str
    message: str


# ------------------------------------------------------------------ property access


def lookup(value: Any, *path: str) -> Any:
    """``value[path[0]][path[1]]...``, or None where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def sequence_of(value: Any) -> Sequence[Any]:
    """A list input as a sequence; anything else (None, a string, a mapping) as empty."""
    return value if isinstance(value, Sequence) and not isinstance(value, str) else ()


def is_true(value: Any) -> bool:
    """True for ``True`` and for ``"true"``: a launch template's ``ebs.encrypted`` is a string (tri-state)."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


# ------------------------------------------------------------------ no-public-ingress


@dataclass(frozen=True)
class Ingress:
    where: str
    protocol: str
    from_port: float | None
    to_port: float | None
    cidrs: tuple[str, ...]


def _inline_ingress(props: Mapping[str, Any]) -> Iterator[Ingress]:
    for index, rule in enumerate(sequence_of(props.get("ingress"))):
        cidrs = (*sequence_of(lookup(rule, "cidrBlocks")), *sequence_of(lookup(rule, "ipv6CidrBlocks")))
        yield Ingress(f"ingress[{index}]", str(lookup(rule, "protocol")), lookup(rule, "fromPort"),
                      lookup(rule, "toPort"), tuple(cidrs))


def _security_group_rule(props: Mapping[str, Any]) -> Iterator[Ingress]:
    if props.get("type") != "ingress":
        return
    cidrs = (*sequence_of(props.get("cidrBlocks")), *sequence_of(props.get("ipv6CidrBlocks")))
    yield Ingress("rule", str(props.get("protocol")), props.get("fromPort"), props.get("toPort"), tuple(cidrs))


def _ingress_rule(props: Mapping[str, Any]) -> Iterator[Ingress]:
    cidrs = tuple(str(c) for c in (props.get("cidrIpv4"), props.get("cidrIpv6")) if c)
    yield Ingress("rule", str(props.get("ipProtocol")), props.get("fromPort"), props.get("toPort"), cidrs)


def _load_balancer_service(props: Mapping[str, Any]) -> Iterator[Ingress]:
    """A Kubernetes Service of type LoadBalancer (eks): the cloud provider opens each port to
    ``loadBalancerSourceRanges``, or to everyone when there are none (Kubernetes API, ServiceSpec)."""
    if lookup(props, "spec", "type") != "LoadBalancer":
        return
    cidrs = tuple(str(c) for c in sequence_of(lookup(props, "spec", "loadBalancerSourceRanges"))) or PUBLIC_CIDRS
    for index, port in enumerate(sequence_of(lookup(props, "spec", "ports"))):
        number = lookup(port, "port")
        yield Ingress(f"spec.ports[{index}]", str(lookup(port, "protocol") or "TCP"), number, number, cidrs)


INGRESS_SOURCES: dict[str, Callable[[Mapping[str, Any]], Iterator[Ingress]]] = {
    SECURITY_GROUP: _inline_ingress,
    SECURITY_GROUP_RULE: _security_group_rule,
    INGRESS_RULE: _ingress_rule,
    "kubernetes:core/v1:Service": _load_balancer_service,
}


def normalized_protocol(protocol: str) -> str:
    """"tcp" for tcp or its number 6, "all" for -1/all, else the protocol lower-cased."""
    lowered = protocol.strip().lower()
    return {"6": "tcp", "-1": "all"}.get(lowered, lowered)


def is_load_balancer_listener(ingress: Ingress, ctx: PolicyContext) -> bool:
    """Exactly one tcp port, and that port is one the load balancer listens on."""
    return (normalized_protocol(ingress.protocol) == "tcp" and ingress.from_port is not None
            and ingress.from_port == ingress.to_port and ingress.from_port in ctx.load_balancer_ports)


def describe_ports(ingress: Ingress) -> str:
    protocol = normalized_protocol(ingress.protocol)
    if protocol == "all":
        return "all protocols and ports"
    if ingress.from_port == ingress.to_port:
        return f"{protocol} port {ingress.from_port:g}" if ingress.from_port is not None else protocol
    return f"{protocol} ports {ingress.from_port or 0:g}-{ingress.to_port or 0:g}"


def check_public_ingress(resource: ResourceView, ctx: PolicyContext) -> Iterator[str]:
    source = INGRESS_SOURCES.get(resource.type)
    if source is None:
        return
    lb_ports = " and ".join(str(port) for port in sorted(ctx.load_balancer_ports))
    for ingress in source(resource.props):
        public = [cidr for cidr in ingress.cidrs if cidr in PUBLIC_CIDRS]
        if public and not is_load_balancer_listener(ingress, ctx):
            yield (f"{resource.name}: {ingress.where} opens {describe_ports(ingress)} to {', '.join(public)}; "
                   f"only tcp {lb_ports} (the load balancer's listeners, one port per rule) may be public. "
                   "Restrict the source to the stack's network.allowedClientCidrs or to the load balancer's "
                   "security group.")


# ------------------------------------------------------------------ imdsv2-required

METADATA_OPTION_TYPES = frozenset({LAUNCH_TEMPLATE, INSTANCE})


def check_imdsv2(resource: ResourceView, ctx: PolicyContext) -> Iterator[str]:
    if resource.type not in METADATA_OPTION_TYPES:
        return
    tokens = lookup(resource.props, "metadataOptions", "httpTokens")
    if tokens != "required":
        found = "no metadataOptions.httpTokens" if tokens is None else f"metadataOptions.httpTokens={tokens!r}"
        yield (f"{resource.name}: {found} allows IMDSv1; set metadataOptions.httpTokens to \"required\" "
               "(IMDSv2 only: session tokens stop SSRF from reading the instance role's credentials).")


# ------------------------------------------------------------------ ebs-encrypted


@dataclass(frozen=True)
class EbsDevice:
    where: str
    encrypted: Any


def _launch_template_devices(props: Mapping[str, Any]) -> Iterator[EbsDevice]:
    for index, mapping in enumerate(sequence_of(props.get("blockDeviceMappings"))):
        ebs = lookup(mapping, "ebs")
        if isinstance(ebs, Mapping):  # instance-store (virtualName) and noDevice mappings have no EBS volume
            device = lookup(mapping, "deviceName") or "?"
            yield EbsDevice(f"blockDeviceMappings[{index}] ({device}).ebs", ebs.get("encrypted"))


def _instance_devices(props: Mapping[str, Any]) -> Iterator[EbsDevice]:
    root = props.get("rootBlockDevice")
    if isinstance(root, Mapping):
        yield EbsDevice("rootBlockDevice", root.get("encrypted"))
    for index, device in enumerate(sequence_of(props.get("ebsBlockDevices"))):
        yield EbsDevice(f"ebsBlockDevices[{index}] ({lookup(device, 'deviceName') or '?'})",
                        lookup(device, "encrypted"))


def _volume_devices(props: Mapping[str, Any]) -> Iterator[EbsDevice]:
    yield EbsDevice("the volume", props.get("encrypted"))


EBS_SOURCES: dict[str, Callable[[Mapping[str, Any]], Iterator[EbsDevice]]] = {
    LAUNCH_TEMPLATE: _launch_template_devices,
    INSTANCE: _instance_devices,
    VOLUME: _volume_devices,
}

ROOT_VOLUME_HINT: dict[str, str] = {
    LAUNCH_TEMPLATE: "declares no EBS block device mapping, so its root volume is the AMI's (unencrypted); "
                     "add blockDeviceMappings=[{deviceName: <the AMI's root device>, ebs: {encrypted: \"true\"}}]",
    INSTANCE: "declares no rootBlockDevice, so its root volume is the AMI's (unencrypted); "
              "add rootBlockDevice={encrypted: true}",
}
"""Types whose root volume must be declared to be checked (a Volume is itself the declaration)."""


def check_ebs_encrypted(resource: ResourceView, ctx: PolicyContext) -> Iterator[str]:
    source = EBS_SOURCES.get(resource.type)
    if source is None:
        return
    devices = list(source(resource.props))
    missing_root = resource.type == INSTANCE and not isinstance(resource.props.get("rootBlockDevice"), Mapping)
    if resource.type in ROOT_VOLUME_HINT and (not devices or missing_root):
        yield f"{resource.name}: {ROOT_VOLUME_HINT[resource.type]}."
    for device in devices:
        if not is_true(device.encrypted):
            yield (f"{resource.name}: {device.where} is not encrypted (encrypted={device.encrypted!r}); "
                   "set encrypted to true (KMS: kmsKeyId, else the account's aws/ebs key).")


# ------------------------------------------------------------------ cost-tags


def declared_tags(resource: ResourceView) -> dict[str, str]:
    """The provider's defaultTags overlaid with the resource's tags (an autoscaling group's are a list)."""
    tags = dict(resource.provider_default_tags)
    own = resource.props.get("tags")
    if isinstance(own, Mapping):
        tags.update({str(key): str(value) for key, value in own.items() if value is not None})
    for item in sequence_of(own):  # autoscaling.Group: [{key, value, propagateAtLaunch}]
        key, value = lookup(item, "key"), lookup(item, "value")
        if key is not None and value is not None:
            tags[str(key)] = str(value)
    return tags


def is_taggable(resource: ResourceView) -> bool:
    return resource.type.startswith("aws:") and (resource.type in TAGGABLE_TYPES or "tags" in resource.props)


def missing_cost_tags(tags: Mapping[str, str], ctx: PolicyContext) -> list[str]:
    """Required keys that are absent or blank: the always-required ones, and the whole pair when half is set."""
    present = {key for key, value in tags.items() if value.strip()}
    missing = [key for key in ctx.always_required_tags if key not in present]
    if any(key in present for key in ctx.paired_tags):
        missing += [key for key in ctx.paired_tags if key not in present]
    return missing


def check_cost_tags(resource: ResourceView, ctx: PolicyContext) -> Iterator[str]:
    if not is_taggable(resource):
        return
    missing = missing_cost_tags(declared_tags(resource), ctx)
    if missing:
        paired = " and ".join(ctx.paired_tags)
        yield (f"{resource.name}: missing cost tag(s) {', '.join(missing)}; tag it (or set the aws provider's "
               f"defaultTags) with non-empty {', '.join(ctx.always_required_tags)}, and with {paired} "
               "together when it belongs to a deployment, so its cost is attributed.")


# ------------------------------------------------------------------ gpu-instance-in-catalog


def _single_instance_type(props: Mapping[str, Any]) -> Iterator[str]:
    if props.get("instanceType"):
        yield str(props["instanceType"])


def _node_group_types(props: Mapping[str, Any]) -> Iterator[str]:
    yield from (str(name) for name in sequence_of(props.get("instanceTypes")))


def _autoscaling_types(props: Mapping[str, Any]) -> Iterator[str]:
    overrides = lookup(props, "mixedInstancesPolicy", "launchTemplate", "overrides")
    yield from (str(lookup(o, "instanceType")) for o in sequence_of(overrides) if lookup(o, "instanceType"))


INSTANCE_TYPE_SOURCES: dict[str, Callable[[Mapping[str, Any]], Iterator[str]]] = {
    LAUNCH_TEMPLATE: _single_instance_type,
    INSTANCE: _single_instance_type,
    NODE_GROUP: _node_group_types,
    AUTOSCALING_GROUP: _autoscaling_types,
}


def is_gpu_instance_type(name: str) -> bool:
    return GPU_FAMILY.match(name.strip().lower()) is not None


def check_gpu_instance_types(resource: ResourceView, ctx: PolicyContext) -> Iterator[str]:
    source = INSTANCE_TYPE_SOURCES.get(resource.type)
    if source is None:
        return
    for name in source(resource.props):
        if is_gpu_instance_type(name) and name not in ctx.gpu_instance_types:
            yield (f"{resource.name}: GPU instance type {name} is not in the gpufleet catalog, so the plan "
                   "never priced or sized it; use one of the catalog's AWS types "
                   "(infra/catalog/data/instances.yaml) or add it there with its source and price.")


RESOURCE_RULES: tuple[ResourceRule, ...] = (
    ResourceRule("no-public-ingress",
                 "Only the load balancer's tcp 80 and 443 may be open to 0.0.0.0/0 or ::/0.", check_public_ingress),
    ResourceRule("imdsv2-required", "Instances and launch templates require IMDSv2 (httpTokens: required).",
                 check_imdsv2),
    ResourceRule("ebs-encrypted", "Every EBS volume and block device mapping is encrypted.", check_ebs_encrypted),
    ResourceRule("cost-tags", "Taggable AWS resources carry the gpufleet cost tags.", check_cost_tags),
    ResourceRule("gpu-instance-in-catalog", "GPU instance types come from the gpufleet catalog.",
                 check_gpu_instance_types),
)


def check_resources(resources: Iterable[ResourceView], ctx: PolicyContext | None = None,
                    rules: Sequence[ResourceRule] = RESOURCE_RULES) -> list[Violation]:
    """Every resource through every rule, in resource order then rule order."""
    context = ctx or PolicyContext.default()
    return [Violation(rule.name, resource.name, message)
            for resource in resources for rule in rules for message in rule.check(resource, context)]


# ------------------------------------------------------------------ plan-within-budget (stack level)


def plan_within_budget(monthly_usd: float, budget_usd: float) -> Iterator[str]:
    # `not <=` rather than `>`: a NaN cost or budget fails the check instead of slipping through.
    if not monthly_usd <= budget_usd:
        yield (f"the plan costs ${monthly_usd:,.2f}/month, over the stack's ${budget_usd:,.2f} budget; raise "
               "gpufleet:monthlyBudgetUsd, or lower replicas/traffic, allow spot or cheaper GPUs, then re-plan "
               "(`gpufleet plan -s STACK`).")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def stack_budget_violations(stack_outputs: Mapping[str, Any], configured_budget_usd: float | None) -> Iterator[str]:
    """The budget rule on the root stack's outputs: the program exports ``plan`` (``monthly_usd``,
    ``budget_usd``) before it registers any resource. The budget from the stack's config wins over the
    exported one when the policy pack can read it (so a program that exported a wrong budget is caught)."""
    plan = stack_outputs.get("plan")
    monthly = _number(lookup(plan, "monthly_usd"))
    budget = configured_budget_usd if configured_budget_usd is not None else _number(lookup(plan, "budget_usd"))
    if monthly is None or budget is None:
        # Fail closed: the program always exports the plan, so its absence means it is not this program.
        yield ("the stack exports no plan.monthly_usd/plan.budget_usd, so its cost cannot be checked against "
               "the budget; deploy with gpufleet's program (infra/), which exports them.")
        return
    yield from plan_within_budget(monthly, budget)


def configured_budget_usd() -> float | None:
    """``gpufleet:monthlyBudgetUsd`` from the stack's config, when the engine hands it to the policy pack
    (pulumi-policy sets it from PULUMI_CONFIG); None where it does not."""
    value = pulumi.Config("gpufleet").get("monthlyBudgetUsd")
    try:
        budget = float(value) if value is not None else None
    except ValueError:
        return None
    return budget if budget is not None and math.isfinite(budget) else None


# ------------------------------------------------------------------ pulumi-policy adapter


def provider_default_tags(provider: Any) -> dict[str, str]:
    """``defaultTags.tags`` of the resource's aws provider. Provider inputs of object type reach the engine
    JSON-encoded (pulumi-aws's Provider runs them through to_json), so a string is decoded first."""
    default_tags = lookup(getattr(provider, "props", None), "defaultTags")
    if isinstance(default_tags, str):
        try:
            default_tags = json.loads(default_tags)
        except ValueError:
            return {}
    tags = lookup(default_tags, "tags")
    return {str(k): str(v) for k, v in tags.items() if v is not None} if isinstance(tags, Mapping) else {}


def resource_view(args: Any) -> ResourceView:
    """pulumi_policy's ResourceValidationArgs as a ResourceView."""
    return ResourceView(type=args.resource_type, name=args.name, props=args.props,
                        provider_default_tags=provider_default_tags(args.provider))


def _resource_validator(rule: ResourceRule, ctx: PolicyContext) -> Callable[[Any, Callable[..., None]], None]:
    def validate(args: Any, report_violation: Callable[..., None]) -> None:
        for message in rule.check(resource_view(args), ctx):
            report_violation(message)

    return validate


def _budget_validator(args: Any, report_violation: Callable[..., None]) -> None:
    for resource in args.resources:
        if resource.resource_type == STACK:
            for message in stack_budget_violations(resource.props, configured_budget_usd()):
                report_violation(message, resource.urn)


def pulumi_policies(ctx: PolicyContext | None = None) -> list[Any]:
    """One mandatory pulumi_policy policy per rule: a ResourceValidationPolicy per resource rule, and a
    StackValidationPolicy for the budget.

    Why a stack policy for the budget: a resource policy sees only inputs, and the root stack has none; its
    outputs (the exports) reach stack policies, in ``pulumi preview`` as in ``up`` (the engine stores the
    registered stack outputs before it analyzes the stack), and the program exports the plan's figures as plain
    values, known during preview. Pack config (--policy-pack-config) was not chosen: it is one file for every
    stack and cannot know the plan's cost.
    """
    import pulumi_policy  # noqa: PLC0415  (lazy: infra runs without pulumi-policy installed)

    context = ctx or PolicyContext.default()
    mandatory = pulumi_policy.EnforcementLevel.MANDATORY
    policies: list[Any] = [
        pulumi_policy.ResourceValidationPolicy(name=rule.name, description=rule.description,
                                               validate=_resource_validator(rule, context),
                                               enforcement_level=mandatory)
        for rule in RESOURCE_RULES
    ]
    policies.append(pulumi_policy.StackValidationPolicy(
        name="plan-within-budget", description="The plan's monthly cost is within the stack's budget.",
        validate=_budget_validator, enforcement_level=mandatory))
    return policies

"""Reviewed snapshots of the resource graph a program registers under mocks: per resource its type, name and
key properties, sorted (registration order is asynchronous). ``GPUFLEET_UPDATE_GOLDEN=1`` rewrites them for
review, as the render goldens."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.pulumi.mocks import Registered

DIR = Path(__file__).parent / "snapshots"

# Key properties per type (everything else is covered by the targeted tests).
KEY_PROPS = {
    "aws:ec2/vpc:Vpc": ["cidrBlock"],
    "aws:ec2/subnet:Subnet": ["availabilityZone", "cidrBlock", "mapPublicIpOnLaunch"],
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ["cidrIpv4", "fromPort", "toPort", "ipProtocol"],
    "aws:ec2/launchTemplate:LaunchTemplate": ["instanceType", "metadataOptions", "blockDeviceMappings",
                                              "instanceMarketOptions", "capacityReservationSpecification"],
    "aws:ec2/instance:Instance": ["instanceType", "metadataOptions", "rootBlockDevice"],
    "aws:lb/loadBalancer:LoadBalancer": ["loadBalancerType", "internal"],
    "aws:lb/listener:Listener": ["port", "protocol", "sslPolicy", "tcpIdleTimeoutSeconds"],
    "aws:lb/targetGroup:TargetGroup": ["port", "protocol", "healthCheck", "deregistrationDelay"],
    "aws:ssm/parameter:Parameter": ["name", "type"],
    "aws:autoscaling/group:Group": ["minSize", "maxSize", "desiredCapacity", "instanceRefresh", "healthCheckType",
                                    "healthCheckGracePeriod"],
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": ["policyArn"],
    "aws:eks/cluster:Cluster": ["version"],
    "aws:eks/nodeGroup:NodeGroup": ["amiType", "instanceTypes", "capacityType", "scalingConfig", "labels", "taints"],
    "aws:eks/addon:Addon": ["addonName"],
    "kubernetes:helm.sh/v3:Release": ["chart", "version", "namespace"],
    "command:local:Command": ["environment"],
}


def snapshot_of(resources: list[Registered]) -> list[dict[str, Any]]:
    def key(prop: str) -> str:  # an input named like the entry's own keys (an SSM parameter's type, name)
        return f"input.{prop}" if prop in ("type", "name") else prop
    picked = [{"type": r.type, "name": r.name,
               **{key(k): r.inputs[k] for k in KEY_PROPS.get(r.type, []) if k in r.inputs}}
              for r in sorted(resources, key=lambda r: (r.type, r.name))]
    return list(json.loads(json.dumps(picked)))  # numbers and tuples as JSON has them


def assert_snapshot(name: str, resources: list[Registered]) -> None:
    path = DIR / f"{name}.json"
    got = snapshot_of(resources)
    if os.environ.get("GPUFLEET_UPDATE_GOLDEN"):
        DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert got == json.loads(path.read_text(encoding="utf-8")), (
        f"resource graph of {name} changed: review it, then GPUFLEET_UPDATE_GOLDEN=1 pytest tests/pulumi")

"""The VPC of an aws-ec2 fleet: GPU hosts in private subnets, the load balancer in public ones.

New VPC (default): one public and one private subnet per zone of ``gpufleet:zones``, an internet gateway, and
NAT for the private subnets (the GPU hosts pull the image, the weights and the API key through it). One NAT
gateway per zone when a deployment asks for n+1 redundancy (a zone outage must not cut the others off),
otherwise one: a NAT gateway costs ~$33/month before traffic.

Existing VPC (``gpufleet:network.vpcId``): its subnets are found by the tag ``gpufleet:tier`` = ``public`` or
``private``, which the network team sets; nothing is created.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.plan.optimize import FleetPlan

VPC_CIDR = "10.42.0.0/16"
TIER_TAG = "gpufleet:tier"


def subnet_cidrs(vpc_cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """(public, private) CIDRs: a /24 per zone for the LB and NAT, a /20 per zone for the GPU hosts."""
    network = ipaddress.ip_network(vpc_cidr)
    public = [str(s) for s in list(network.subnets(new_prefix=24))[:zones]]
    # Private /20s start after the first /20, which holds the public /24s.
    private = [str(s) for s in list(network.subnets(new_prefix=20))[1:zones + 1]]
    return public, private


@dataclass
class NetworkArgs:
    zones: list[str]
    tags: dict[str, str]
    nat_per_zone: bool
    vpc_id: str | None = None


class Network(pulumi.ComponentResource):
    """``gpufleet:aws:Network``: ``vpc_id``, ``public_subnet_ids``, ``private_subnet_ids``."""

    vpc_id: pulumi.Output[str]
    public_subnet_ids: pulumi.Output[list[str]]
    private_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:Network", name, None, opts)
        self._private_by_zone: dict[str, pulumi.Output[str]] = {}
        self._vpc_id_given = args.vpc_id
        if args.vpc_id:
            self._existing(args.vpc_id)
        else:
            self._create(name, args)
        self.register_outputs({"vpcId": self.vpc_id, "publicSubnetIds": self.public_subnet_ids,
                               "privateSubnetIds": self.private_subnet_ids})

    def private_subnets_in(self, zone: str) -> pulumi.Output[list[str]]:
        """The private subnet(s) of one zone (a capacity reservation's)."""
        if self._vpc_id_given is not None:
            return self._tier(self._vpc_id_given, "private", zone)
        return self._private_by_zone[zone].apply(lambda subnet: [subnet])

    def _tier(self, vpc_id: str, tier: str, zone: str | None = None) -> pulumi.Output[list[str]]:
        filters = [aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc_id]),
                   aws.ec2.GetSubnetsFilterArgs(name=f"tag:{TIER_TAG}", values=[tier])]
        if zone is not None:
            filters.append(aws.ec2.GetSubnetsFilterArgs(name="availability-zone", values=[zone]))
        return aws.ec2.get_subnets_output(filters=filters, opts=pulumi.InvokeOutputOptions(parent=self)).ids

    def _existing(self, vpc_id: str) -> None:
        self.vpc_id = pulumi.Output.from_input(vpc_id)
        self.public_subnet_ids = self._tier(vpc_id, "public")
        self.private_subnet_ids = self._tier(vpc_id, "private")

    def _create(self, name: str, args: NetworkArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        vpc = aws.ec2.Vpc(name, cidr_block=VPC_CIDR, enable_dns_hostnames=True, enable_dns_support=True,
                          tags={**args.tags, "Name": name}, opts=child)
        igw = aws.ec2.InternetGateway(name, vpc_id=vpc.id, tags={**args.tags, "Name": name}, opts=child)
        public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags={**args.tags, "Name": f"{name}-public"},
                                       routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
                                       opts=child)
        public_cidrs, private_cidrs = subnet_cidrs(VPC_CIDR, len(args.zones))
        public, private, nats = [], [], []
        for i, zone in enumerate(args.zones):
            pub = aws.ec2.Subnet(f"{name}-public-{zone}", vpc_id=vpc.id, cidr_block=public_cidrs[i],
                                 availability_zone=zone, map_public_ip_on_launch=False,
                                 tags={**args.tags, "Name": f"{name}-public-{zone}", TIER_TAG: "public"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{zone}", subnet_id=pub.id, route_table_id=public_rt.id,
                                          opts=child)
            public.append(pub)
            if args.nat_per_zone or i == 0:
                eip = aws.ec2.Eip(f"{name}-nat-{zone}", domain="vpc", tags={**args.tags, "Name": f"{name}-nat-{zone}"},
                                  opts=child)
                nats.append(aws.ec2.NatGateway(f"{name}-{zone}", allocation_id=eip.id, subnet_id=pub.id,
                                               tags={**args.tags, "Name": f"{name}-{zone}"}, opts=child))
            priv = aws.ec2.Subnet(f"{name}-private-{zone}", vpc_id=vpc.id, cidr_block=private_cidrs[i],
                                  availability_zone=zone,
                                  tags={**args.tags, "Name": f"{name}-private-{zone}", TIER_TAG: "private"},
                                  opts=child)
            nat = nats[-1]  # this zone's, or the only one
            rt = aws.ec2.RouteTable(f"{name}-private-{zone}", vpc_id=vpc.id,
                                    routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)],
                                    tags={**args.tags, "Name": f"{name}-private-{zone}"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{zone}", subnet_id=priv.id, route_table_id=rt.id, opts=child)
            private.append(priv)
            self._private_by_zone[zone] = priv.id
        self.vpc_id = vpc.id
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public])
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private])


def fleet_network(name: str, fleet: FleetPlan, tags: dict[str, str], opts: pulumi.ResourceOptions) -> Network:
    """The stack's network: its zones (default: the region's first two), NAT per zone when a deployment asks
    for n+1 redundancy, or its existing VPC."""
    spec = fleet.spec
    zones = spec.zones or [f"{spec.region}a", f"{spec.region}b"]
    n_plus_one = any(d.deployment.slo.redundancy == "n+1" for d in fleet.deployments)
    return Network(name, NetworkArgs(zones=zones, tags=tags, nat_per_zone=n_plus_one, vpc_id=spec.network.vpc_id),
                   opts=opts)

"""Security groups of least privilege for an aws-ec2 fleet (rules as separate resources: the provider's
inline rules and rule resources fight each other, pulumi-aws docs for ``ec2.SecurityGroup``).

- ``lb``: 443 (and 80, answered with a redirect) from ``network.allowedClientCidrs`` only; the NLB keeps
  the client's address, so the clients' networks are what the instances see.
- ``gpu``: the vLLM ports from the LB and the monitoring host only, dcgm-exporter and node_exporter from the
  monitoring host only. No SSH anywhere: operators use SSM Session Manager.
- ``monitoring``: no ingress (Grafana is reached through an SSM port forward); it scrapes the others.
Egress is open: images, weights, the API key and SSM are reached through NAT.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.render.hostlayout import VLLM_PORT
from infra.render.telemetry import DCGM_EXPORTER_PORT, MTAIL_PORT, NGINX_EXPORTER_PORT, NODE_EXPORTER_PORT

LB_PORTS = (443, 80)


@dataclass(frozen=True)
class Ingress:
    """One ingress rule: a port range from CIDRs or from another group of the fleet."""

    description: str
    from_port: int
    to_port: int
    cidrs: tuple[str, ...] = ()
    source: str | None = None  # "lb", "gpu" or "monitoring"


def ingress_table(client_cidrs: list[str], max_gpus: int) -> dict[str, list[Ingress]]:
    """Who may reach which group on which ports (data the resources and the tests read)."""
    vllm_last = VLLM_PORT + max_gpus - 1  # one port per replica slot: 8000 + first GPU of the slot
    return {
        "lb": [Ingress(f"clients, {port}", port, port, cidrs=tuple(client_cidrs)) for port in LB_PORTS]
        + [Ingress("scrape nginx exporter and mtail", NGINX_EXPORTER_PORT, NGINX_EXPORTER_PORT, source="monitoring"),
           Ingress("scrape mtail", MTAIL_PORT, MTAIL_PORT, source="monitoring"),
           Ingress("scrape node_exporter", NODE_EXPORTER_PORT, NODE_EXPORTER_PORT, source="monitoring")],
        "gpu": [Ingress("vLLM from the load balancers", VLLM_PORT, vllm_last, source="lb"),
                Ingress("vLLM /metrics for Prometheus", VLLM_PORT, vllm_last, source="monitoring"),
                Ingress("scrape dcgm-exporter", DCGM_EXPORTER_PORT, DCGM_EXPORTER_PORT, source="monitoring"),
                Ingress("scrape node_exporter", NODE_EXPORTER_PORT, NODE_EXPORTER_PORT, source="monitoring")],
        "monitoring": [],
    }


class SecurityGroups(pulumi.ComponentResource):
    """``gpufleet:aws:SecurityGroups``: ``ids`` by role (lb, gpu, monitoring)."""

    def __init__(self, name: str, *, vpc_id: pulumi.Input[str], client_cidrs: list[str], max_gpus: int,
                 tags: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:SecurityGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        table = ingress_table(client_cidrs, max_gpus)
        groups = {role: aws.ec2.SecurityGroup(f"{name}-{role}", vpc_id=vpc_id,
                                              description=f"gpufleet {role} hosts ({name})",
                                              tags={**tags, "Name": f"{name}-{role}"}, opts=child)
                  for role in table}
        for role, rules in table.items():
            group = groups[role]
            for i, rule in enumerate(rules):
                sources: list[tuple[str, dict[str, pulumi.Input[str]]]] = [
                    (f"{name}-{role}-in-{i}-{j}", {"cidr_ipv4": cidr}) for j, cidr in enumerate(rule.cidrs)]
                if rule.source:
                    sources.append((f"{name}-{role}-in-{i}",
                                    {"referenced_security_group_id": groups[rule.source].id}))
                for resource_name, source in sources:
                    aws.vpc.SecurityGroupIngressRule(resource_name, aws.vpc.SecurityGroupIngressRuleArgs(
                        security_group_id=group.id, ip_protocol="tcp", from_port=rule.from_port,
                        to_port=rule.to_port, description=rule.description, tags=tags, **source), opts=child)
            aws.vpc.SecurityGroupEgressRule(f"{name}-{role}-out", security_group_id=group.id, ip_protocol="-1",
                                            cidr_ipv4="0.0.0.0/0", description="images, weights, secrets, SSM",
                                            tags=tags, opts=child)
        self.ids = {role: g.id for role, g in groups.items()}
        self.register_outputs({"ids": self.ids})

"""Security groups of least privilege for an aws-ec2 fleet (rules as separate resources: the provider's
inline rules and rule resources fight each other, pulumi-aws docs for ``ec2.SecurityGroup``).

- ``nlb``: the network load balancer's listener ports (:func:`listeners`) from ``network.allowedClientCidrs``
  only. The one place clients' networks appear.
- ``lb``: the Nginx hosts' target ports from the ``nlb`` group only. The NLB keeps the client's address
  (instance targets), and a target rule that references the NLB's group still admits that traffic and the
  NLB's health checks ("Update the security groups for your Network Load Balancer", ELB docs), so Nginx
  sees the clients' addresses for its own allow-list while nobody reaches the hosts around the NLB. The
  exporters from the monitoring host.
- ``gpu``: the vLLM ports from the LB and the monitoring host only, dcgm-exporter and node_exporter from the
  monitoring host only. No SSH anywhere: operators use SSM Session Manager.
- ``monitoring``: no ingress (Grafana is reached through an SSM port forward); it scrapes the others.
Egress is open: packages, images, weights, the API key and SSM are reached through NAT.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.render.hostlayout import VLLM_PORT
from infra.render.telemetry import DCGM_EXPORTER_PORT, MTAIL_PORT, NGINX_EXPORTER_PORT, NODE_EXPORTER_PORT

HTTP, HTTPS = 80, 443
# NLB listener port -> Nginx port, by tls.source: ACM ends TLS on the NLB (Nginx serves plain HTTP on 80,
# and no plain listener is opened: port 80 would serve the API unencrypted); file and self-signed pass TLS
# through to Nginx, whose port 80 only redirects to https; none is plain HTTP.
LISTENERS: dict[str, dict[int, int]] = {
    "acm": {HTTPS: HTTP},
    "file": {HTTPS: HTTPS, HTTP: HTTP},
    "self-signed": {HTTPS: HTTPS, HTTP: HTTP},
    "none": {HTTP: HTTP},
}
EGRESS = {"nlb": "to the LB hosts' target ports and health checks",
          "lb": "replicas, packages, the config bundle, secrets, SSM",
          "gpu": "images, weights, the API key, SSM",
          "monitoring": "scrapes, packages, the config bundle, receivers, SSM"}


def listeners(tls_source: str) -> dict[int, int]:
    return LISTENERS[tls_source]


@dataclass(frozen=True)
class Ingress:
    """One ingress rule: a port range from CIDRs or from another group of the fleet."""

    description: str
    from_port: int
    to_port: int
    cidrs: tuple[str, ...] = ()
    source: str | None = None  # "nlb", "lb", "gpu" or "monitoring"


def ingress_table(client_cidrs: list[str], max_gpus: int, tls_source: str) -> dict[str, list[Ingress]]:
    """Who may reach which group on which ports (data the resources and the tests read)."""
    vllm_last = VLLM_PORT + max_gpus - 1  # one port per replica slot: 8000 + slot, at most one slot per GPU
    ports = listeners(tls_source)
    return {
        "nlb": [Ingress(f"clients, {port}", port, port, cidrs=tuple(client_cidrs)) for port in sorted(ports)],
        "lb": [Ingress(f"NLB to Nginx {port}, and its health checks", port, port, source="nlb")
               for port in sorted(set(ports.values()))]
        + [Ingress("scrape nginx exporter", NGINX_EXPORTER_PORT, NGINX_EXPORTER_PORT, source="monitoring"),
           Ingress("scrape mtail", MTAIL_PORT, MTAIL_PORT, source="monitoring"),
           Ingress("scrape node_exporter", NODE_EXPORTER_PORT, NODE_EXPORTER_PORT, source="monitoring")],
        "gpu": [Ingress("vLLM from the load balancers", VLLM_PORT, vllm_last, source="lb"),
                Ingress("vLLM /metrics for Prometheus", VLLM_PORT, vllm_last, source="monitoring"),
                Ingress("scrape dcgm-exporter", DCGM_EXPORTER_PORT, DCGM_EXPORTER_PORT, source="monitoring"),
                Ingress("scrape node_exporter", NODE_EXPORTER_PORT, NODE_EXPORTER_PORT, source="monitoring")],
        "monitoring": [],
    }


class SecurityGroups(pulumi.ComponentResource):
    """``gpufleet:aws:SecurityGroups``: ``ids`` by role (nlb, lb, gpu, monitoring)."""

    def __init__(self, name: str, *, vpc_id: pulumi.Input[str], client_cidrs: list[str], max_gpus: int,
                 tls_source: str, tags: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:SecurityGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        table = ingress_table(client_cidrs, max_gpus, tls_source)
        groups = {role: aws.ec2.SecurityGroup(f"{name}-{role}", vpc_id=vpc_id,
                                              description=f"gpufleet {role} ({name})",
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
                                            cidr_ipv4="0.0.0.0/0", description=EGRESS[role], tags=tags, opts=child)
        self.ids = {role: g.id for role, g in groups.items()}
        self.register_outputs({"ids": self.ids})

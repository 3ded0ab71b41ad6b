"""``gpufleet:aws:LoadBalancerTier``: the network load balancer in front of the fleet and the Nginx hosts
behind it.

- NLB: internal when every ``network.allowedClientCidrs`` is a private network (then in the private
  subnets), internet-facing otherwise (public subnets); its own security group admits the clients' networks
  on the listener ports only (infra/provision/aws/security.py). Cross-zone on, so one healthy Nginx serves
  every zone.
- Listeners by ``tls.source`` (security.LISTENERS): ACM ends TLS on the NLB (TLS 1.3/1.2 policy) and
  forwards to Nginx's port 80; ``file``/``self-signed`` pass TCP 443 (and 80, which redirects) through to
  Nginx; ``none`` is plain TCP 80.
- Target groups per Nginx port: instance targets keep the client's address (Nginx applies the same
  allow-list as on-prem); health check HTTP ``/healthz`` on port 80 (answered in every TLS mode);
  deregistration delay = the longest generation any deployment allows (the rendered proxy_read_timeout), so
  an instance refresh or scale-in lets streams finish. TCP listeners' idle timeout is raised above that too;
  a TLS listener's is fixed at 350 s ("Update the TCP idle timeout", ELB docs), which the program warns
  about when a deployment's generations can be longer.
- Nginx hosts: an Auto Scaling group (two, one per zone, when any deployment asks n+1; else one) of Debian 12
  instances in the private subnets, registered in the target groups, replaced on a failed ELB health check
  and refreshed (new before old) on every launch-template change. They configure themselves from the
  config bundle (hostagent.sync) and discover the replicas (hostagent.discover).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.hostagent.layout import ROLE_TAG
from infra.plan.optimize import FleetPlan
from infra.provision.aws.hosts import LB_INSTANCE_TYPE, LB_ROOT_GIB, host_launch_template
from infra.provision.aws.network import Network
from infra.provision.aws.security import HTTP, listeners
from infra.render.nginx import NLB_TLS_POLICY, lb_replicas, private_clients_only, read_timeout_s

TLS_POLICY = NLB_TLS_POLICY
TLS_IDLE_TIMEOUT_S = 350
TCP_IDLE_TIMEOUT_RANGE = (60, 6000)
DEREGISTRATION_DELAY_MAX_S = 3600  # the target group attribute's upper bound
BOOT_GRACE_S = 600  # Debian boot, apt, ansible-core in a venv, the first converge: minutes, not seconds


def longest_generation_s(fleet: FleetPlan) -> int:
    return max(read_timeout_s(d) for d in fleet.deployments)


@dataclass(frozen=True)
class LoadBalancerArgs:
    fleet: FleetPlan
    network: Network
    nlb_security_group: pulumi.Input[str]
    host_security_group: pulumi.Input[str]
    profile_arn: pulumi.Input[str]
    user_data: str
    tags: dict[str, str]


class LoadBalancerTier(pulumi.ComponentResource):
    """``nlb`` (``dns_name``), ``target_groups`` by Nginx port, ``listeners`` by NLB port, ``group``."""

    def __init__(self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:LoadBalancerTier", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        spec = args.fleet.spec
        tls = spec.network.tls
        internal = private_clients_only(spec.network.allowed_client_cidrs)
        network = args.network
        self.nlb = aws.lb.LoadBalancer(
            name, load_balancer_type="network", internal=internal,
            subnets=network.private_subnet_ids if internal else network.public_subnet_ids,
            security_groups=[args.nlb_security_group], enable_cross_zone_load_balancing=True,
            tags=args.tags, opts=child)
        drain_s = min(longest_generation_s(args.fleet), DEREGISTRATION_DELAY_MAX_S)
        ports = listeners(tls.source)
        self.target_groups = {port: self._target_group(f"{name}-{port}", port, network, drain_s, args.tags)
                              for port in sorted(set(ports.values()))}
        low, high = TCP_IDLE_TIMEOUT_RANGE
        tcp_idle_s = max(low, min(high, longest_generation_s(args.fleet) + 30))
        self.listeners = {}
        for port, target in sorted(ports.items()):
            ends_tls = tls.source == "acm"
            self.listeners[port] = aws.lb.Listener(
                f"{name}-{port}", load_balancer_arn=self.nlb.arn, port=port,
                protocol="TLS" if ends_tls else "TCP",
                certificate_arn=getattr(tls, "arn", None) if ends_tls else None,
                ssl_policy=TLS_POLICY if ends_tls else None,
                tcp_idle_timeout_seconds=None if ends_tls else tcp_idle_s,
                default_actions=[aws.lb.ListenerDefaultActionArgs(
                    type="forward", target_group_arn=self.target_groups[target].arn)],
                tags=args.tags, opts=child)
        if tls.source == "acm" and longest_generation_s(args.fleet) > TLS_IDLE_TIMEOUT_S:
            pulumi.log.warn(
                f"{name}: a non-streamed completion may take up to {longest_generation_s(args.fleet)} s, and the "
                f"NLB's TLS listener closes connections idle for {TLS_IDLE_TIMEOUT_S} s (fixed by AWS): clients "
                "should stream (stream: true) long generations, or use tls.source file", resource=self)
        host_tags = {**args.tags, ROLE_TAG: "lb"}
        self.launch_template = host_launch_template(
            f"{name}-hosts", parent=self, instance_type=LB_INSTANCE_TYPE, user_data=args.user_data,
            profile_arn=args.profile_arn, security_group_id=args.host_security_group, root_gib=LB_ROOT_GIB,
            tags=host_tags)
        hosts = lb_replicas(args.fleet)
        self.group = aws.autoscaling.Group(
            f"{name}-hosts",
            min_size=hosts, max_size=hosts, desired_capacity=hosts,
            vpc_zone_identifiers=network.private_subnet_ids,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=self.launch_template.id, version=self.launch_template.latest_version.apply(str)),
            target_group_arns=[tg.arn for tg in self.target_groups.values()],
            # ELB: a host whose Nginx stops answering /healthz is replaced, not only one that stops booting.
            health_check_type="ELB",
            health_check_grace_period=BOOT_GRACE_S,
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=100, max_healthy_percentage=200, instance_warmup=str(BOOT_GRACE_S))),
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=False)
                  for k, v in sorted(args.tags.items())],
            opts=child)
        self.register_outputs({"dnsName": self.nlb.dns_name, "groupName": self.group.name})

    def _target_group(self, name: str, port: int, network: Network, drain_s: int,
                      tags: dict[str, str]) -> aws.lb.TargetGroup:
        return aws.lb.TargetGroup(
            name, port=port, protocol="TCP", target_type="instance", vpc_id=network.vpc_id,
            preserve_client_ip="true",  # Nginx's allow-list and access log see the clients (the default, stated)
            deregistration_delay=drain_s,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                protocol="HTTP", port=str(HTTP), path="/healthz", matcher="200",
                interval=10, healthy_threshold=2, unhealthy_threshold=2),
            tags=tags, opts=pulumi.ResourceOptions(parent=self))

"""``gpufleet:aws:Ec2Fleet``: everything an aws-ec2 stack runs on, from the plan and the render.

- the network (network.py) and the security groups (security.py);
- per deployment a GPU group (gpu.py): launch template with the rendered user data, Auto Scaling group of
  the planned size, in the deployment's reserved capacity when it has some (capacity.py);
- the config store (configstore.py) with this render's bundle (bundle.py), which the LB and monitoring hosts
  converge to;
- the load-balancer tier (loadbalancer.py: NLB, listeners, Nginx hosts) and the monitoring host
  (monitoring.py);
- an instance profile per host role with exactly what that role reads (iam.py).

Cost tags on everything (tags.py); the instances also carry ``gpufleet:role``, by which the LB and
monitoring hosts discover the others.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pulumi

from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.provision.aws.bundle import Bundle
from infra.provision.aws.configstore import ConfigStore
from infra.provision.aws.gpu import GpuGroup, GpuGroupArgs
from infra.provision.aws.iam import (
    GPU_HOST_POLICIES,
    SSM_CORE,
    HostProfile,
    bundle_statements,
    gpu_host_statements,
    secret_statements,
)
from infra.provision.aws.loadbalancer import LoadBalancerArgs, LoadBalancerTier
from infra.provision.aws.monitoring import GRAFANA_PORT, MonitoringHost
from infra.provision.aws.network import Network, fleet_network
from infra.provision.aws.security import SecurityGroups
from infra.provision.aws.tags import cost_tags
from infra.render.artifacts import Artifact
from infra.render.cloudinit import render_user_data, user_data_path
from infra.render.ec2_hosts import host_user_data_path, role_secrets
from infra.render.systemd import start_timeout_s
from infra.spec.profile import S3Weights
from infra.spec.secrets import SecretRef


def deployment_weights_uris(plan: DeploymentPlan) -> list[str]:
    """The S3 locations of one deployment's weights and LoRA adapters."""
    sources = (plan.profile.weights, *(a.weights for a in plan.profile.lora_adapters))
    return sorted({w.uri for w in sources if isinstance(w, S3Weights)})


def weights_uris(fleet: FleetPlan) -> list[str]:
    """The S3 locations of every deployed model's weights and LoRA adapters (the hosts' read grant)."""
    return sorted({uri for d in fleet.deployments for uri in deployment_weights_uris(d)})


def _user_data(fleet: FleetPlan, plan: DeploymentPlan, image: str) -> str:
    return render_user_data(fleet, plan, image=image).content


class Ec2Fleet(pulumi.ComponentResource):
    def __init__(self, name: str, *, fleet: FleetPlan, artifacts: list[Artifact], bundle: Bundle,
                 vllm_image: pulumi.Input[str] | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        """``bundle``: this render's config bundle (bundle.write_bundle). ``vllm_image``: the image reference the
        GPU hosts run (the one infra/provision/images.py built and pushed); None keeps the render's pinned
        upstream image, and the user data is the render's file."""
        super().__init__("gpufleet:aws:Ec2Fleet", name, None, opts)
        spec = fleet.spec
        assert spec.region is not None
        region = spec.region
        child = pulumi.ResourceOptions(parent=self)
        tags = cost_tags(fleet.stack, spec.owner)
        rendered = {a.path: a.content for a in artifacts if a.kind == "cloud-init"}
        self.network = fleet_network(name, fleet, tags, child)
        max_gpus = max(d.chosen.machine.instance.gpu_count for d in fleet.deployments if d.chosen)
        self.security = SecurityGroups(name, vpc_id=self.network.vpc_id,
                                       client_cidrs=list(spec.network.allowed_client_cidrs), max_gpus=max_gpus,
                                       tls_source=spec.network.tls.source, tags=tags, opts=child)
        self.store = ConfigStore(f"{name}-config", stack=fleet.stack, bundle=bundle, tags=tags, opts=child)
        self.profiles = self._profiles(name, fleet, tags)
        self.groups = {d.deployment.name: self._gpu_group(name, fleet, d, rendered, vllm_image)
                       for d in fleet.deployments}
        # The hosts' first sync reads the bundle pointer: it exists before any of them boots.
        booted = pulumi.ResourceOptions(parent=self, depends_on=[self.store])
        self.load_balancer = LoadBalancerTier(f"{name}-lb", LoadBalancerArgs(
            fleet=fleet, network=self.network, nlb_security_group=self.security.ids["nlb"],
            host_security_group=self.security.ids["lb"], profile_arn=self.profiles["lb"].profile_arn,
            user_data=rendered[host_user_data_path("lb")], tags=tags), opts=booted)
        self.monitoring = MonitoringHost(
            f"{name}-monitoring", subnet_id=self.network.private_subnet_ids.apply(lambda ids: ids[0]),
            security_group_id=self.security.ids["monitoring"], profile_name=self.profiles["monitoring"].profile_name,
            user_data=rendered[host_user_data_path("monitoring")], region=region, tags=tags, opts=booted)
        host = spec.network.domain
        scheme = "http" if spec.network.tls.source == "none" else "https"
        self.endpoint = (pulumi.Output.from_input(f"{scheme}://{host}/v1") if host else
                         self.load_balancer.nlb.dns_name.apply(lambda dns: f"{scheme}://{dns}/v1"))
        self.dashboards = f"http://localhost:{GRAFANA_PORT}/dashboards/f/gpufleet"
        self.register_outputs({"vpcId": self.network.vpc_id, "endpoint": self.endpoint,
                               "nlbDnsName": self.load_balancer.nlb.dns_name,
                               "groups": {k: g.group.name for k, g in self.groups.items()}})

    def _profiles(self, name: str, fleet: FleetPlan, tags: dict[str, str]) -> dict[str, HostProfile]:
        spec = fleet.spec
        region, stack = spec.region or "", fleet.stack
        child = pulumi.ResourceOptions(parent=self)

        def bundle_and(secrets: list[SecretRef]) -> Any:
            return lambda account: self.store.bucket.arn.apply(
                lambda arn: [*bundle_statements(stack, region, account, arn),
                             *secret_statements(secrets, region, account)])
        return {
            "gpu": HostProfile(f"{name}-gpu", managed_policies=GPU_HOST_POLICIES, tags=tags, opts=child,
                               statements=lambda account: gpu_host_statements(spec.api_key, weights_uris(fleet),
                                                                              region, account)),
            "lb": HostProfile(f"{name}-lb", managed_policies=SSM_CORE, tags=tags, opts=child,
                              statements=bundle_and(role_secrets(spec, "lb"))),
            "monitoring": HostProfile(f"{name}-monitoring", managed_policies=SSM_CORE, tags=tags, opts=child,
                                      statements=bundle_and(role_secrets(spec, "monitoring"))),
        }

    def _gpu_group(self, name: str, fleet: FleetPlan, plan: DeploymentPlan, rendered: dict[str, str],
                   vllm_image: pulumi.Input[str] | None) -> GpuGroup:
        spec, deployment = fleet.spec, plan.deployment.name
        reservation = plan.deployment.capacity_reservation
        network: Network = self.network
        return GpuGroup(f"{name}-{deployment}", GpuGroupArgs(
            plan=plan,
            user_data=rendered[user_data_path(deployment)] if vllm_image is None else
            pulumi.Output.from_input(vllm_image).apply(partial(_user_data, fleet, plan)),
            subnet_ids=network.private_subnets_in(reservation.zone) if reservation else network.private_subnet_ids,
            security_group_id=self.security.ids["gpu"],
            instance_profile_arn=self.profiles["gpu"].profile_arn,
            tags=cost_tags(fleet.stack, spec.owner, deployment, plan.profile.resolved_served_name),
            start_budget_s=start_timeout_s(plan)), opts=pulumi.ResourceOptions(parent=self))

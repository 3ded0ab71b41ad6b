"""``gpufleet:aws:Ec2Fleet``: the aws-ec2 target's network, security groups, GPU host profile and one GPU group
per deployment, from the plan and the render.

Still to come before ``pulumi up`` provisions aws-ec2 stacks (infra/program.py refuses them until then): the
Nginx LB instances behind an NLB with TLS, and the monitoring host.
"""

from __future__ import annotations

from functools import partial

import pulumi

from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.provision.aws.gpu import GpuGroup, GpuGroupArgs
from infra.provision.aws.iam import GpuHostProfile
from infra.provision.aws.network import fleet_network
from infra.provision.aws.security import SecurityGroups
from infra.provision.aws.tags import cost_tags
from infra.render.artifacts import Artifact
from infra.render.cloudinit import render_user_data, user_data_path
from infra.render.systemd import start_timeout_s
from infra.spec.profile import S3Weights


def weights_uris(fleet: FleetPlan) -> list[str]:
    """The S3 locations of every deployed model's weights and LoRA adapters (the hosts' read grant)."""
    sources = [w for d in fleet.deployments for w in (d.profile.weights, *(a.weights for a in d.profile.lora_adapters))]
    return sorted({w.uri for w in sources if isinstance(w, S3Weights)})


def _user_data(fleet: FleetPlan, plan: DeploymentPlan, image: str) -> str:
    return render_user_data(fleet, plan, image=image).content


class Ec2Fleet(pulumi.ComponentResource):
    def __init__(self, name: str, *, fleet: FleetPlan, artifacts: list[Artifact],
                 vllm_image: pulumi.Input[str] | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        """``vllm_image``: the image reference the GPU hosts run (the one infra/provision/images.py built and
        pushed); None keeps the render's pinned upstream image, and the user data is the render's file."""
        super().__init__("gpufleet:aws:Ec2Fleet", name, None, opts)
        spec = fleet.spec
        assert spec.region is not None
        child = pulumi.ResourceOptions(parent=self)
        tags = cost_tags(fleet.stack, spec.owner)
        self.network = fleet_network(name, fleet, tags, child)
        max_gpus = max(d.chosen.machine.instance.gpu_count for d in fleet.deployments if d.chosen)
        self.security = SecurityGroups(name, vpc_id=self.network.vpc_id,
                                       client_cidrs=list(spec.network.allowed_client_cidrs), max_gpus=max_gpus,
                                       tags=tags, opts=child)
        self.profile = GpuHostProfile(f"{name}-gpu", api_key=spec.api_key, weights_uris=weights_uris(fleet),
                                      region=spec.region, tags=tags, opts=child)
        user_data = {a.path: a.content for a in artifacts if a.kind == "cloud-init"}
        self.groups = {}
        for d in fleet.deployments:
            deployment = d.deployment.name
            self.groups[deployment] = GpuGroup(f"{name}-{deployment}", GpuGroupArgs(
                plan=d,
                user_data=user_data[user_data_path(deployment)] if vllm_image is None else
                pulumi.Output.from_input(vllm_image).apply(partial(_user_data, fleet, d)),
                subnet_ids=self.network.private_subnet_ids,
                security_group_id=self.security.ids["gpu"],
                instance_profile_arn=self.profile.profile_arn,
                tags=cost_tags(fleet.stack, spec.owner, deployment, d.profile.resolved_served_name),
                start_budget_s=start_timeout_s(d)), opts=child)
        self.register_outputs({"vpcId": self.network.vpc_id,
                               "groups": {k: g.group.name for k, g in self.groups.items()}})

"""One GPU group per deployment: a launch template and an Auto Scaling group of the planned size.

- AMI: AWS's Deep Learning Base OSS NVIDIA Driver GPU AMI (Ubuntu 22.04: driver, container toolkit, docker,
  AWS CLI), looked up at deploy time through its public SSM parameter, so a new AMI is a reviewed diff of
  the launch template (and an instance refresh), never a silent drift.
- IMDSv2 only, hop limit 1: nothing in a container may reach the instance's credentials.
- Root volume gp3, encrypted, sized from the model: the AMI's own use + the vLLM image + the weights with
  room for a download next to a previous copy.
- User data: the render's ``cloud-init/<deployment>.yaml``, byte for byte.
- The group: min = max = desired = the planned machines (sizing is the plan's job, reviewed in the PR);
  instance refresh on every launch-template change, launching new instances before terminating old ones
  (min healthy 100 %, max healthy 200 %) and waiting the replica's start budget before counting one healthy.
- Market and reserved capacity from the plan and the deployment's ``capacityReservation``
  (infra/provision/aws/capacity.py). In reserved capacity there is no room for a surge: the refresh
  replaces one machine at a time, terminating first.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.hostagent.layout import ROLE_TAG
from infra.plan.optimize import DeploymentPlan
from infra.provision.aws.capacity import launch_capacity

# Public SSM parameters of the GPU AMI per CPU architecture (every GPU instance type of the catalog is x86_64).
# Source: AWS Deep Learning AMI docs, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)", checked
# 2026-11-23 against public scripts that resolve it.
GPU_AMI_SSM_PARAMETERS = {
    "x86_64": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
    "arm64": "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
}
# Root volume: the AMI's own files (CUDA, drivers, conda) + the pulled vllm-openai image, in GiB.
AMI_USED_GIB = 60
IMAGE_GIB = 25
WEIGHTS_HEADROOM = 2.0  # a new revision downloads beside the old one before the old one is removed
ROOT_DEVICE = "/dev/sda1"  # the Ubuntu AMIs' root device name


def imdsv2_only(**extra: str) -> aws.ec2.LaunchTemplateMetadataOptionsArgs:
    """IMDSv2 only, hop limit 1: nothing in a container may reach the instance's credentials."""
    return aws.ec2.LaunchTemplateMetadataOptionsArgs(http_endpoint="enabled", http_tokens="required",
                                                    http_put_response_hop_limit=1, **extra)


def encrypted_root(device: str, gib: int) -> list[aws.ec2.LaunchTemplateBlockDeviceMappingArgs]:
    """The root volume: gp3, encrypted, deleted with the instance."""
    return [aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
        device_name=device,
        ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(volume_size=gib, volume_type="gp3", encrypted="true",
                                                           delete_on_termination="true"))]


def launch_tags(tags: dict[str, str]) -> list[aws.ec2.LaunchTemplateTagSpecificationArgs]:
    """Instances and their volumes carry the cost tags from launch on."""
    return [aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
            for kind in ("instance", "volume")]


def refresh_percentages(machines: int, reserved: bool) -> tuple[int, int]:
    """(min healthy, max healthy) of the instance refresh: launch before terminate (100, 200), or in reserved
    capacity, which has no spare machine, one machine at a time, terminating first."""
    if not reserved:
        return 100, 200
    return (100 * (machines - 1)) // machines, 100


def root_volume_gib(plan: DeploymentPlan) -> int:
    assert plan.chosen is not None
    weights = plan.chosen.replica.weights_gib
    return int(math.ceil((AMI_USED_GIB + IMAGE_GIB + weights * WEIGHTS_HEADROOM) / 10.0) * 10)


@dataclass
class GpuGroupArgs:
    plan: DeploymentPlan
    user_data: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    security_group_id: pulumi.Input[str]
    instance_profile_arn: pulumi.Input[str]
    tags: dict[str, str]
    start_budget_s: int
    architecture: str = "x86_64"


class GpuGroup(pulumi.ComponentResource):
    """``gpufleet:aws:GpuGroup``: ``launch_template`` and ``group`` of one deployment."""

    def __init__(self, name: str, args: GpuGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:GpuGroup", name, None, opts)
        chosen = args.plan.chosen
        assert chosen is not None
        child = pulumi.ResourceOptions(parent=self)
        ami = aws.ssm.get_parameter_output(name=GPU_AMI_SSM_PARAMETERS[args.architecture],
                                           opts=pulumi.InvokeOutputOptions(parent=self))
        capacity = launch_capacity(args.plan)
        tags = {**args.tags, ROLE_TAG: "gpu"}
        self.launch_template = aws.ec2.LaunchTemplate(
            name,
            image_id=ami.value,
            instance_type=chosen.machine.instance.name,
            user_data=pulumi.Output.from_input(args.user_data).apply(
                lambda text: base64.b64encode(text.encode()).decode()),
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=args.instance_profile_arn),
            vpc_security_group_ids=[args.security_group_id],
            metadata_options=imdsv2_only(instance_metadata_tags="disabled"),
            block_device_mappings=encrypted_root(ROOT_DEVICE, root_volume_gib(args.plan)),
            instance_market_options=capacity.market,
            capacity_reservation_specification=capacity.reservation,
            # Instances and their volumes carry the cost tags (and the role discovery lists them by) from launch
            # on; the group's own tags arrive later.
            tag_specifications=launch_tags(tags),
            update_default_version=True,
            tags=args.tags,
            opts=child)
        machines = chosen.machines
        min_healthy, max_healthy = refresh_percentages(machines, capacity.reservation is not None)
        self.group = aws.autoscaling.Group(
            name,
            min_size=machines, max_size=machines, desired_capacity=machines,
            vpc_zone_identifiers=args.subnet_ids,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(id=self.launch_template.id,
                                                                   version=self.launch_template.latest_version.apply(str)),
            health_check_type="EC2",
            default_instance_warmup=args.start_budget_s,
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=min_healthy, max_healthy_percentage=max_healthy,
                    instance_warmup=str(args.start_budget_s))),
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=False)
                  for k, v in sorted(args.tags.items())],
            opts=child)
        self.register_outputs({"launchTemplateId": self.launch_template.id, "groupName": self.group.name})

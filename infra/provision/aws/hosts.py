"""The Debian 12 hosts of an aws-ec2 fleet that are not GPU hosts: the Nginx load balancers and the monitoring
host. Both boot the render's ``cloud-init/<role>.yaml`` and are then converged from the config bundle by the
same Ansible roles as on-prem (infra/hostagent/layout.py).

Why Debian 12 and not the GPU hosts' Ubuntu DLAMI: the rendered nginx.conf, gpufleet.js, Prometheus rules
and Alertmanager config are validated in the tests with exactly Debian bookworm's nginx 1.22 + njs 0.7,
Prometheus 2.42 and Alertmanager 0.25, and the Ansible roles install those packages.
"""

from __future__ import annotations

import base64

import pulumi
import pulumi_aws as aws

from infra.provision.aws.gpu import encrypted_root, imdsv2_only, launch_tags
from infra.render.ec2_hosts import packed_user_data

# Debian's official AMIs, published by the Debian cloud team under this public SSM path ("Debian official
# Amazon EC2 images", wiki.debian.org/Cloud/AmazonEC2Image; checked 2026-12-02 against public templates that
# resolve it). Looked up at deploy time: a new point release is a reviewed launch-template diff.
DEBIAN_12_AMI_PARAMETER = "/aws/service/debian/release/12/latest/amd64"
DEBIAN_ROOT_DEVICE = "/dev/xvda"  # the root device name of Debian's AMIs

# Sizes. Nginx with njs proxies thousands of concurrent streams on 2 vCPUs (it only copies bytes; the work
# is the replicas'); the monitoring host holds Prometheus (30 days of the fleet's series), Alertmanager and
# Grafana. Not planned by the capacity model: change them here.
LB_INSTANCE_TYPE = "c7i.large"  # 2 vCPU, 4 GiB
LB_ROOT_GIB = 20
MONITORING_INSTANCE_TYPE = "m7i.large"  # 2 vCPU, 8 GiB
MONITORING_ROOT_GIB = 100  # Debian + the TSDB: ~1.5 bytes/sample (Prometheus docs, "Storage") x 30 days


def debian_ami(parent: pulumi.Resource) -> pulumi.Output[str]:
    return aws.ssm.get_parameter_output(name=DEBIAN_12_AMI_PARAMETER,
                                        opts=pulumi.InvokeOutputOptions(parent=parent)).value


def user_data_base64(text: str) -> str:
    """The LB and monitoring hosts' user data as EC2 takes it: gzipped (infra/render/ec2_hosts.py), base64."""
    return base64.b64encode(packed_user_data(text)).decode()


def host_launch_template(name: str, *, parent: pulumi.Resource, instance_type: str, user_data: str,
                         profile_arn: pulumi.Input[str], security_group_id: pulumi.Input[str],
                         root_gib: int, tags: dict[str, str]) -> aws.ec2.LaunchTemplate:
    """A Debian 12 host: IMDSv2 only (hop limit 1: nothing runs in containers there), encrypted gp3 root."""
    return aws.ec2.LaunchTemplate(
        name,
        image_id=debian_ami(parent),
        instance_type=instance_type,
        user_data=user_data_base64(user_data),
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile_arn),
        vpc_security_group_ids=[security_group_id],
        metadata_options=imdsv2_only(instance_metadata_tags="disabled"),
        block_device_mappings=encrypted_root(DEBIAN_ROOT_DEVICE, root_gib),
        tag_specifications=launch_tags(tags),
        update_default_version=True,
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent))

"""``gpufleet:aws:MonitoringHost``: one Debian 12 instance with Prometheus, Alertmanager and Grafana, in the
first private subnet, converged from the config bundle (hostagent.sync) and discovering its targets by tag
(hostagent.discover).

A plain instance, not an Auto Scaling group: it holds state (30 days of series, Alertmanager's silences)
on its encrypted root volume, which an instance refresh would throw away. EC2's automatic recovery keeps
the volume on a host failure. For the same reason a new Debian AMI or new boot script does not replace it
(``ignore_changes``): configuration changes reach it through the bundle, and the bundle's ``ec2_agent``
role updates the host programs; rebuild it on purpose with ``pulumi up --replace <urn>``.

Grafana has no ingress (security.py): ``ssm_tunnel`` is the command that forwards it to the operator's
machine through Session Manager, then the dashboards are at ``http://localhost:3000``.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.hostagent.layout import ROLE_TAG
from infra.provision.aws.hosts import MONITORING_INSTANCE_TYPE, MONITORING_ROOT_GIB, debian_ami, user_data_base64

GRAFANA_PORT = 3000  # Grafana's default http_port, as the monitoring role's monitoring_grafana_port

# pulumi-aws property names (camelCase) that must not replace the instance: see the module docstring.
KEEP_ON_CHANGE = ["ami", "userData", "userDataBase64"]


def ssm_tunnel(instance_id: str, region: str, port: int = GRAFANA_PORT) -> str:
    return (f"aws ssm start-session --region {region} --target {instance_id} "
            f"--document-name AWS-StartPortForwardingSession "
            f"--parameters portNumber={port},localPortNumber={port}")


class MonitoringHost(pulumi.ComponentResource):
    """``instance``, ``ssm_tunnel`` (Output of the port-forward command)."""

    def __init__(self, name: str, *, subnet_id: pulumi.Input[str], security_group_id: pulumi.Input[str],
                 profile_name: pulumi.Input[str], user_data: str, region: str, tags: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:MonitoringHost", name, None, opts)
        host_tags = {**tags, ROLE_TAG: "monitoring", "Name": name}
        self.instance = aws.ec2.Instance(
            name,
            ami=debian_ami(self),
            instance_type=MONITORING_INSTANCE_TYPE,
            subnet_id=subnet_id,
            vpc_security_group_ids=[security_group_id],
            iam_instance_profile=profile_name,
            user_data_base64=user_data_base64(user_data),
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                instance_metadata_tags="disabled"),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=MONITORING_ROOT_GIB, volume_type="gp3",
                encrypted=True, delete_on_termination=True, tags=host_tags),
            maintenance_options=aws.ec2.InstanceMaintenanceOptionsArgs(auto_recovery="default"),
            tags=host_tags,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=KEEP_ON_CHANGE))
        self.ssm_tunnel = self.instance.id.apply(lambda iid: ssm_tunnel(iid, region))
        self.register_outputs({"instanceId": self.instance.id, "privateIp": self.instance.private_ip})

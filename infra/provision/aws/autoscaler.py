"""The Kubernetes Cluster Autoscaler for the eks target's node groups.

KEDA scales each vLLM Deployment up to ``replicas.max``, but the GPU node groups start at the machines the
plan needs for its minimum: without the autoscaler the extra replicas stay Pending. It finds the managed
node groups by the tags EKS puts on their Auto Scaling groups, raises their desired size within
``[min, max]`` when pods are Pending, and lowers it when a node has been unneeded long enough.

Runs on the system node group (never on a GPU node it might remove), with an EKS Pod Identity role
(:class:`~infra.provision.aws.pod_identity.PodIdentityRole`) that may resize only this cluster's groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.provision.aws.pod_identity import PodIdentityRole
from infra.provision.helm import Chart
from infra.render.k8s_workloads import IMAGE_PULL_S, SYSTEM_NODE_LABELS
from infra.render.systemd import START_TIMEOUT_FLOOR_S

# The autoscaler's minor version must match the cluster's Kubernetes minor (cluster-autoscaler README,
# "Releases": other combinations are not tested); the stacks run Kubernetes 1.33. Checked 2026-12-02:
# - kubernetes/autoscaler PR #8295 (2025-07) bumped the chart to 9.47.0 with the 1.33.0 image;
# - issue #8891 lists `helm search repo autoscaler/cluster-autoscaler --versions`: 9.50.1 and 9.51.0 ship
#   appVersion 1.33.0, 9.52.0 ships 1.34.1 (the README's table, which puts 9.51.0 on 1.34, is wrong there);
#   the issue also points at values.yaml of the tag cluster-autoscaler-chart-9.51.0: image.tag v1.33.0.
# So 9.51.0 is the last chart on 1.33. The image tag is pinned in the values as well, so a chart bump
# alone cannot change the autoscaler's version.
AUTOSCALER_APP_VERSION = "1.33.0"
AUTOSCALER_IMAGE_TAG = f"v{AUTOSCALER_APP_VERSION}"
AUTOSCALER_CHART = Chart(repo="https://kubernetes.github.io/autoscaler", chart="cluster-autoscaler",
                         version="9.51.0", namespace="kube-system",
                         source="kubernetes/autoscaler release cluster-autoscaler-chart-9.51.0")
RELEASE_NAME = "cluster-autoscaler"  # explicit: Pulumi would append a random suffix to the release name
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
SYSTEM_NODE_SELECTOR = SYSTEM_NODE_LABELS  # the system node group's label

# cluster-autoscaler/cloudprovider/aws/README.md, "Full Cluster Autoscaler Features Policy (Recommended)":
# reads the autoscaler needs for auto-discovery (DescribeAutoScalingGroups with tag filters, so no
# autoscaling:DescribeTags), instance shapes and managed node groups' labels and taints. They support no
# resource-level restriction (eks:DescribeNodegroup would, but reveals only metadata), so Resource is "*".
READ_ACTIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLaunchConfigurations",
    "autoscaling:DescribeScalingActivities",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:GetInstanceTypesFromInstanceRequirements",
    "eks:DescribeNodegroup",
)
WRITE_ACTIONS = ("autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup")
# EKS tags a managed node group's Auto Scaling group k8s.io/cluster-autoscaler/<cluster> = owned (the EKS
# user guide, "Managed node groups": "automatically tagged for auto-discovery"; the value is the one the EKS
# Best Practices Guide, Cluster Autoscaler, "Employ least privileged access to the IAM role", conditions on).
OWNED = "owned"


def cluster_tag(cluster_name: str) -> str:
    return f"k8s.io/cluster-autoscaler/{cluster_name}"


def autoscaler_statements(cluster_name: str) -> list[dict[str, Any]]:
    """The reads on "*"; the resizes only on Auto Scaling groups of this cluster (the README's advice: "only
    the second block of actions should be updated to restrict the resources/add conditionals")."""
    return [
        {"Effect": "Allow", "Action": list(READ_ACTIONS), "Resource": "*"},
        {"Effect": "Allow", "Action": list(WRITE_ACTIONS), "Resource": "*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/{cluster_tag(cluster_name)}": OWNED}}},
    ]


def go_minutes(seconds: int) -> str:
    """A Go duration flag value in whole minutes, rounded up."""
    return f"{math.ceil(seconds / 60)}m"


# Flags: cluster-autoscaler FAQ, "What are the parameters to CA?".
EXTRA_ARGS: dict[str, str | bool] = {
    # Groups that differ only in zone (the EKS docs' advice for zonal volumes) stay the same size; our groups
    # differ in instance type or capacity type, so the flag is inert until a group is split per zone.
    "balance-similar-node-groups": True,
    # The plan fixes each deployment's instance type (its pods select it), so the expander only breaks ties
    # between groups that all fit a pod; least-waste takes the one with the least idle CPU and memory after
    # the scale-up. Not priority: its ConfigMap of ASG-name patterns would track EKS-generated names and
    # second-guess the planner.
    "expander": "least-waste",
    # A released GPU node takes at least the vLLM image pull and the start-up budget's floor (plus boot) to
    # serve again, and its model cache goes with it. KEDA already waited a replica's start-up budget before
    # removing the pod; keep the empty node as long as a replacement would take to serve (the default is
    # 10m), so a lull shorter than that does not cost a cold start.
    "scale-down-unneeded-time": go_minutes(IMAGE_PULL_S + START_TIMEOUT_FLOOR_S),
    # Default true: "never delete nodes with pods with local storage, e.g. EmptyDir or HostPath". Every vLLM
    # pod mounts the hostPath model cache (a cache: the init container re-syncs it), so no GPU node would ever
    # scale down. Memory-medium emptyDirs (/dev/shm) are exempt since kubernetes/autoscaler PR #5551 (2023);
    # hostPath volumes never are.
    "skip-nodes-with-local-storage": False,
}


def autoscaler_values(cluster_name: str, region: str, service_account: str) -> dict[str, Any]:
    """Chart values: auto-discovery of this cluster's groups, the pinned image, the service account the Pod
    Identity association names (no IRSA annotation), the system nodes."""
    return {
        "cloudProvider": "aws",
        "autoDiscovery": {"clusterName": cluster_name},
        "awsRegion": region,
        "image": {"tag": AUTOSCALER_IMAGE_TAG},
        "rbac": {"serviceAccount": {"create": True, "name": service_account}},
        "nodeSelector": dict(SYSTEM_NODE_SELECTOR),
        "extraArgs": dict(EXTRA_ARGS),
    }


class ClusterAutoscaler(pulumi.ComponentResource):
    """``gpufleet:aws:ClusterAutoscaler``: the autoscaler's Pod Identity role and its Helm release on
    ``provider`` (``release``, ``role_arn``). ``depends_on``: what must exist first (the node groups, the Pod
    Identity Agent add-on)."""

    def __init__(self, name: str, *, cluster_name: pulumi.Input[str], region: str, provider: k8s.Provider,
                 tags: dict[str, str], depends_on: Sequence[pulumi.Resource] = (),
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:ClusterAutoscaler", name, None, opts)
        cluster = pulumi.Output.from_input(cluster_name)
        identity = PodIdentityRole(
            f"{name}-role", cluster_name=cluster, namespace=AUTOSCALER_CHART.namespace,
            service_account=AUTOSCALER_SERVICE_ACCOUNT,
            statements=lambda _account: cluster.apply(autoscaler_statements),
            tags=tags, opts=pulumi.ResourceOptions(parent=self))
        chart = AUTOSCALER_CHART
        self.release = k8s.helm.v3.Release(
            name, name=RELEASE_NAME, chart=chart.chart, version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo), namespace=chart.namespace,
            values=cluster.apply(lambda c: autoscaler_values(c, region, AUTOSCALER_SERVICE_ACCOUNT)),
            atomic=True,
            opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                        depends_on=[identity.association, identity.policy, *depends_on]))
        self.role_arn = identity.role_arn
        self.register_outputs({"roleArn": self.role_arn})

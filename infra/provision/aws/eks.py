"""The eks target's platform: the cluster (or an existing one), one GPU managed node group per instance type
the plan chose, a system node group, and the cluster-wide charts (NVIDIA device plugin, kube-prometheus-stack,
KEDA, dcgm-exporter) through a Kubernetes provider on the cluster.

- Cluster: private and public endpoint (public only from ``network.allowedClientCidrs``: add the deploying
  machine's network there), secrets encrypted with a rotating KMS key, API authentication mode, control-plane
  logs. Existing cluster (``gpufleet:eks.existingKubeconfig``, a pulumi-config secret): nothing is created
  on AWS; the charts go to that cluster.
- GPU node groups: ``AL2023_x86_64_NVIDIA`` (driver and container toolkit in the AMI, so the device plugin
  alone exposes ``nvidia.com/gpu``), a launch template each (IMDSv2, encrypted gp3 root sized from the
  largest model on it), the taint ``nvidia.com/gpu=true:NoSchedule`` and labels the vLLM pods select on.
  Size: min = desired = the machines the plan needs, max = what the deployments' ``replicas.max`` would need
  (KEDA scales within it). Spot when the plan chose spot. Changing the AMI or capacity type replaces a node
  group (pulumi.md), which the rolling ``update_config`` cannot soften: plan such changes.
- Still to come before ``pulumi up`` provisions eks stacks (infra/program.py refuses them until then): the
  vLLM workloads (Deployment, Service, PDB, ScaledObject per deployment), the Nginx LB and the rendered
  monitoring objects.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.provision.aws.gpu import encrypted_root, imdsv2_only, launch_tags, root_volume_gib
from infra.provision.aws.iam import service_role
from infra.provision.aws.network import fleet_network
from infra.provision.aws.tags import cost_tags
from infra.provision.secrets import pulumi_config_secret
from infra.render.k8s_workloads import GPU_LABEL, GPU_TAINT_KEY, GPU_TAINT_VALUE, INSTANCE_LABEL
from infra.render.systemd import slots_per_machine

GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
# The labels and taint the vLLM pods select and tolerate (infra/render/k8s_workloads.py defines them).
GPU_TAINT = {"key": GPU_TAINT_KEY, "value": GPU_TAINT_VALUE, "effect": "NO_SCHEDULE"}
SYSTEM_INSTANCE_TYPE = "m7i.xlarge"  # Prometheus, Grafana, KEDA, the LB: 4 vCPU / 16 GiB, not a GPU
SYSTEM_NODES = (2, 4)  # min, max: two for a rolling update of the system pods without an outage

# AWS managed policies, attached as <role>-<policy name>.
CLUSTER_POLICIES = {p: p for p in ("AmazonEKSClusterPolicy",)}
NODE_POLICIES = {p: p for p in ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy",
                                "AmazonEC2ContainerRegistryReadOnly", "AmazonSSMManagedInstanceCore")}
ADDONS = ("vpc-cni", "coredns", "kube-proxy")  # the default versions of the cluster's Kubernetes version


@dataclass(frozen=True)
class Chart:
    repo: str
    chart: str
    version: str
    namespace: str
    source: str


# Pinned charts: a new version is a reviewed diff. Versions checked 2026-11-23 against public install scripts.
CHARTS = {
    "nvidia-device-plugin": Chart("https://nvidia.github.io/k8s-device-plugin", "nvidia-device-plugin", "0.17.1",
                                  "nvidia-device-plugin", "NVIDIA/k8s-device-plugin releases"),
    "kube-prometheus-stack": Chart("https://prometheus-community.github.io/helm-charts", "kube-prometheus-stack",
                                   "79.12.0", "monitoring", "prometheus-community/helm-charts releases"),
    "keda": Chart("https://kedacore.github.io/charts", "keda", "2.19.0", "keda", "kedacore/charts releases"),
    # The GPUs' metrics (job "dcgm"): its pods carry app.kubernetes.io/name=dcgm-exporter, which the rendered
    # PodMonitor selects. 3.4.2: the newest chart version seen in public deployments offline (DCGM 3.3, which
    # covers A100/H100/H200/L4/L40S); a 4.x chart follows once its version is read from the chart index.
    "dcgm-exporter": Chart("https://nvidia.github.io/dcgm-exporter/helm-charts", "dcgm-exporter", "3.4.2",
                           "monitoring", "NVIDIA/dcgm-exporter releases"),
}


@dataclass(frozen=True)
class GpuNodes:
    """One GPU node group: an instance type the plan chose, and the deployments it carries."""

    instance_type: str
    gpu: str
    spot: bool
    min_nodes: int
    max_nodes: int
    root_gib: int


def gpu_node_groups(fleet: FleetPlan) -> list[GpuNodes]:
    by_type: dict[tuple[str, bool], list[DeploymentPlan]] = defaultdict(list)
    for d in fleet.deployments:
        assert d.chosen is not None
        by_type[(d.chosen.machine.instance.name, d.chosen.machine.price.market == "spot")].append(d)
    groups = []
    for (instance_type, spot), plans in sorted(by_type.items()):
        needed = sum(p.chosen.machines for p in plans if p.chosen)
        ceiling = sum(math.ceil(max(p.deployment.replicas.max, p.chosen.replicas) / slots_per_machine(p))
                      for p in plans if p.chosen)
        first = plans[0].chosen
        assert first is not None
        groups.append(GpuNodes(instance_type, first.config.gpu.name, spot, needed, max(needed, ceiling),
                               max(root_volume_gib(p) for p in plans)))
    return groups


@dataclass(frozen=True)
class NodeGroupSpec:
    group: str
    instance_type: str
    ami_type: str
    sizes: tuple[int, int]
    """min (= desired), max"""
    root_gib: int
    spot: bool
    labels: dict[str, str]
    taints: list[dict[str, str]]


@dataclass(frozen=True)
class NodePlacement:
    """Where every node group of the cluster goes."""

    cluster: aws.eks.Cluster
    role: aws.iam.Role
    subnets: pulumi.Input[list[str]]
    tags: dict[str, str]


def node_group_name(nodes: GpuNodes) -> str:
    return f"gpu-{nodes.instance_type.replace('.', '-')}" + ("-spot" if nodes.spot else "")


def kubeconfig(name: str, endpoint: str, ca: str, region: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token` (the deploying machine's AWS credentials)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", name, "--region", region]}}}],
    })


class EksPlatform(pulumi.ComponentResource):
    """``gpufleet:aws:EksPlatform``: ``provider`` (Kubernetes) and the node groups by name."""

    def __init__(self, name: str, *, fleet: FleetPlan, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:EksPlatform", name, None, opts)
        spec = fleet.spec
        assert spec.region is not None and spec.eks is not None
        child = pulumi.ResourceOptions(parent=self)
        tags = cost_tags(fleet.stack, spec.owner)
        self.node_groups: dict[str, aws.eks.NodeGroup] = {}
        existing = spec.eks.existing_kubeconfig
        if existing is not None:
            # A pulumi-config secret (validate refuses other sources).
            config: pulumi.Input[str] = pulumi_config_secret(existing.name)
        else:
            config = self._cluster(name, fleet, tags)
        self.provider = k8s.Provider(name, kubeconfig=config, enable_server_side_apply=True, opts=child)
        self.releases = {key: self._release(name, key, chart) for key, chart in CHARTS.items()}
        self.register_outputs({"nodeGroups": {k: g.node_group_name for k, g in self.node_groups.items()}})

    def _cluster(self, name: str, fleet: FleetPlan, tags: dict[str, str]) -> pulumi.Output[str]:
        spec = fleet.spec
        assert spec.region is not None and spec.eks is not None
        child = pulumi.ResourceOptions(parent=self)
        network = fleet_network(name, fleet, tags, child)
        key = aws.kms.Key(f"{name}-secrets", description=f"EKS secrets of {name}", enable_key_rotation=True,
                          tags=tags, opts=child)
        cluster_role = service_role(f"{name}-cluster", "eks.amazonaws.com", CLUSTER_POLICIES, tags, child)
        subnets = pulumi.Output.all(network.private_subnet_ids, network.public_subnet_ids).apply(
            lambda ids: [*ids[0], *ids[1]])
        cluster = aws.eks.Cluster(
            name,
            version=spec.eks.kubernetes_version,
            role_arn=cluster_role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=subnets, endpoint_private_access=True, endpoint_public_access=True,
                public_access_cidrs=list(spec.network.allowed_client_cidrs)),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                resources=["secrets"], provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key.arn)),
            access_config=aws.eks.ClusterAccessConfigArgs(authentication_mode="API",
                                                          bootstrap_cluster_creator_admin_permissions=True),
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            tags=tags, opts=child)
        for addon in ADDONS:
            aws.eks.Addon(f"{name}-{addon}", cluster_name=cluster.name, addon_name=addon,
                          resolve_conflicts_on_update="OVERWRITE", tags=tags, opts=child)
        node_role = service_role(f"{name}-nodes", "ec2.amazonaws.com", NODE_POLICIES, tags, child)
        placement = NodePlacement(cluster, node_role, network.private_subnet_ids, tags)
        specs = [NodeGroupSpec("system", SYSTEM_INSTANCE_TYPE, "AL2023_x86_64_STANDARD", SYSTEM_NODES, 50, False,
                               {"gpufleet.io/role": "system"}, [])]
        specs += [NodeGroupSpec(node_group_name(n), n.instance_type, GPU_AMI_TYPE, (n.min_nodes, n.max_nodes),
                                n.root_gib, n.spot, {GPU_LABEL: n.gpu, INSTANCE_LABEL: n.instance_type}, [GPU_TAINT])
                  for n in gpu_node_groups(fleet)]
        for node_spec in specs:
            self.node_groups[node_spec.group] = self._node_group(name, node_spec, placement)
        return pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
            lambda v: kubeconfig(v[0], v[1], v[2], spec.region or ""))

    def _node_group(self, name: str, spec: NodeGroupSpec, where: NodePlacement) -> aws.eks.NodeGroup:
        child = pulumi.ResourceOptions(parent=self)
        group, tags = spec.group, where.tags
        template = aws.ec2.LaunchTemplate(
            f"{name}-{group}",
            metadata_options=imdsv2_only(),
            block_device_mappings=encrypted_root("/dev/xvda", spec.root_gib),  # AL2023's root device
            tag_specifications=launch_tags(tags),
            tags=tags, opts=child)
        low, high = spec.sizes
        return aws.eks.NodeGroup(
            f"{name}-{group}",
            cluster_name=where.cluster.name,
            node_role_arn=where.role.arn,
            subnet_ids=where.subnets,
            ami_type=spec.ami_type,
            instance_types=[spec.instance_type],
            capacity_type="SPOT" if spec.spot else "ON_DEMAND",
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=low, desired_size=low, max_size=high),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)),
            labels=spec.labels,
            taints=[aws.eks.NodeGroupTaintArgs(**t) for t in spec.taints],
            tags=tags, opts=child)

    def _release(self, name: str, key: str, chart: Chart) -> k8s.helm.v3.Release:
        values = CHART_VALUES.get(key, {})
        return k8s.helm.v3.Release(
            f"{name}-{key}", chart=chart.chart, version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo), namespace=chart.namespace,
            create_namespace=True, values=values, atomic=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider,
                                        depends_on=list(self.node_groups.values())))


# The device plugin and dcgm-exporter run on the GPU nodes only (their label, their taint).
ON_GPU_NODES: dict[str, object] = {
    "nodeSelector": {},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": GPU_LABEL, "operator": "Exists"}]}]}}},
    "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}
# Chart values (per chart key).
CHART_VALUES: dict[str, dict[str, object]] = {
    "nvidia-device-plugin": ON_GPU_NODES,
    # The rendered PodMonitor scrapes it (with the relabelings that tie a GPU to its deployment), not the
    # chart's own ServiceMonitor.
    "dcgm-exporter": {**ON_GPU_NODES, "serviceMonitor": {"enabled": False}},
}

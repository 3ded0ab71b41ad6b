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
- Capacity: a deployment's ``capacityReservation`` gets a node group of its own in the reservation's zone,
  its launch template targeting the reservation (and market ``capacity-block`` for a Capacity Block, with
  the node group's capacity type ``CAPACITY_BLOCK``: EKS user guide, "Capacity Blocks for ML").
- Scaling: KEDA scales the vLLM Deployments within ``replicas``; the Cluster Autoscaler
  (infra/provision/aws/autoscaler.py) adds and removes GPU nodes for them, so the node groups' desired size
  is the autoscaler's after creation (``ignore_changes``: a `pulumi up` never resets it).
- Pod Identity (add-on ``eks-pod-identity-agent``): the vLLM pods of a deployment with S3 weights read
  exactly those prefixes (their init container syncs them); the autoscaler resizes this cluster's groups.
- Charts: explicit release names (Pulumi would add a random suffix, and kube-prometheus-stack's Services and
  selectors are named after the release: the rendered ScaledObjects and monitors use the name).
  kube-prometheus-stack's Alertmanager runs the rendered configuration (``useExistingSecret``: Secret
  :data:`ALERTMANAGER_SECRET`, receivers' secret files in the Secret the render's paths name), Prometheus
  adds the ``stack`` external label the rules and dashboards expect, and everything but the GPU DaemonSets
  runs on the system nodes.
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
from infra.provision.aws.autoscaler import ClusterAutoscaler
from infra.provision.aws.capacity import launch_capacity, market_of
from infra.provision.aws.ec2 import deployment_weights_uris
from infra.provision.aws.gpu import encrypted_root, imdsv2_only, launch_tags, root_volume_gib
from infra.provision.aws.iam import s3_statements, service_role
from infra.provision.aws.network import Network, fleet_network
from infra.provision.aws.pod_identity import POD_IDENTITY_ADDON, PodIdentityRole
from infra.provision.aws.tags import cost_tags
from infra.provision.helm import Chart
from infra.provision.secrets import pulumi_config_secret
from infra.render.alertmanager import K8S_RECEIVERS_SECRET
from infra.render.k8s_workloads import (
    GPU_LABEL,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    INSTANCE_LABEL,
    SYSTEM_NODE_LABELS,
    workload_name,
)
from infra.render.systemd import slots_per_machine
from infra.render.telemetry import K8S_NAMESPACE, K8S_PROMETHEUS_RELEASE
from infra.spec.stack import CapacityReservation

GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
# The labels and taint the vLLM pods select and tolerate (infra/render/k8s_workloads.py defines them).
GPU_TAINT = {"key": GPU_TAINT_KEY, "value": GPU_TAINT_VALUE, "effect": "NO_SCHEDULE"}
SYSTEM_INSTANCE_TYPE = "m7i.xlarge"  # Prometheus, Grafana, KEDA, the LB: 4 vCPU / 16 GiB, not a GPU
SYSTEM_NODES = (2, 4)  # min, max: two for a rolling update of the system pods without an outage

# AWS managed policies, attached as <role>-<policy name>.
CLUSTER_POLICIES = {p: p for p in ("AmazonEKSClusterPolicy",)}
NODE_POLICIES = {p: p for p in ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy",
                                "AmazonEC2ContainerRegistryReadOnly", "AmazonSSMManagedInstanceCore")}
# The default versions of the cluster's Kubernetes version; the Pod Identity agent serves the pods' credentials.
ADDONS = ("vpc-cni", "coredns", "kube-proxy", POD_IDENTITY_ADDON)
# The node group's capacity type per planned market (EKS API, NodeGroup capacityType).
CAPACITY_TYPES = {"on-demand": "ON_DEMAND", "spot": "SPOT", "capacity-block": "CAPACITY_BLOCK"}
SYSTEM_LABELS = SYSTEM_NODE_LABELS
# The Cluster Autoscaler's AWS GPU label (cluster-autoscaler/cloudprovider/aws/README.md, "GPU Node Groups"):
# a new node counts as the GPU node it will be while the device plugin has not yet advertised its GPUs,
# instead of triggering another scale-out.
AUTOSCALER_GPU_LABEL = "k8s.amazonaws.com/accelerator"
ALERTMANAGER_SECRET = "gpufleet-alertmanager"  # key alertmanager.yaml: the rendered alertmanager.yml


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
    """One GPU node group: an instance type the plan chose in one market (and reservation), and the
    deployments it carries."""

    instance_type: str
    gpu: str
    market: str
    """on-demand, spot or capacity-block (the plan's)"""
    min_nodes: int
    max_nodes: int
    root_gib: int
    reservation: CapacityReservation | None = None
    deployments: tuple[DeploymentPlan, ...] = ()

    @property
    def spot(self) -> bool:
        return self.market == "spot"


def _group_key(d: DeploymentPlan) -> tuple[str, str, str]:
    assert d.chosen is not None
    reservation = d.deployment.capacity_reservation
    return d.chosen.machine.instance.name, market_of(d), reservation.id if reservation else ""


def gpu_node_groups(fleet: FleetPlan) -> list[GpuNodes]:
    by_key: dict[tuple[str, str, str], list[DeploymentPlan]] = defaultdict(list)
    for d in fleet.deployments:
        by_key[_group_key(d)].append(d)
    groups = []
    for (instance_type, market, _), plans in sorted(by_key.items()):
        needed = sum(p.chosen.machines for p in plans if p.chosen)
        ceiling = sum(math.ceil(max(p.deployment.replicas.max, p.chosen.replicas) / slots_per_machine(p))
                      for p in plans if p.chosen)
        first = plans[0].chosen
        assert first is not None
        reservation = plans[0].deployment.capacity_reservation
        # Reserved capacity holds what was bought, no more: the autoscaler cannot grow past it.
        high = needed if reservation is not None else max(needed, ceiling)
        groups.append(GpuNodes(instance_type, first.config.gpu.name, market, needed, high,
                               max(root_volume_gib(p) for p in plans), reservation, tuple(plans)))
    return groups


@dataclass(frozen=True)
class NodeGroupSpec:
    group: str
    instance_type: str
    ami_type: str
    sizes: tuple[int, int]
    """min (= desired), max"""
    root_gib: int
    market: str
    labels: dict[str, str]
    taints: list[dict[str, str]]
    capacity: DeploymentPlan | None = None
    """A deployment whose capacityReservation the group launches into (its market and zone)."""


@dataclass(frozen=True)
class NodePlacement:
    """Where every node group of the cluster goes."""

    cluster: aws.eks.Cluster
    role: aws.iam.Role
    network: Network
    tags: dict[str, str]


def node_group_name(nodes: GpuNodes) -> str:
    suffix = {"on-demand": "", "spot": "-spot", "capacity-block": "-block"}[nodes.market]
    reserved = f"-{nodes.reservation.id}" if nodes.reservation is not None else ""
    return f"gpu-{nodes.instance_type.replace('.', '-')}{suffix}{reserved}"


def gpu_node_spec(nodes: GpuNodes) -> NodeGroupSpec:
    reserved = nodes.deployments[0] if nodes.reservation is not None else None
    return NodeGroupSpec(node_group_name(nodes), nodes.instance_type, GPU_AMI_TYPE, (nodes.min_nodes, nodes.max_nodes),
                         nodes.root_gib, nodes.market,
                         {GPU_LABEL: nodes.gpu, INSTANCE_LABEL: nodes.instance_type, AUTOSCALER_GPU_LABEL: nodes.gpu},
                         [GPU_TAINT], reserved)


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
    """``gpufleet:aws:EksPlatform``: ``provider`` (Kubernetes), the node groups by name and the charts'
    releases by key (:data:`CHARTS`)."""

    def __init__(self, name: str, *, fleet: FleetPlan, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:EksPlatform", name, None, opts)
        spec = fleet.spec
        assert spec.region is not None and spec.eks is not None
        child = pulumi.ResourceOptions(parent=self)
        tags = cost_tags(fleet.stack, spec.owner)
        self.node_groups: dict[str, aws.eks.NodeGroup] = {}
        self.cluster: aws.eks.Cluster | None = None
        self.identities: list[PodIdentityRole] = []
        self.addons: list[aws.eks.Addon] = []
        existing = spec.eks.existing_kubeconfig
        if existing is not None:
            # A pulumi-config secret (validate refuses other sources).
            config: pulumi.Input[str] = pulumi_config_secret(existing.name)
        else:
            config = self._cluster(name, fleet, tags)
        self.provider = k8s.Provider(name, kubeconfig=config, enable_server_side_apply=True, opts=child)
        self.releases = {key: self._release(name, key, chart, chart_values(key, fleet))
                         for key, chart in CHARTS.items()}
        if self.cluster is not None:
            ClusterAutoscaler(f"{name}-autoscaler", cluster_name=self.cluster.name, region=spec.region,
                              provider=self.provider, tags=tags, depends_on=list(self.node_groups.values()),
                              opts=child)
        self.register_outputs({"nodeGroups": {k: g.node_group_name for k, g in self.node_groups.items()}})

    @property
    def workload_dependencies(self) -> list[pulumi.Resource]:
        """What the vLLM pods need before they are created: EKS Pod Identity injects a pod's credentials when
        the pod is created, so the agent add-on and the associations (with their policies) come first."""
        return [*self.addons, *(r for i in self.identities for r in (i.association, i.policy))]

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
        self.cluster = cluster
        self.addons = [aws.eks.Addon(f"{name}-{addon}", cluster_name=cluster.name, addon_name=addon,
                                     resolve_conflicts_on_update="OVERWRITE", tags=tags, opts=child)
                       for addon in ADDONS]
        node_role = service_role(f"{name}-nodes", "ec2.amazonaws.com", NODE_POLICIES, tags, child)
        placement = NodePlacement(cluster, node_role, network, tags)
        specs = [NodeGroupSpec("system", SYSTEM_INSTANCE_TYPE, "AL2023_x86_64_STANDARD", SYSTEM_NODES, 50,
                               "on-demand", SYSTEM_LABELS, [])]
        specs += [gpu_node_spec(n) for n in gpu_node_groups(fleet)]
        for node_spec in specs:
            self.node_groups[node_spec.group] = self._node_group(name, node_spec, placement)
        self.identities = [self._weights_reader(name, d, cluster, tags) for d in fleet.deployments
                           if deployment_weights_uris(d)]
        return pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
            lambda v: kubeconfig(v[0], v[1], v[2], spec.region or ""))

    def _weights_reader(self, name: str, plan: DeploymentPlan, cluster: aws.eks.Cluster,
                        tags: dict[str, str]) -> PodIdentityRole:
        """The deployment's pods (its service account) read its S3 weights and adapters, nothing else."""
        uris = deployment_weights_uris(plan)
        return PodIdentityRole(f"{name}-weights-{plan.deployment.name}", cluster_name=cluster.name,
                               namespace=K8S_NAMESPACE, service_account=workload_name(plan.deployment.name),
                               statements=lambda _account: s3_statements(uris), tags=tags,
                               opts=pulumi.ResourceOptions(parent=self))

    def _node_group(self, name: str, spec: NodeGroupSpec, where: NodePlacement) -> aws.eks.NodeGroup:
        child = pulumi.ResourceOptions(parent=self)
        group, tags = spec.group, where.tags
        market, reservation, subnets = None, None, where.network.private_subnet_ids
        if spec.capacity is not None:
            capacity = launch_capacity(spec.capacity)
            # Spot is the node group's capacity type; only a Capacity Block is also a launch-template market.
            market = capacity.market if spec.market == "capacity-block" else None
            reservation = capacity.reservation
            if capacity.zone is not None:
                subnets = where.network.private_subnets_in(capacity.zone)
        template = aws.ec2.LaunchTemplate(
            f"{name}-{group}",
            metadata_options=imdsv2_only(),
            block_device_mappings=encrypted_root("/dev/xvda", spec.root_gib),  # AL2023's root device
            instance_market_options=market,
            capacity_reservation_specification=reservation,
            tag_specifications=launch_tags(tags),
            tags=tags, opts=child)
        low, high = spec.sizes
        return aws.eks.NodeGroup(
            f"{name}-{group}",
            cluster_name=where.cluster.name,
            node_role_arn=where.role.arn,
            subnet_ids=subnets,
            ami_type=spec.ami_type,
            instance_types=[spec.instance_type],
            capacity_type=CAPACITY_TYPES[spec.market],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=low, desired_size=low, max_size=high),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)),
            labels=spec.labels,
            taints=[aws.eks.NodeGroupTaintArgs(**t) for t in spec.taints],
            tags=tags,
            # The Cluster Autoscaler owns the desired size once the group exists (min and max stay ours).
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"]))

    def _release(self, name: str, key: str, chart: Chart, values: dict[str, object]) -> k8s.helm.v3.Release:
        return k8s.helm.v3.Release(
            f"{name}-{key}", name=key, chart=chart.chart, version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repo), namespace=chart.namespace,
            create_namespace=True, values=values, atomic=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider,
                                        depends_on=[*self.node_groups.values(), *self.identities]))


# The device plugin and dcgm-exporter run on the GPU nodes only (their label, their taint).
ON_GPU_NODES: dict[str, object] = {
    "nodeSelector": {},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": GPU_LABEL, "operator": "Exists"}]}]}}},
    "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}
ON_SYSTEM_NODES: dict[str, object] = {"nodeSelector": SYSTEM_LABELS}


def prometheus_stack_values(fleet: FleetPlan) -> dict[str, object]:
    """kube-prometheus-stack: the render's monitors and rules (selected by their ``release`` label, the
    chart's default), the ``stack`` external label, the rendered Alertmanager config."""
    return {
        "prometheus": {"prometheusSpec": {
            **ON_SYSTEM_NODES,
            "externalLabels": {"stack": fleet.stack},
            "retention": "15d",
        }},
        "alertmanager": {"alertmanagerSpec": {
            **ON_SYSTEM_NODES,
            # The rendered alertmanager.yml (Secret ALERTMANAGER_SECRET, key alertmanager.yaml) replaces the
            # chart's; its receivers read their secrets from the files of K8S_RECEIVERS_SECRET, which the
            # operator mounts at /etc/alertmanager/secrets/<name>.
            "useExistingSecret": True,
            "configSecret": ALERTMANAGER_SECRET,
            "secrets": [K8S_RECEIVERS_SECRET],
        }},
        "prometheusOperator": ON_SYSTEM_NODES,
        "kube-state-metrics": ON_SYSTEM_NODES,
        # The sidecar loads the rendered dashboard ConfigMaps (label grafana_dashboard, the chart's default).
        "grafana": {**ON_SYSTEM_NODES, "sidecar": {"dashboards": {"enabled": True}}},
    }


def chart_values(key: str, fleet: FleetPlan) -> dict[str, object]:
    if key == "kube-prometheus-stack":
        assert key == K8S_PROMETHEUS_RELEASE  # the release name the rendered objects select and address
        return prometheus_stack_values(fleet)
    return CHART_VALUES.get(key, {})


# Chart values (per chart key).
CHART_VALUES: dict[str, dict[str, object]] = {
    "nvidia-device-plugin": ON_GPU_NODES,
    # The rendered PodMonitor scrapes it (with the relabelings that tie a GPU to its deployment), not the
    # chart's own ServiceMonitor.
    "dcgm-exporter": {**ON_GPU_NODES, "serviceMonitor": {"enabled": False}},
    "keda": ON_SYSTEM_NODES,
}

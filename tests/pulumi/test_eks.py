"""The eks platform under mocks, on the prod example: one GPU managed node group per instance type the plan
chose (NVIDIA AMI, taint, labels, sizes from the plan), the system node group, the cluster's guard rails, the
pinned charts on a provider built from the cluster, and an existing cluster that creates nothing on AWS."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.plan.optimize import FleetPlan
from infra.provision.aws.ec2 import deployment_weights_uris
from infra.provision.aws.eks import (
    ALERTMANAGER_SECRET,
    CHARTS,
    GPU_AMI_TYPE,
    EksPlatform,
    gpu_node_groups,
    node_group_name,
)
from infra.provision.aws.iam import s3_statements
from infra.provision.k8s import documents
from infra.provision.policy import ResourceView, check_resources
from infra.render.alertmanager import K8S_RECEIVERS_SECRET, secret_files
from infra.render.k8s_workloads import workload_name
from infra.render.stack import render_fleet
from infra.render.systemd import slots_per_machine
from infra.render.telemetry import K8S_PROMETHEUS_RELEASE
from tests.pulumi.mocks import ensure_event_loop, run_program
from tests.pulumi.test_aws_ec2 import AwsMocks, fleet_of

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
RELEASE = "kubernetes:helm.sh/v3:Release"


class EksMocks(AwsMocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outputs = super().new_resource(args)
        if args.typ == "aws:eks/cluster:Cluster":
            outputs = {**outputs, "endpoint": "https://0123456789ABCDEF.gr7.us-east-1.eks.amazonaws.com",
                       "certificateAuthority": {"data": "Q0EgZGF0YQ=="}}
        return rid, outputs


def provision(fleet: FleetPlan) -> EksMocks:
    mocks = EksMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=fleet.stack, preview=False)
    run_program(lambda: EksPlatform(fleet.stack, fleet=fleet))
    return mocks


@pytest.fixture(scope="module")
def prod() -> tuple[FleetPlan, EksMocks]:
    ensure_event_loop()
    fleet = fleet_of("prod")
    return fleet, provision(fleet)


def test_one_gpu_node_group_per_planned_instance_type(prod: tuple[FleetPlan, EksMocks]) -> None:
    fleet, mocks = prod
    groups = {r.name.removeprefix("prod-"): r.inputs for r in mocks.of_type(NODE_GROUP)}
    planned = gpu_node_groups(fleet)
    assert set(groups) == {"system"} | {node_group_name(n) for n in planned}
    for nodes in planned:
        group = groups[node_group_name(nodes)]
        assert group["amiType"] == GPU_AMI_TYPE and group["instanceTypes"] == [nodes.instance_type]
        assert group["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
        assert group["labels"]["gpufleet.io/gpu"] == nodes.gpu
        assert group["capacityType"] == ("SPOT" if nodes.spot else "ON_DEMAND")
        on_it = [d for d in fleet.deployments if d.chosen and d.chosen.machine.instance.name == nodes.instance_type]
        machines = sum(d.chosen.machines for d in on_it if d.chosen)
        ceiling = sum(math.ceil(max(d.deployment.replicas.max, d.chosen.replicas) / slots_per_machine(d))
                      for d in on_it if d.chosen)
        scaling = group["scalingConfig"]
        assert scaling["minSize"] == scaling["desiredSize"] == machines
        assert scaling["maxSize"] == max(machines, ceiling)
    assert groups["system"]["taints"] == [] and groups["system"]["amiType"] == "AL2023_x86_64_STANDARD"


def test_every_resource_passes_the_policy_pack(prod: tuple[FleetPlan, EksMocks]) -> None:
    _, mocks = prod
    assert check_resources([ResourceView(r.type, r.name, r.inputs) for r in mocks.resources]) == []


def test_cluster_guard_rails(prod: tuple[FleetPlan, EksMocks]) -> None:
    fleet, mocks = prod
    (cluster,) = mocks.of_type("aws:eks/cluster:Cluster")
    assert cluster.inputs["version"] == "1.33"
    vpc = cluster.inputs["vpcConfig"]
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["publicAccessCidrs"] == list(fleet.spec.network.allowed_client_cidrs)
    assert cluster.inputs["encryptionConfig"]["resources"] == ["secrets"]
    (key,) = mocks.of_type("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    assert {r.inputs["addonName"] for r in mocks.of_type("aws:eks/addon:Addon")} == {
        "vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent"}


def test_pinned_charts_on_the_clusters_provider(prod: tuple[FleetPlan, EksMocks]) -> None:
    _, mocks = prod
    releases = {r.name.removeprefix("prod-"): r.inputs for r in mocks.of_type(RELEASE)
                if r.name != "prod-autoscaler"}  # tests/pulumi/test_eks_addons.py
    assert set(releases) == set(CHARTS)
    for key, chart in CHARTS.items():
        release = releases[key]
        assert (release["chart"], release["version"], release["repositoryOpts"]["repo"], release["namespace"]) == (
            chart.chart, chart.version, chart.repo, chart.namespace)
        # Without an explicit name Pulumi adds a random suffix, and kube-prometheus-stack names its Services
        # and selectors after the release (the rendered ScaledObjects and monitors address them).
        assert release["name"] == key
    for on_gpus in ("nvidia-device-plugin", "dcgm-exporter"):
        tolerations = releases[on_gpus]["values"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # Scraped by the rendered PodMonitor, which selects the chart's pod label.
    assert releases["dcgm-exporter"]["values"]["serviceMonitor"] == {"enabled": False}
    (pod_monitor,) = [d for d in documents(render_fleet(fleet_of("prod")))
                      if d["kind"] == "PodMonitor" and "dcgm" in d["metadata"]["name"]]
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "dcgm-exporter"}
    (provider,) = mocks.of_type("pulumi:providers:kubernetes")
    config = json.loads(provider.inputs["kubeconfig"])
    (user,) = config["users"]
    assert user["user"]["exec"]["args"][:3] == ["eks", "get-token", "--cluster-name"]


def test_existing_cluster_creates_nothing_on_aws(tmp_path: Path) -> None:
    fleet = fleet_of("prod", ('    kubernetesVersion: "1.33"\n',
                              '    kubernetesVersion: "1.33"\n'
                              "    existingKubeconfig: {source: pulumi-config, name: gpufleet:kubeconfig}\n"),
                     tmp_path)
    pulumi.runtime.set_all_config({"gpufleet:kubeconfig": "apiVersion: v1\nkind: Config\n"})
    try:
        mocks = provision(fleet)
    finally:
        pulumi.runtime.set_all_config({})
    assert not [r for r in mocks.resources if r.type.startswith("aws:")]
    assert len(mocks.of_type(RELEASE)) == len(CHARTS)  # no autoscaler: the node groups are not ours


def test_prometheus_stack_runs_the_rendered_alertmanager_and_labels_the_stack(
        prod: tuple[FleetPlan, EksMocks]) -> None:
    _, mocks = prod
    (release,) = [r.inputs for r in mocks.of_type(RELEASE) if r.inputs["name"] == K8S_PROMETHEUS_RELEASE]
    values = release["values"]
    alertmanager = values["alertmanager"]["alertmanagerSpec"]
    assert alertmanager["useExistingSecret"] is True and alertmanager["configSecret"] == ALERTMANAGER_SECRET
    # The rendered receivers read their secrets from the mount of this Secret.
    assert alertmanager["secrets"] == [K8S_RECEIVERS_SECRET]
    assert all(path.startswith(f"/etc/alertmanager/secrets/{K8S_RECEIVERS_SECRET}/")
               for path, _ in secret_files(fleet_of("prod").spec))
    assert values["prometheus"]["prometheusSpec"]["externalLabels"] == {"stack": "prod"}
    for component in (values["prometheus"]["prometheusSpec"], alertmanager, values["grafana"]):
        assert component["nodeSelector"] == {"gpufleet.io/role": "system"}


def test_s3_weights_are_read_by_their_deployments_pods_only(prod: tuple[FleetPlan, EksMocks]) -> None:
    """support's profile has S3 weights: its service account gets a Pod Identity role reading exactly those
    prefixes; chat-70b's weights come from the Hub, so it gets none."""
    fleet, mocks = prod
    (association,) = [a for a in mocks.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                      if a.inputs["namespace"] == "gpufleet"]
    assert association.inputs["serviceAccount"] == workload_name("support")
    (policy,) = [p for p in mocks.of_type("aws:iam/rolePolicy:RolePolicy") if "weights-support" in p.name]
    (support,) = [d for d in fleet.deployments if d.deployment.name == "support"]
    assert json.loads(policy.inputs["policy"])["Statement"] == s3_statements(deployment_weights_uris(support))
    assert "s3://acme-ml-models/support-chat-8b/v3/" in deployment_weights_uris(support)


def test_gpu_nodes_carry_the_autoscalers_gpu_label(prod: tuple[FleetPlan, EksMocks]) -> None:
    fleet, mocks = prod
    for nodes in gpu_node_groups(fleet):
        (group,) = [r for r in mocks.of_type(NODE_GROUP) if r.name == f"prod-{node_group_name(nodes)}"]
        assert group.inputs["labels"]["k8s.amazonaws.com/accelerator"] == nodes.gpu


RESERVATION = "cr-0123456789abcdef0"


def test_a_reserved_deployment_gets_its_own_node_group_in_the_reservations_zone(tmp_path: Path) -> None:
    fleet = fleet_of("prod", ("      maxTensorParallel: 8\n",
                              "      maxTensorParallel: 8\n"
                              f"      capacityReservation: {{id: {RESERVATION}, zone: us-east-1b}}\n"), tmp_path)
    mocks = provision(fleet)
    (reserved,) = [n for n in gpu_node_groups(fleet) if n.reservation is not None]
    assert node_group_name(reserved).endswith(f"-{RESERVATION}")
    (group,) = [r for r in mocks.of_type(NODE_GROUP) if r.name == f"prod-{node_group_name(reserved)}"]
    assert group.inputs["capacityType"] == "ON_DEMAND"
    # Reserved capacity holds what was bought: the autoscaler cannot grow the group past it.
    scaling = group.inputs["scalingConfig"]
    assert scaling["minSize"] == scaling["maxSize"] == reserved.min_nodes
    (template,) = [r for r in mocks.of_type("aws:ec2/launchTemplate:LaunchTemplate") if r.name == group.name]
    target = template.inputs["capacityReservationSpecification"]["capacityReservationTarget"]
    assert target == {"capacityReservationId": RESERVATION}
    assert "instanceMarketOptions" not in template.inputs
    private_b = {f"{r.name}-id" for r in mocks.of_type("aws:ec2/subnet:Subnet")
                 if r.name.endswith("private-us-east-1b")}
    assert set(group.inputs["subnetIds"]) == private_b and private_b
    assert check_resources([ResourceView(r.type, r.name, r.inputs) for r in mocks.resources]) == []

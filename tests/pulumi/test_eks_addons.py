"""The eks add-ons under mocks: the Cluster Autoscaler (its Pod Identity role, which may resize only this
cluster's Auto Scaling groups, and its pinned Helm release on the cluster's provider) and a Pod Identity
role on its own; and the pure functions behind them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pytest

from infra.provision.aws.autoscaler import (
    AUTOSCALER_APP_VERSION,
    AUTOSCALER_CHART,
    AUTOSCALER_IMAGE_TAG,
    AUTOSCALER_SERVICE_ACCOUNT,
    READ_ACTIONS,
    RELEASE_NAME,
    SYSTEM_NODE_SELECTOR,
    WRITE_ACTIONS,
    ClusterAutoscaler,
    autoscaler_statements,
    autoscaler_values,
)
from infra.provision.aws.pod_identity import POD_IDENTITY_ADDON, PodIdentityRole
from infra.provision.aws.tags import cost_tags
from infra.provision.policy import ResourceView, check_resources
from infra.render.k8s_workloads import IMAGE_PULL_S
from infra.render.systemd import START_TIMEOUT_FLOOR_S
from tests.pulumi.mocks import Registered, run_program
from tests.pulumi.test_aws_ec2 import ACCOUNT, POLICY, AwsMocks, fleet_of
from tests.pulumi.test_eks import NODE_GROUP, RELEASE
from tests.pulumi.test_eks import provision as provision_eks

CLUSTER = "prod"
REGION = "us-east-1"
ROLE = "aws:iam/role:Role"
ASSOCIATION = "aws:eks/podIdentityAssociation:PodIdentityAssociation"
K8S_PROVIDER = "pulumi:providers:kubernetes"
TAGS = cost_tags(CLUSTER, "ml-platform")
# Not a reachable cluster: under mocks the provider never connects.
KUBECONFIG = json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [], "users": []})


class AddonMocks(AwsMocks):
    """AwsMocks that also remember each resource's provider reference ("<urn>::<id>")."""

    def __init__(self) -> None:
        super().__init__()
        self.providers: dict[str, str] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.providers[args.name] = args.provider or ""
        return super().new_resource(args)


@dataclass
class Addons:
    mocks: AddonMocks

    def one(self, typ: str, name: str) -> Registered:
        (found,) = [r for r in self.mocks.of_type(typ) if r.name == name]
        return found


def program() -> None:
    # The cluster name is an Output, as EksPlatform's cluster gives it.
    cluster = aws.eks.Cluster(CLUSTER, role_arn="arn:aws:iam::123456789012:role/eks",
                              vpc_config=aws.eks.ClusterVpcConfigArgs(subnet_ids=["subnet-a", "subnet-b"]),
                              tags=TAGS)
    agent = aws.eks.Addon(f"{CLUSTER}-{POD_IDENTITY_ADDON}", cluster_name=cluster.name,
                          addon_name=POD_IDENTITY_ADDON, tags=TAGS)
    provider = k8s.Provider(CLUSTER, kubeconfig=KUBECONFIG)
    ClusterAutoscaler(f"{CLUSTER}-autoscaler", cluster_name=cluster.name, region=REGION, provider=provider,
                      tags=TAGS, depends_on=[agent])
    PodIdentityRole(f"{CLUSTER}-reader", cluster_name=cluster.name, namespace="jobs", service_account="reader",
                    statements=lambda account: [{"Effect": "Allow", "Action": ["s3:GetObject"],
                                                 "Resource": f"arn:aws:s3:::weights-{account}/*"}],
                    tags=TAGS)


@pytest.fixture(scope="module")
def addons() -> Addons:
    mocks = AddonMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=CLUSTER, preview=False)
    run_program(program)
    return Addons(mocks)


def test_trust_policy_is_eks_pod_identitys_for_the_service_account(addons: Addons) -> None:
    trust = json.loads(addons.one(ROLE, f"{CLUSTER}-autoscaler-role").inputs["assumeRolePolicy"])
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert statement["Action"] == ["sts:AssumeRole", "sts:TagSession"]
    assert statement["Condition"] == {"StringEquals": {
        "aws:RequestTag/eks-cluster-name": CLUSTER, "aws:RequestTag/kubernetes-namespace": "kube-system",
        "aws:RequestTag/kubernetes-service-account": AUTOSCALER_SERVICE_ACCOUNT}}


def test_association_binds_the_role_to_the_charts_service_account(addons: Addons) -> None:
    association = addons.one(ASSOCIATION, f"{CLUSTER}-autoscaler-role-association").inputs
    role_arn = f"arn:aws:mock:::{CLUSTER}-autoscaler-role"  # what AwsMocks gives the role
    assert (association["clusterName"], association["namespace"], association["serviceAccount"],
            association["roleArn"]) == (CLUSTER, "kube-system", AUTOSCALER_SERVICE_ACCOUNT, role_arn)
    assert association["tags"] == TAGS == addons.one(ROLE, f"{CLUSTER}-autoscaler-role").inputs["tags"]
    release = addons.one(RELEASE, f"{CLUSTER}-autoscaler").inputs
    assert release["namespace"] == association["namespace"]
    assert release["values"]["rbac"]["serviceAccount"] == {"create": True, "name": association["serviceAccount"]}


def test_inline_policy_resizes_only_this_clusters_groups(addons: Addons) -> None:
    document = json.loads(addons.one(POLICY, f"{CLUSTER}-autoscaler-role-policy").inputs["policy"])
    writes = [s for s in document["Statement"] if set(s["Action"]) & set(WRITE_ACTIONS)]
    assert writes, "the autoscaler cannot resize without the write actions"
    for statement in writes:
        assert statement["Condition"] == {
            "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{CLUSTER}": "owned"}}
    reads = [s for s in document["Statement"] if s not in writes]
    assert {a for s in reads for a in s["Action"]} == set(READ_ACTIONS)


def test_release_pins_the_chart_and_the_image(addons: Addons) -> None:
    release = addons.one(RELEASE, f"{CLUSTER}-autoscaler").inputs
    assert (release["name"], release["chart"], release["version"], release["repositoryOpts"]["repo"],
            release["namespace"], release["atomic"]) == (
        RELEASE_NAME, "cluster-autoscaler", "9.51.0", "https://kubernetes.github.io/autoscaler", "kube-system", True)
    values = release["values"]
    assert values["image"] == {"tag": "v1.33.0"}
    assert values["autoDiscovery"] == {"clusterName": CLUSTER} and values["awsRegion"] == REGION
    assert values["nodeSelector"] == {"gpufleet.io/role": "system"}
    assert values["extraArgs"]["skip-nodes-with-local-storage"] is False
    assert values["extraArgs"]["expander"] == "least-waste"


def test_release_runs_on_the_given_provider(addons: Addons) -> None:
    (provider,) = addons.mocks.of_type(K8S_PROVIDER)
    assert provider.name == CLUSTER
    reference = addons.mocks.providers[f"{CLUSTER}-autoscaler"]
    assert reference.startswith("urn:") and reference.split("::")[-2:] == [CLUSTER, f"{CLUSTER}-id"]


def test_pod_identity_role_statements_get_the_account(addons: Addons) -> None:
    document = json.loads(addons.one(POLICY, f"{CLUSTER}-reader-policy").inputs["policy"])
    assert document["Statement"] == [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::weights-{ACCOUNT}/*"}]
    association = addons.one(ASSOCIATION, f"{CLUSTER}-reader-association").inputs
    assert (association["namespace"], association["serviceAccount"]) == ("jobs", "reader")
    trust = json.loads(addons.one(ROLE, f"{CLUSTER}-reader").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Condition"]["StringEquals"]["aws:RequestTag/kubernetes-namespace"] == "jobs"


def test_every_resource_passes_the_policy_pack(addons: Addons) -> None:
    resources = addons.mocks.resources
    assert {ROLE, ASSOCIATION, POLICY, RELEASE} <= {r.type for r in resources}
    assert check_resources([ResourceView(r.type, r.name, r.inputs) for r in resources]) == []


# ------------------------------------------------------------------ pure functions and pins


def test_statements_condition_names_the_cluster() -> None:
    read, write = autoscaler_statements("staging-eu")
    assert read == {"Effect": "Allow", "Action": list(READ_ACTIONS), "Resource": "*"}
    assert not set(read["Action"]) & set(WRITE_ACTIONS)
    assert write["Action"] == ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    assert write["Condition"] == {
        "StringEquals": {"aws:ResourceTag/k8s.io/cluster-autoscaler/staging-eu": "owned"}}


def test_values_keep_gpu_nodes_through_a_lull() -> None:
    values = autoscaler_values("c1", "eu-west-1", "ca")
    args = values["extraArgs"]
    unneeded = args["scale-down-unneeded-time"]
    assert unneeded.endswith("m") and int(unneeded[:-1]) * 60 >= IMAGE_PULL_S + START_TIMEOUT_FLOOR_S
    assert int(unneeded[:-1]) > 10, "no longer than the autoscaler's 10m default"
    assert args["balance-similar-node-groups"] is True
    assert values["autoDiscovery"] == {"clusterName": "c1"} and values["awsRegion"] == "eu-west-1"
    assert values["rbac"]["serviceAccount"]["name"] == "ca" and values["cloudProvider"] == "aws"


def test_image_is_the_charts_app_version_and_the_stacks_kubernetes_minor() -> None:
    assert f"v{AUTOSCALER_APP_VERSION}" == AUTOSCALER_IMAGE_TAG
    eks = fleet_of("prod").spec.eks
    assert eks is not None
    assert AUTOSCALER_APP_VERSION.rsplit(".", 1)[0] == eks.kubernetes_version
    assert AUTOSCALER_CHART.namespace == "kube-system"


def test_node_selector_is_the_system_node_groups_label() -> None:
    mocks = provision_eks(fleet_of("prod"))
    (system,) = [r for r in mocks.of_type(NODE_GROUP) if r.name == "prod-system"]
    assert SYSTEM_NODE_SELECTOR.items() <= system.inputs["labels"].items()
    gpu_groups = [r for r in mocks.of_type(NODE_GROUP) if r.name != "prod-system"]
    assert gpu_groups and all(not SYSTEM_NODE_SELECTOR.items() <= g.inputs["labels"].items() for g in gpu_groups)

"""The eks target's Kubernetes objects under mocks: every rendered object registered as its own resource on
the cluster's provider, each passing `kubernetes-validate --strict` as captured (custom resources: their
CRD's group and the chart that installs it), the built image in the vLLM containers, and the API key's
Secret read from the stack's store as a Pulumi secret."""

from __future__ import annotations

from collections import Counter
from typing import Any

import kubernetes_validate
import pulumi
import pytest

from infra.plan.optimize import FleetPlan
from infra.provision.aws.eks import EksPlatform
from infra.provision.k8s import KubernetesObjects, documents
from infra.render.k8s_workloads import API_KEY_SECRET, CONTAINER
from infra.render.stack import render_fleet
from infra.render.systemd import VLLM_IMAGE
from tests.pulumi.mocks import ensure_event_loop, run_program
from tests.pulumi.snapshots import assert_snapshot
from tests.pulumi.test_aws_ec2 import fleet_of
from tests.pulumi.test_eks import EksMocks

K8S_VERSION = "1.33.0"  # the prod stack's kubernetesVersion
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpufleet-prod-vllm@sha256:" + "cd" * 32
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # how mocks see a secret input (pulumi.runtime.rpc)


class SecretStoreMocks(EksMocks):
    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:secretsmanager/getSecretVersion:getSecretVersion":
            return {"secretId": args.args["secretId"], "secretString": "the-api-key", "arn": "", "id": "x",
                    "versionId": "v1", "versionStage": "AWSCURRENT", "createdDate": "", "secretBinary": "",
                    "versionStages": ["AWSCURRENT"]}
        return super().call(args)


def provision(fleet: FleetPlan, image: str | None) -> SecretStoreMocks:
    mocks = SecretStoreMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=fleet.stack, preview=False)
    artifacts = render_fleet(fleet)

    def program() -> None:
        platform = EksPlatform(fleet.stack, fleet=fleet)
        KubernetesObjects(fleet.stack, artifacts=artifacts, api_key=fleet.spec.api_key, provider=platform.provider,
                          charts=platform.releases, vllm_image=image)
    run_program(program)
    return mocks


@pytest.fixture(scope="module")
def prod() -> tuple[FleetPlan, SecretStoreMocks]:
    ensure_event_loop()
    fleet = fleet_of("prod")
    return fleet, provision(fleet, IMAGE)


def captured_objects(mocks: SecretStoreMocks) -> list[dict[str, Any]]:
    """What the provider would apply: the captured inputs of every Kubernetes resource but the Helm releases
    and the provider itself."""
    return [r.inputs for r in mocks.resources
            if r.type.startswith("kubernetes:") and r.type != "kubernetes:helm.sh/v3:Release"]


def test_every_rendered_object_is_one_resource(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    fleet, mocks = prod
    rendered = documents(render_fleet(fleet))
    objects = [o for o in captured_objects(mocks) if o["kind"] != "Secret"]
    assert Counter((o["kind"], o["metadata"]["name"]) for o in objects) == Counter(
        (d["kind"], d["metadata"]["name"]) for d in rendered)
    assert len(rendered) >= 1 + 5 * len(fleet.deployments)


def test_captured_core_objects_pass_strict_validation(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    _, mocks = prod
    core = [o for o in captured_objects(mocks) if "." not in o["apiVersion"].split("/")[0]]
    assert {o["kind"] for o in core} >= {"Namespace", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                                         "Secret"}
    for obj in core:
        doc = {k: v for k, v in obj.items() if k != "stringData"}  # a secret: checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_custom_resources_wait_for_their_charts(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    _, mocks = prod
    custom = [o for o in captured_objects(mocks) if "." in o["apiVersion"].split("/")[0]]
    kinds = Counter(o["kind"] for o in custom)
    assert kinds == {"ScaledObject": 2, "ServiceMonitor": 2, "PodMonitor": 2, "PrometheusRule": 1}
    for obj in custom:
        assert obj["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1"), obj["apiVersion"]
        assert obj["spec"], obj["kind"]


def test_vllm_containers_run_the_built_image(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    _, mocks = prod
    deployments = [o for o in captured_objects(mocks) if o["kind"] == "Deployment"]
    assert deployments
    for d in deployments:
        (vllm,) = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
        assert vllm["image"] == IMAGE and VLLM_IMAGE not in str(d)


def test_api_key_secret_comes_from_the_store_as_a_pulumi_secret(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    fleet, mocks = prod
    (secret,) = [o for o in captured_objects(mocks) if o["kind"] == "Secret"]
    assert secret["metadata"] == {"name": API_KEY_SECRET, "namespace": "gpufleet"}
    data = secret["stringData"]
    assert data.get("4dabf18193072939515e22adb298388d") == SECRET_SIG, data  # marked secret
    assert data["value"] == {"api-key": "the-api-key"}
    assert fleet.spec.api_key.source == "aws-secrets-manager"


def test_resource_graph_matches_the_reviewed_snapshot(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    assert_snapshot("eks-prod", prod[1].resources)

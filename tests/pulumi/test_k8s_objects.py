"""The eks target's Kubernetes objects under mocks: every rendered object registered as its own resource on
the cluster's provider, each passing `kubernetes-validate --strict` as captured (custom resources: their
CRD's group and the chart that installs it), the built image in the vLLM containers, and the API key's
Secret read from the stack's store as a Pulumi secret."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pulumi
import pytest

from infra.plan.optimize import FleetPlan
from infra.provision.aws.eks import ALERTMANAGER_SECRET, EksPlatform, gpu_node_groups, node_group_name
from infra.provision.k8s import BUILDERS, KubernetesObjects, documents, key_hashes
from infra.provision.policy import ResourceView, check_resources
from infra.render.alertmanager import CONFIG_PATH as ALERTMANAGER_CONFIG
from infra.render.alertmanager import K8S_RECEIVERS_SECRET, secret_files
from infra.render.k8s_lb import KEY_HASHES_KEY, KEY_HASHES_SECRET, LB_IMAGE_CONTAINERS
from infra.render.k8s_workloads import API_KEY_SECRET, CONTAINER, WEIGHTS_CONTAINER
from infra.render.stack import render_fleet
from infra.render.systemd import VLLM_IMAGE
from tests.pulumi.mocks import ensure_event_loop, run_program
from tests.pulumi.snapshots import assert_snapshot
from tests.pulumi.test_aws_ec2 import fleet_of
from tests.pulumi.test_eks import EksMocks

K8S_VERSION = "1.33.0"  # the prod stack's kubernetesVersion
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpufleet-prod-vllm@sha256:" + "cd" * 32
LB_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpufleet-prod-lb@sha256:" + "ef" * 32
IMAGES = {CONTAINER: IMAGE, **dict.fromkeys(LB_IMAGE_CONTAINERS, LB_IMAGE)}
NLB_HOSTNAME = "a1b2c3d4e5f6-0123456789.elb.us-east-1.amazonaws.com"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # how mocks see a secret input (pulumi.runtime.rpc)


def store_value(secret_id: str) -> str:
    return "the-api-key" if secret_id.endswith("vllm-api-key") else f"value-of-{secret_id}"


class SecretStoreMocks(EksMocks):
    """Secrets Manager answers each secret with a value derived from its name; a LoadBalancer Service gets
    the status AWS gives it (its NLB's DNS name)."""

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:secretsmanager/getSecretVersion:getSecretVersion":
            return {"secretId": args.args["secretId"], "secretString": store_value(args.args["secretId"]),
                    "arn": "", "id": "x", "versionId": "v1", "versionStage": "AWSCURRENT", "createdDate": "",
                    "secretBinary": "", "versionStages": ["AWSCURRENT"]}
        return super().call(args)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outputs = super().new_resource(args)
        if args.typ == "kubernetes:core/v1:Service" and args.inputs["spec"].get("type") == "LoadBalancer":
            outputs = {**outputs, "status": {"loadBalancer": {"ingress": [{"hostname": NLB_HOSTNAME}]}}}
        return rid, outputs


def provision(fleet: FleetPlan, images: dict[str, str]) -> SecretStoreMocks:
    mocks = SecretStoreMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=fleet.stack, preview=False)
    artifacts = render_fleet(fleet)

    def program() -> None:
        platform = EksPlatform(fleet.stack, fleet=fleet)
        KubernetesObjects(fleet.stack, artifacts=artifacts, spec=fleet.spec, provider=platform.provider,
                          charts=platform.releases, images=images, depends_on=platform.workload_dependencies)
    run_program(program)
    return mocks


@pytest.fixture(scope="module")
def prod() -> tuple[FleetPlan, SecretStoreMocks]:
    ensure_event_loop()
    fleet = fleet_of("prod")
    return fleet, provision(fleet, IMAGES)


def captured_objects(mocks: SecretStoreMocks) -> list[dict[str, Any]]:
    """What the provider would apply: the captured inputs of every Kubernetes resource but the Helm releases
    and the provider itself."""
    return [r.inputs for r in mocks.resources
            if r.type.startswith("kubernetes:") and r.type != "kubernetes:helm.sh/v3:Release"]


def is_custom(obj: dict[str, Any]) -> bool:
    """A custom resource: its kind is no Kubernetes built-in the provider has a typed resource for."""
    return (obj["apiVersion"], obj["kind"]) not in BUILDERS and obj["kind"] != "Secret"


def test_every_rendered_object_is_one_resource(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    fleet, mocks = prod
    rendered = documents(render_fleet(fleet))
    objects = [o for o in captured_objects(mocks) if o["kind"] != "Secret"]
    assert Counter((o["kind"], o["metadata"]["name"]) for o in objects) == Counter(
        (d["kind"], d["metadata"]["name"]) for d in rendered)
    assert len(rendered) >= 1 + 5 * len(fleet.deployments)


def test_captured_core_objects_pass_strict_validation(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    _, mocks = prod
    core = [o for o in captured_objects(mocks) if not is_custom(o)]
    assert {o["kind"] for o in core} == {"Namespace", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                                         "Secret", "ServiceAccount", "Role", "RoleBinding"}
    for obj in core:
        doc = {k: v for k, v in obj.items() if k != "stringData"}  # a secret: checked below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_custom_resources_wait_for_their_charts(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    _, mocks = prod
    custom = [o for o in captured_objects(mocks) if is_custom(o)]
    kinds = Counter(o["kind"] for o in custom)
    assert kinds == {"ScaledObject": 2, "ServiceMonitor": 2, "PodMonitor": 2, "PrometheusRule": 1}
    for obj in custom:
        assert obj["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1"), obj["apiVersion"]
        assert obj["spec"], obj["kind"]


def test_containers_run_the_built_images(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    """The vLLM containers run the image built from images/vllm, every LB container the one from images/lb;
    the model-cache init container keeps its pinned AWS CLI image."""
    _, mocks = prod
    deployments = [o for o in captured_objects(mocks) if o["kind"] == "Deployment"]
    assert len(deployments) == 3
    seen = set()
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            seen.add(c["name"])
            if c["name"] in IMAGES:
                assert c["image"] == IMAGES[c["name"]], c["name"]
            else:
                assert c["name"] == WEIGHTS_CONTAINER and "aws-cli" in c["image"]
        assert VLLM_IMAGE not in str(d) and "image': 'gpufleet-lb'" not in str(d)
    assert seen == {CONTAINER, WEIGHTS_CONTAINER, *LB_IMAGE_CONTAINERS}


def secrets_of(mocks: SecretStoreMocks) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in captured_objects(mocks) if o["kind"] == "Secret"}


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's stringData, checked to be marked secret (how mocks see a secret input)."""
    data = secret["stringData"]
    assert data.get("4dabf18193072939515e22adb298388d") == SECRET_SIG, data
    values: dict[str, str] = data["value"]
    return values


def test_api_key_secret_comes_from_the_store_as_a_pulumi_secret(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    fleet, mocks = prod
    secret = secrets_of(mocks)[API_KEY_SECRET]
    assert secret["metadata"] == {"name": API_KEY_SECRET, "namespace": "gpufleet"}
    assert secret_values(secret) == {"api-key": "the-api-key"}
    assert fleet.spec.api_key.source == "aws-secrets-manager"


def test_lb_accepts_exactly_the_api_keys_hash(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    """The nginx map include mounted into the LB pod: the SHA-256 of the key the vLLM pods get."""
    _, mocks = prod
    hashes = secrets_of(mocks)[KEY_HASHES_SECRET]
    assert hashes["metadata"]["namespace"] == "gpufleet"
    expected = hashlib.sha256(b"the-api-key").hexdigest()
    assert secret_values(hashes) == {KEY_HASHES_KEY: f"{expected} 1;\n"} == {KEY_HASHES_KEY: key_hashes("the-api-key")}


def test_alertmanager_runs_the_rendered_config_with_the_receivers_secrets(
        prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    """kube-prometheus-stack's Alertmanager reads the rendered alertmanager.yml (useExistingSecret), whose
    receivers read files of the receivers' Secret, each holding its store's value."""
    fleet, mocks = prod
    secrets = secrets_of(mocks)
    (rendered,) = [a.content for a in render_fleet(fleet) if a.path == ALERTMANAGER_CONFIG]
    assert secret_values(secrets[ALERTMANAGER_SECRET]) == {"alertmanager.yaml": rendered}
    files = secret_files(fleet.spec)
    assert len(files) == 3
    mount = f"/etc/alertmanager/secrets/{K8S_RECEIVERS_SECRET}"
    assert secret_values(secrets[K8S_RECEIVERS_SECRET]) == {
        path.removeprefix(f"{mount}/"): store_value(ref.name) for path, ref in files}
    assert all(secrets[n]["metadata"]["namespace"] == "monitoring" for n in (ALERTMANAGER_SECRET, K8S_RECEIVERS_SECRET))


def test_resource_graph_matches_the_reviewed_snapshot(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    assert_snapshot("eks-prod", prod[1].resources)


def test_raising_replicas_max_changes_only_the_scaler_and_the_node_groups_ceiling(
        prod: tuple[FleetPlan, SecretStoreMocks], tmp_path: Path) -> None:
    """support may scale to 30 replicas instead of 24: KEDA's ceiling and its GPU node group's maximum; nothing
    is replaced or rolled (the Deployments carry no replica count, the LB's limits follow the planned count)."""
    _, before = prod
    bigger = fleet_of("prod", ("replicas: {min: 2, max: 24}", "replicas: {min: 2, max: 30}"), tmp_path)
    after = provision(bigger, IMAGES)
    before_by = {(r.type, r.name): r.inputs for r in before.resources}
    after_by = {(r.type, r.name): r.inputs for r in after.resources}
    assert set(before_by) == set(after_by)
    changed = {key: sorted(k for k in before_by[key].keys() | after_by[key].keys()
                           if before_by[key].get(k) != after_by[key].get(k))
               for key in before_by if before_by[key] != after_by[key]}
    (support_nodes,) = [n for n in gpu_node_groups(bigger) if n.instance_type == "g6e.xlarge"]
    assert changed == {
        ("kubernetes:keda.sh/v1alpha1:ScaledObject", "prod-scaledobject-gpufleet-gpufleet-vllm-support"): ["spec"],
        ("aws:eks/nodeGroup:NodeGroup", f"prod-{node_group_name(support_nodes)}"): ["scalingConfig"],
    }
    key = ("kubernetes:keda.sh/v1alpha1:ScaledObject", "prod-scaledobject-gpufleet-gpufleet-vllm-support")
    assert after_by[key]["spec"]["maxReplicaCount"] == 30


def test_every_resource_passes_the_policy_pack(prod: tuple[FleetPlan, SecretStoreMocks]) -> None:
    """The platform, the rendered objects (the LB's LoadBalancer Service is an ingress rule to the policy) and
    the deploy-time Secrets."""
    _, mocks = prod
    assert check_resources([ResourceView(r.type, r.name, r.inputs) for r in mocks.resources]) == []
    (service,) = [r for r in mocks.resources if r.type == "kubernetes:core/v1:Service"
                  and r.inputs["spec"]["type"] == "LoadBalancer"]
    opened = {**service.inputs, "spec": {**service.inputs["spec"], "loadBalancerSourceRanges": []}}
    opened["spec"]["ports"] = [*opened["spec"]["ports"], {"name": "metrics", "port": 9113, "protocol": "TCP"}]
    assert len(check_resources([ResourceView(service.type, service.name, opened)])) == 1

"""The vLLM workloads of an eks stack (infra/render/k8s_workloads.py): every core object validated with
kubernetes-validate --strict against Kubernetes 1.33, the KEDA ScaledObject checked by hand against KEDA's
documented schema (a CRD has no schema in kubernetes-validate), and the contracts with the monitoring objects,
the node groups, the systemd unit and the plan."""

from __future__ import annotations

import copy
import math
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.plan.optimize import DeploymentPlan, FleetPlan, plan_stack
from infra.provision.aws import eks
from infra.render.artifacts import Artifact
from infra.render.hostlayout import VLLM_UID
from infra.render.k8s_workloads import (
    API_KEY_SECRET,
    API_KEY_SECRET_KEY,
    AWS_CLI_IMAGE,
    GPU_RESOURCE,
    NAMESPACE_PATH,
    PROMETHEUS_URL,
    WEIGHTS_CONTAINER,
    WORKLOADS_DIR,
    render_k8s_workloads,
    workload_name,
)
from infra.render.prometheus_config import POD_MONITORS_PATH, SERVICE_MONITORS_PATH, render_kubernetes_monitors
from infra.render.prometheus_rules import VLLM_METRICS_USED
from infra.render.systemd import STOP_GRACE_S, start_timeout_s
from infra.render.telemetry import DEPLOYMENT_LABEL, ENGINE_JOB, K8S_NAMESPACE
from infra.render.vllm import API_KEY_ENV, render_vllm
from infra.spec.load import Project, load_stack

ROOT = Path(__file__).resolve().parents[2]
EKS_STACK = "prod"
OTHER_STACKS = ["dev", "staging", "onprem-a800"]
K8S_VERSION = "1.33.0"
KINDS = ["ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "ScaledObject"]


@cache
def plan_for(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


@cache
def rendered(stack: str) -> dict[str, Artifact]:
    return {a.path: a for a in render_k8s_workloads(plan_for(stack))}


def docs(artifact: Artifact) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(artifact.content))


def objects(deployment: str) -> dict[str, dict[str, Any]]:
    """The deployment's objects by kind."""
    found = docs(rendered(EKS_STACK)[f"{WORKLOADS_DIR}/{deployment}.yaml"])
    return {doc["kind"]: doc for doc in found}


def plans() -> list[DeploymentPlan]:
    return plan_for(EKS_STACK).deployments


def names() -> list[str]:
    return [d.deployment.name for d in plans()]


def pod(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects(deployment)["Deployment"]["spec"]["template"]
    return spec


def vllm_container(deployment: str) -> dict[str, Any]:
    containers = pod(deployment)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["vllm"]
    container: dict[str, Any] = containers[0]
    return container


def monitors(path: str) -> list[dict[str, Any]]:
    artifact = next(a for a in render_kubernetes_monitors(plan_for(EKS_STACK)) if a.path == path)
    return docs(artifact)


def by_name(deployment: str) -> DeploymentPlan:
    return next(d for d in plans() if d.deployment.name == deployment)


# -- shape ------------------------------------------------------------------------------------------------

def test_eks_example_stack_has_deployments() -> None:
    assert plan_for(EKS_STACK).spec.target == "eks"
    assert len(names()) >= 2


@pytest.mark.parametrize("stack", OTHER_STACKS)
def test_non_eks_stacks_render_nothing(stack: str) -> None:
    assert plan_for(stack).spec.target != "eks"
    assert rendered(stack) == {}


def test_one_object_set_per_deployment() -> None:
    expected = {NAMESPACE_PATH} | {f"{WORKLOADS_DIR}/{name}.yaml" for name in names()}
    assert set(rendered(EKS_STACK)) == expected
    for artifact in rendered(EKS_STACK).values():
        assert artifact.kind == "k8s-manifest"
    namespace = docs(rendered(EKS_STACK)[NAMESPACE_PATH])
    assert [(d["kind"], d["metadata"]["name"]) for d in namespace] == [("Namespace", K8S_NAMESPACE)]
    for name in names():
        artifact = rendered(EKS_STACK)[f"{WORKLOADS_DIR}/{name}.yaml"]
        assert artifact.deployment == name
        found = docs(artifact)
        assert [d["kind"] for d in found] == KINDS
        for doc in found:
            assert doc["metadata"]["name"] == workload_name(name)
            assert doc["metadata"]["namespace"] == K8S_NAMESPACE


def test_render_is_deterministic() -> None:
    again = render_k8s_workloads(plan_stack(load_stack(Project(ROOT), EKS_STACK)))
    assert {a.path: a for a in again} == rendered(EKS_STACK)


# -- schema -----------------------------------------------------------------------------------------------

def core_objects() -> list[dict[str, Any]]:
    return [doc for artifact in rendered(EKS_STACK).values() for doc in docs(artifact)
            if doc["kind"] != "ScaledObject"]


def test_core_objects_pass_strict_validation() -> None:
    checked = core_objects()
    assert {doc["kind"] for doc in checked} == {"Namespace", *KINDS} - {"ScaledObject"}
    for doc in checked:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validator is strict: a misspelt field in the rendered Deployment would fail the test above."""
    doc = copy.deepcopy(objects(names()[0])["Deployment"])
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _check_keys(where: str, value: dict[str, Any], required: dict[str, type], optional: dict[str, type]) -> None:
    assert isinstance(value, dict), where
    missing = set(required) - set(value)
    unknown = set(value) - set(required) - set(optional)
    assert not missing and not unknown, f"{where}: missing {missing}, unknown {unknown}"
    for key, kind in {**required, **optional}.items():
        if key in value:
            assert isinstance(value[key], kind) and not isinstance(value[key], bool), f"{where}.{key}"


@pytest.mark.parametrize("deployment", names())
def test_scaled_object_follows_keda_schema(deployment: str) -> None:
    """KEDA 2.x ScaledObject (keda.sh/v1alpha1, keda.sh/docs/latest/reference/scaledobject-spec): spec needs
    scaleTargetRef.name and triggers; counts are integers; a trigger needs type and string-valued metadata;
    the prometheus scaler needs serverAddress, query and threshold (a number as a string)."""
    scaled = objects(deployment)["ScaledObject"]
    _check_keys("ScaledObject", scaled, {"apiVersion": str, "kind": str, "metadata": dict, "spec": dict}, {})
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    _check_keys("spec", spec, {"scaleTargetRef": dict, "triggers": list},
                {"minReplicaCount": int, "maxReplicaCount": int, "pollingInterval": int, "cooldownPeriod": int,
                 "idleReplicaCount": int, "advanced": dict, "fallback": dict})
    _check_keys("spec.scaleTargetRef", spec["scaleTargetRef"], {"name": str},
                {"apiVersion": str, "kind": str, "envSourceContainerName": str})
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    window = behavior["scaleDown"]["stabilizationWindowSeconds"]
    assert isinstance(window, int) and 0 <= window <= 3600  # the HPA API's bounds
    assert len(spec["triggers"]) == 1
    trigger = spec["triggers"][0]
    _check_keys("trigger", trigger, {"type": str, "metadata": dict},
                {"metricType": str, "name": str, "useCachedMetrics": bool, "authenticationRef": dict})
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] in ("AverageValue", "Value", "Utilization")
    metadata = trigger["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(metadata)
    assert all(isinstance(v, str) for v in metadata.values())
    assert float(metadata["threshold"]) > 0


# -- contracts --------------------------------------------------------------------------------------------

def test_labels_match_the_rendered_service_monitors() -> None:
    selected = {}
    for monitor in monitors(SERVICE_MONITORS_PATH):
        assert K8S_NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
        (endpoint,) = monitor["spec"]["endpoints"]
        deployment = next(r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == DEPLOYMENT_LABEL)
        selected[deployment] = (monitor["spec"]["selector"]["matchLabels"], endpoint["port"])
    assert set(selected) == set(names())
    for name, (match, port) in selected.items():
        found = objects(name)
        svc = found["Service"]
        assert match.items() <= svc["metadata"]["labels"].items()
        assert svc["spec"]["selector"] == match  # the Service selects exactly its deployment's pods
        assert found["Deployment"]["spec"]["selector"]["matchLabels"] == match
        assert match.items() <= pod(name)["metadata"]["labels"].items()
        assert port in {p["name"] for p in svc["spec"]["ports"]}
        assert port in {p["name"] for p in vllm_container(name)["ports"]}


def test_pod_names_match_the_dcgm_pod_monitor() -> None:
    """dcgm-exporter series are attributed to a deployment by the pod name: <Deployment>-<hash>-<hash>."""
    dcgm = next(m for m in monitors(POD_MONITORS_PATH) if m["metadata"]["name"] == "gpufleet-dcgm")
    relabel = dcgm["spec"]["podMetricsEndpoints"][0]["metricRelabelings"][0]
    for name in names():
        pod_name = f"{objects(name)['Deployment']['metadata']['name']}-7c9f8d6b5-x2k4q"
        match = re.fullmatch(relabel["regex"], f"{K8S_NAMESPACE};{pod_name}")
        assert match is not None and match.group(1) == name


@pytest.mark.parametrize("deployment", names())
def test_gpu_limit_is_tensor_parallelism(deployment: str) -> None:
    chosen = by_name(deployment).chosen
    assert chosen is not None
    assert vllm_container(deployment)["resources"]["limits"][GPU_RESOURCE] == str(chosen.config.tp)


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


@pytest.mark.parametrize("deployment", names())
def test_cpu_and_memory_fit_the_node_with_every_slot_filled(deployment: str) -> None:
    chosen = by_name(deployment).chosen
    assert chosen is not None
    instance = chosen.machine.instance
    assert instance.vcpus is not None and instance.memory_gib is not None
    resources = vllm_container(deployment)["resources"]
    assert resources["requests"] == {k: v for k, v in resources["limits"].items() if k != GPU_RESOURCE}
    slots = instance.gpu_count // chosen.config.tp
    cpu, memory = _quantity(resources["requests"]["cpu"]), _quantity(resources["requests"]["memory"])
    assert instance.vcpus / 2 < cpu * slots <= instance.vcpus - 1  # a reserve, not most of the node
    assert 0.8 * instance.memory_gib * (1 << 30) < memory * slots < (instance.memory_gib - 2) * (1 << 30)
    shm = next(v for v in pod(deployment)["spec"]["volumes"] if v["name"] == "shm")["emptyDir"]
    assert shm["medium"] == "Memory" and _quantity(shm["sizeLimit"]) <= memory / 4


@pytest.mark.parametrize("deployment", names())
def test_probes_budget_is_the_start_timeout(deployment: str) -> None:
    container = vllm_container(deployment)
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    timeout = start_timeout_s(by_name(deployment))
    assert startup["periodSeconds"] == 10
    assert timeout <= budget < timeout + startup["periodSeconds"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    rollout = objects(deployment)["Deployment"]["spec"]["progressDeadlineSeconds"]
    assert rollout > budget  # a loading replica is not reported as a failed rollout


@pytest.mark.parametrize("deployment", names())
def test_rollout_never_drops_capacity(deployment: str) -> None:
    spec = objects(deployment)["Deployment"]["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    # KEDA's HPA owns the count: a rendered count would be re-applied by every `pulumi up`. The floor is the
    # plan's replicas, in the ScaledObject.
    assert "replicas" not in spec
    chosen = by_name(deployment).chosen
    assert chosen is not None and objects(deployment)["ScaledObject"]["spec"]["minReplicaCount"] == chosen.replicas
    pdb = objects(deployment)["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"] == spec["selector"]


@pytest.mark.parametrize("deployment", names())
def test_termination_drains_after_leaving_the_service(deployment: str) -> None:
    spec = pod(deployment)["spec"]
    sleep = vllm_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    assert spec["terminationGracePeriodSeconds"] >= sleep + STOP_GRACE_S


@pytest.mark.parametrize("deployment", names())
def test_node_selector_and_toleration_match_the_node_groups(deployment: str) -> None:
    chosen = by_name(deployment).chosen
    assert chosen is not None
    groups = [g for g in eks.gpu_node_groups(plan_for(EKS_STACK)) if g.instance_type == chosen.machine.instance.name]
    assert groups
    spec = pod(deployment)["spec"]
    for group in groups:
        assert spec["nodeSelector"] == {eks.GPU_LABEL: group.gpu, eks.INSTANCE_LABEL: group.instance_type}
    taint = eks.GPU_TAINT
    assert spec["tolerations"] == [{"key": taint["key"], "operator": "Equal", "value": taint["value"],
                                    "effect": "NoSchedule"}]
    assert taint["effect"] == "NO_SCHEDULE"  # the EKS API's spelling of NoSchedule
    assert [c["topologyKey"] for c in spec["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"]


@pytest.mark.parametrize("deployment", names())
def test_api_key_comes_from_the_secret(deployment: str) -> None:
    env = {e["name"]: e for e in vllm_container(deployment)["env"]}
    key = env[API_KEY_ENV]
    assert set(key) == {"name", "valueFrom"}  # never a literal value
    assert key["valueFrom"] == {"secretKeyRef": {"name": API_KEY_SECRET, "key": API_KEY_SECRET_KEY}}
    assert "--api-key" not in rendered(EKS_STACK)[f"{WORKLOADS_DIR}/{deployment}.yaml"].content


@pytest.mark.parametrize("deployment", names())
def test_container_runs_the_rendered_vllm_config(deployment: str) -> None:
    plan = by_name(deployment)
    found = objects(deployment)
    config = next(a.content for a in render_vllm(plan) if a.kind == "vllm-config")
    assert list(found["ConfigMap"]["data"].values()) == [config]
    container = vllm_container(deployment)
    args = container["args"]
    assert args[1] == "--config" and len(args) == 3
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    key = next(iter(found["ConfigMap"]["data"]))
    assert args[2] == f"{mount['mountPath']}/{key}"
    volume = next(v for v in pod(deployment)["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    # The unit's command line (the vLLM config header documents it) is the container's.
    assert f"# Run: vllm serve {args[0]} --config {args[2]}\n" in config


@pytest.mark.parametrize("deployment", names())
def test_scaled_object_bounds_and_query(deployment: str) -> None:
    plan = by_name(deployment)
    assert plan.chosen is not None
    spec = objects(deployment)["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"]["name"] == objects(deployment)["Deployment"]["metadata"]["name"]
    assert spec["minReplicaCount"] == plan.chosen.replicas
    assert spec["maxReplicaCount"] == max(plan.deployment.replicas.max, plan.chosen.replicas)
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    metadata = spec["triggers"][0]["metadata"]
    assert metadata["serverAddress"] == PROMETHEUS_URL
    assert metadata["serverAddress"] == "http://kube-prometheus-stack-prometheus.monitoring.svc.cluster.local:9090"
    assert "vllm:num_requests_waiting" in VLLM_METRICS_USED
    assert metadata["query"] == (
        f'sum(vllm:num_requests_waiting{{job="{ENGINE_JOB}",{DEPLOYMENT_LABEL}="{deployment}"}})')


def test_startup_budget_grows_with_the_model() -> None:
    """The budget really is per deployment: the larger model gets the longer startup probe."""
    by_weights = sorted(plans(), key=lambda p: p.chosen.replica.weights_gib if p.chosen else 0)
    thresholds = [vllm_container(p.deployment.name)["startupProbe"]["failureThreshold"] for p in by_weights]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    assert thresholds[-1] == math.ceil(start_timeout_s(by_weights[-1]) / 10)


@pytest.mark.parametrize("deployment", names())
def test_pods_run_as_their_deployments_service_account(deployment: str) -> None:
    """EKS Pod Identity associates an IAM role with (namespace, service account): one account per deployment
    gives each deployment's pods exactly its own weights; none of them talks to the Kubernetes API."""
    account = objects(deployment)["ServiceAccount"]
    spec = pod(deployment)["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"] == workload_name(deployment)
    assert account["metadata"]["namespace"] == K8S_NAMESPACE
    assert account["automountServiceAccountToken"] is False and spec["automountServiceAccountToken"] is False


def _cache_script(deployment: str) -> str:
    (init,) = pod(deployment)["spec"]["initContainers"]
    assert init["name"] == WEIGHTS_CONTAINER and init["image"] == AWS_CLI_IMAGE
    assert init["command"][:2] == ["sh", "-c"]
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    return str(init["command"][2])


def test_model_cache_is_prepared_and_s3_weights_synced_before_vllm() -> None:
    """support's profile has S3 weights (and adapters): the init container syncs each into the path vLLM is
    given, checks the checkpoint's marker file, and hands the cache to the image's user; chat-70b's weights
    come from the Hub, so only the cache directory is prepared."""
    script = _cache_script("support")
    profile = by_name("support").profile
    model = vllm_container("support")["args"][0]
    assert f"aws s3 sync {profile.weights.uri} {model} " in script  # type: ignore[union-attr]
    assert f"[ -f {model}/config.json ]" in script
    assert script.rstrip().endswith(f"chown -R {VLLM_UID}:{VLLM_UID} /models")
    hub = _cache_script("chat-70b")
    assert "aws s3" not in hub and "mkdir -p /models/huggingface" in hub


def test_model_cache_script_runs_in_a_shell(tmp_path: Path) -> None:
    """The script is valid sh: `sh -n` parses it (the AWS CLI image's shell is bash as sh)."""
    for deployment in names():
        script = tmp_path / f"{deployment}.sh"
        script.write_text(_cache_script(deployment))
        subprocess.run(["sh", "-n", str(script)], check=True)
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_vllm_uid_is_the_images_user() -> None:
    dockerfile = (ROOT / "images" / "vllm" / "Dockerfile").read_text()
    assert f"ARG VLLM_UID={VLLM_UID}\n" in dockerfile and f"ARG VLLM_GID={VLLM_UID}\n" in dockerfile

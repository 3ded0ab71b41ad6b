"""The inference-engine workloads of an eks stack as Kubernetes objects (kind ``k8s-manifest``; pure render, no Pulumi).

Rendered files (relative to the render directory):

- ``k8s/workloads/namespace.yaml`` — the ``gpufleet`` Namespace, once per stack;
- ``k8s/workloads/<deployment>.yaml`` — per deployment, in apply order: ConfigMap (the engine's rendered files,
  :mod:`infra.render.engines`: vLLM's config, TensorRT-LLM's options, Ollama's script and Modelfile), Service,
  Deployment, PodDisruptionBudget and KEDA ScaledObject (none for an engine without a queue metric: Ollama),
  all named ``gpufleet-vllm-<deployment>`` whatever the engine.

Why ``gpufleet-vllm-<deployment>`` and not ``vllm-<deployment>``: the dcgm-exporter PodMonitor
(:func:`infra.render.prometheus_config.pod_monitors`) attributes each GPU to a deployment by the name of the
pod using it, ``gpufleet-vllm-(<deployment>)-<replicaset hash>-<pod hash>``; and Kubernetes' service links
would turn a Service ``vllm-x`` into ``VLLM_X_*`` variables, which vLLM reads as its own settings (vLLM docs,
"Using Kubernetes": never name a Service ``vllm``). Pods also set ``enableServiceLinks: false``.

The replica runs exactly as the systemd unit runs it (infra/render/systemd.py): the engine's image, entrypoint
and arguments, its files at the same container paths, the model cache from the host, the API key from the
environment where the engine reads one; probes on the engine's health and readiness paths.
The API key Secret (:data:`API_KEY_SECRET`) is created at deploy time from the stack's
secret and never rendered.

The GPU node groups (infra/provision/aws/eks.py) carry the labels and taint defined here
(:data:`GPU_LABEL`, :data:`INSTANCE_LABEL`, :data:`GPU_TAINT_KEY`) and import them from this module (render
never imports provision, which needs Pulumi).
"""

from __future__ import annotations

import hashlib
import math
import posixpath
from typing import Any

from infra.catalog.schema import EngineMetric
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.cloudinit import s3_syncs
from infra.render.engines import EngineLaunch, engine_launch
from infra.render.hostlayout import (
    CONTAINER_CONFIG,
    CONTAINER_HF_HOME,
    CONTAINER_MODELS,
    MODEL_CACHE,
    VLLM_UID,
)
from infra.render.prometheus_config import K8S_VLLM_APP, k8s_documents
from infra.render.systemd import STOP_GRACE_S, start_timeout_s
from infra.render.telemetry import (
    DEPLOYMENT_LABEL,
    ENGINE_JOB,
    K8S_APP_LABEL,
    K8S_DEPLOYMENT_LABEL,
    K8S_MONITORING_NAMESPACE,
    K8S_NAMESPACE,
    K8S_PROMETHEUS_RELEASE,
    K8S_VLLM_PORT_NAME,
    PROMETHEUS_PORT,
)

WORKLOADS_DIR = "k8s/workloads"
NAMESPACE_PATH = f"{WORKLOADS_DIR}/namespace.yaml"
PART_OF = {"app.kubernetes.io/part-of": "gpufleet"}
CONTAINER = "vllm"

# -- GPU nodes (the eks node groups carry these: infra/provision/aws/eks.py imports them) ---------------------
GPU_LABEL = "gpufleet.io/gpu"
INSTANCE_LABEL = "gpufleet.io/instance-type"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT_VALUE = "true"
GPU_RESOURCE = "nvidia.com/gpu"  # the extended resource the NVIDIA device plugin advertises
# The system node group's label: the LB, Prometheus, Grafana, KEDA and the Cluster Autoscaler run there.
SYSTEM_NODE_LABELS = {"gpufleet.io/role": "system"}

# -- the API key: Secret `gpufleet-api-key` in namespace gpufleet, key `api-key`, written at deploy time from
# the stack's apiKey secret (never rendered); the pod reads it as VLLM_API_KEY, like the unit's env file.
API_KEY_SECRET = "gpufleet-api-key"
API_KEY_SECRET_KEY = "api-key"

# -- what a GPU node keeps for itself, split between its replicas in proportion to their GPUs ---------------
# CPU: 1 vCPU + 1 % of the node. AL2023's kube-reserved is 6 % of the first core, 1 % of the second, 0.5 % of
# the next two and 0.25 % above (≈ 0.55 vCPU on 192 vCPUs); the GPU-node DaemonSets (aws-node, kube-proxy,
# NVIDIA device plugin, dcgm-exporter, node-exporter) request a few hundred millicores more.
NODE_RESERVE_CPU_MILLI = 1000
NODE_RESERVE_CPU_FRACTION = 0.01
# Memory: 2 GiB + 5 % of the node. The kubelet sees MemTotal, 2-4 % below the instance's nominal memory (the
# kernel's page map alone is 1.6 %); AL2023's kube-reserved is 255 MiB + 11 MiB per max pod, plus the 100 MiB
# eviction threshold and the DaemonSets' memory.
NODE_RESERVE_MEMORY_MIB = 2048
NODE_RESERVE_MEMORY_FRACTION = 0.05
# /dev/shm: PyTorch's tensor-parallel workers and vLLM's engine processes exchange tensors through shared
# memory, and a container's default /dev/shm is 64 MiB (vLLM docs, "Using Kubernetes" and "Using Docker":
# the unit uses --ipc=host instead). Memory-backed, so it counts against the memory limit: capped at 16 GiB
# and a quarter of the replica's memory.
SHM_MAX_MIB = 16 * 1024

# -- lifecycle --------------------------------------------------------------------------------------------
PROBE_PERIOD_S = 10
# The endpoint leaves the Service (kube-proxy rules, the LB's view of the endpoints) asynchronously to the
# pod's termination: sleep before SIGTERM so no new request reaches a replica that is draining.
PRESTOP_SLEEP_S = 15
# Pulling the ~10 GB vLLM image on a fresh node happens before the startup probe's budget starts.
IMAGE_PULL_S = 600

# -- the model cache, prepared by an init container before vLLM starts -------------------------------------
# AWS CLI v2 from Amazon's public registry: `aws s3 sync` of S3 weights, with the pod's EKS Pod Identity
# credentials (the CLI supports them from 2.15). Pinned: tag seen in public deployments, 2025-12.
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.32.9"
WEIGHTS_CONTAINER = "model-cache"

# -- autoscaling ------------------------------------------------------------------------------------------
# Target queue per replica: vLLM queues a request only when max-num-seqs or the KV cache is exhausted, so any
# sustained queue means saturation. A small non-zero target (KEDA's prometheus trigger is an HPA AverageValue:
# replicas = ceil(sum waiting / target)) absorbs single bursts without flapping.
WAITING_PER_REPLICA = 5
SCALE_POLLING_S = 15  # the ServiceMonitor's scrape interval: polling faster reads the same sample
HPA_MAX_STABILIZATION_S = 3600  # the HPA API's upper bound on stabilizationWindowSeconds
PROMETHEUS_URL = (f"http://{K8S_PROMETHEUS_RELEASE}-prometheus.{K8S_MONITORING_NAMESPACE}.svc.cluster.local"
                  f":{PROMETHEUS_PORT}")  # kube-prometheus-stack's Prometheus Service: <release>-prometheus


def workload_name(deployment: str) -> str:
    return f"gpufleet-vllm-{deployment}"


def pod_labels(deployment: str) -> dict[str, str]:
    """Exactly what the deployment's ServiceMonitor selects (and the Deployment's immutable selector)."""
    return {K8S_APP_LABEL: K8S_VLLM_APP, K8S_DEPLOYMENT_LABEL: deployment}


def _metadata(deployment: str) -> dict[str, Any]:
    return {"name": workload_name(deployment), "namespace": K8S_NAMESPACE,
            "labels": {**pod_labels(deployment), **PART_OF}}


def config_dir(launch: EngineLaunch) -> str:
    """Where the engine's rendered files are inside the container (the systemd unit's paths): the ConfigMap's
    mount point. vLLM's config is ``vllm/<d>.yaml``, the other engines' files ``engines/<d>.*``."""
    folders = {posixpath.dirname(a.path) for a in launch.config_files} or {"engines"}
    (folder,) = folders
    return f"{CONTAINER_CONFIG}/{folder}"


def config_checksum(launch: EngineLaunch) -> str:
    """sha256 of the files' contents in path order (one file: the sha256 of its content)."""
    digest = hashlib.sha256()
    for artifact in sorted(launch.config_files):
        digest.update(artifact.content.encode())
    return digest.hexdigest()


def node_selector(plan: DeploymentPlan) -> dict[str, str]:
    assert plan.chosen is not None
    return {GPU_LABEL: plan.chosen.config.gpu.name, INSTANCE_LABEL: plan.chosen.machine.instance.name}


def replica_resources(plan: DeploymentPlan) -> dict[str, str]:
    """The replica's share of its node (tp of gpu_count GPUs) after the node's reserve: cpu and memory."""
    assert plan.chosen is not None
    instance, tp = plan.chosen.machine.instance, plan.chosen.config.tp
    if instance.vcpus is None or instance.memory_gib is None:
        raise ValueError(f"instance type {instance.name} has no vCPU or memory figure in the catalog")
    node_cpu_milli = instance.vcpus * 1000
    cpu_milli = node_cpu_milli - NODE_RESERVE_CPU_MILLI - node_cpu_milli * NODE_RESERVE_CPU_FRACTION
    node_memory_mib = instance.memory_gib * 1024
    memory_mib = node_memory_mib - NODE_RESERVE_MEMORY_MIB - node_memory_mib * NODE_RESERVE_MEMORY_FRACTION
    share = tp / instance.gpu_count
    return {"cpu": f"{math.floor(cpu_milli * share)}m", "memory": f"{math.floor(memory_mib * share)}Mi"}


def shm_mib(plan: DeploymentPlan) -> int:
    memory = int(replica_resources(plan)["memory"].removesuffix("Mi"))
    return min(SHM_MAX_MIB, memory // 4)


def config_map(plan: DeploymentPlan) -> dict[str, Any]:
    name = plan.deployment.name
    files = engine_launch(plan).config_files
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name),
            "data": {posixpath.basename(a.path): a.content for a in files}}


def service(plan: DeploymentPlan) -> dict[str, Any]:
    name = plan.deployment.name
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(name),
            "spec": {"type": "ClusterIP", "selector": pod_labels(name),
                     "ports": [{"name": K8S_VLLM_PORT_NAME, "port": engine_launch(plan).port,
                                "targetPort": K8S_VLLM_PORT_NAME,
                                "protocol": "TCP"}]}}


def _probe(path: str, failure_threshold: int, period_s: int) -> dict[str, Any]:
    # The engines' health paths are unauthenticated (only /v1 needs the API key).
    return {"httpGet": {"path": path, "port": K8S_VLLM_PORT_NAME}, "periodSeconds": period_s,
            "timeoutSeconds": 5, "failureThreshold": failure_threshold}


def probes(plan: DeploymentPlan) -> dict[str, Any]:
    """Startup: the unit's start-up budget (weights load + engine start) on the readiness path; afterwards
    readiness takes a busy replica out of the Service quickly, liveness (the engine's health path) restarts a
    dead engine after a minute."""
    launch = engine_launch(plan)
    return {
        "startupProbe": _probe(launch.ready_path, math.ceil(start_timeout_s(plan) / PROBE_PERIOD_S), PROBE_PERIOD_S),
        "readinessProbe": _probe(launch.ready_path, 3, 5),
        "livenessProbe": _probe(launch.health_path, 6, PROBE_PERIOD_S),
    }


def container(plan: DeploymentPlan, image: str | None) -> dict[str, Any]:
    assert plan.chosen is not None
    resources = replica_resources(plan)
    launch = engine_launch(plan)
    env: list[dict[str, Any]] = []
    if launch.api_key_env is not None:
        env.append({"name": launch.api_key_env,
                    "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": API_KEY_SECRET_KEY}}})
    env += [{"name": name, "value": value} for name, value in launch.env]
    # The same entrypoint and arguments as the unit's `docker run` (vLLM: the image's `vllm serve`).
    command = {"command": [launch.entrypoint]} if launch.entrypoint is not None else {}
    return {
        "name": CONTAINER,
        "image": launch.image_or(image),
        **command,
        "args": list(launch.args),
        "ports": [{"name": K8S_VLLM_PORT_NAME, "containerPort": launch.port, "protocol": "TCP"}],
        "env": env,
        # requests = limits: Guaranteed QoS, so the kubelet evicts a GPU replica last under node pressure.
        "resources": {"requests": dict(resources),
                      "limits": {**resources, GPU_RESOURCE: str(plan.chosen.config.tp)}},
        "volumeMounts": [
            {"name": "config", "mountPath": config_dir(launch), "readOnly": True},
            {"name": "models", "mountPath": CONTAINER_MODELS},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        **probes(plan),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},  # native sleep: no shell needed
        # Not readOnlyRootFilesystem (vLLM and torch.compile write caches under ~/.cache) nor runAsNonRoot
        # (the upstream image runs as root and the model cache is root's on the host).
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def volumes(plan: DeploymentPlan) -> list[dict[str, Any]]:
    name = plan.deployment.name
    return [
        {"name": "config", "configMap": {"name": workload_name(name)}},
        # The node's model cache, as on the EC2 hosts: a restarted or rescheduled replica on the same node
        # reuses the downloaded weights instead of pulling tens of GiB again (the node's root volume is sized
        # from the largest model on it, infra/provision/aws/gpu.py root_volume_gib).
        {"name": "models", "hostPath": {"path": MODEL_CACHE, "type": "DirectoryOrCreate"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_mib(plan)}Mi"}},
    ]


def _container_models_path(host_path: str) -> str:
    return CONTAINER_MODELS + host_path.removeprefix(MODEL_CACHE)


def model_cache_script(plan: DeploymentPlan) -> str:
    """Create the Hugging Face cache, sync the profile's S3 weights and adapters (as cloud-init's
    sync-weights.sh does on EC2; no --delete: the node's cache is shared) and hand the cache to the vLLM
    image's user. A hostPath created by the kubelet is root's 0755, which UID 10001 cannot write into."""
    lines = ["set -eu", f"mkdir -p {CONTAINER_HF_HOME}"]
    for sync in s3_syncs(plan.profile):
        target = _container_models_path(sync.target)
        lines += [f"mkdir -p {target}",
                  f"aws s3 sync {sync.uri_arg} {target} --only-show-errors --no-progress",
                  f"[ -f {target}/{sync.marker} ] || "
                  f"{{ echo \"gpufleet: FATAL: no {sync.marker} in \"{sync.uri_arg} >&2; exit 1; }}"]
    lines.append(f"chown -R {VLLM_UID}:{VLLM_UID} {CONTAINER_MODELS}")
    return "\n".join(lines) + "\n"


def model_cache_container(plan: DeploymentPlan, region: str) -> dict[str, Any]:
    return {
        "name": WEIGHTS_CONTAINER,
        "image": AWS_CLI_IMAGE,
        "command": ["sh", "-c", model_cache_script(plan)],
        "env": [{"name": "AWS_REGION", "value": region}],
        "volumeMounts": [{"name": "models", "mountPath": CONTAINER_MODELS}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        # Root with only what it needs: chown (CHOWN), write into the vLLM user's directories
        # (DAC_OVERRIDE) and set their times (FOWNER: `aws s3 sync` sets modification times).
        "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]}},
    }


def _spread(key: str, deployment: str) -> dict[str, Any]:
    # ScheduleAnyway for both keys: the plan packs several replicas per machine (gpu_count // tp slots) and
    # nothing adds nodes on demand, so a hard spread would leave replicas Pending on a node group at its size.
    return {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": pod_labels(deployment)}}


def pod_spec(plan: DeploymentPlan, image: str | None, region: str) -> dict[str, Any]:
    name = plan.deployment.name
    return {
        "nodeSelector": node_selector(plan),
        "tolerations": [{"key": GPU_TAINT_KEY, "operator": "Equal", "value": GPU_TAINT_VALUE,
                         "effect": "NoSchedule"}],
        "topologySpreadConstraints": [_spread("topology.kubernetes.io/zone", name),
                                      _spread("kubernetes.io/hostname", name)],
        "enableServiceLinks": False,  # VLLM_* service variables would be read as vLLM settings
        # SIGTERM makes vLLM drain in-flight streams (the unit's `docker stop --time`), after the preStop sleep.
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + STOP_GRACE_S,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        # Its own account: EKS Pod Identity gives exactly this deployment's pods the read of its S3 weights.
        "serviceAccountName": workload_name(name),
        "automountServiceAccountToken": False,  # vLLM never calls the Kubernetes API
        "initContainers": [model_cache_container(plan, region)],
        "containers": [container(plan, image)],
        "volumes": volumes(plan),
    }


def deployment(plan: DeploymentPlan, region: str, image: str | None = None) -> dict[str, Any]:
    assert plan.chosen is not None
    name = plan.deployment.name
    launch = engine_launch(plan)
    annotation = ("gpufleet.dev/vllm-config-sha256" if launch.engine.name == "vllm"
                  else "gpufleet.dev/engine-config-sha256")
    replicas = {} if autoscaled(plan) else {"replicas": plan.chosen.replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name),
        "spec": {
            # No `replicas`: KEDA's HPA owns the count (minReplicaCount = the plan's replicas). A count here
            # would be re-applied on every `pulumi up` and fight the autoscaler (Kubernetes docs,
            # "Horizontal Pod Autoscaling: migrating Deployments to horizontal autoscaling").
            **replicas,
            "selector": {"matchLabels": pod_labels(name)},
            # Surge one replica and remove an old one only once the new one serves: capacity never drops.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            # The default 600 s would mark a rollout failed while a large model is still loading.
            "progressDeadlineSeconds": start_timeout_s(plan) + IMAGE_PULL_S,
            "template": {
                # A changed vLLM config changes the template, so the replicas roll (a ConfigMap edit alone
                # would not restart them).
                "metadata": {"labels": {**pod_labels(name), **PART_OF},
                             "annotations": {annotation: config_checksum(launch)}},
                "spec": pod_spec(plan, image, region),
            },
        },
    }


def disruption_budget(plan: DeploymentPlan) -> dict[str, Any]:
    """maxUnavailable 1 for either redundancy: n+1 plans one spare replica, so a drain keeps the planned
    capacity; with redundancy none the owner accepted the dip, and minAvailable = replicas would block node
    upgrades for ever. AlwaysAllow: a replica that is not ready (crash loop) never blocks a drain."""
    name = plan.deployment.name
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pod_labels(name)},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def waiting_metric(plan: DeploymentPlan) -> EngineMetric | None:
    """The engine's waiting-requests gauge (what KEDA scales on); None where the engine has none (Ollama)."""
    return plan.engine.metrics.signals.get("requests_waiting")


def autoscaled(plan: DeploymentPlan) -> bool:
    return waiting_metric(plan) is not None


def queue_query(plan: DeploymentPlan) -> str:
    """Waiting requests of the deployment, with the job and deployment labels the ServiceMonitor sets."""
    metric = waiting_metric(plan)
    assert metric is not None
    selector = f'job="{ENGINE_JOB}",{DEPLOYMENT_LABEL}="{plan.deployment.name}"'
    return f"sum({metric.sample()}{{{selector}}})"


def max_replicas(plan: DeploymentPlan) -> int:
    assert plan.chosen is not None
    return max(plan.deployment.replicas.max, plan.chosen.replicas)


def scaled_object(plan: DeploymentPlan) -> dict[str, Any]:
    assert plan.chosen is not None
    name = plan.deployment.name
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload_name(name)},
            "minReplicaCount": plan.chosen.replicas,
            "maxReplicaCount": max_replicas(plan),
            "pollingInterval": SCALE_POLLING_S,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                # A removed replica takes its start-up budget to come back: do not give it up on a lull
                # shorter than that.
                "stabilizationWindowSeconds": min(start_timeout_s(plan), HPA_MAX_STABILIZATION_S)}}}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                # KEDA trigger metadata values are strings.
                "metadata": {"serverAddress": PROMETHEUS_URL, "query": queue_query(plan),
                             "threshold": str(WAITING_PER_REPLICA)},
            }],
        },
    }


def service_account(plan: DeploymentPlan) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(plan.deployment.name),
            "automountServiceAccountToken": False}


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": K8S_NAMESPACE, "labels": PART_OF}}


def workload_objects(plan: DeploymentPlan, region: str, image: str | None = None) -> list[dict[str, Any]]:
    """One deployment's objects in apply order. Engines without a waiting-requests gauge (Ollama) get no
    ScaledObject: the Deployment then holds the plan's replica count itself."""
    objects = [service_account(plan), config_map(plan), service(plan), deployment(plan, region, image),
               disruption_budget(plan)]
    return [*objects, scaled_object(plan)] if autoscaled(plan) else objects


def render_k8s_workloads(plan: FleetPlan, image: str | None = None) -> list[Artifact]:
    """``image``: None in the render (each engine's pinned image); at deploy time the vLLM image the program
    pushed (used by vLLM deployments)."""
    if plan.spec.target != "eks":
        return []
    assert plan.spec.region is not None  # validate: an eks stack has a region
    artifacts = [Artifact(NAMESPACE_PATH, "k8s-manifest", None, k8s_documents([namespace()], plan.stack))]
    for d in plan.deployments:
        assert d.chosen is not None  # render runs on feasible plans only
        name = d.deployment.name
        artifacts.append(Artifact(f"{WORKLOADS_DIR}/{name}.yaml", "k8s-manifest", name,
                                  k8s_documents(workload_objects(d, plan.spec.region, image), plan.stack)))
    return artifacts

"""Rendered Kubernetes objects applied through a Kubernetes provider (the eks target).

The objects are the render's (``k8s/workloads/*.yaml``: vLLM workloads; ``k8s/monitoring/*.yaml``:
ServiceMonitors, PodMonitors, PrometheusRule, dashboard ConfigMaps), parsed from the artifacts and registered
one typed resource each (a lookup table by apiVersion/kind), so ``pulumi preview`` shows each object and the
tests see each one under mocks (``yaml.ConfigGroup`` would hide them behind a provider call).

- Custom resources wait for the chart that installs their CRD (KEDA's ScaledObject, kube-prometheus-stack's
  monitoring.coreos.com kinds); everything namespaced waits for its Namespace.
- The API key's Secret (``gpufleet-api-key``, read by the vLLM pods) is created from the stack's secret
  store at deploy time (:data:`SECRET_READERS`), as a Pulumi secret: never in the render, never in plain
  text in the state.
- The containers run the images the program built, by container name (``images``: the vLLM container, the
  load balancer's containers), as digest-pinned references.
- Deploy-time Secrets, each a Pulumi secret read from the stack's secret store on the deploying machine:
  the API key (``gpufleet-api-key``, read by the vLLM pods), its SHA-256 for the LB's nginx map
  (:data:`~infra.render.k8s_lb.KEY_HASHES_SECRET`), and kube-prometheus-stack's Alertmanager configuration
  (the rendered alertmanager.yml) with the receivers' secret files.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra.provision.aws.eks import ALERTMANAGER_SECRET
from infra.provision.secrets import pulumi_config_secret
from infra.render.alertmanager import CONFIG_PATH as ALERTMANAGER_CONFIG
from infra.render.alertmanager import K8S_RECEIVERS_SECRET, secret_files
from infra.render.artifacts import Artifact
from infra.render.k8s_lb import KEY_HASHES_KEY, KEY_HASHES_SECRET
from infra.render.k8s_workloads import API_KEY_SECRET, API_KEY_SECRET_KEY
from infra.render.telemetry import K8S_MONITORING_NAMESPACE, K8S_NAMESPACE
from infra.spec.secrets import SecretRef
from infra.spec.stack import StackSpec

Builder = Callable[..., pulumi.CustomResource]

# Typed resources for the core kinds the render writes; anything else is a custom resource.
BUILDERS: dict[tuple[str, str], Builder] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
}
# Which chart installs a custom resource's CRD (keys of infra/provision/aws/eks.py CHARTS).
CRD_CHARTS = {"keda.sh": "keda", "monitoring.coreos.com": "kube-prometheus-stack"}


def _aws_secret(ref: SecretRef) -> pulumi.Output[str]:
    return aws.secretsmanager.get_secret_version_output(secret_id=ref.name).secret_string


def _ssm_parameter(ref: SecretRef) -> pulumi.Output[str]:
    return aws.ssm.get_parameter_output(name=ref.name, with_decryption=True).value


def _pulumi_config(ref: SecretRef) -> pulumi.Output[str]:
    return pulumi_config_secret(ref.name)


# Where secrets can be read at deploy time (the machine running `pulumi up`).
SECRET_READERS: dict[str, Callable[[SecretRef], pulumi.Output[str]]] = {
    "aws-secrets-manager": _aws_secret,
    "aws-ssm-parameter": _ssm_parameter,
    "pulumi-config": _pulumi_config,
}


def read_secret(ref: SecretRef) -> pulumi.Output[str]:
    reader = SECRET_READERS.get(ref.source)
    if reader is None:
        raise ValueError(f"the eks target reads secrets from {', '.join(SECRET_READERS)}, not {ref.source}")
    return reader(ref)


def documents(artifacts: list[Artifact]) -> list[dict[str, Any]]:
    """Every Kubernetes object of the render, Namespace first, then in the artifacts' (apply) order."""
    docs = [doc for a in sorted(artifacts) if a.kind == "k8s-manifest"
            for doc in yaml.safe_load_all(a.content) if doc]
    return sorted(docs, key=lambda d: d["kind"] != "Namespace")  # stable: keeps the order otherwise


def _with_images(containers: list[dict[str, Any]], images: Mapping[str, pulumi.Input[str]]) -> list[dict[str, Any]]:
    return [{**c, "image": images[c["name"]]} if c["name"] in images else c for c in containers]


def with_images(doc: dict[str, Any], images: Mapping[str, pulumi.Input[str]]) -> dict[str, Any]:
    """A Deployment whose containers (and init containers) named in ``images`` run those images."""
    if doc["kind"] != "Deployment" or not images:
        return doc
    pod = doc["spec"]["template"]["spec"]
    pod = {**pod, "containers": _with_images(pod["containers"], images)}
    if "initContainers" in pod:
        pod["initContainers"] = _with_images(pod["initContainers"], images)
    return {**doc, "spec": {**doc["spec"], "template": {**doc["spec"]["template"], "spec": pod}}}


def key_hashes(api_key: str) -> str:
    """The nginx map include of accepted keys (infra/render/nginx.py): ``<sha256 hex> 1;``."""
    return f"{hashlib.sha256(api_key.encode()).hexdigest()} 1;\n"


def snake_case(field: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", field).lower()


def resource_name(doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    return "-".join(p for p in (doc["kind"].lower(), meta.get("namespace", ""), meta["name"]) if p)


class KubernetesObjects(pulumi.ComponentResource):
    """``gpufleet:k8s:Objects``: the rendered objects and the deploy-time Secrets, on ``provider``."""

    def __init__(self, name: str, *, artifacts: list[Artifact], spec: StackSpec, provider: k8s.Provider,
                 charts: Mapping[str, pulumi.Resource], images: Mapping[str, pulumi.Input[str]] | None = None,
                 depends_on: Sequence[pulumi.Resource] = (), opts: pulumi.ResourceOptions | None = None) -> None:
        """``depends_on``: what every object waits for (e.g. the platform's Pod Identity associations)."""
        super().__init__("gpufleet:k8s:Objects", name, None, opts)
        self._name, self._provider = name, provider
        self.objects: dict[str, pulumi.CustomResource] = {}
        namespaces: list[pulumi.Resource] = []
        for rendered in documents(artifacts):
            doc = with_images(rendered, images or {})
            group = doc["apiVersion"].split("/")[0]
            depends: list[pulumi.Resource] = [*namespaces, *depends_on]
            if group in CRD_CHARTS:
                depends.append(charts[CRD_CHARTS[group]])
            options = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=depends)
            resource = self._object(f"{name}-{resource_name(doc)}", doc, options)
            if doc["kind"] == "Namespace":
                namespaces.append(resource)
            self.objects[resource_name(doc)] = resource
        api_key = read_secret(spec.api_key)
        self.api_key_secret = self._secret("api-key", API_KEY_SECRET, K8S_NAMESPACE,
                                           {API_KEY_SECRET_KEY: api_key}, namespaces)
        self.key_hashes_secret = self._secret("api-key-hashes", KEY_HASHES_SECRET, K8S_NAMESPACE,
                                              {KEY_HASHES_KEY: api_key.apply(key_hashes)}, namespaces)
        # The monitoring namespace is the chart's (create_namespace): these wait for its release.
        prometheus = [charts[CRD_CHARTS["monitoring.coreos.com"]]]
        (config,) = [a.content for a in artifacts if a.path == ALERTMANAGER_CONFIG]
        self._secret("alertmanager", ALERTMANAGER_SECRET, K8S_MONITORING_NAMESPACE,
                     {"alertmanager.yaml": config}, prometheus)
        receivers = {posixpath.basename(path): read_secret(ref) for path, ref in secret_files(spec)}
        self._secret("alertmanager-receivers", K8S_RECEIVERS_SECRET, K8S_MONITORING_NAMESPACE, receivers,
                     prometheus)
        self.register_outputs({"objects": sorted(self.objects)})

    def _secret(self, key: str, name: str, namespace: str, data: Mapping[str, pulumi.Input[str]],
                depends_on: list[pulumi.Resource]) -> k8s.core.v1.Secret:
        # A Pulumi secret whatever the store's reader returns: never in plain text in the state.
        return k8s.core.v1.Secret(
            f"{self._name}-{key}",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace),
            type="Opaque",
            string_data={k: pulumi.Output.secret(v) for k, v in data.items()},
            opts=pulumi.ResourceOptions(parent=self, provider=self._provider, depends_on=depends_on))

    @staticmethod
    def _object(name: str, doc: dict[str, Any], options: pulumi.ResourceOptions) -> pulumi.CustomResource:
        builder = BUILDERS.get((doc["apiVersion"], doc["kind"]))
        fields = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
        if builder is None:
            return k8s.apiextensions.CustomResource(name, api_version=doc["apiVersion"], kind=doc["kind"],
                                                    opts=options, **fields)
        # A typed resource's top-level fields are keyword arguments in snake case (roleRef -> role_ref).
        return builder(name, opts=options, **{snake_case(k): v for k, v in fields.items()})

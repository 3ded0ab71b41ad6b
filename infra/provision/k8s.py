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
- The vLLM containers run the image the program built when one is given (its digest-pinned reference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra.provision.secrets import pulumi_config_secret
from infra.render.artifacts import Artifact
from infra.render.k8s_workloads import API_KEY_SECRET, API_KEY_SECRET_KEY, CONTAINER
from infra.render.telemetry import K8S_NAMESPACE
from infra.spec.secrets import SecretRef

Builder = Callable[..., pulumi.CustomResource]

# Typed resources for the core kinds the render writes; anything else is a custom resource.
BUILDERS: dict[tuple[str, str], Builder] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
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


# Where the API key can be read at deploy time (the machine running `pulumi up`); validate refuses others.
SECRET_READERS: dict[str, Callable[[SecretRef], pulumi.Output[str]]] = {
    "aws-secrets-manager": _aws_secret,
    "aws-ssm-parameter": _ssm_parameter,
    "pulumi-config": _pulumi_config,
}


def documents(artifacts: list[Artifact]) -> list[dict[str, Any]]:
    """Every Kubernetes object of the render, Namespace first, then in the artifacts' (apply) order."""
    docs = [doc for a in sorted(artifacts) if a.kind == "k8s-manifest"
            for doc in yaml.safe_load_all(a.content) if doc]
    return sorted(docs, key=lambda d: d["kind"] != "Namespace")  # stable: keeps the order otherwise


def with_image(doc: dict[str, Any], image: pulumi.Input[str]) -> dict[str, Any]:
    """A Deployment whose vLLM container runs ``image``."""
    spec = doc["spec"]["template"]["spec"]
    containers = [{**c, "image": image} if c["name"] == CONTAINER else c for c in spec["containers"]]
    return {**doc, "spec": {**doc["spec"], "template": {**doc["spec"]["template"],
                                                       "spec": {**spec, "containers": containers}}}}


def resource_name(doc: dict[str, Any]) -> str:
    meta = doc["metadata"]
    return "-".join(p for p in (doc["kind"].lower(), meta.get("namespace", ""), meta["name"]) if p)


class KubernetesObjects(pulumi.ComponentResource):
    """``gpufleet:k8s:Objects``: the rendered objects and the API key's Secret, on ``provider``."""

    def __init__(self, name: str, *, artifacts: list[Artifact], api_key: SecretRef,
                 provider: k8s.Provider, charts: dict[str, pulumi.Resource],
                 vllm_image: pulumi.Input[str] | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:k8s:Objects", name, None, opts)
        self.objects: dict[str, pulumi.CustomResource] = {}
        namespaces: list[pulumi.Resource] = []
        for rendered in documents(artifacts):
            built_image = rendered["kind"] == "Deployment" and vllm_image is not None
            doc = with_image(rendered, vllm_image) if built_image and vllm_image is not None else rendered
            group = doc["apiVersion"].split("/")[0]
            depends: list[pulumi.Resource] = list(namespaces)
            if group in CRD_CHARTS:
                depends.append(charts[CRD_CHARTS[group]])
            options = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=depends)
            resource = self._object(f"{name}-{resource_name(doc)}", doc, options)
            if doc["kind"] == "Namespace":
                namespaces.append(resource)
            self.objects[resource_name(doc)] = resource
        reader = SECRET_READERS.get(api_key.source)
        if reader is None:
            raise ValueError(f"the eks target reads the API key from {', '.join(SECRET_READERS)}, not "
                             f"{api_key.source}")
        self.api_key_secret = k8s.core.v1.Secret(
            f"{name}-api-key",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=API_KEY_SECRET, namespace=K8S_NAMESPACE),
            type="Opaque",
            # A Pulumi secret whatever the store's reader returns: never in plain text in the state.
            string_data={API_KEY_SECRET_KEY: reader(api_key).apply(pulumi.Output.secret)},
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=namespaces))
        self.register_outputs({"objects": sorted(self.objects)})

    @staticmethod
    def _object(name: str, doc: dict[str, Any], options: pulumi.ResourceOptions) -> pulumi.CustomResource:
        builder = BUILDERS.get((doc["apiVersion"], doc["kind"]))
        fields = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
        if builder is None:
            return k8s.apiextensions.CustomResource(name, api_version=doc["apiVersion"], kind=doc["kind"],
                                                    opts=options, **fields)
        return builder(name, opts=options, **fields)

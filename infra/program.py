"""What ``pulumi up`` runs, kept out of ``__main__`` so tests can call it under Pulumi mocks.

spec -> plan -> render -> the target's ComponentResources, with the same code as ``gpufleet validate``,
``plan`` and ``render`` (a pull-request review and a deploy judge the same files). Exports: the target,
the endpoint URL, the dashboards URL and the plan summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.plan.optimize import FleetPlan, plan_stack
from infra.plan.serialize import fleet_json
from infra.provision.aws.bundle import write_bundle
from infra.provision.aws.capacity import reservation_problems
from infra.provision.aws.ec2 import Ec2Fleet
from infra.provision.aws.eks import EksPlatform
from infra.provision.aws.tags import cost_tags
from infra.provision.images import Images
from infra.provision.k8s import KubernetesObjects
from infra.provision.onprem import OnpremFleet
from infra.render.artifacts import Artifact, write_artifacts
from infra.render.dashboards.fleet import fleet_uid
from infra.render.k8s_lb import LB_IMAGE_CONTAINERS
from infra.render.k8s_lb import NAME as LB_NAME
from infra.render.k8s_workloads import CONTAINER as VLLM_CONTAINER
from infra.render.stack import NotRenderable, render_fleet
from infra.render.telemetry import K8S_MONITORING_NAMESPACE, K8S_NAMESPACE, K8S_PROMETHEUS_RELEASE
from infra.render.vllm import VLLM_VERSION
from infra.spec.issues import SpecError
from infra.spec.load import LoadedStack, Project, load_stack

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# The plan --json keys the stack exports (same names, same rounding).
SUMMARY_KEYS = ("gpu", "tensor_parallel_size", "quantization", "instance_type", "market", "replicas", "machines",
                "monthly_usd", "usd_per_1m_input_tokens", "usd_per_1m_output_tokens")


def plan_summary(fleet: FleetPlan) -> dict[str, Any]:
    """The chosen configuration per deployment and the fleet's monthly cost, as `plan --json` has them."""
    doc = fleet_json(fleet)
    deployments = {}
    for d in doc["deployments"]:
        chosen = d["chosen"]  # render_fleet refused infeasible plans
        deployments[d["name"]] = {"model": d["served_model_name"], **{k: chosen[k] for k in SUMMARY_KEYS}}
    return {"monthly_usd": doc["monthly_usd"], "budget_usd": doc["budget_usd"], "deployments": deployments}


def _onprem(fleet: FleetPlan, artifacts: list[Artifact], project: Project, render_dir: str) -> None:
    site = fleet.spec.onprem
    assert site is not None
    gpu_vars = None
    if site.image_delivery == "archive":
        images = Images(fleet.stack, stack=fleet.stack, engine_version=VLLM_VERSION, mode="archive",
                        archive_dir=project.root / render_dir / "images", only=["vllm"])
        gpu_vars = images.refs["vllm"].apply(lambda ref: {"gpufleet_vllm_image": ref,
                                                          "gpufleet_vllm_image_archive": images.archives["vllm"]})
    OnpremFleet(fleet.stack, render_dir=render_dir, artifacts=artifacts, vars_root=project.root,
                vars_files=list(site.vars_files), gpu_vars=gpu_vars)
    host = fleet.spec.network.domain or site.load_balancers[0].address
    scheme = "http" if fleet.spec.network.tls.source == "none" else "https"
    pulumi.export("endpoint", f"{scheme}://{host}/v1")
    pulumi.export("dashboards", f"http://{site.monitoring.address}:3000/dashboards/f/gpufleet")


def bundle_path(project: Project, render_dir: str) -> Path:
    """Beside the render directory, not in it: the bundle holds the render."""
    out = project.root / render_dir
    return out.with_name(f"{out.name}.bundle.tar.gz")


def _aws_ec2(fleet: FleetPlan, artifacts: list[Artifact], project: Project, render_dir: str) -> None:
    # The GPU hosts run the image built from images/vllm (the LB hosts run Debian's nginx).
    images = Images(fleet.stack, stack=fleet.stack, engine_version=VLLM_VERSION, mode="ecr", only=["vllm"],
                    tags=cost_tags(fleet.stack, fleet.spec.owner))
    bundle = write_bundle(artifacts, bundle_path(project, render_dir))
    ec2 = Ec2Fleet(fleet.stack, fleet=fleet, artifacts=artifacts, bundle=bundle, vllm_image=images.refs["vllm"])
    pulumi.export("endpoint", ec2.endpoint)
    pulumi.export("loadBalancerDnsName", ec2.load_balancer.nlb.dns_name)
    pulumi.export("dashboards", ec2.dashboards)
    # Grafana has no ingress: this command forwards it to localhost through SSM Session Manager.
    pulumi.export("dashboardsTunnel", ec2.monitoring.ssm_tunnel)
    pulumi.export("configBundle", bundle.sha256)


# Grafana has no ingress on eks either: forwarded to localhost with kubectl (its chart Service listens on 80).
GRAFANA_TUNNEL = (f"kubectl -n {K8S_MONITORING_NAMESPACE} port-forward svc/{K8S_PROMETHEUS_RELEASE}-grafana "
                  "3000:80")


def load_balancer_hostname(status: Any) -> str | None:
    """The NLB's DNS name from the LB Service's status (None until AWS has created it)."""
    ingress = (status.load_balancer.ingress if status and status.load_balancer else None) or []
    return ingress[0].hostname if ingress else None


def _eks(fleet: FleetPlan, artifacts: list[Artifact], project: Project, render_dir: str) -> None:
    # The vLLM pods run the image built from images/vllm; the LB pod's containers the one from images/lb.
    images = Images(fleet.stack, stack=fleet.stack, engine_version=VLLM_VERSION, mode="ecr",
                    tags=cost_tags(fleet.stack, fleet.spec.owner))
    platform = EksPlatform(fleet.stack, fleet=fleet)
    objects = KubernetesObjects(
        fleet.stack, artifacts=artifacts, spec=fleet.spec, provider=platform.provider, charts=platform.releases,
        images={VLLM_CONTAINER: images.refs["vllm"], **dict.fromkeys(LB_IMAGE_CONTAINERS, images.refs["lb"])},
        depends_on=platform.workload_dependencies)
    service = objects.objects[f"service-{K8S_NAMESPACE}-{LB_NAME}"]
    assert isinstance(service, k8s.core.v1.Service)
    hostname = service.status.apply(load_balancer_hostname)
    scheme = "http" if fleet.spec.network.tls.source == "none" else "https"
    domain = fleet.spec.network.domain
    # With a domain, its DNS record (a CNAME to loadBalancerDnsName) is the team's: the URL clients use.
    pulumi.export("endpoint", f"{scheme}://{domain}/v1" if domain else
                  hostname.apply(lambda h: f"{scheme}://{h}/v1" if h else None))
    pulumi.export("loadBalancerDnsName", hostname)
    if platform.cluster is not None:  # `aws eks update-kubeconfig --name` (Pulumi suffixes the name)
        pulumi.export("clusterName", platform.cluster.name)
    # The chart's dashboard sidecar files the rendered dashboards under General: link the fleet overview.
    pulumi.export("dashboards", f"http://localhost:3000/d/{fleet_uid(fleet.stack)}")
    pulumi.export("dashboardsTunnel", GRAFANA_TUNNEL)


# One builder per target.
TARGETS: dict[str, Callable[[FleetPlan, list[Artifact], Project, str], None]] = {
    "onprem": _onprem, "aws-ec2": _aws_ec2, "eks": _eks}


def run(stack: str, project: Project | None = None, render_dir: str | None = None) -> LoadedStack:
    """``render_dir``: where the render is written, relative to the project root or absolute
    (default ``out/<stack>``, where ``gpufleet render -s STACK -o out/STACK`` writes it too)."""
    project = project or Project(PROJECT_ROOT)
    try:
        loaded = load_stack(project, stack)
    except SpecError as exc:
        # RunError prints the message without a Python traceback in `pulumi up`.
        raise pulumi.RunError(f"stack '{stack}' is invalid:\n{exc}") from None
    for warning in loaded.warnings:
        pulumi.log.warn(warning.format())
    spec = loaded.spec
    pulumi.export("target", spec.target)
    fleet = plan_stack(loaded)
    try:
        artifacts = render_fleet(fleet)
    except NotRenderable as exc:
        raise pulumi.RunError(f"stack '{stack}' cannot be deployed as planned: {exc}") from None
    pulumi.export("plan", plan_summary(fleet))
    build = TARGETS.get(spec.target)
    if build is None:
        raise pulumi.RunError(f"stack '{stack}': gpufleet cannot provision target '{spec.target}' yet "
                               f"(supported: {', '.join(sorted(TARGETS))}); `gpufleet render -s {stack}` "
                               "writes its configs")
    problems = reservation_problems(fleet) if spec.target != "onprem" else []
    if problems:
        raise pulumi.RunError(f"stack '{stack}' cannot be deployed as planned:\n" + "\n".join(problems))
    out = render_dir or f"out/{stack}"
    write_artifacts(artifacts, project.root / out)
    build(fleet, artifacts, project, out)
    return loaded

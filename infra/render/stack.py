"""Render every artifact of a planned stack."""

from __future__ import annotations

from infra.plan.optimize import FleetPlan
from infra.render.alertmanager import render_alertmanager
from infra.render.ansible import NotDeployableOnprem, render_ansible
from infra.render.artifacts import Artifact
from infra.render.cloudinit import render_cloudinit
from infra.render.compose import render_compose
from infra.render.dashboards import render_dashboards
from infra.render.ec2_hosts import render_ec2_hosts
from infra.render.engines import render_engines
from infra.render.k8s_lb import render_k8s_lb
from infra.render.k8s_workloads import render_k8s_workloads
from infra.render.mtail import render_mtail
from infra.render.nginx import render_nginx
from infra.render.placement import NotPlaceable
from infra.render.prometheus_config import render_prometheus_config
from infra.render.prometheus_rules import render_prometheus_rules
from infra.render.systemd import render_systemd


class NotRenderable(Exception):
    """The plan is infeasible: there is nothing consistent to render."""


def render_fleet(plan: FleetPlan) -> list[Artifact]:
    problems = plan.problems()
    if problems:
        raise NotRenderable("; ".join(problems))
    artifacts: list[Artifact] = []
    artifacts.extend(render_engines(plan))
    artifacts.extend(render_nginx(plan))
    artifacts.extend(render_systemd(plan))
    artifacts.extend(render_compose(plan))
    artifacts.extend(render_cloudinit(plan))
    artifacts.extend(render_ec2_hosts(plan))
    artifacts.extend(render_k8s_workloads(plan))
    artifacts.extend(render_k8s_lb(plan))
    artifacts.extend(render_prometheus_rules(plan))
    artifacts.extend(render_prometheus_config(plan))
    artifacts.extend(render_mtail(plan))
    artifacts.extend(render_alertmanager(plan))
    artifacts.extend(render_dashboards(plan))
    try:
        artifacts.extend(render_ansible(plan))
    except (NotPlaceable, NotDeployableOnprem) as exc:
        raise NotRenderable(str(exc)) from exc
    return sorted(artifacts)

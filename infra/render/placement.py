"""Where each vLLM replica of an on-prem stack runs: which GPU server, which GPUs, which port.

Cloud targets give every replica group its own machines (an Auto Scaling group or a node group per
deployment), so the per-deployment slot drop-ins of infra/render/systemd.py can number GPUs from 0. On-prem
the servers are fixed and deployments share them, so the replicas are placed explicitly: first-fit
decreasing by tensor-parallel size over the servers in spec order, each replica on ``tp`` GPUs of one
server (vLLM's tensor parallelism stays inside a server), aligned to a multiple of ``tp`` so that a
4-GPU replica uses one half of an 8-GPU NVSwitch board. Port = 8000 + the replica's first GPU id, unique
on its server whatever the deployments.

The result feeds the Ansible host vars (infra/render/ansible.py), the LB's upstream files and the
Prometheus file_sd targets, so all three agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.catalog import Catalog
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.hostlayout import VLLM_PORT
from infra.spec.stack import OnpremGpuServer


class NotPlaceable(Exception):
    """The planned replicas do not fit the site's servers: the message says what is missing."""


@dataclass(frozen=True, order=True)
class Placement:
    deployment: str
    slot: int
    """The replica's number among its deployment's replicas on this server (the systemd instance name)."""
    server: str
    address: str
    gpus: tuple[int, ...]

    @property
    def port(self) -> int:
        return VLLM_PORT + self.gpus[0]

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def unit(self) -> str:
        return f"gpufleet-vllm-{self.deployment}@{self.slot}.service"


def _free_block(free: list[bool], tp: int) -> tuple[int, ...] | None:
    for start in range(0, len(free) - tp + 1, tp):
        if all(free[start:start + tp]):
            return tuple(range(start, start + tp))
    return None


def place_onprem(plan: FleetPlan, catalog: Catalog) -> list[Placement]:
    """Every planned replica on a server; NotPlaceable when the servers' GPUs run out."""
    site = plan.spec.onprem
    if site is None:
        raise ValueError(f"stack {plan.stack} is not an on-prem stack")
    servers: list[OnpremGpuServer] = list(site.gpu_servers)
    free = {s.name: [True] * catalog.instances[s.server_type].gpu_count for s in servers}
    placed: list[Placement] = []
    wanted: list[tuple[DeploymentPlan, int]] = []
    for d in plan.deployments:
        assert d.chosen is not None
        wanted += [(d, d.chosen.config.tp)] * d.chosen.replicas
    # Largest replicas first (first-fit decreasing); equal sizes keep the spec's deployment order.
    for d, tp in sorted(wanted, key=lambda item: -item[1]):
        name = d.deployment.name
        for server in servers:
            block = _free_block(free[server.name], tp)
            if block is not None:
                for gpu in block:
                    free[server.name][gpu] = False
                slot = sum(1 for p in placed if p.deployment == name and p.server == server.name)
                placed.append(Placement(name, slot, server.name, server.address, block))
                break
        else:
            left = sum(sum(f) for f in free.values())
            raise NotPlaceable(f"deployment '{name}': no server has {tp} free GPUs in a row for another replica "
                               f"({left} GPUs free across the site); add a server or lower replicas")
    return sorted(placed, key=lambda p: (p.server, p.gpus))

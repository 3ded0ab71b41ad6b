"""What the chosen configuration would cost under other terms, and what naive sizing would have bought.

- **spot** and **capacity blocks**: the chosen machines at the catalog's spot mid-point / Capacity Block
  price for the stack's region (infra/catalog/data/instances.yaml, with their sources). The planner keeps
  n+1 deployments off spot (one reclaim can take several replicas) and Capacity Blocks must be bought for a
  fixed window: the what-if says so instead of pretending the saving is free.
- **on-prem amortised** (cloud stacks): the deployment planned on the GPU servers of an on-prem stack of the
  same project (its ``onprem.gpuServers`` and ``pricing.onprem``, e.g. the 8×A800 servers of
  ``onprem-a800``), with the same planner: the amortised $/month against the cloud's.
- **cloud** (on-prem stacks), the other side of the same comparison: the deployment planned on every GPU the
  catalog rents on AWS, under a cloud stack's region and pricing (its markets), with the same planner.
  No reference stack, no figure (none is invented).
- **naive sizing**: one request at a time per replica, each output token reading the replica's weights from
  GPU memory once (memory bandwidth ÷ weight bytes per GPU), no batching and no prefill: the replicas and
  $ that rule of thumb buys on the chosen machines, against the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.catalog.loader import Catalog
from infra.plan.optimize import DeploymentPlan, FleetPlan, Option, fleet_cost, plan_deployment, replicas_needed
from infra.plan.pricing import FALLBACK_REGION, HOURS_PER_MONTH
from infra.spec.load import LoadedStack


@dataclass(frozen=True)
class WhatIf:
    name: str
    monthly_usd: float | None
    """None: not available (the reason is in ``note``)."""
    note: str


@dataclass(frozen=True)
class NaiveSizing:
    tokens_per_s: float
    qps_per_replica: float
    replicas: int
    machines: int
    monthly_usd: float


def _catalog_price(option: Option, fleet: FleetPlan) -> tuple[float | None, float | None]:
    """(spot mid-point, capacity-block) $/hour of the chosen instance type in the stack's region."""
    instance = option.machine.instance
    record = instance.prices.get(fleet.spec.region or FALLBACK_REGION) or instance.prices.get(FALLBACK_REGION)
    if record is None:
        return None, None
    spot = (record.spot_min + record.spot_max) / 2 if record.spot_min is not None and record.spot_max else None
    return spot, record.capacity_block


def market_what_ifs(plan: DeploymentPlan, fleet: FleetPlan) -> list[WhatIf]:
    option = plan.chosen
    assert option is not None
    if option.machine.instance.provider == "onprem":
        return []
    spot, block = _catalog_price(option, fleet)
    machines = option.machines
    found = []
    if option.machine.price.market != "spot":
        caveat = (" — not planned: n+1 deployments stay off spot (one reclaim can take several replicas)"
                  if plan.deployment.slo.redundancy == "n+1" else
                  "" if fleet.spec.pricing.spot_allowed else " — the stack does not allow spot (pricing.spotAllowed)")
        found.append(WhatIf("spot", None if spot is None else machines * spot * HOURS_PER_MONTH,
                            ("no spot price in the catalog" if spot is None else
                             f"{machines} × {option.machine.instance.name} at the catalog's spot mid-point")
                            + caveat))
    if option.machine.price.market != "capacity-block":
        found.append(WhatIf("capacity block", None if block is None else machines * block * HOURS_PER_MONTH,
                            ("no Capacity Block offer for this instance type in the catalog" if block is None else
                             f"{machines} × {option.machine.instance.name}, bought ahead for a fixed window "
                             "(capacityReservation)")))
    return found


def plan_under(plan: DeploymentPlan, reference: LoadedStack, gpus: list[str]) -> DeploymentPlan:
    """``plan``'s deployment (its traffic, SLO, limits and profile) planned under ``reference``'s terms (target,
    region, pricing, servers) on ``gpus``."""
    deployment = plan.deployment.model_copy(update={"gpus": gpus})
    profiles = {**reference.profiles, plan.deployment.model: plan.profile}
    site = LoadedStack(reference.name, reference.spec, reference.provider_config, profiles,
                       calibration=reference.calibration)
    return plan_deployment(site, deployment)


def onprem_what_if(plan: DeploymentPlan, reference: LoadedStack | None, catalog: Catalog) -> WhatIf | None:
    """The deployment planned on ``reference``'s on-prem servers at its amortised server hour."""
    if reference is None or reference.spec.onprem is None or reference.spec.pricing.onprem is None:
        return None
    gpus = sorted({catalog.instances[s.server_type].gpu for s in reference.spec.onprem.gpu_servers})
    planned = plan_under(plan, reference, gpus)
    hourly = reference.spec.pricing.onprem.hourly_usd
    if planned.chosen is None:
        return WhatIf(f"on-prem ({', '.join(gpus)})", None,
                      f"does not meet the SLO on {reference.name}'s servers: " + "; ".join(planned.hints))
    chosen = planned.chosen
    return WhatIf(f"on-prem ({chosen.config.label})", chosen.monthly_usd,
                  f"{_replicas(chosen.replicas)} on {reference.name}'s {chosen.machine.instance.name} servers at "
                  f"${hourly:,.2f}/server-hour amortised (stacks/Pulumi.{reference.name}.yaml pricing.onprem), "
                  "paid per GPU used")


def cloud_what_if(plan: DeploymentPlan, reference: LoadedStack | None, catalog: Catalog) -> WhatIf | None:
    """The deployment planned on the GPUs the catalog rents on AWS, under ``reference``'s region and pricing."""
    if reference is None or reference.spec.target == "onprem":
        return None
    gpus = sorted({i.gpu for i in catalog.instances.values() if i.provider == "aws"})
    planned = plan_under(plan, reference, gpus)
    region = reference.spec.region or FALLBACK_REGION
    terms = f"{region} prices of stacks/Pulumi.{reference.name}.yaml (its pricing and markets)"
    if planned.chosen is None:
        return WhatIf("cloud", None, f"no AWS GPU meets the SLO at the {terms}: " + "; ".join(planned.hints))
    chosen = planned.chosen
    return WhatIf(f"cloud ({chosen.label})", chosen.monthly_usd,
                  f"{_replicas(chosen.replicas)} on {chosen.machines} × {chosen.machine.instance.name} "
                  f"({chosen.machine.price.market}) at the {terms}")


def _replicas(count: int) -> str:
    return f"{count} replica" + ("" if count == 1 else "s")


def naive_sizing(plan: DeploymentPlan) -> NaiveSizing:
    option = plan.chosen
    assert option is not None
    d = plan.deployment
    gpu, memory = option.config.gpu, option.replica.memory
    tokens_per_s = gpu.memory_bandwidth_gbps * 1e9 / memory.weights  # each GPU streams its weight shard
    seconds_per_request = d.traffic.output_tokens.mean_tokens / tokens_per_s
    qps_per_replica = 1 / seconds_per_request
    replicas = replicas_needed(d, d.traffic.peak_qps, qps_per_replica)
    machines, hourly = fleet_cost(option.config, option.machine, replicas)
    return NaiveSizing(tokens_per_s, qps_per_replica, replicas, machines, hourly * HOURS_PER_MONTH)

"""Which EC2 capacity a deployment's instances launch into: the plan's market, and the stack's reservation.

- ``spot``: the launch template asks for spot instances (interruptible; the plan picks it only for
  deployments without redundancy in stacks that allow spot).
- ``capacity-block``: an EC2 Capacity Block for ML the team bought (``deployments[].capacityReservation``):
  market type ``capacity-block`` plus the reservation's id, both required by EC2 ("Use Capacity Blocks",
  EC2 User Guide: RunInstances and launch templates name ``MarketType: capacity-block`` and the
  ``CapacityReservationTarget``). Without a reservation the plan's price cannot be had: the program stops.
- ``on-demand`` with a reservation: an On-Demand Capacity Reservation, targeted by id; size it to the
  planned machines (``plan`` prints them) plus one for the instance refresh's surge.
- A reservation lives in one zone: the deployment launches in that zone's subnet only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi_aws as aws

from infra.plan.optimize import DeploymentPlan, FleetPlan


@dataclass(frozen=True)
class LaunchCapacity:
    market: aws.ec2.LaunchTemplateInstanceMarketOptionsArgs | None
    reservation: aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs | None
    zone: str | None
    """The only zone the instances may launch in (the reservation's), or None for every zone of the fleet."""


def market_of(plan: DeploymentPlan) -> str:
    assert plan.chosen is not None
    return plan.chosen.machine.price.market


def reservation_problems(fleet: FleetPlan) -> list[str]:
    """What stops the program before it creates anything: a plan priced on capacity nobody named, or a
    reservation the planned market cannot use."""
    problems = []
    for index, plan in enumerate(fleet.deployments):
        name, market = plan.deployment.name, market_of(plan)
        reservation = plan.deployment.capacity_reservation
        where = f"gpufleet:deployments[{index}].capacityReservation"
        if market == "capacity-block" and reservation is None:
            assert plan.chosen is not None
            problems.append(f"deployment '{name}' is planned on an EC2 Capacity Block "
                          f"({plan.chosen.machines} x {plan.chosen.machine.instance.name}), which must be bought "
                          f"first: `aws ec2 describe-capacity-block-offerings --instance-type "
                          f"{plan.chosen.machine.instance.name} --instance-count {plan.chosen.machines} "
                          f"--capacity-duration-hours H`, `aws ec2 purchase-capacity-block`, then set {where} "
                          "(id, zone); or set pricing.capacityBlocksAllowed: false to plan without it")
        elif market == "spot" and reservation is not None:
            problems.append(f"deployment '{name}' is planned on spot, which cannot use the capacity reservation "
                            f"{reservation.id}: remove {where}, or allow no spot (pricing.spotAllowed: false)")
    return problems


def launch_capacity(plan: DeploymentPlan) -> LaunchCapacity:
    """The launch template's market and reservation for the plan (after :func:`reservation_problems`)."""
    market, reservation = market_of(plan), plan.deployment.capacity_reservation
    options = None
    if market in ("spot", "capacity-block"):
        options = aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type=market)
    target = None
    if reservation is not None:
        target = aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
            capacity_reservation_target=aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
                capacity_reservation_id=reservation.id))
    return LaunchCapacity(options, target, reservation.zone if reservation else None)

"""The fleet optimizer (infra/plan/optimize.py) against a brute-force search written here, and its answers
when a stack cannot be served: SLO, budget, on-prem site size. Stacks are variants of the frozen fixture
project tests/spec/fixture, copied to tmp_path and edited there."""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.catalog import load_catalog
from infra.catalog.schema import Gpu, InstanceType
from infra.plan.capacity import Latency, max_rate, probe
from infra.plan.optimize import HEADROOM, FleetPlan, Option, ReplicaConfig, _Planner, plan_stack
from infra.plan.pricing import HOURS_PER_MONTH, Price, prices
from infra.plan.replica import DoesNotFit
from infra.spec.load import LoadedStack, Project, load_stack
from infra.spec.stack import Deployment
from tests import engine_profiles

catalog = load_catalog()
FIXTURE = Path(__file__).resolve().parents[1] / "spec" / "fixture"
Edit = Callable[[dict[str, Any]], None]


def stack_in(
    tmp_path: Path, stack: str, edit: Edit | None = None, profiles: dict[str, Edit] | None = None
) -> LoadedStack:
    """Copy the fixture project to tmp_path, apply ``edit`` to the stack's ``config`` and ``profiles``
    edits to model profiles, and load it."""
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    edits = {tmp_path / "stacks" / f"Pulumi.{stack}.yaml": lambda doc: edit and edit(doc["config"])}
    for name, change in (profiles or {}).items():
        edits[tmp_path / "stacks" / "models" / f"{name}.yaml"] = change
    for path, change in edits.items():
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        change(doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return load_stack(Project(tmp_path), stack)


def deployment_of(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    deployments = config["gpufleet:deployments"]
    if name is not None:
        config["gpufleet:deployments"] = deployments = [d for d in deployments if d["name"] == name]
    assert len(deployments) == 1
    result: dict[str, Any] = deployments[0]
    return result


# ------------------------------------------------------------------------------------------- brute force


def machines_allowed(loaded: LoadedStack, gpu: Gpu, d: Deployment) -> list[tuple[InstanceType, Price]]:
    """Every machine type and market the stack may host this GPU on: the site's servers on-prem, every
    AWS instance type otherwise; spot only for deployments without n+1 redundancy."""
    spec = loaded.spec
    if spec.onprem is not None:
        names = {server.server_type for server in spec.onprem.gpu_servers}
    else:
        names = {name for name, i in catalog.instances.items() if i.provider == "aws"}
    instances = [catalog.instances[n] for n in sorted(names) if catalog.instances[n].gpu == gpu.name]
    return [
        (instance, price)
        for instance in instances
        for price in prices(instance, spec)
        if price.market != "spot" or d.slo.redundancy == "none"
    ]


def fleet_cost(d: Deployment, qps_per_replica: float, tp: int, instance: InstanceType, price: Price) -> float | None:
    """The README's sizing: qps × peakFactor at 85% of the SLO capacity, +1 for n+1, within replicas.min and
    .max; rented machines are paid whole, owned servers by the GPU. None when replicas.max is too low."""
    spare = 1 if d.slo.redundancy == "n+1" else 0
    replicas = max(d.replicas.min, math.ceil(d.traffic.peak_qps / (qps_per_replica * 0.85) - 1e-9) + spare)
    if replicas > d.replicas.max:
        return None
    if price.market == "owned":
        return replicas * tp / instance.gpu_count * price.hourly_usd
    return math.ceil(replicas / (instance.gpu_count // tp)) * price.hourly_usd


def brute_force(loaded: LoadedStack, d: Deployment) -> list[tuple[float, str]]:
    """Every (GPU, machine, market, tp, quantization) the stack allows, sized and priced by rules written
    here; returns (hourly $, label), cheapest first."""
    planner = _Planner(loaded, d, catalog)  # only for the replica physics: traffic sample and build()
    profile = loaded.profiles[d.model]
    methods = list(dict.fromkeys([profile.quantization, *profile.allowed_quantization]))
    capacities: dict[ReplicaConfig, float] = {}
    found = []
    for gpu in (catalog.gpus[name] for name in d.gpus):
        for (instance, price), tp, method in itertools.product(machines_allowed(loaded, gpu, d), (1, 2, 4, 8), methods):
            if tp > d.max_tensor_parallel or tp > instance.gpu_count:
                continue
            config = ReplicaConfig(gpu, tp, instance.gpu_link if tp > 1 else "nvswitch", catalog.quantization[method])
            if config not in capacities:
                try:
                    capacities[config] = max_rate(planner.build(config), planner.traffic, d.slo).max_qps
                except DoesNotFit:
                    capacities[config] = 0.0
            hourly = fleet_cost(d, capacities[config], tp, instance, price) if capacities[config] > 0 else None
            if hourly is not None:
                found.append((hourly, f"{config.label} on {instance.name} ({price.market})"))
    return sorted(found)


def only(name: str) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        deployment_of(config, name)

    return edit


def chat_on_l4_or_l40s(config: dict[str, Any]) -> None:
    deployment_of(config, "chat").update(gpus=["L4", "L40S"], replicas={"min": 1, "max": 12})


def big_with_capacity_blocks(config: dict[str, Any]) -> None:
    deployment_of(config, "big").update(replicas={"min": 1, "max": 8})
    config["gpufleet:pricing"].update(capacityBlocksAllowed=True)


def busier(qps: float) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        deployment_of(config)["traffic"]["qps"] = qps

    return edit


def more_replicas(config: dict[str, Any]) -> None:
    deployment_of(config)["replicas"] = {"min": 1, "max": 8}


def allow_fp8(profile: dict[str, Any]) -> None:
    profile["allowedQuantization"] = ["fp8"]


SCENARIOS: dict[str, tuple[str, Edit | None, dict[str, Edit] | None]] = {
    # chat-8b, n+1, peak 1.5, tp ≤ 2 over PCIe, spot and a price override (g6e.xlarge)
    "cloud-chat-l4-l40s": ("cloud", chat_on_l4_or_l40s, None),
    "cloud-chat-fp8-allowed": ("cloud", chat_on_l4_or_l40s, {"chat-8b": allow_fp8}),
    # chat-70b fp8 on H100/A100 over NVSwitch, tp 2..8, spot and capacity blocks
    "cloud-70b-spot-and-capacity-blocks": ("cloud", big_with_capacity_blocks, None),
    # EKS in eu-west-1 (priced at us-east-1), empirical prompt lengths
    "eks-l40s-busy": ("k8s", busier(6), None),
    # on-prem A800 servers paid by the GPU
    "onprem-owned-gpus": ("site", more_replicas, None),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_optimizer_finds_the_brute_force_optimum(tmp_path: Path, scenario: str) -> None:
    assert HEADROOM == 0.15  # the README's 15%: brute_force hard-codes it
    loaded = stack_in(tmp_path, *SCENARIOS[scenario])
    plan = plan_stack(loaded).deployments[0]
    options = brute_force(loaded, loaded.spec.deployments[0])
    assert options, "the scenario should be feasible"
    assert plan.chosen is not None, plan.rejected
    assert plan.chosen.hourly_usd == pytest.approx(options[0][0]), (plan.chosen.label, options[:3])
    # The runner-ups are feasible options too: the brute force knows each of their prices.
    costs = [o[0] for o in options]
    for alternative in plan.alternatives:
        assert alternative.hourly_usd >= plan.chosen.hourly_usd
        assert any(alternative.hourly_usd == pytest.approx(c) for c in costs), alternative.label


# ---------------------------------------------------------------------------------- the chosen option


def busy_eks(qps: float, redundancy: str, peak_factor: float = 1.0) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        d = deployment_of(config)
        d["traffic"].update(qps=qps, peakFactor=peak_factor)
        d["slo"]["redundancy"] = redundancy
        d["replicas"] = {"min": 1, "max": 30}

    return edit


def chosen(plan: FleetPlan) -> Option:
    option = plan.deployments[0].chosen
    assert option is not None, plan.deployments[0].rejected
    return option


def test_n_plus_one_adds_exactly_one_replica(tmp_path: Path) -> None:
    none = chosen(plan_stack(stack_in(tmp_path / "a", "k8s", busy_eks(8, "none"))))
    spare = chosen(plan_stack(stack_in(tmp_path / "b", "k8s", busy_eks(8, "n+1"))))
    assert none.machine.instance.gpu_count == 1  # one replica per machine: nothing rounds the count up
    assert (spare.config, spare.machine) == (none.config, none.machine)
    assert none.replicas >= 2  # the traffic needs several replicas: replicas.min does not bind
    assert spare.replicas == none.replicas + 1
    assert spare.hourly_usd == pytest.approx(none.hourly_usd * (none.replicas + 1) / none.replicas)


def test_twice_the_peak_needs_at_least_as_many_replicas(tmp_path: Path) -> None:
    flat = chosen(plan_stack(stack_in(tmp_path / "a", "k8s", busy_eks(4, "none", 1.0))))
    peaky = chosen(plan_stack(stack_in(tmp_path / "b", "k8s", busy_eks(4, "none", 2.0))))
    assert peaky.replicas >= flat.replicas
    assert peaky.replicas * peaky.target_qps_per_replica >= 8
    assert peaky.hourly_usd >= flat.hourly_usd
    assert peaky.peak_utilisation == pytest.approx(2 * peaky.utilisation)


def test_the_chosen_option_sizes_and_prices_itself_consistently(tmp_path: Path) -> None:
    loaded = stack_in(tmp_path, "k8s", busy_eks(5, "n+1", 1.5))
    d = loaded.spec.deployments[0]
    option = chosen(plan_stack(loaded))
    cap = option.capacity
    assert option.target_qps_per_replica == pytest.approx(cap.max_qps * (1 - HEADROOM))
    assert (option.replicas - 1) * option.target_qps_per_replica >= d.traffic.peak_qps
    assert option.monthly_usd == pytest.approx(option.hourly_usd * HOURS_PER_MONTH)
    assert HOURS_PER_MONTH == 730
    assert option.utilisation == pytest.approx(d.traffic.qps / (option.replicas * cap.max_qps))
    assert 0 < option.utilisation < 1
    # The token prices split the bill: at the sustained load they add up to the hourly price.
    t = d.traffic
    per_hour = (
        option.usd_per_m_input * t.qps * t.input_tokens.mean_tokens * 3600
        + option.usd_per_m_output * t.qps * t.output_tokens.mean_tokens * 3600
    ) / 1e6
    assert per_hour == pytest.approx(option.hourly_usd)
    assert option.usd_per_m_output > option.usd_per_m_input  # decoding a token costs more than reading one


def test_the_fleet_still_meets_the_slo_at_peak_with_one_replica_down(tmp_path: Path) -> None:
    loaded = stack_in(tmp_path, "k8s", busy_eks(5, "n+1", 1.5))
    d = loaded.spec.deployments[0]
    option = chosen(plan_stack(loaded))
    assert not option.predicted.misses(d.slo)
    planner = _Planner(loaded, d, catalog)
    down = Latency.of(probe(option.replica, planner.traffic, d.traffic.peak_qps / (option.replicas - 1), 0), 95)
    assert not down.misses(d.slo), down


# ------------------------------------------------------------------------------------------ infeasible


def test_an_slo_no_gpu_can_meet_says_why_and_what_would_help(tmp_path: Path) -> None:
    def impossible(config: dict[str, Any]) -> None:
        deployment_of(config)["slo"].update(ttftP95Ms=5, tpotP95Ms=1)

    fleet = plan_stack(stack_in(tmp_path, "k8s", impossible))
    plan = fleet.deployments[0]
    assert plan.chosen is None
    assert plan.alternatives == []
    slo_misses = [r for r in plan.rejected if r.kind == "slo"]
    assert slo_misses
    for rejected in slo_misses:
        assert "TTFT p95" in rejected.reason and "> 5 ms" in rejected.reason, rejected.reason
        assert "TPOT p95" in rejected.reason and "> 1 ms" in rejected.reason, rejected.reason
    assert any("loosen the SLO" in hint for hint in plan.hints)
    problems = fleet.problems()
    assert problems and not fleet.feasible
    assert "deployment 'assistant'" in problems[0]
    assert "loosen the SLO" in problems[0]


def test_a_too_small_budget_says_how_much_is_needed(tmp_path: Path) -> None:
    fleet = plan_stack(stack_in(tmp_path, "k8s", lambda c: c.update({"gpufleet:monthlyBudgetUsd": 100})))
    option = chosen(fleet)  # the deployment itself is fine ...
    problems = fleet.problems()  # ... the fleet is not
    assert len(problems) == 1
    needed = math.ceil(fleet.monthly_usd)
    assert fleet.monthly_usd == pytest.approx(option.monthly_usd)
    assert "over the budget of $100" in problems[0]
    assert f"at least {needed}" in problems[0]
    assert not fleet.feasible


def test_a_fleet_larger_than_the_onprem_site_is_reported(tmp_path: Path) -> None:
    def busy(config: dict[str, Any]) -> None:
        d = deployment_of(config)
        d["traffic"]["qps"] = 40
        d["replicas"] = {"min": 1, "max": 64}
        config["gpufleet:monthlyBudgetUsd"] = 1_000_000

    fleet = plan_stack(stack_in(tmp_path, "site", busy))
    assert fleet.site_gpus(catalog) == 16
    assert fleet.gpus_used > 16
    problems = fleet.problems()
    assert problems == [
        f"the plan needs {fleet.gpus_used} GPUs, the site's gpuServers have 16 (add servers or lower the traffic)"
    ]


def test_replicas_max_too_low_is_a_rejection_with_a_hint(tmp_path: Path) -> None:
    def capped(config: dict[str, Any]) -> None:
        d = deployment_of(config)
        d["traffic"]["qps"] = 30
        d["replicas"] = {"min": 1, "max": 2}

    plan = plan_stack(stack_in(tmp_path, "k8s", capped)).deployments[0]
    assert plan.chosen is None
    assert any(r.kind == "replicas" and "replicas.max is 2" in r.reason for r in plan.rejected)
    assert any("raise replicas.max (now 2)" in hint for hint in plan.hints)


# ------------------------------------------------------------------------------- what the profile pins


def test_a_pinned_max_num_batched_tokens_below_the_default_max_num_seqs_does_not_crash(tmp_path: Path) -> None:
    """vLLM refuses max_num_batched_tokens < max_num_seqs; on an H100 the default max_num_seqs is 1024, so a
    profile pinning 512 batched tokens must be rejected or have its max_num_seqs lowered — not crash."""
    pin = {"chat-70b": lambda profile: profile.update(engineArgs={"max-num-batched-tokens": 512})}
    plan = plan_stack(stack_in(tmp_path, "cloud", only("big"), pin)).deployments[0]
    for option in [o for o in (plan.chosen, *plan.alternatives) if o is not None]:
        limits = option.replica.limits
        assert limits.max_num_batched_tokens >= limits.max_num_seqs


def test_a_profile_pinned_tensor_parallel_size_is_respected(tmp_path: Path) -> None:
    """legacy-13b pins engineArgs tensor-parallel-size: 2 (validate checks it against the heads); the plan
    must not choose another degree, or the capacity and cost it reports are not what vLLM will run."""
    plan = plan_stack(stack_in(tmp_path, "site")).deployments[0]
    assert plan.profile.engine_args["tensor-parallel-size"] == 2
    assert plan.chosen is not None
    assert [o.config.tp for o in (plan.chosen, *plan.alternatives)] == [2] * (1 + len(plan.alternatives))


def test_spot_alone_does_not_carry_an_n_plus_one_fleet(tmp_path: Path) -> None:
    """stack.py: spotAllowed = "Allow spot capacity (interruptible) for deployments with redundancy none"."""
    plan = plan_stack(stack_in(tmp_path, "cloud", only("big"))).deployments[0]
    assert plan.deployment.slo.redundancy == "n+1"
    assert plan.chosen is not None
    assert plan.chosen.machine.price.market != "spot", f"{plan.chosen.label}: the whole n+1 fleet is on spot"


# ------------------------------------------------------------------------------------------ engines


def on_engine(engine: str) -> Edit:
    def edit(profile: dict[str, Any]) -> None:
        engine_profiles.on_engine(profile, engine)

    return edit


def relaxed_busy_eks() -> Edit:
    """8 req/s with an SLO Ollama can meet at all (its single-request TTFT is over the fixture's 1.2 s)."""
    def edit(config: dict[str, Any]) -> None:
        busy_eks(8, "none")(config)
        deployment_of(config)["slo"].update(ttftP95Ms=5000, tpotP95Ms=200)

    return edit


def test_a_slower_engine_needs_more_replicas_for_the_same_load(tmp_path: Path) -> None:
    """The same GGUF weights on Ollama (0.3× vLLM's throughput) and llama.cpp (0.65×): each Ollama replica
    carries less within the SLO, so the same traffic needs more replicas and costs more; both are estimates."""
    fast_plan = plan_stack(stack_in(tmp_path / "a", "k8s", relaxed_busy_eks(), {"chat-8b": on_engine("llamacpp")}))
    slow_plan = plan_stack(stack_in(tmp_path / "b", "k8s", relaxed_busy_eks(), {"chat-8b": on_engine("ollama")}))
    fast, slow = chosen(fast_plan), chosen(slow_plan)
    factor = catalog.engines["ollama"].throughput.factor / catalog.engines["llamacpp"].throughput.factor
    assert slow.config == fast.config  # the same replica shape (the stack allows one GPU, no TP)
    assert slow.capacity.saturation_qps == pytest.approx(factor * fast.capacity.saturation_qps, rel=1e-6)
    assert slow.capacity.max_qps < fast.capacity.max_qps
    assert slow.replicas > fast.replicas
    assert slow.hourly_usd > fast.hourly_usd
    assert slow.replica.memory == fast.replica.memory  # the engine's speed, not its memory
    assert (fast_plan.deployments[0].estimate, slow_plan.deployments[0].estimate) == (True, True)
    assert slow_plan.deployments[0].engine.name == "ollama"


def test_an_engine_at_factor_one_plans_exactly_as_vllm(tmp_path: Path) -> None:
    """SGLang's factor is 1.0: the same options, capacities and prices; only the estimate flag differs."""
    vllm_plan = plan_stack(stack_in(tmp_path / "a", "k8s", busy_eks(4, "none"), {"chat-8b": on_engine("vllm")}))
    sgl_plan = plan_stack(stack_in(tmp_path / "b", "k8s", busy_eks(4, "none"), {"chat-8b": on_engine("sglang")}))
    vllm, sgl = chosen(vllm_plan), chosen(sgl_plan)
    assert (sgl.config, sgl.machine, sgl.replicas, sgl.hourly_usd) == (vllm.config, vllm.machine, vllm.replicas,
                                                                       vllm.hourly_usd)
    assert sgl.capacity == vllm.capacity
    assert sgl.predicted == vllm.predicted
    assert sgl_plan.deployments[0].estimate

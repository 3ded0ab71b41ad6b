"""Choose, per deployment, the cheapest fleet that meets its traffic and SLO — and say why.

Search space: allowed GPU × machine type (instance or on-prem server) × tensor-parallel degree ×
quantization the profile allows × market (on-demand, spot, capacity block) × replicas. Replica
capacity depends only on (GPU, tensor parallelism, GPU link, quantization), so it is computed once per
such replica configuration; machines only change packing and price.

Branch and bound keeps it fast: a configuration's saturation throughput (an offline batch, cheap to
simulate) bounds its capacity from above, hence its cost from below; options are examined cheapest
bound first, and the exact SLO capacity search (capacity.max_rate) runs only while a bound could still
beat the best option found for the same GPU. Every option examined or pruned is kept with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from infra.catalog import Catalog, load_catalog
from infra.catalog.schema import Architecture, Gpu, InferenceEngine, InstanceType, QuantizationMethod
from infra.plan.capacity import Capacity, Latency, Traffic, max_rate, probe, saturation
from infra.plan.memory import tensor_parallel_problem
from infra.plan.perf import Efficiency, decode_batch, prefill_chunks
from infra.plan.pricing import HOURS_PER_MONTH, Price, prices
from infra.plan.replica import DoesNotFit, Precision, Replica, build_replica, resolve_limits
from infra.spec.checks import resolve_architecture
from infra.spec.engine_limits import PlannedLimit, max_tensor_parallel, pinned_flag
from infra.spec.load import LoadedStack
from infra.spec.profile import ModelProfile
from infra.spec.stack import Deployment, Slo, StackSpec

if TYPE_CHECKING:
    from infra.calibrate.model import Calibration

TP_DEGREES = (1, 2, 4, 8)
# Plan each replica for this fraction of its SLO capacity: the capacity is a steady-state figure of a
# model with ~10-15% error, and real arrivals are burstier than Poisson.
HEADROOM = 0.15
RejectKind = Literal["does-not-fit", "slo", "replicas", "pruned"]


@dataclass(frozen=True)
class Machine:
    instance: InstanceType
    price: Price

    @property
    def label(self) -> str:
        market = "" if self.price.market in ("on-demand", "owned") else f" ({self.price.market})"
        return f"{self.instance.name}{market}"


@dataclass(frozen=True)
class ReplicaConfig:
    gpu: Gpu
    tp: int
    link: str
    quantization: QuantizationMethod

    @property
    def label(self) -> str:
        quant = "" if self.quantization.name == "none" else f" {self.quantization.name}"
        return f"{self.gpu.name}×{self.tp}{quant}"


@dataclass(frozen=True)
class Option:
    """A feasible fleet for one deployment."""

    config: ReplicaConfig
    machine: Machine
    replicas: int
    machines: int
    capacity: Capacity
    target_qps_per_replica: float
    hourly_usd: float
    usd_per_m_input: float
    usd_per_m_output: float
    utilisation: float
    """Load at the sustained QPS / what the replicas carry within the SLO (all replicas up)."""
    peak_utilisation: float
    predicted: Latency
    """p95 latencies at peak load spread over all replicas."""
    replica: Replica

    @property
    def monthly_usd(self) -> float:
        return self.hourly_usd * HOURS_PER_MONTH

    @property
    def label(self) -> str:
        return f"{self.config.label} on {self.machine.label}"


@dataclass(frozen=True)
class Rejected:
    label: str
    kind: RejectKind
    reason: str


@dataclass
class DeploymentPlan:
    deployment: Deployment
    profile: ModelProfile
    chosen: Option | None = None
    alternatives: list[Option] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def engine(self) -> InferenceEngine:
        """The profile's engine (catalog record): its throughput factor scales every option's step times."""
        return load_catalog().engines[self.profile.engine]

    @property
    def estimate(self) -> bool:
        """The figures are vLLM's capacity model scaled by a throughput factor not fitted to this engine."""
        return not self.engine.throughput.calibrated


@dataclass
class FleetPlan:
    stack: str
    spec: StackSpec
    deployments: list[DeploymentPlan]

    @property
    def monthly_usd(self) -> float:
        return sum(d.chosen.monthly_usd for d in self.deployments if d.chosen)

    @property
    def gpus_used(self) -> int:
        return sum(d.chosen.replicas * d.chosen.config.tp for d in self.deployments if d.chosen)

    def site_gpus(self, catalog: Catalog) -> int | None:
        """GPUs of the on-prem site (None for cloud targets, which rent what the plan needs)."""
        if self.spec.onprem is None:
            return None
        return sum(catalog.instances[s.server_type].gpu_count for s in self.spec.onprem.gpu_servers)

    def problems(self) -> list[str]:
        """Why the fleet as a whole cannot be deployed, with what would fix it."""
        out = []
        for d in self.deployments:
            if d.chosen is None:
                hints = "; ".join(d.hints) or "see the rejected options (--explain)"
                out.append(f"deployment '{d.deployment.name}': no option meets its SLO and limits ({hints})")
        budget = self.spec.monthly_budget_usd
        if self.monthly_usd > budget:
            out.append(
                f"the fleet costs ${self.monthly_usd:,.0f}/month, over the budget of ${budget:,.0f} "
                f"(raise gpufleet:monthlyBudgetUsd to at least {math.ceil(self.monthly_usd)}, lower the "
                "traffic or loosen the SLOs)"
            )
        site = self.site_gpus(load_catalog())
        if site is not None and self.gpus_used > site:
            out.append(
                f"the plan needs {self.gpus_used} GPUs, the site's gpuServers have {site} (add servers "
                "or lower the traffic)"
            )
        return out

    @property
    def feasible(self) -> bool:
        return not self.problems()


def machines_for(gpu: Gpu, spec: StackSpec, catalog: Catalog) -> list[Machine]:
    if spec.target == "onprem":
        types = {s.server_type for s in spec.onprem.gpu_servers} if spec.onprem else set()
        instances = [catalog.instances[t] for t in sorted(types) if catalog.instances[t].gpu == gpu.name]
    else:
        instances = [i for i in catalog.instances_for_gpu(gpu.name) if i.provider == "aws"]
    return [Machine(instance, price) for instance in instances for price in prices(instance, spec)]


def quantizations(profile: ModelProfile, catalog: Catalog) -> list[QuantizationMethod]:
    names = [profile.quantization, *(q for q in profile.allowed_quantization if q != profile.quantization)]
    return [catalog.quantization[name] for name in names]


def replica_configs(
    deployment: Deployment, profile: ModelProfile, spec: StackSpec, catalog: Catalog
) -> list[tuple[ReplicaConfig, list[Machine]]]:
    """Each replica configuration with the machines that can host it."""
    arch = resolve_architecture(profile, catalog)
    assert arch is not None  # validated
    out = []
    for name in deployment.gpus:
        gpu = catalog.gpu(name)
        assert gpu is not None  # validated
        machines = machines_for(gpu, spec, catalog)
        pinned = EngineOverrides.of(profile).tensor_parallel_size
        max_tp = max_tensor_parallel(deployment.max_tensor_parallel,
                                     catalog.engines[profile.engine].capabilities.tensor_parallel)
        for tp in TP_DEGREES:
            if tp > max_tp or tensor_parallel_problem(arch, tp):
                continue
            if pinned is not None and tp != pinned:  # the profile's engineArgs fix it
                continue
            hosts = [m for m in machines if m.instance.gpu_count >= tp]
            for link in sorted({m.instance.gpu_link for m in hosts} if tp > 1 else {"nvswitch"}):
                linked = [m for m in hosts if tp == 1 or m.instance.gpu_link == link]
                for method in quantizations(profile, catalog):
                    out.append((ReplicaConfig(gpu, tp, link, method), linked))
    return out


def replicas_needed(deployment: Deployment, peak_qps: float, qps_per_replica: float) -> int:
    """Replicas that carry ``peak_qps`` at ``qps_per_replica`` each, plus the n+1 spare, within replicas.min."""
    needed = math.ceil(peak_qps / qps_per_replica - 1e-9)
    spare = 1 if deployment.slo.redundancy == "n+1" else 0
    return max(deployment.replicas.min, needed + spare)


def fleet_cost(config: ReplicaConfig, machine: Machine, replicas: int) -> tuple[int, float]:
    """Machines to rent and their $/hour. Owned servers are shared by deployments GPU by GPU, so a
    deployment pays for the GPUs it uses; rented instances are paid whole."""
    per_machine = machine.instance.gpu_count // config.tp
    machines = math.ceil(replicas / per_machine)
    if machine.price.market == "owned":
        gpus = replicas * config.tp
        return machines, gpus / machine.instance.gpu_count * machine.price.hourly_usd
    return machines, machines * machine.price.hourly_usd


def deployment_traffic(deployment: Deployment, profile: ModelProfile, arch: Architecture) -> Traffic:
    """The request lengths the planner simulates for a deployment (capped at the served context)."""
    max_model_len = profile.max_model_len or arch.max_context
    return Traffic.draw(deployment.traffic.input_tokens, deployment.traffic.output_tokens, max_model_len)


class _Planner:
    def __init__(self, loaded: LoadedStack, deployment: Deployment, catalog: Catalog) -> None:
        self.spec = loaded.spec
        self.deployment = deployment
        self.profile = loaded.profiles[deployment.model]
        self.catalog = catalog
        arch = resolve_architecture(self.profile, catalog)
        assert arch is not None
        self.arch = arch
        self.max_model_len = self.profile.max_model_len or arch.max_context
        self.traffic = deployment_traffic(deployment, self.profile, arch)
        self.plan = DeploymentPlan(deployment, self.profile)
        self.capacities: dict[ReplicaConfig, Capacity] = {}
        self.calibration = loaded.calibration

    def market_allowed(self, machine: Machine) -> bool:
        """Spot only where no redundancy is promised: one reclaim can take several replicas at once."""
        return machine.price.market != "spot" or self.deployment.slo.redundancy == "none"

    # -- replicas and cost --------------------------------------------------------------------------
    def replicas_for(self, qps_per_replica: float) -> int:
        return replicas_needed(self.deployment, self.deployment.traffic.peak_qps, qps_per_replica)

    def cost(self, config: ReplicaConfig, machine: Machine, replicas: int) -> tuple[int, float]:
        return fleet_cost(config, machine, replicas)

    def fill(self, config: ReplicaConfig, machine: Machine, replicas: int) -> int:
        """On rented instances, GPUs left over are paid anyway: run replicas on them (up to replicas.max)."""
        if machine.price.market == "owned":
            return replicas
        per_machine = machine.instance.gpu_count // config.tp
        return min(self.deployment.replicas.max, math.ceil(replicas / per_machine) * per_machine)

    def build(self, config: ReplicaConfig) -> Replica:
        return profile_replica(self.profile, self.arch, config, calibration=self.calibration)

    # -- search -------------------------------------------------------------------------------------
    def run(self) -> DeploymentPlan:
        candidates: list[tuple[float, ReplicaConfig, Machine, Replica, float]] = []
        for config, offered in replica_configs(self.deployment, self.profile, self.spec, self.catalog):
            machines = [m for m in offered if self.market_allowed(m)]
            if not machines:
                continue
            try:
                replica = self.build(config)
            except DoesNotFit as exc:
                self.plan.rejected.append(Rejected(config.label, "does-not-fit", str(exc)))
                continue
            ceiling = saturation(replica, self.traffic)
            for machine in machines:
                _, bound = self.cost(config, machine, self.replicas_for(ceiling * (1 - HEADROOM)))
                candidates.append((bound, config, machine, replica, ceiling))
        candidates.sort(key=lambda c: (c[0], c[1].label, c[2].label))
        best_per_gpu: dict[str, Option] = {}
        capacities = self.capacities
        for bound, config, machine, replica, _ in candidates:
            label = f"{config.label} on {machine.label}"
            rival = best_per_gpu.get(config.gpu.name)
            if rival is not None and bound >= rival.hourly_usd:
                self.plan.rejected.append(
                    Rejected(
                        label,
                        "pruned",
                        f"cannot beat {rival.label} (${rival.hourly_usd:.2f}/h): costs at least ${bound:.2f}/h",
                    )
                )
                continue
            if config not in capacities:
                capacities[config] = max_rate(replica, self.traffic, self.deployment.slo)
            option = self.option(config, machine, replica, capacities[config], label)
            if option is not None and (rival is None or option.hourly_usd < rival.hourly_usd):
                best_per_gpu[config.gpu.name] = option
        ranked = sorted(best_per_gpu.values(), key=lambda o: (o.hourly_usd, o.label))
        if ranked:
            self.plan.chosen, self.plan.alternatives = ranked[0], ranked[1:]
        else:
            self.plan.hints = self.hints()
        return self.plan

    def option(
        self, config: ReplicaConfig, machine: Machine, replica: Replica, capacity: Capacity, label: str
    ) -> Option | None:
        d = self.deployment
        if capacity.max_qps <= 0:
            misses = "; ".join(capacity.floor.misses(d.slo)) or "SLO missed at every load"
            self.plan.rejected.append(Rejected(label, "slo", f"even one request at a time: {misses}"))
            return None
        target = capacity.max_qps * (1 - HEADROOM)
        replicas = self.replicas_for(target)
        if replicas > d.replicas.max:
            self.plan.rejected.append(
                Rejected(
                    label,
                    "replicas",
                    f"needs {replicas} replicas of {target:.2f} req/s, replicas.max is {d.replicas.max}",
                )
            )
            return None
        replicas = self.fill(config, machine, replicas)
        machines, hourly = self.cost(config, machine, replicas)
        predicted = self.predict(replica, d.traffic.peak_qps / replicas)
        per_in, per_out = self.token_prices(replica, hourly)
        return Option(
            config=config,
            machine=machine,
            replicas=replicas,
            machines=machines,
            capacity=capacity,
            target_qps_per_replica=target,
            hourly_usd=hourly,
            usd_per_m_input=per_in,
            usd_per_m_output=per_out,
            utilisation=d.traffic.qps / (replicas * capacity.max_qps),
            peak_utilisation=d.traffic.peak_qps / (replicas * capacity.max_qps),
            predicted=predicted,
            replica=replica,
        )

    def predict(self, replica: Replica, rate: float) -> Latency:
        return Latency.of(probe(replica, self.traffic, rate, seed=0), 95)  # the capacity search's seed

    def token_prices(self, replica: Replica, hourly: float) -> tuple[float, float]:
        """$/1M input and output tokens at the sustained QPS, splitting the bill by GPU time.

        A prompt token's share is the time of prefilling the mean prompt; an output token's share the
        time of decoding it inside a batch of the replica's typical size (measured at peak load).
        """
        t = self.deployment.traffic
        mean_in, mean_out = t.input_tokens.mean_tokens, t.output_tokens.mean_tokens
        prefill = _prefill_seconds(replica, round(mean_in))
        batch = max(1, round(min(replica.limits.max_num_seqs, 32)))
        decode = _decode_seconds(replica, batch, round(mean_in + mean_out / 2)) / batch * mean_out
        share_in = prefill / (prefill + decode)
        tokens_in_per_hour = t.qps * mean_in * 3600
        tokens_out_per_hour = t.qps * mean_out * 3600
        return (hourly * share_in / tokens_in_per_hour * 1e6, hourly * (1 - share_in) / tokens_out_per_hour * 1e6)

    def hints(self) -> list[str]:
        """What would make the deployment feasible, with the numbers that say how far it is."""
        kinds = {r.kind for r in self.plan.rejected}
        d = self.deployment
        out = []
        if "slo" in kinds and self.capacities:
            best = min(self.capacities.items(), key=lambda item: _slo_distance(item[1].floor, d.slo))
            floor = best[1].floor
            out.append(
                f"the best any option reaches, one request at a time, is TTFT p95 {floor.ttft_ms:.0f} ms and TPOT "
                f"p95 {floor.tpot_ms:.1f} ms ({best[0].label}): loosen the SLO to that, allow a faster GPU "
                "(H100-SXM, H200), shorten prompts, or allow fp8 (allowedQuantization) for faster decoding"
            )
        if "replicas" in kinds:
            out.append(f"raise replicas.max (now {d.replicas.max}) or allow larger GPUs / tensor parallelism")
        if "does-not-fit" in kinds:
            out.append(
                f"allow GPUs with more memory, raise maxTensorParallel (now {d.max_tensor_parallel}) or "
                "quantize the weights"
            )
        return out


def _slo_distance(latency: Latency, slo: Slo) -> float:
    """How far a latency is above the SLO, as the worst ratio (1 = just meets it)."""
    return max(latency.ttft_ms / slo.ttft_p95_ms, latency.tpot_ms / slo.tpot_p95_ms)


@dataclass(frozen=True)
class EngineOverrides:
    """Scheduler limits a profile pins through engineArgs (the planner keeps vLLM's defaults otherwise)."""

    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None

    @classmethod
    def of(cls, profile: ModelProfile) -> EngineOverrides:
        """The limits the profile's engineArgs pin, by its engine's flag names (infra/spec/engine_limits.py)."""

        def number(limit: PlannedLimit) -> float | None:
            pinned = pinned_flag(profile.engine, dict(profile.engine_args), limit)
            value = pinned[1] if pinned else None
            if isinstance(value, str) and value.isdigit():  # Ollama's variables are strings
                return float(value)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        seqs, tokens = number("max_num_seqs"), number("max_num_batched_tokens")
        tp = number("tensor_parallel_size")
        return cls(
            max_num_seqs=int(seqs) if seqs else None,
            max_num_batched_tokens=int(tokens) if tokens else None,
            gpu_memory_utilization=number("gpu_memory_utilization"),
            tensor_parallel_size=int(tp) if tp else None,
        )


def profile_replica(
    profile: ModelProfile,
    arch: Architecture,
    config: ReplicaConfig,
    *,
    calibration: Calibration | None = None,
    efficiency: Efficiency | None = None,
) -> Replica:
    """The replica a profile runs as in ``config``: its precision, its pinned engine limits, vLLM's defaults
    for the rest (what render writes into the vLLM config); step times as ``build_replica`` says, at the
    speed of the profile's engine (its catalog throughput factor)."""
    bits = profile.weight_bits if config.quantization.name == profile.quantization else None
    precision = Precision(profile.dtype, config.quantization, bits, profile.kv_cache_dtype)
    pinned = EngineOverrides.of(profile)
    limits = resolve_limits(
        arch, config.gpu, max_model_len=profile.max_model_len or arch.max_context,
        max_num_seqs=pinned.max_num_seqs, max_num_batched_tokens=pinned.max_num_batched_tokens,
        gpu_memory_utilization=pinned.gpu_memory_utilization,
    )
    return build_replica(
        arch,
        config.gpu,
        tp=config.tp,
        link=config.link,  # type: ignore[arg-type]
        precision=precision,
        limits=limits,
        calibration=calibration,
        efficiency=efficiency,
        engine=load_catalog().engines[profile.engine],
    )


def _prefill_seconds(replica: Replica, tokens: int) -> float:
    return sum(map(replica.step.step_seconds, prefill_chunks(tokens, replica.limits.max_num_batched_tokens)))


def _decode_seconds(replica: Replica, seqs: int, context: int) -> float:
    return replica.step.step_seconds(decode_batch(seqs, context))


def plan_deployment(loaded: LoadedStack, deployment: Deployment) -> DeploymentPlan:
    """One deployment planned under ``loaded``'s spec (its target, pricing, machines): what-ifs plan a
    deployment of one stack under another's terms."""
    return _Planner(loaded, deployment, load_catalog()).run()


def plan_stack(loaded: LoadedStack) -> FleetPlan:
    catalog = load_catalog()
    plans = [_Planner(loaded, d, catalog).run() for d in loaded.spec.deployments]
    return FleetPlan(loaded.name, loaded.spec, plans)

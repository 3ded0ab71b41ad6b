"""What the planner predicts for the workload that was actually measured.

The planner simulates ONE replica (``infra.plan.capacity.probe``), so the measured load is split over the
replicas behind the endpoint and each share is simulated with the deployment's chosen replica, using the
planner's own engine limits, step-time model and API overhead; the shares' per-request latencies are then
pooled, as the measured ones are. The split follows the mode:

- open loop (``--rate``): the measured send times of the completed requests are dealt round-robin to the
  replicas and replayed as a trace (``simulate.trace``). Replaying the real arrivals, rather than a fresh
  Poisson draw at the measured rate, removes the sampling noise of a second random pattern from the
  comparison: both sides see the same bursts. Round-robin stands in for the LB's least-connections policy,
  which is the same thing for requests of similar cost.
- closed loop (``--concurrency N``): least-connections gives each replica N/R of the clients
  (the first N mod R replicas one more), and each share is simulated as a closed loop of that many clients
  (``simulate.closed_loop``) over its share of the measured requests.

Requests use the server's counts (``usage``) where it gave them, else what was asked. No warm-up is left out
on either side: the measurement includes the cold start, so the prediction does too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.bench.client import Outcome
from infra.bench.runner import Mode
from infra.bench.stats import METRICS, Percentiles, percentiles
from infra.plan.replica import Replica, api_overhead_s
from infra.plan.simulate import SimulationResult, Workload, closed_loop, simulate, trace


@dataclass(frozen=True)
class Target:
    """The planned deployment behind the endpoint (``target`` in the JSON document)."""

    stack: str
    deployment: str
    gpu: str
    tp: int
    replicas: int
    """Replicas behind the endpoint: the plan's, or ``--replicas`` (e.g. 1 when benchmarking one vLLM)."""
    instance_type: str

    def json(self) -> dict[str, object]:
        return {"stack": self.stack, "deployment": self.deployment, "gpu": self.gpu, "tp": self.tp,
                "replicas": self.replicas, "instance_type": self.instance_type}


@dataclass(frozen=True)
class Prediction:
    replicas: int
    per_replica_rate_rps: float
    latency: dict[str, Percentiles]
    throughput_rps: float
    output_tokens_per_s: float

    def json(self) -> dict[str, object]:
        return {"per_replica_rate_rps": self.per_replica_rate_rps, **{m: self.latency[m] for m in METRICS}}


def _lengths(outcome: Outcome, max_model_len: int) -> tuple[int, int]:
    """The request's (prompt, output) tokens as the engine saw them, kept inside max_model_len as vLLM would."""
    n_in = outcome.prompt_tokens or outcome.requested_input
    n_out = outcome.output_tokens or outcome.requested_output
    n_in = min(max(1, n_in), max_model_len - 1)
    return n_in, min(max(1, n_out), max_model_len - n_in)


def shares(
    outcomes: list[Outcome], mode: Mode, concurrency: int | None, replicas: int, max_model_len: int
) -> list[Workload]:
    """One workload per replica that received any of the measured (completed) requests."""
    done = sorted((o for o in outcomes if o.ok), key=lambda o: o.sent_s)
    if mode == "concurrency":
        assert concurrency is not None
        clients = [concurrency // replicas + (1 if r < concurrency % replicas else 0) for r in range(replicas)]
        cycle = [r for r, k in enumerate(clients) for _ in range(k)]  # weighted round-robin: N/R each
        owner = [cycle[j % len(cycle)] for j in range(len(done))]
    else:
        clients = [0] * replicas
        owner = [j % replicas for j in range(len(done))]
    workloads = []
    for r in range(replicas):
        mine = [o for o, who in zip(done, owner, strict=True) if who == r]
        if not mine:
            continue
        ins, outs = zip(*(_lengths(o, max_model_len) for o in mine), strict=True)
        if mode == "concurrency":
            workloads.append(closed_loop(clients[r], len(mine), ins, outs))
        else:
            # Every replica keeps the run's clock (the first send is t=0), so the pooled window is the run's.
            workloads.append(trace([o.sent_s - done[0].sent_s for o in mine], ins, outs))
    return workloads


def predict(
    replica: Replica,
    outcomes: list[Outcome],
    *,
    duration_s: float,
    mode: Mode,
    concurrency: int | None,
    replicas: int,
) -> Prediction:
    """Simulate the measured workload on ``replicas`` copies of ``replica`` and pool the results."""
    engine = replica.engine_config(api_overhead_s())
    results = [(w, simulate(w, engine, replica.step))
               for w in shares(outcomes, mode, concurrency, replicas, replica.limits.max_model_len)]
    pooled: dict[str, list[float]] = {m: [] for m in METRICS}
    tokens, completed = 0, 0
    first, last = math.inf, -math.inf
    for workload, result in results:
        for metric in METRICS:
            values: tuple[float, ...] = getattr(result, metric)
            pooled[metric].extend(v for v, m in zip(values, result.measured, strict=True) if m)
        tokens += _completed_tokens(workload, result)
        completed += result.completed
        first, last = min(first, result.window_s[0]), max(last, result.window_s[1])
    span = last - first if results else 0.0
    return Prediction(
        replicas=replicas,
        per_replica_rate_rps=len(outcomes) / duration_s / replicas if duration_s > 0 else 0.0,
        latency={m: percentiles(pooled[m]) for m in METRICS},
        throughput_rps=completed / span if span > 0 else 0.0,
        output_tokens_per_s=tokens / span if span > 0 else 0.0,
    )


def _completed_tokens(workload: Workload, result: SimulationResult) -> int:
    return sum(out for out, e2e in zip(workload.output_lens, result.e2e_s, strict=True) if not math.isnan(e2e))

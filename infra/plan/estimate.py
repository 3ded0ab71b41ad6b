"""``gpufleet estimate``: one configuration's predicted performance, by simulating its replica.

The JSON keys are a contract (capacity issue): output_tokens_per_s, requests_per_s, ttft_ms, tpot_ms,
e2e_ms, kv_cache_tokens, max_num_seqs, max_num_batched_tokens, weights_gib. When the replica runs an engine
the capacity model has no calibration for (a profile's ``engine``), an ``engine`` object is added, as in
``plan --json``: the figures are vLLM's model at that engine's throughput factor, an estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from infra.plan.replica import Replica, api_overhead_s
from infra.plan.serialize import engine_json
from infra.plan.simulate import SimulationResult, Workload, closed_loop, offline, poisson, simulate

Mode = Literal["rate", "concurrency", "offline"]

# Poisson runs drop their first 10% as warm-up; 1,000 measured requests put the p99 on ten samples.
POISSON_REQUESTS = 1100
CLOSED_LOOP_ROUNDS = 10  # each client sends this many requests (at least 500 in all)
CLOSED_LOOP_MIN_REQUESTS = 500


@dataclass(frozen=True)
class Load:
    mode: Mode
    value: float
    input_tokens: int
    output_tokens: int
    seed: int = 0

    def workload(self) -> Workload:
        if self.mode == "rate":
            return poisson(self.value, POISSON_REQUESTS, self.input_tokens, self.output_tokens, seed=self.seed)
        if self.mode == "concurrency":
            clients = int(self.value)
            n = max(CLOSED_LOOP_MIN_REQUESTS, CLOSED_LOOP_ROUNDS * clients)
            return closed_loop(clients, n, self.input_tokens, self.output_tokens, warmup_fraction=0.1)
        return offline(int(self.value), self.input_tokens, self.output_tokens)

    @property
    def entry_point(self) -> Literal["api", "offline"]:
        return "offline" if self.mode == "offline" else "api"


def run(replica: Replica, load: Load) -> SimulationResult:
    overhead = 0.0 if load.mode == "offline" else api_overhead_s()
    return simulate(load.workload(), replica.engine_config(overhead), replica.step)


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value * 1000, 3)


def estimate_json(replica: Replica, result: SimulationResult) -> dict[str, Any]:
    pct = {q: result.percentiles(q) for q in (50, 90, 99)}
    document = {
        "output_tokens_per_s": round(result.output_tokens_per_s, 3),
        "requests_per_s": round(result.requests_per_s, 4),
        "ttft_ms": {f"p{q}": _ms(pct[q]["ttft_s"]) for q in (50, 90, 99)},
        "tpot_ms": {f"p{q}": _ms(pct[q]["tpot_s"]) for q in (50, 90, 99)},
        "e2e_ms": {f"p{q}": _ms(pct[q]["e2e_s"]) for q in (50, 99)},
        "kv_cache_tokens": replica.kv_cache_tokens,
        "max_num_seqs": replica.limits.max_num_seqs,
        "max_num_batched_tokens": replica.limits.max_num_batched_tokens,
        "weights_gib": round(replica.weights_gib, 3),
    }
    if replica.engine is not None and replica.engine_estimate:
        document["engine"] = engine_json(replica.engine)
    return document

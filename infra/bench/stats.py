"""Percentiles and the run summary.

Latency statistics cover the requests that completed (an error has no latency); TPOT needs at least two
output tokens and a TTFT, so non-streamed requests have E2E only. Throughput is over the whole run, from the
first send to the last response, as ``vllm bench serve`` reports it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from infra.bench.client import Outcome

QUANTILES = (50, 95, 99)
METRICS = ("ttft_s", "tpot_s", "e2e_s")
Percentiles = dict[str, float | None]
"""{"p50": ..., "p95": ..., "p99": ...}; None where there is no data."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, and ``infra.plan.simulate``'s); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def percentiles(values: Iterable[float | None]) -> Percentiles:
    """p50/p95/p99 of the finite values; None (JSON null) for each when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {f"p{q}": (percentile(finite, q) if finite else None) for q in QUANTILES}


@dataclass(frozen=True)
class Summary:
    completed: int
    errors: int
    throughput_rps: float
    output_tokens_per_s: float
    latency: dict[str, Percentiles]
    """``ttft_s``, ``tpot_s``, ``e2e_s`` -> percentiles."""
    error_counts: dict[str, int]

    def json(self) -> dict[str, object]:
        return {
            "completed": self.completed,
            "errors": self.errors,
            "throughput_rps": self.throughput_rps,
            "output_tokens_per_s": self.output_tokens_per_s,
            **{metric: self.latency[metric] for metric in METRICS},
        }


def summarise(outcomes: Sequence[Outcome], duration_s: float) -> Summary:
    done = [o for o in outcomes if o.ok]
    tokens = sum(o.output_tokens or 0 for o in done)
    rate = 1.0 / duration_s if duration_s > 0 else 0.0
    return Summary(
        completed=len(done),
        errors=len(outcomes) - len(done),
        throughput_rps=len(done) * rate,
        output_tokens_per_s=tokens * rate,
        latency={
            "ttft_s": percentiles(o.ttft_s for o in done),
            "tpot_s": percentiles(o.tpot_s for o in done),
            "e2e_s": percentiles(o.e2e_s for o in done),
        },
        error_counts=dict(Counter(o.error for o in outcomes if o.error is not None)),
    )

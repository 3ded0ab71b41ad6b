"""Fit a GPU's compute and bandwidth efficiency scales to bench results against a real fleet.

Each bench file is replayed through the engine simulation: its successful requests, with their measured
send times and token counts, are dealt round-robin to the fleet's ``replicas`` replicas (``trace``
workloads; a closed-loop bench replays as the open-loop trace its clients produced), and each replica
runs with step times from a ``StepTimeModel`` whose efficiencies are scaled by (compute, bandwidth)
(``Efficiency.scaled``). The fit minimises, over all files, the squared log error of the simulated vs
measured TTFT and TPOT medians, overall and within thirds of the prompt lengths (see ``compare``); a
non-streaming bench has no TTFT, its end-to-end latency is used instead (and with no streaming bench at all
only the bandwidth scale is fitted). The search is a coarse grid on log scale, then Nelder–Mead (golden
section in one dimension), within ``BOUNDS``: the simulation is cheap (a few ms per replica) and its output
is rough at fine scale, so no derivatives are used.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from infra.plan.perf import Efficiency, StepTimeModel
from infra.plan.replica import Replica, api_overhead_s
from infra.plan.simulate import StepCostModel, simulate, trace

BENCH_FORMAT = "gpufleet-bench/1"
BOUNDS = (0.2, 2.0)
MIN_REQUESTS = 10
"""Successful requests a bench needs before its percentiles mean anything."""
MEDIAN_WEIGHT = 1.0
"""Weight of each metric's median in the loss."""
GROUP_WEIGHT = 1.0
"""Total weight of each metric's medians within prompt-length thirds."""
Metric = Literal["ttft", "tpot", "e2e"]


class BenchError(Exception):
    """A bench result that cannot be used: the message says why, in the user's terms."""


@dataclass(frozen=True)
class Target:
    stack: str
    deployment: str
    gpu: str
    tp: int
    replicas: int
    instance_type: str


@dataclass(frozen=True)
class BenchRequest:
    """A successful request: when it was sent (s from the bench's start), its lengths and latencies."""

    sent_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None
    e2e_s: float


@dataclass(frozen=True)
class Bench:
    path: Path
    sha256: str
    model: str
    stream: bool
    started_at: datetime
    target: Target | None
    requests: tuple[BenchRequest, ...]
    """Successful requests with token counts, in send order."""
    sent: int
    """All requests of the file, failed ones included."""

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """What the fit compares: TTFT and TPOT when every request streamed its first token, else E2E."""
        if self.stream and all(r.ttft_s is not None for r in self.requests):
            return ("ttft", "tpot")
        return ("e2e",)

    def measured(self) -> dict[Metric, list[float]]:
        """Per-request latencies (NaN where a metric does not apply: TPOT of a one-token answer)."""
        out: dict[Metric, list[float]] = {"e2e": [r.e2e_s for r in self.requests]}
        if "ttft" in self.metrics:
            out["ttft"] = [float(r.ttft_s) if r.ttft_s is not None else math.nan for r in self.requests]
            out["tpot"] = [
                (r.e2e_s - r.ttft_s) / (r.output_tokens - 1)
                if r.ttft_s is not None and r.output_tokens > 1
                else math.nan
                for r in self.requests
            ]
        return out


# ------------------------------------------------------------------------------------------------
# Reading a bench result (format gpufleet-bench/1)


def _field(doc: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        value = None  # JSON true is not a number
    if not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise BenchError(f"{where}{key}: expected {expected}{' or null' if optional else ''}, got {value!r}")
    return value


def _target(raw: Any) -> Target | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BenchError(f"target: expected an object or null, got {raw!r}")
    w = "target."
    return Target(
        stack=_field(raw, "stack", str, w),
        deployment=_field(raw, "deployment", str, w),
        gpu=_field(raw, "gpu", str, w),
        tp=_field(raw, "tp", int, w),
        replicas=_field(raw, "replicas", int, w),
        instance_type=_field(raw, "instance_type", str, w),
    )


def _request(raw: Any, index: int) -> BenchRequest | None:
    """The request if it succeeded with known token counts, else None."""
    where = f"requests[{index}]."
    if not isinstance(raw, dict):
        raise BenchError(f"{where[:-1]}: expected an object, got {raw!r}")
    sent = _field(raw, "sent_s", (int, float), where)
    status = _field(raw, "status", int, where, optional=True)
    error = _field(raw, "error", str, where, optional=True)
    prompt = _field(raw, "prompt_tokens", int, where, optional=True)
    output = _field(raw, "output_tokens", int, where, optional=True)
    ttft = _field(raw, "ttft_s", (int, float), where, optional=True)
    e2e = _field(raw, "e2e_s", (int, float), where, optional=True)
    ok = error is None and (status is None or 200 <= status < 300) and e2e is not None
    if not ok or prompt is None or output is None or prompt < 1 or output < 1:
        return None
    return BenchRequest(float(sent), prompt, output, None if ttft is None else float(ttft), float(e2e))


def read_bench(path: Path) -> Bench:
    """Parse and check one bench result; ``BenchError`` says what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BenchError(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BENCH_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise BenchError(f"not a gpufleet bench result (format {found!r}, expected {BENCH_FORMAT!r})")
    started = _field(doc, "started_at", str, "")
    try:
        started_at = datetime.fromisoformat(started)
    except ValueError:
        raise BenchError(f"started_at: not an ISO 8601 time: {started!r}") from None
    requests = _field(doc, "requests", list, "")
    good = [r for r in (_request(raw_request, i) for i, raw_request in enumerate(requests)) if r is not None]
    if not good:
        errors = [r.get("error") or f"status {r.get('status')}" for r in requests if isinstance(r, dict)]
        first = f"; first failure: {errors[0]}" if errors else ""
        raise BenchError(f"no successful requests with token counts ({len(requests)} sent{first})")
    if len(good) < MIN_REQUESTS:
        raise BenchError(f"only {len(good)} successful requests; a fit needs at least {MIN_REQUESTS}")
    good.sort(key=lambda r: r.sent_s)
    return Bench(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        model=_field(doc, "model", str, ""),
        stream=_field(doc, "stream", bool, ""),
        started_at=started_at,
        target=_target(doc.get("target")),
        requests=tuple(good),
        sent=len(requests),
    )


# ------------------------------------------------------------------------------------------------
# Replaying a bench through the simulation


Balancing = Literal["least-conn", "round-robin"]


def least_conn(sent: Sequence[float], done: Sequence[float], replicas: int) -> list[int]:
    """Replica of each request (in send order) under Nginx ``least_conn``: the one with the fewest requests in
    flight when it arrives, ties in turn (round-robin); a request is in flight from ``sent`` to ``done``."""
    in_flight: list[list[float]] = [[] for _ in range(replicas)]  # finish times of each replica's requests
    out, turn = [], 0
    for t, end in zip(sent, done, strict=True):
        counts = [sum(1 for f in finishes if f > t) for finishes in in_flight]
        fewest = min(counts)
        pick = next(r for k in range(replicas) if counts[r := (turn + k) % replicas] == fewest)
        turn = (pick + 1) % replicas
        in_flight[pick] = [f for f in in_flight[pick] if f > t] + [end]
        out.append(pick)
    return out


@dataclass(frozen=True)
class Replay:
    """A bench's requests dealt to ``replicas`` copies of ``replica`` as the load balancer did.

    ``least-conn`` (the deployments' default policy) re-enacts Nginx's choice from the measured send and
    completion times; ``round-robin`` deals them in send order (session affinity: the bench sends no session
    header, so its requests are spread, which round-robin approximates).
    """

    bench: Bench
    replica: Replica
    replicas: int
    balancing: Balancing = "least-conn"

    def assignment(self) -> list[int]:
        requests = self.bench.requests
        if self.balancing == "round-robin" or self.replicas == 1:
            return [i % self.replicas for i in range(len(requests))]
        return least_conn([r.sent_s for r in requests], [r.sent_s + r.e2e_s for r in requests], self.replicas)

    def simulate(self, step: StepCostModel) -> dict[Metric, list[float]]:
        """Simulated per-request latencies in the bench's order (NaN where the engine would reject one)."""
        requests = self.bench.requests
        n = len(requests)
        start = requests[0].sent_s
        ttft, e2e = [math.nan] * n, [math.nan] * n
        engine = self.replica.engine_config(api_overhead_s())
        assignment = self._assignment
        for r in range(self.replicas):
            mine = [i for i in range(n) if assignment[i] == r]
            if not mine:
                continue
            workload = trace(
                [requests[i].sent_s - start for i in mine],
                [requests[i].prompt_tokens for i in mine],
                [requests[i].output_tokens for i in mine],
            )
            result = simulate(workload, engine, step)
            for j, i in enumerate(mine):
                ttft[i], e2e[i] = result.ttft_s[j], result.e2e_s[j]
        tpot = [
            (e - t) / (q.output_tokens - 1) if q.output_tokens > 1 else math.nan
            for t, e, q in zip(ttft, e2e, requests, strict=True)
        ]
        return {"ttft": ttft, "tpot": tpot, "e2e": e2e}

    @cached_property
    def _assignment(self) -> list[int]:
        return self.assignment()


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Stat:
    """One statistic of a bench's latencies, measured and simulated over the same requests."""

    metric: Metric
    label: str
    weight: float
    """Its weight in the fit's loss (0: reported only)."""
    measured: float
    simulated: float

    @property
    def error_pct(self) -> float:
        return (self.simulated / self.measured - 1) * 100


def compare(bench: Bench, simulated: dict[Metric, list[float]]) -> list[Stat]:
    """Medians and 90th percentiles of each metric, and the medians within prompt-length groups.

    The fit weighs the medians: the overall one, and those of the shorter, middle and longer thirds of the
    prompts (when the lengths vary), whose spread tells compute-bound prefill from fixed costs. The p90s are
    shown, not fitted: measurement jitter inflates them, which the fit would read as a slower GPU.
    """
    measured = bench.measured()
    prompts = [r.prompt_tokens for r in bench.requests]
    cuts = sorted({_quantile(prompts, 100 / 3), _quantile(prompts, 200 / 3)})
    bounds = [-math.inf, *cuts, math.inf]  # groups: (bounds[k], bounds[k + 1]]
    labels = [f"p50 prompt ≤{c:.0f}" for c in cuts] + [f"p50 prompt >{cuts[-1]:.0f}"]
    out: list[Stat] = []
    for metric in bench.metrics:
        pairs = [
            (m, s, p)
            for m, s, p in zip(measured[metric], simulated[metric], prompts, strict=True)
            if not (math.isnan(m) or math.isnan(s)) and m > 0
        ]
        for q, weight in ((50, MEDIAN_WEIGHT), (90, 0.0)):
            out.append(Stat(metric, f"p{q}", weight, _quantile([m for m, _, _ in pairs], q),
                            _quantile([s for _, s, _ in pairs], q)))
        chosen = [
            (label, [(m, s) for m, s, p in pairs if bounds[k] < p <= bounds[k + 1]]) for k, label in enumerate(labels)
        ]
        chosen = [(label, group) for label, group in chosen if len(group) >= MIN_REQUESTS]
        if len(chosen) < 2:
            continue  # the prompts are (nearly) all the same length
        for label, group in chosen:
            out.append(Stat(metric, label, GROUP_WEIGHT / len(chosen), _quantile([m for m, _ in group], 50),
                            _quantile([s for _, s in group], 50)))
    return out


def loss(stats: Sequence[Stat]) -> float:
    total = 0.0
    for stat in stats:
        if stat.weight == 0:
            continue
        if not (stat.measured > 0 and stat.simulated > 0):
            return math.inf  # every request rejected: as far from the measurement as can be
        total += stat.weight * math.log(stat.simulated / stat.measured) ** 2
    return total


def abs_pct(stats: Sequence[Stat], metric: Metric) -> float | None:
    """Absolute % error of the metric's median, None if the bench does not have the metric."""
    found = [s for s in stats if s.metric == metric and s.label == "p50"]
    return abs(found[0].error_pct) if found else None


# ------------------------------------------------------------------------------------------------
# The search


@dataclass
class Fit:
    compute_scale: float
    bandwidth_scale: float
    before: list[list[Stat]]
    after: list[list[Stat]]
    loss_before: float
    loss_after: float
    evaluations: int
    at_bound: list[str] = field(default_factory=list)
    """Scales whose optimum is at a bound of BOUNDS: the model misses something, not just efficiency."""
    compute_fitted: bool = True
    """False when no bench streamed (no TTFT): the compute scale is then kept at 1."""

    def errors(self, which: Literal["before", "after"], metric: Metric) -> float | None:
        """Median over files of the absolute % error of the metric's median (None if no file has it)."""
        stats = self.before if which == "before" else self.after
        values = [v for s in stats if (v := abs_pct(s, metric)) is not None]
        return round(statistics.median(values), 1) if values else None


def _golden(f: Callable[[float], float], lo: float, hi: float, tol: float) -> float:
    """Minimiser of a unimodal ``f`` on [lo, hi] to within ``tol`` (golden-section search)."""
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = f(d)
    return c if fc <= fd else d


def _nelder_mead(
    f: Callable[[tuple[float, float]], float],
    start: tuple[float, float],
    *,
    step: float,
    bounds: tuple[float, float],
    tol: float,
    max_evaluations: int = 400,
) -> tuple[float, float]:
    """Minimiser of ``f`` on the square ``bounds``² near ``start`` (Nelder–Mead, points clipped to the box)."""
    lo, hi = bounds

    def clip(p: Sequence[float]) -> tuple[float, float]:
        return (min(hi, max(lo, p[0])), min(hi, max(lo, p[1])))

    simplex = [clip(start), clip((start[0] + step, start[1])), clip((start[0], start[1] + step))]
    values = [f(p) for p in simplex]
    for _ in range(max_evaluations):
        order = sorted(range(3), key=lambda i: values[i])
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        size = max(abs(a - b) for p in simplex[1:] for a, b in zip(p, simplex[0], strict=True))
        if size < tol:
            break
        best, worst = simplex[0], simplex[2]
        centre = ((best[0] + simplex[1][0]) / 2, (best[1] + simplex[1][1]) / 2)

        def towards(t: float, c: tuple[float, float] = centre, w: tuple[float, float] = worst) -> tuple[float, float]:
            return clip((c[0] + t * (w[0] - c[0]), c[1] + t * (w[1] - c[1])))

        reflected = towards(-1.0)
        fr = f(reflected)
        if fr < values[0]:
            expanded = towards(-2.0)
            fe = f(expanded)
            simplex[2], values[2] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[1]:
            simplex[2], values[2] = reflected, fr
        else:
            contracted = towards(0.5 if fr >= values[2] else -0.5)
            fc = f(contracted)
            if fc < min(fr, values[2]):
                simplex[2], values[2] = contracted, fc
            else:  # shrink towards the best point
                simplex = [best] + [clip(((p[0] + best[0]) / 2, (p[1] + best[1]) / 2)) for p in simplex[1:]]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(3), key=lambda i: values[i])]


def fit_scales(replays: Sequence[Replay], base: Sequence[Efficiency] | None = None, *, tol: float = 1e-3) -> Fit:
    """(compute, bandwidth) scales of the replicas' efficiencies that best reproduce the benches' latencies.

    ``base`` gives each replay's unscaled efficiencies (default: its replica's); scales are searched in log
    space within ``BOUNDS`` to a relative precision of about ``tol``.
    """
    effs = list(base) if base is not None else [r.replica.step.eff for r in replays]
    memo: dict[tuple[float, float], tuple[float, list[list[Stat]]]] = {}

    def evaluate(x: float, y: float) -> tuple[float, list[list[Stat]]]:
        key = (round(x, 9), round(y, 9))
        if key not in memo:
            kc, kb = math.exp(x), math.exp(y)
            stats = [
                compare(r.bench, r.simulate(StepTimeModel(r.replica.step.shape, eff.scaled(kc, kb))))
                for r, eff in zip(replays, effs, strict=True)
            ]
            memo[key] = (sum(loss(s) for s in stats), stats)
        return memo[key]

    lo, hi = math.log(BOUNDS[0]), math.log(BOUNDS[1])
    # A coarse grid first (with the unscaled point), so the search starts in the right basin.
    grid = [lo + (hi - lo) * i / 8 for i in range(9)]
    fit_compute = any("ttft" in r.bench.metrics for r in replays)
    if fit_compute:
        start = min([(0.0, 0.0), *((a, b) for a in grid for b in grid)], key=lambda p: evaluate(*p)[0])
        _nelder_mead(lambda p: evaluate(*p)[0], start, step=(hi - lo) / 16, bounds=(lo, hi), tol=tol)
    else:
        # End-to-end latency alone cannot tell compute from bandwidth: keep compute, fit bandwidth (decode
        # dominates end-to-end latency).
        best = min([0.0, *grid], key=lambda v: evaluate(0.0, v)[0])
        _golden(lambda v: evaluate(0.0, v)[0], max(lo, best - (hi - lo) / 8), min(hi, best + (hi - lo) / 8), tol)
    x, y = min(memo, key=lambda p: memo[p][0])  # the best point seen
    loss_before, before = evaluate(0.0, 0.0)
    loss_after, after = evaluate(x, y)
    at_bound = [
        name for name, v in (("compute", x), ("bandwidth", y)) if min(abs(v - lo), abs(v - hi)) < 2 * tol
    ]
    return Fit(
        compute_scale=math.exp(x),
        bandwidth_scale=math.exp(y),
        before=before,
        after=after,
        loss_before=loss_before,
        loss_after=loss_after,
        evaluations=len(memo),
        at_bound=at_bound,
        compute_fitted=fit_compute,
    )

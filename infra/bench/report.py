"""The JSON document (format ``gpufleet-bench/1``, see :mod:`infra.bench.schema`) and the rich tables."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from infra.bench.compare import Prediction, Target
from infra.bench.runner import BenchConfig, RunResult
from infra.bench.schema import FORMAT
from infra.bench.stats import METRICS, QUANTILES, Percentiles, Summary

LABELS = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E"}


def document(
    config: BenchConfig,
    result: RunResult,
    summary: Summary,
    target: Target | None,
    prediction: Prediction | None,
) -> dict[str, Any]:
    """The ``-o FILE`` document. Times are seconds; ``sent_s`` counts from the run's start."""
    return {
        "format": FORMAT,
        "endpoint": config.base_url,
        "model": result.model,
        "api": config.api,
        "stream": config.stream,
        "mode": config.mode,
        "rate_rps": config.rate if config.mode == "poisson" else None,
        "concurrency": config.concurrency if config.mode == "concurrency" else None,
        "started_at": result.started_at.isoformat().replace("+00:00", "Z"),
        "duration_s": result.duration_s,
        "target": target.json() if target else None,
        "requests": [
            {
                "sent_s": o.sent_s,
                "prompt_tokens": o.prompt_tokens,
                "output_tokens": o.output_tokens,
                "ttft_s": o.ttft_s,
                "e2e_s": o.e2e_s,
                "status": o.status,
                "error": o.error,
            }
            for o in result.outcomes
        ],
        "summary": summary.json(),
        "prediction": prediction.json() if prediction else None,
    }


def _ms(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value * 1000:,.1f}"


def _ratio(measured: float | None, predicted: float | None) -> str:
    if measured is None or predicted is None or not predicted or not math.isfinite(measured / predicted):
        return "—"
    return f"{measured / predicted:.2f}×"


def results_headline(config: BenchConfig, result: RunResult, summary: Summary) -> str:
    load = f"Poisson {config.rate:g} req/s" if config.mode == "poisson" else f"{config.concurrency} clients"
    return (f"[bold]{config.base_url}[/bold] — {result.model} ({config.api}, "
            f"{'stream' if config.stream else 'no stream'}), {load}: {summary.completed} ok, {summary.errors} errors "
            f"in {result.duration_s:.1f} s")


def results_table(summary: Summary) -> Table:
    # No table title: rich wraps a title to the table's (narrow) width; the headline is printed above instead.
    table = Table()
    table.add_column("metric", no_wrap=True)
    for q in QUANTILES:
        table.add_column(f"p{q} ms", justify="right")
    for metric in METRICS:
        pct = summary.latency[metric]
        table.add_row(LABELS[metric], *(_ms(pct[f"p{q}"]) for q in QUANTILES))
    table.add_section()
    table.add_row("throughput", f"{summary.throughput_rps:.2f} req/s", f"{summary.output_tokens_per_s:,.0f} tok/s", "")
    if summary.error_counts:
        errors = ", ".join(f"{name} {count}" for name, count in sorted(summary.error_counts.items()))
        table.add_row("errors", errors, "", "", style="red")
    return table


def comparison_headline(prediction: Prediction, target: Target) -> str:
    return (f"[bold]measured vs plan[/bold] — {target.stack}/{target.deployment}: {target.replicas}× "
            f"{target.gpu}×{target.tp} on {target.instance_type}, {prediction.per_replica_rate_rps:.2f} req/s per "
            "replica (the planner's simulation of the measured workload)")


def comparison_table(summary: Summary, prediction: Prediction) -> Table:
    table = Table()
    for header in ("metric", "measured", "predicted", "measured / predicted"):
        table.add_column(header, justify="left" if header == "metric" else "right", no_wrap=True)
    for metric in METRICS:
        measured: Percentiles = summary.latency[metric]
        predicted: Percentiles = prediction.latency[metric]
        for q in QUANTILES:
            key = f"p{q}"
            table.add_row(f"{LABELS[metric]} {key} ms", _ms(measured[key]), _ms(predicted[key]),
                          _ratio(measured[key], predicted[key]))
    table.add_section()
    table.add_row("throughput req/s", f"{summary.throughput_rps:.2f}", f"{prediction.throughput_rps:.2f}",
                  _ratio(summary.throughput_rps, prediction.throughput_rps))
    table.add_row("output tok/s", f"{summary.output_tokens_per_s:,.0f}", f"{prediction.output_tokens_per_s:,.0f}",
                  _ratio(summary.output_tokens_per_s, prediction.output_tokens_per_s))
    return table

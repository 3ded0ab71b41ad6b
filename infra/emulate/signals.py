"""An emulated replica's metrics by the engine catalog: each engine's names for the signals gpufleet reads.

The catalog (``infra/catalog/data/engines.yaml``) names, per engine, the metric behind each signal the rules and
dashboards read (TTFT, inter-token and end-to-end latency histograms; running and waiting requests; KV usage;
prompt and generation tokens; finished requests; preemptions), or leaves the signal out where the engine has
none. :data:`SIGNAL_SOURCES` is the emulator's side of that table: what feeds each signal. An emulator feeds
every signal the same way whatever the engine (:meth:`SignalSeries.observe`, :meth:`SignalSeries.inc`, gauge
values at scrape time); :class:`SignalSeries` keeps only the engine's signals and writes them under the
engine's names, as the text exposition format 0.0.4. Both emulators use it: ``gpufleet emulate``
(:class:`EngineSignalMetrics`, chosen by :func:`replica_metrics`) and the live monitoring test's
(``tests/e2e/metrics_emulator.py``), for every engine but vLLM, whose full family set (the catalog's signals
and much more) each emulator writes itself (:class:`infra.emulate.metrics.ReplicaMetrics` here).

Labels, as far as the catalog records them:

- constant labels per engine (:data:`ENGINE_SERIES_LABELS`): SGLang labels its series ``model_name`` (the
  served name) and ``engine_type`` (``unified``, a server without prefill/decode disaggregation), as the
  catalog's note on its metrics source says; vLLM's are ``model_name`` and ``engine``. The catalog records no
  series labels for TGI, llama.cpp or TensorRT-LLM, and the emulator adds none.
- a signal whose catalog ``labels`` name ``finished_reason`` carries it (vLLM, TensorRT-LLM), with the emulated
  request's reason (``stop``, ``length``, ``abort``, ``error``) under the engine's own value where it differs
  (``FINISH_REASON_VALUES``: TensorRT-LLM's ``cancelled``, and no error value).

Approximations (deliberate):

- Histogram buckets are vLLM-like (:mod:`infra.emulate.metrics`) for every engine, not each engine's own.
- HELP texts are gpufleet's, one per signal, not the engine's.
- Every signal gets the same values whatever the engine: TGI's ``tgi_request_mean_time_per_token_duration``
  is observed per token like vLLM's inter-token latency (TGI observes it once per request, prefill
  included); SGLang's ``num_retracted_requests`` counts the emulator's preemptions.
- The exposition is always text 0.0.4 without ``_created`` samples (prometheus_client in SGLang and
  TensorRT-LLM would also offer OpenMetrics and write ``_created``); counters are ``<name>_total`` or the bare
  name as the catalog's ``totalSuffix`` says (TGI's Rust exporter writes them bare).
- Real SGLang builds may add more labels (ranks) than the catalog records; they are not emulated.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client.utils import floatToGoString

from infra.catalog.schema import ENGINE_SIGNALS, EngineMetric, EngineSignal, InferenceEngine
from infra.emulate.engine import EngineObserver, Request
from infra.emulate.metrics import (
    REQUEST_LATENCY_BUCKETS,
    TOKEN_LATENCY_BUCKETS,
    TTFT_BUCKETS,
    CacheInfo,
    EngineState,
    ReplicaMetrics,
    WorkModel,
)
from infra.emulate.scheduler import Step
from infra.plan.simulate import EngineConfig

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASON = "finished_reason"
EMULATED_REASONS = ("stop", "length", "abort", "error")
# The emulated request's finish reason under the engine's own value (engines.yaml ``outcomes``): TensorRT-LLM
# calls an abort "cancelled" and has no error value (a failed request is an HTTP error, not a finished one).
FINISH_REASON_VALUES: dict[str, dict[str, str]] = {
    "trtllm": {"stop": "stop", "length": "length", "abort": "cancelled"},
}
SERVED_NAME = None
"""In :data:`ENGINE_SERIES_LABELS`: the label's value is the served model name."""

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class SignalSource:
    """How the emulators produce one signal, whatever the engine calls it."""

    kind: MetricKind
    help: str
    fed_by: str
    buckets: tuple[float, ...] = ()


SIGNAL_SOURCES: dict[EngineSignal, SignalSource] = {
    "ttft_seconds": SignalSource("histogram", "Histogram of time to first token in seconds.",
                                 "each request's first token: seconds since its arrival", TTFT_BUCKETS),
    "inter_token_seconds": SignalSource("histogram", "Histogram of inter-token latency in seconds.",
                                        "each later token: seconds since the previous one", TOKEN_LATENCY_BUCKETS),
    "e2e_seconds": SignalSource("histogram", "Histogram of end-to-end request latency in seconds.",
                                "each finished request: seconds from arrival to its end", REQUEST_LATENCY_BUCKETS),
    "requests_running": SignalSource("gauge", "Number of requests running.",
                                     "the engine's running requests at scrape time"),
    "requests_waiting": SignalSource("gauge", "Number of requests waiting in the queue.",
                                     "the engine's waiting requests at scrape time"),
    "kv_cache_usage": SignalSource("gauge", "KV-cache usage, a fraction (1 is full).",
                                   "the engine's KV usage at scrape time"),
    "prompt_tokens": SignalSource("counter", "Number of prompt tokens processed.",
                                  "each request's prompt tokens, at its first token"),
    "generation_tokens": SignalSource("counter", "Number of generated tokens.", "each token generated"),
    "requests_finished": SignalSource("counter", "Number of finished requests.",
                                      "each request that ended (and each answered with an error)"),
    "preemptions": SignalSource("counter", "Number of preempted requests.", "each request preempted by a step"),
}
GAUGE_SIGNALS: tuple[EngineSignal, ...] = tuple(s for s in ENGINE_SIGNALS if SIGNAL_SOURCES[s].kind == "gauge")

ENGINE_SERIES_LABELS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "vllm": (("model_name", SERVED_NAME), ("engine", "0")),
    "sglang": (("model_name", SERVED_NAME), ("engine_type", "unified")),
}
"""Labels on every series of an engine (engines.yaml key -> (label, value or SERVED_NAME)); none elsewhere."""

def signal_labels(metric: EngineMetric) -> tuple[str, ...]:
    """The labels of one signal beyond the engine's constant ones (the catalog's ``labels``)."""
    labels = metric.labels
    unknown = set(labels) - {FINISHED_REASON}
    if unknown:
        raise ValueError(f"{metric.name}: the emulator cannot fill the label(s) {', '.join(sorted(unknown))}")
    return labels


def series_labels(engine: InferenceEngine, model_name: str) -> dict[str, str]:
    """The constant labels of an engine's series (:data:`ENGINE_SERIES_LABELS`)."""
    return {label: model_name if value is SERVED_NAME else value
            for label, value in ENGINE_SERIES_LABELS.get(engine.name, ())}


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, count: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += count  # le: value <= bound
        self.count += count
        self.total += value * count


def _float(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


class SignalSeries:
    """One replica's catalog signals under its engine's names; not thread-safe (callers lock).

    Feeding a signal the engine does not expose is a no-op, so emulators feed every signal for every engine
    (Ollama has no metrics endpoint, hence no signal: its series stay empty and nobody serves the page).
    """

    def __init__(self, engine: InferenceEngine, model_name: str,
                 finish_reasons: tuple[str, ...] = EMULATED_REASONS) -> None:
        self.engine = engine
        self.labels = series_labels(engine, model_name)
        own = FINISH_REASON_VALUES.get(engine.name)
        self._reason_values = {r: own[r] for r in finish_reasons if r in own} if own else {r: r for r in finish_reasons}
        finish_reasons = tuple(self._reason_values.values())
        self._counters: dict[EngineSignal, dict[str, float]] = {}
        self._histograms: dict[EngineSignal, _Histogram] = {}
        for signal, metric in engine.metrics.signals.items():
            source = SIGNAL_SOURCES[signal]
            if metric.kind != source.kind:
                raise ValueError(f"{engine.name}: {metric.name} is a {metric.kind}, the emulator makes a "
                                 f"{source.kind} for {signal}")
            if source.kind == "counter":
                reasons = finish_reasons if signal_labels(metric) else ("",)
                self._counters[signal] = dict.fromkeys(reasons, 0.0)
            elif source.kind == "histogram":
                self._histograms[signal] = _Histogram(tuple(float(b) for b in source.buckets))

    def observe(self, signal: EngineSignal, value: float, count: int = 1) -> None:
        """One histogram observation (``count`` times the same value)."""
        histogram = self._histograms.get(signal)
        if histogram is not None and count > 0:
            histogram.observe(value, count)

    def inc(self, signal: EngineSignal, amount: float = 1.0, *, reason: str = "") -> None:
        """A counter increment; ``reason`` is the finish reason where the signal is labelled by it."""
        values = self._counters.get(signal)
        if values is None or amount == 0:
            return
        if "" in values:
            values[""] += amount
            return
        if reason not in self._reason_values and reason in EMULATED_REASONS:
            return  # the engine has no value for it (TensorRT-LLM errors): not a finished request
        key = self._reason_values.get(reason)
        if key is None:
            raise ValueError(f"unknown finish reason {reason!r}")
        values[key] += amount

    def value(self, signal: EngineSignal) -> float:
        """A counter's total over its label values, or a histogram's count (for tests and knobs)."""
        if signal in self._counters:
            return sum(self._counters[signal].values())
        if signal in self._histograms:
            return float(self._histograms[signal].count)
        raise KeyError(f"{self.engine.name} has no counter or histogram for {signal}")

    def exposition(self, gauges: Mapping[EngineSignal, float]) -> bytes:
        """The metrics page, with the gauges' values at scrape time (:data:`GAUGE_SIGNALS`)."""
        lines: list[str] = []
        for signal, metric in self.engine.metrics.signals.items():
            source = SIGNAL_SOURCES[signal]
            name = metric.name if source.kind == "histogram" else metric.sample()
            lines += [f"# HELP {name} {source.help}", f"# TYPE {name} {source.kind}"]
            if source.kind == "gauge":
                lines.append(f"{name}{_labels(self.labels)} {_float(gauges[signal])}")
            elif source.kind == "counter":
                for reason, total in self._counters[signal].items():
                    extra = {FINISHED_REASON: reason} if reason else {}
                    lines.append(f"{name}{_labels({**self.labels, **extra})} {_float(total)}")
            else:
                lines += self._histogram_lines(metric, self._histograms[signal])
        return ("\n".join(lines) + "\n").encode()

    def _histogram_lines(self, metric: EngineMetric, histogram: _Histogram) -> list[str]:
        lines: list[str] = []
        running = 0
        for bound, n in zip((*histogram.bounds, math.inf), histogram.counts, strict=True):
            running += n
            lines.append(f"{metric.sample('bucket')}{_labels({**self.labels, 'le': _float(bound)})} "
                         f"{_float(running)}")
        labels = _labels(self.labels)
        lines.append(f"{metric.sample('count')}{labels} {_float(histogram.count)}")
        lines.append(f"{metric.sample('sum')}{labels} {_float(histogram.total)}")
        return lines


# ------------------------------------------------------------------------------------------ gpufleet emulate


class ReplicaTelemetry(EngineObserver, Protocol):
    """What the HTTP server needs from a replica's metrics, whatever the engine."""

    def bind(self, state: EngineState) -> None: ...
    def render(self, accept: str) -> tuple[bytes, str]: ...
    def on_rejected(self, reason: str = "max_model_len_exceeded") -> None: ...
    def on_error(self) -> None: ...
    def on_lora(self, running: str) -> None: ...


class EngineSignalMetrics:
    """``gpufleet emulate``'s metrics for an engine other than vLLM: the catalog signals, fed by the simulated
    engine's events as :class:`~infra.emulate.metrics.ReplicaMetrics` feeds vLLM's families of the same signals
    (TTFT on a request's first token, inter-token latency on the later ones, end-to-end latency and the finish
    reason when it ends, prompt tokens at the first token, preemptions per step)."""

    def __init__(self, engine: InferenceEngine, model_name: str) -> None:
        self.series = SignalSeries(engine, model_name)
        self._state: EngineState | None = None

    def bind(self, state: EngineState) -> None:
        self._state = state

    def gauges(self) -> dict[EngineSignal, float]:
        state = self._state
        if state is None:
            return dict.fromkeys(GAUGE_SIGNALS, 0.0)
        return {"requests_running": float(state.num_running), "requests_waiting": float(state.num_waiting),
                "kv_cache_usage": state.kv_usage}

    def render(self, accept: str) -> tuple[bytes, str]:
        return self.series.exposition(self.gauges()), CONTENT_TYPE

    def on_rejected(self, reason: str = "max_model_len_exceeded") -> None:
        """Refused before the engine: no catalog signal counts it (vLLM's admission_rejections is vLLM's own)."""

    def on_error(self) -> None:
        self.series.inc("requests_finished", reason="error")

    def on_lora(self, running: str) -> None:
        """LoRA request info is a vLLM family: nothing to update here."""

    def on_admitted(self, req: Request, now: float) -> None:
        """Admission feeds no catalog signal (vLLM's prefix-cache queries are vLLM's own)."""

    def on_step(self, step: Step, seconds: float) -> None:
        self.series.inc("preemptions", len(step.preempted))

    def on_token(self, req: Request, now: float) -> None:
        self.series.inc("generation_tokens")
        if req.emitted == 1:
            self.series.observe("ttft_seconds", now - req.arrival)
            self.series.inc("prompt_tokens", req.prompt_tokens)
        else:
            self.series.observe("inter_token_seconds", now - req.last_token)

    def on_finished(self, req: Request, now: float) -> None:
        assert req.finished is not None
        self.series.inc("requests_finished", reason=req.finished)
        self.series.observe("e2e_seconds", now - req.arrival)


def replica_metrics(
    engine: InferenceEngine,
    model_name: str,
    config: EngineConfig,
    *,
    cache: CacheInfo | None = None,
    work: WorkModel | None = None,
    lora_adapters: tuple[str, ...] = (),
) -> ReplicaTelemetry:
    """The metrics of an emulated replica of ``engine``: vLLM's full family set for vLLM (its extras, such as
    the prefix cache, LoRA and cache-config families, stay vLLM's), the catalog signals for the others."""
    if engine.name == "vllm":
        return ReplicaMetrics(model_name, config, cache=cache, work=work, lora_adapters=lora_adapters)
    return EngineSignalMetrics(engine, model_name)

"""Emulated exporters for the live monitoring tests: engine replicas, dcgm-exporter hosts, the Nginx exporter.

A real Prometheus scrapes these loopback endpoints with the rendered scrape config and rules, so every name,
type and label here must be what the real exporters expose:

- **vLLM** (``/metrics`` of each replica): every metric family of the pinned vLLM
  (``reference/vllm-0.33-metrics.tsv``), served by prometheus_client (0.22.1, pinned: 0.23-0.26 make
  Prometheus 2.42 store ``vllm:x`` as ``vllm_x``) from one ``CollectorRegistry`` per replica, with the same
  content negotiation as vLLM (text 0.0.4 or OpenMetrics, by the ``Accept`` header).
- **the other engines** (:class:`EngineReplica` with ``engine`` SGLang, TGI, llama.cpp, Ollama, TensorRT-LLM):
  the signals the engine catalog (``infra/catalog/data/engines.yaml``) names for the engine, under its names,
  types and labels, on its metrics path (TensorRT-LLM's ``/prometheus/metrics``; Ollama has none, its endpoint
  answers health only), written by :class:`infra.emulate.signals.SignalSeries` (whose docstring lists the
  approximations: vLLM-like buckets, gpufleet's HELP texts, the same values for every engine). They are fed by
  the same simulated requests as vLLM's families; vLLM's other families (prefix cache, LoRA, ...) are vLLM's.
- **dcgm-exporter** (one endpoint per GPU host): the default counter set of NVIDIA dcgm-exporter
  (``etc/default-counters.csv``), written as dcgm-exporter writes it (counters without ``_total``).
- **prometheus-nginx-exporter 0.11** (Debian) over stub_status, plus the LB's JSON access log (the
  ``gpufleet_json`` log format of ``templates/nginx/nginx.conf.j2``) appended to a file for a real mtail.

A background ticker simulates traffic: Poisson arrivals per deployment, spread over its up replicas like
``least_conn``, each request with sampled tokens and timings; a request's metrics are recorded when it
finishes, so the counters and histograms stay consistent with each other at every scrape (the state is read
under the same lock the ticker writes it with). Knobs (thread-safe methods of :class:`Emulator`) inject faults.

``python -m tests.e2e.metrics_emulator --demo`` runs a small fleet and prints its URLs.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import decimal
import hashlib
import json
import math
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from infra.catalog import load_catalog
from infra.catalog.schema import InferenceEngine
from infra.emulate.signals import SignalSeries
from infra.render.telemetry import DCGM_JOB, DEPLOYMENT_LABEL, ENGINE_JOB, ENGINE_LABEL, MODEL_LABEL, NGINX_JOB

LOOPBACK = "127.0.0.1"
METRICS_PATH = "/metrics"  # Prometheus' default metrics_path (the exporters' and most engines' path)
DownMode = Literal["close", "503"]
FINISH_REASONS = ("stop", "length", "abort", "error")

# -- histogram buckets ----------------------------------------------------------------------------------------
# vLLM-like, not authoritative: copied from vLLM's v1 PrometheusStatLogger (vllm/v1/metrics/loggers.py) of a
# release older than the pinned 0.33, whose source is not at hand. Families absent from that file use plausible
# buckets. Rules and dashboards only depend on `le` existing, not on the bounds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                         10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50)  # plausible
KV_BLOCK_SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
                            50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)  # plausible


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to ``max_value``."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(value)
        exponent += 1


# -- configuration --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadProfile:
    """The traffic one replica gets at multiplier 1 and how fast it serves it (typical = median)."""

    request_rate: float = 2.0  # requests/s arriving for this replica
    mean_prompt_tokens: int = 1024
    mean_output_tokens: int = 256
    ttft_s: float = 0.15  # typical prefill time; TTFT = queue + prefill
    tpot_s: float = 0.025  # typical inter-token latency
    prefix_cache_hit_rate: float = 0.3  # fraction of prompt tokens found in the prefix cache
    abort_ratio: float = 0.005  # clients cancelling (finished_reason="abort")
    rejection_ratio: float = 0.001  # requests vLLM refuses (admission_rejections; 400 at the LB)

    def __post_init__(self) -> None:
        if self.request_rate < 0 or self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ValueError("request_rate must be >= 0, ttft_s and tpot_s > 0")
        if self.mean_prompt_tokens < 1 or self.mean_output_tokens < 1:
            raise ValueError("mean token counts must be >= 1")
        for ratio in (self.prefix_cache_hit_rate, self.abort_ratio, self.rejection_ratio):
            _check_fraction(ratio)

    @property
    def typical_e2e_s(self) -> float:
        """E2E latency is not configured on its own: it follows from TTFT, TPOT and the output length."""
        return self.ttft_s + self.mean_output_tokens * self.tpot_s


@dataclass(frozen=True)
class EngineReplica:
    """One inference server of a deployment: by default vLLM (one engine core, ``engine="0"``); ``engine``
    names another engine of the catalog (a key of ``engines.yaml``: sglang, tgi, llamacpp, ollama, trtllm)."""

    deployment: str
    served_model_name: str
    load: LoadProfile = field(default_factory=LoadProfile)
    name: str = ""  # unique; default "<deployment>-<index in its deployment>"
    lora_adapters: tuple[str, ...] = ()  # none by default; requests then name the base model
    max_model_len: int = 8192
    max_num_seqs: int = 256
    kv_cache_tokens: int = 200_000  # KV-cache capacity: num_gpu_blocks x block_size
    block_size: int = 16
    model_params: float = 8e9  # for the estimated FLOPs/bytes counters
    kv_bytes_per_token: int = 131_072  # Llama-3-8B in bf16: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 B
    tensor_parallel_size: int = 1
    port: int = 0  # 0: a free port, kept for the emulator's lifetime
    engine: str = "vllm"

    @property
    def inference_engine(self) -> InferenceEngine:
        """The engine's catalog record (its metrics path, signals and health paths)."""
        try:
            return load_catalog().engines[self.engine]
        except KeyError:
            raise ValueError(f"unknown engine {self.engine!r}; the catalog has {sorted(load_catalog().engines)}"
                             ) from None


VllmReplica = EngineReplica
"""The name from before other engines: a vLLM replica unless ``engine`` says otherwise."""


@dataclass(frozen=True)
class GpuHost:
    """A host running dcgm-exporter. Its GPUs follow the load of the replicas it serves."""

    hostname: str
    gpus: int = 1
    model_name: str = "NVIDIA H100 80GB HBM3"
    fb_total_mib: int = 81_559  # what DCGM reports for an H100 80GB
    deployment: str | None = None  # dedicated to one deployment: its target gets the deployment label
    serves: tuple[str, ...] = ()  # replica names driving the load; default: all replicas of `deployment`
    driver_version: str = "535.183.01"
    port: int = 0


@dataclass(frozen=True)
class NginxLb:
    """The load balancer: prometheus-nginx-exporter endpoint and (optionally) the JSON access log."""

    access_log: Path | None = None
    port: int = 0
    unauthorized_ratio: float = 0.003  # 401 before routing (bad API key): deployment ""
    not_found_ratio: float = 0.001  # 404 before routing (unknown model): deployment ""
    rate_limited_ratio: float = 0.002  # 429 from limit_req in the deployment's location


@dataclass(frozen=True)
class EmulatorConfig:
    replicas: tuple[EngineReplica, ...]
    gpu_hosts: tuple[GpuHost, ...] = ()
    nginx: NginxLb | None = field(default_factory=NginxLb)
    tick_s: float = 0.5
    warmup_s: float | None = None  # simulated history before start; default ~3 typical E2E (5..60 s)
    seed: int | None = None
    host: str = LOOPBACK


@dataclass(frozen=True)
class EndpointInfo:
    """Where Prometheus finds one emulated exporter, and the target labels the scrape config gives it.

    An engine replica's labels are ``deployment``, ``model`` and ``inference_engine`` (the catalog key);
    ``metrics_path`` is its engine's (None for Ollama: no metrics endpoint), ``health_paths`` its health and
    readiness paths.
    """

    name: str  # "<engine>/<replica>" (vllm/chat-0, sglang/chat-1, ...), "dcgm/<hostname>" or "nginx"
    job: str
    host: str
    port: int
    labels: tuple[tuple[str, str], ...] = ()
    metrics_path: str | None = METRICS_PATH
    health_paths: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The metrics URL (an Ollama replica has none: ValueError)."""
        if self.metrics_path is None:
            raise ValueError(f"{self.name} has no metrics endpoint")
        return f"http://{self.address}{self.metrics_path}"

    @property
    def health_url(self) -> str:
        """The health URL (engine replicas only)."""
        if not self.health_paths:
            raise ValueError(f"{self.name} has no health endpoint")
        return f"http://{self.address}{self.health_paths[0]}"

    def file_sd_labels(self) -> dict[str, str]:
        """Target labels for file_sd, with ``__metrics_path__`` where the path is not Prometheus' default."""
        labels = dict(self.labels)
        if self.metrics_path not in {None, METRICS_PATH}:
            labels["__metrics_path__"] = str(self.metrics_path)
        return labels


class EmulatorError(RuntimeError):
    """The background ticker failed; raised by :meth:`Emulator.stop` (and :meth:`Emulator.check`)."""


# -- small helpers --------------------------------------------------------------------------------------------
def _check_fraction(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a fraction in [0, 1], got {value}")


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation; exact enough for traffic
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _lognormal_median(rng: random.Random, median: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(median), sigma)


def _lognormal_mean(rng: random.Random, mean: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def _py_float(value: float) -> str:
    """A bucket bound as prometheus_client (vLLM's exporter) writes it in ``le``: 1.0, 2560.0, +Inf."""
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _go_float(value: float) -> str:
    """A sample value as client_golang writes it: strconv.FormatFloat(v, 'g', -1, 64): 25, 0.5, 1.234567e+06."""
    if math.isinf(value) or math.isnan(value):
        return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN")
    d = decimal.Decimal(repr(float(value)))
    if d.is_zero():
        return "0"
    sign, digits, _ = d.normalize().as_tuple()
    exp = d.adjusted()
    text = "".join(map(str, digits))
    if exp < -4 or exp >= 6:  # shortest 'g' switches to %e from 1e6 (Go's eprec is 6 for shortest)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{'-' if sign else ''}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return f"{d.normalize():f}"


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal non-negative integers."""
    q, r = divmod(total, parts)
    return [q + 1] * r + [q] * (parts - r)


class _Histogram:
    """A Prometheus histogram that accepts an observation repeated ``count`` times (per-token latencies)."""

    __slots__ = ("bounds", "count", "counts", "created", "total")

    def __init__(self, bounds: Sequence[float], created: float) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0
        self.created = created

    def observe(self, value: float, count: int = 1) -> None:
        if count <= 0:
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += count  # le: value <= bound
        self.count += count
        self.total += value * count

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((_py_float(bound), float(running)))
        return out


# -- the vLLM replica -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Request:
    arrival: float
    start: float  # leaves the waiting queue
    finish: float
    prompt: int
    cached: int
    output: int
    max_tokens_param: int | None
    max_tokens: int  # effective limit
    reason: str
    queue: float
    prefill: float
    decode: float
    itl: list[tuple[float, int]]  # (inter-token latency, how many tokens had it)
    model: str
    streamed: bool
    deferred: bool
    preemptions: int = 0
    failed_tries: tuple[str, ...] = ()  # upstream addresses Nginx tried first (down replicas)
    overhead: float = 0.0

    @property
    def ttft(self) -> float:
        return self.queue + self.prefill

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival


class _VllmMetrics:
    """The replica's metric values; a counter reset (restart) is a new instance."""

    def __init__(self, replica: EngineReplica, created: float) -> None:
        token_buckets = build_1_2_5_buckets(replica.max_model_len)
        self.created = created
        self.counters: dict[str, float] = {}
        self.labelled: dict[str, dict[str, float]] = {
            "request_success": dict.fromkeys(FINISH_REASONS, 0.0),
            "prompt_tokens_by_source": dict.fromkeys(("local_compute", "local_cache_hit", "external_kv_transfer"),
                                                     0.0),
            "prompt_tokens_cached_by_source": dict.fromkeys(("local_cache_hit", "external_kv_transfer"), 0.0),
            "admission_rejections": dict.fromkeys(("max_model_len_exceeded", "queue_full"), 0.0),
            "spec_decode_num_accepted_tokens_per_pos": dict.fromkeys(("0", "1", "2"), 0.0),
            "watermark_requests": dict.fromkeys(("accepted", "rejected"), 0.0),
        }
        self.hist: dict[str, _Histogram] = {
            name: _Histogram(bounds, created) for name, bounds in (
                ("time_to_first_token_seconds", TTFT_BUCKETS),
                ("inter_token_latency_seconds", TOKEN_LATENCY_BUCKETS),
                ("request_time_per_output_token_seconds", TOKEN_LATENCY_BUCKETS),
                ("e2e_request_latency_seconds", REQUEST_LATENCY_BUCKETS),
                ("request_queue_time_seconds", REQUEST_LATENCY_BUCKETS),
                ("request_inference_time_seconds", REQUEST_LATENCY_BUCKETS),
                ("request_prefill_time_seconds", REQUEST_LATENCY_BUCKETS),
                ("request_decode_time_seconds", REQUEST_LATENCY_BUCKETS),
                ("request_prompt_tokens", token_buckets),
                ("request_generation_tokens", token_buckets),
                ("request_max_num_generation_tokens", token_buckets),
                ("request_params_max_tokens", token_buckets),
                ("request_prefill_kv_computed_tokens", token_buckets),
                ("request_params_n", PARAMS_N_BUCKETS),
                ("request_num_preemptions", PREEMPTION_BUCKETS),
                ("iteration_tokens_total", ITERATION_TOKEN_BUCKETS),
                ("kv_block_lifetime_seconds", KV_BLOCK_SECONDS_BUCKETS),
                ("kv_block_idle_before_evict_seconds", KV_BLOCK_SECONDS_BUCKETS),
                ("kv_block_reuse_gap_seconds", KV_BLOCK_SECONDS_BUCKETS),
            )
        }

    def inc(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + amount

    def record_finished(self, req: _Request) -> None:
        h = self.hist
        self.labelled["request_success"][req.reason] += 1
        h["e2e_request_latency_seconds"].observe(req.e2e)
        h["request_queue_time_seconds"].observe(req.queue)
        h["request_prefill_time_seconds"].observe(req.prefill)
        h["request_decode_time_seconds"].observe(req.decode)
        h["request_inference_time_seconds"].observe(req.prefill + req.decode)
        h["time_to_first_token_seconds"].observe(req.ttft)
        for latency, count in req.itl:
            h["inter_token_latency_seconds"].observe(latency, count)
        h["request_time_per_output_token_seconds"].observe(req.decode / (req.output - 1) if req.output > 1 else 0.0)
        h["request_prompt_tokens"].observe(req.prompt)
        h["request_generation_tokens"].observe(req.output)
        h["request_max_num_generation_tokens"].observe(req.max_tokens)
        if req.max_tokens_param is not None:
            h["request_params_max_tokens"].observe(req.max_tokens_param)
        h["request_params_n"].observe(1)
        h["request_num_preemptions"].observe(req.preemptions)
        h["request_prefill_kv_computed_tokens"].observe(req.prompt - req.cached)
        self.inc("prompt_tokens", req.prompt)
        self.inc("generation_tokens", req.output)
        self.inc("prompt_tokens_cached", req.cached)
        self.inc("prefix_cache_queries", req.prompt)
        self.inc("prefix_cache_hits", req.cached)
        self.labelled["prompt_tokens_by_source"]["local_compute"] += req.prompt - req.cached
        self.labelled["prompt_tokens_by_source"]["local_cache_hit"] += req.cached
        self.labelled["prompt_tokens_cached_by_source"]["local_cache_hit"] += req.cached


# Plain counters every replica exposes (value 0 when the feature is unused), with their HELP text.
_COUNTERS = {
    "prompt_tokens": "Number of prefill tokens processed.",
    "generation_tokens": "Number of generation tokens processed.",
    "prompt_tokens_cached": "Number of cached prompt tokens (local + external).",
    "prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "external_prefix_cache_queries": "External prefix cache queries from KV connector cross-instance cache sharing, "
                                     "in terms of number of queried tokens.",
    "external_prefix_cache_hits": "External prefix cache hits from KV connector cross-instance cache sharing, in "
                                  "terms of number of cached tokens.",
    "mm_cache_queries": "Multi-modal cache queries, in terms of number of queried items.",
    "mm_cache_hits": "Multi-modal cache hits, in terms of number of cached items.",
    "num_preemptions": "Cumulative number of preemption from the engine.",
    "corrupted_requests": "Corrupted requests, in terms of total number of requests with NaNs in logits.",
    "estimated_flops_per_gpu": "Estimated number of floating point operations per GPU.",
    "estimated_read_bytes_per_gpu": "Estimated number of bytes read from memory per GPU.",
    "estimated_write_bytes_per_gpu": "Estimated number of bytes written to memory per GPU.",
    "spec_decode_num_drafts": "Number of spec decoding drafts.",
    "spec_decode_num_draft_tokens": "Number of draft tokens.",
    "spec_decode_num_accepted_tokens": "Number of accepted tokens.",
}
# Counters with one extra label: (label name, HELP); the label values are the keys of _VllmMetrics.labelled.
_LABELLED_COUNTERS = {
    "request_success": ("finished_reason", "Count of successfully processed requests."),
    "prompt_tokens_by_source": ("source", "Number of prompt tokens by source."),
    "prompt_tokens_cached_by_source": ("source", "Number of cached prompt tokens by source."),
    "spec_decode_num_accepted_tokens_per_pos": ("position", "Accepted tokens per draft position."),
    "watermark_requests": ("status", "Requests by watermark status."),  # label values guessed; off by default
}
_HISTOGRAM_HELP = {
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "request_time_per_output_token_seconds": "Histogram of time_per_output_token_seconds per request.",
    "e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "request_prompt_tokens": "Number of prefill tokens processed.",
    "request_generation_tokens": "Number of generation tokens processed.",
    "request_max_num_generation_tokens": "Histogram of maximum number of requested generation tokens.",
    "request_params_max_tokens": "Histogram of the max_tokens request parameter.",
    "request_prefill_kv_computed_tokens": "Histogram of new KV tokens computed during prefill "
                                          "(excluding cached tokens).",
    "request_params_n": "Histogram of the n request parameter.",
    "request_num_preemptions": "Number of preemptions per request.",
    "iteration_tokens_total": "Histogram of number of tokens per engine_step.",
    "kv_block_lifetime_seconds": "Histogram of KV cache block lifetime from allocation to eviction (sampled).",
    "kv_block_idle_before_evict_seconds": "Histogram of idle time before KV cache block eviction (sampled).",
    "kv_block_reuse_gap_seconds": "Histogram of time gaps between consecutive KV cache block accesses (sampled).",
}


def _signal_series(config: EngineReplica) -> SignalSeries:
    return SignalSeries(config.inference_engine, config.served_model_name, FINISH_REASONS)


class _Replica:
    """Simulation state of one engine replica. Every method runs under the emulator's lock.

    ``metrics`` holds vLLM's families, ``signals`` the engine's catalog signals; both are fed by every
    request, and the endpoint shows the one its engine has (vLLM: ``metrics``).
    """

    def __init__(self, config: EngineReplica, rng: random.Random, created: float) -> None:
        self.config = config
        self.rng = rng
        self.metrics = _VllmMetrics(config, created)
        self.signals = _signal_series(config)
        self.in_flight: list[_Request] = []
        self.up = True
        self.error_ratio = 0.0
        self.kv_floor = 0.0
        self.pending_preemptions = 0
        self.running = 0
        self.waiting = 0
        self.waiting_deferred = 0
        self.kv_usage = 0.0
        self.next_free = 0.0  # saturated: when the scheduler admits the next waiting request
        self.lora_running = ""
        self.lora_updated = created
        self.address = ""

    @property
    def saturated(self) -> bool:
        return self.kv_usage >= 0.95 or self.running >= self.config.max_num_seqs

    def admit(self, t: float, arrival_rate: float) -> _Request:
        """A request arriving at ``t``: sample its size and timings from the profile and the replica's state."""
        cfg, load, rng = self.config, self.config.load, self.rng
        prompt = max(1, min(cfg.max_model_len - 1, round(_lognormal_mean(rng, load.mean_prompt_tokens, 0.8))))
        hit = min(0.98, max(0.0, rng.gauss(load.prefix_cache_hit_rate, 0.15))) if load.prefix_cache_hit_rate else 0
        cached = min(prompt - 1, int(prompt * hit) // cfg.block_size * cfg.block_size)  # last token is recomputed
        room = cfg.max_model_len - prompt
        choices = [v for v in (256, 512, 1024, 2048, 4096, 8192) if 2 * load.mean_output_tokens <= v <= room]
        max_tokens_param = rng.choice(choices) if choices and rng.random() < 0.7 else None
        max_tokens = max_tokens_param or room
        output = max(1, round(_lognormal_mean(rng, load.mean_output_tokens, 0.7)))
        reason = "stop"
        if output >= max_tokens:
            output, reason = max_tokens, "length"
        if rng.random() < self.error_ratio:
            output, reason = max(1, int(output * rng.uniform(0.0, 0.3))), "error"
        elif rng.random() < load.abort_ratio:
            output, reason = max(1, int(output * rng.uniform(0.05, 0.9))), "abort"

        deferred = False
        if self.saturated:
            service_rate = max(0.8 * arrival_rate, 0.05)  # the KV cache admits less than arrives: queue grows
            start = max(t, self.next_free) + _lognormal_median(rng, 0.002, 0.5)
            self.next_free = start + 1.0 / service_rate
        else:
            rho = min(0.95, self.running / cfg.max_num_seqs)
            start = t + _lognormal_median(rng, 0.004 * (1 + 4 * rho), 0.6)
            deferred = prompt > 4 * load.mean_prompt_tokens  # chunked prefill defers long prompts a little
            if deferred:
                start += _lognormal_median(rng, load.ttft_s / 2, 0.3)
        uncached_mean = max(1.0, load.mean_prompt_tokens * (1 - load.prefix_cache_hit_rate))
        prefill = max(0.001, _lognormal_median(rng, load.ttft_s * ((prompt - cached) / uncached_mean) ** 0.7, 0.3))
        tpot = _lognormal_median(rng, load.tpot_s * (1 + 0.3 * self.kv_usage), 0.15)
        itl: list[tuple[float, int]] = []
        if output > 1:  # a few latency draws, each standing for a share of the tokens (bulk observation)
            draws = min(output - 1, 8)
            itl = [(_lognormal_median(rng, tpot, 0.35), n) for n in _split(output - 1, draws)]
        decode = sum(latency * n for latency, n in itl)
        overhead = _lognormal_median(rng, 0.002, 0.5)
        model = cfg.served_model_name
        if cfg.lora_adapters and rng.random() < 0.5:
            model = rng.choice(cfg.lora_adapters)
        req = _Request(arrival=t, start=start, finish=start + prefill + decode + overhead, prompt=prompt,
                       cached=cached, output=output, max_tokens_param=max_tokens_param, max_tokens=max_tokens,
                       reason=reason, queue=start - t, prefill=prefill, decode=decode, itl=itl, model=model,
                       streamed=rng.random() < 0.8, deferred=deferred, overhead=overhead)
        self.in_flight.append(req)
        return req

    def reject(self) -> None:
        self.metrics.labelled["admission_rejections"]["max_model_len_exceeded"] += 1

    def drop_in_flight(self) -> list[_Request]:
        dropped, self.in_flight = self.in_flight, []
        self.running = self.waiting = self.waiting_deferred = 0
        self.kv_usage = self.kv_floor
        return dropped

    def advance(self, t0: float, t1: float, wall: Callable[[float], float]) -> list[_Request]:
        """Retire the requests finished by ``t1``; update gauges, preemptions and per-iteration stats."""
        cfg, rng, m = self.config, self.rng, self.metrics
        finished = sorted((r for r in self.in_flight if r.finish <= t1), key=lambda r: r.finish)
        self.in_flight = [r for r in self.in_flight if r.finish > t1]
        for req in finished:
            m.record_finished(req)
            self._record_signals(req)
        self._iterations(finished, t1 - t0)
        self._kv_blocks(finished)

        running = [r for r in self.in_flight if r.start <= t1]
        self.running = len(running)
        self.waiting = len(self.in_flight) - self.running
        self.waiting_deferred = sum(1 for r in self.in_flight if r.start > t1 and r.deferred)
        kv_tokens = sum(r.prompt + min(r.output, max(0.0, t1 - r.start - r.prefill) / max(r.decode / r.output, 1e-6))
                        for r in running)
        self.kv_usage = min(1.0, max(self.kv_floor, kv_tokens / cfg.kv_cache_tokens))

        preempted = self.pending_preemptions
        self.pending_preemptions = 0
        if self.kv_usage >= 0.97 and running:  # out of KV blocks: the scheduler preempts running sequences
            preempted += _poisson(rng, 0.05 * len(running) * (t1 - t0))
        m.inc("num_preemptions", preempted)
        self.signals.inc("preemptions", preempted)
        for _ in range(preempted):
            if running:
                rng.choice(running).preemptions += 1

        adapters = ",".join(sorted({r.model for r in running if r.model != cfg.served_model_name}))
        if adapters != self.lora_running or finished:
            self.lora_running, self.lora_updated = adapters, wall(t1)
        return finished

    def reset_counters(self, created: float) -> None:
        """A restarted process: counters and histograms from zero."""
        self.metrics = _VllmMetrics(self.config, created)
        self.signals = _signal_series(self.config)

    def _record_signals(self, req: _Request) -> None:
        """A finished request in the catalog signals (the same values as vLLM's families get)."""
        signals = self.signals
        signals.observe("ttft_seconds", req.ttft)
        for latency, count in req.itl:
            signals.observe("inter_token_seconds", latency, count)
        signals.observe("e2e_seconds", req.e2e)
        signals.inc("prompt_tokens", req.prompt)
        signals.inc("generation_tokens", req.output)
        signals.inc("requests_finished", reason=req.reason)

    def signal_page(self) -> bytes:
        """The catalog signals' exposition (engines other than vLLM)."""
        return self.signals.exposition({"requests_running": self.running, "requests_waiting": self.waiting,
                                        "kv_cache_usage": self.kv_usage})

    def _iterations(self, finished: list[_Request], dt: float) -> None:
        """Engine steps of the tick: generation tokens spread evenly, each prompt in one step."""
        cfg, m = self.config, self.metrics
        if not finished:
            return
        generated = sum(r.output for r in finished)
        prompts = [r.prompt for r in finished]
        steps = max(1, min(generated, round(dt / cfg.load.tpot_s)))
        tokens = _split(generated, steps)
        for prompt in prompts:
            tokens[self.rng.randrange(steps)] += prompt
        for n in tokens:
            m.hist["iteration_tokens_total"].observe(n)
        computed = sum(r.prompt - r.cached for r in finished) + generated
        tp = cfg.tensor_parallel_size
        m.inc("estimated_flops_per_gpu", 2 * cfg.model_params * computed / tp)
        m.inc("estimated_read_bytes_per_gpu",
              (steps * 2 * cfg.model_params + sum(r.prompt + r.output for r in finished) * cfg.kv_bytes_per_token)
              / tp)
        m.inc("estimated_write_bytes_per_gpu", computed * cfg.kv_bytes_per_token / tp)

    def _kv_blocks(self, finished: list[_Request]) -> None:
        """The sampled KV-block lifetime metrics (off by default in vLLM): a sample per finished request."""
        h, rng = self.metrics.hist, self.rng
        for req in finished:
            h["kv_block_lifetime_seconds"].observe(req.e2e * rng.uniform(0.8, 3.0))
            h["kv_block_idle_before_evict_seconds"].observe(rng.expovariate(1 / 20))
            if req.cached:
                h["kv_block_reuse_gap_seconds"].observe(rng.expovariate(1 / 30))

    def families(self) -> Iterator[Metric]:
        """The replica's /metrics, as vLLM's PrometheusStatLogger names and labels it."""
        cfg, m = self.config, self.metrics
        base = ("model_name", "engine")
        values = [cfg.served_model_name, "0"]

        def gauge(name: str, doc: str, value: float, extra: dict[str, str] | None = None) -> GaugeMetricFamily:
            extra = extra or {}
            fam = GaugeMetricFamily(f"vllm:{name}", doc, labels=[*base, *extra])
            fam.add_metric([*values, *extra.values()], value)
            return fam

        yield gauge("num_requests_running", "Number of requests in model execution batches.", self.running)
        yield gauge("num_requests_waiting", "Number of requests waiting to be processed.", self.waiting)
        by_reason = GaugeMetricFamily("vllm:num_requests_waiting_by_reason", "Number of requests waiting, by reason.",
                                      labels=[*base, "reason"])
        by_reason.add_metric([*values, "capacity"], self.waiting - self.waiting_deferred)
        by_reason.add_metric([*values, "deferred"], self.waiting_deferred)
        yield by_reason
        yield gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", self.kv_usage)
        sleep = GaugeMetricFamily("vllm:engine_sleep_state",
                                  "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
                                  "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
                                  "level 2.", labels=[*base, "sleep_state"])
        for state, value in (("awake", 1.0), ("weights_offloaded", 0.0), ("discard_all", 0.0)):
            sleep.add_metric([*values, state], value)
        yield sleep
        for name, doc in _COUNTERS.items():
            counter = CounterMetricFamily(f"vllm:{name}", doc, labels=base)
            counter.add_metric(values, m.counters.get(name, 0.0), created=m.created)
            yield counter
        for name, (label, doc) in _LABELLED_COUNTERS.items():
            counter = CounterMetricFamily(f"vllm:{name}", doc, labels=[*base, label])
            for label_value, value in m.labelled[name].items():
                counter.add_metric([*values, label_value], value, created=m.created)
            yield counter
        rejections = CounterMetricFamily("vllm:admission_rejections", "Requests rejected at admission, by reason.",
                                         labels=["model_name", "reason"])
        for reason, value in m.labelled["admission_rejections"].items():
            rejections.add_metric([cfg.served_model_name, reason], value, created=m.created)
        yield rejections
        for name, doc in _HISTOGRAM_HELP.items():
            hist = m.hist[name]
            fam = HistogramMetricFamily(f"vllm:{name}", doc, labels=base)
            fam.add_metric(values, hist.cumulative(), hist.total)
            fam.samples.append(Sample(f"vllm:{name}_created", dict(zip(base, values, strict=True)), hist.created))
            yield fam
        cache_info = {  # vLLM: CacheConfig.metrics_info(), every field as a string, plus engine
            "block_size": str(cfg.block_size), "cache_dtype": "auto", "calculate_kv_scales": "False",
            "cpu_offload_gb": "0", "enable_prefix_caching": "True", "gpu_memory_utilization": "0.9",
            "is_attention_free": "False", "num_cpu_blocks": "None",
            "num_gpu_blocks": str(cfg.kv_cache_tokens // cfg.block_size), "num_gpu_blocks_override": "None",
            "prefix_caching_hash_algo": "sha256", "sliding_window": "None", "swap_space": "4", "engine": "0",
        }
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=list(cache_info))
        info.add_metric(list(cache_info.values()), 1.0)
        yield info
        # vLLM only has this with LoRA enabled, and sets it to the time of the last update; it also keeps every
        # label set it ever exported. Here: always present, only the current label set.
        lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
        lora.add_metric([str(len(cfg.lora_adapters)), "", self.lora_running], self.lora_updated)
        yield lora


class _ReplicaCollector(Collector):
    def __init__(self, emulator: Emulator, replica: _Replica) -> None:
        self._emulator, self._replica = emulator, replica

    def collect(self) -> Iterable[Metric]:
        with self._emulator._lock:
            return list(self._replica.families())


# -- GPUs (dcgm-exporter) ---------------------------------------------------------------------------------------
# Source: NVIDIA/dcgm-exporter etc/default-counters.csv (field, type, help). Types as there: a "counter" is
# written without a `_total` suffix. Left out of that file's defaults here: PCIe TX/RX throughput, vGPU license
# status and remapped rows (no rule or dashboard reads them).
DCGM_FIELDS = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C)."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ)."),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total number of NVLink bandwidth counters for all lanes"),
)
# substring of the model name -> (board power limit W, idle W, max SM clock MHz, memory clock MHz); plausible.
_GPU_SPECS = (
    ("H200", 700, 75, 1980, 3201), ("H100 PCIe", 350, 50, 1755, 1593), ("H100", 700, 70, 1980, 2619),
    ("A100", 400, 55, 1410, 1593), ("L40S", 350, 35, 2520, 9001), ("L4", 72, 16, 2040, 6251),
    ("A10G", 300, 25, 1710, 6251), ("T4", 70, 10, 1590, 5000),
)


@dataclass
class _Gpu:
    index: int
    uuid: str
    pci_bus_id: str
    temp_override: float | None = None
    xid: int = 0
    fb_fraction_override: float | None = None
    energy_mj: float = 0.0
    nvlink: float = 0.0
    values: dict[str, float] = field(default_factory=dict)


class _Host:
    def __init__(self, config: GpuHost, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        spec = next((s for s in _GPU_SPECS if s[0] in config.model_name), ("", 400, 50, 1500, 1500))
        _, self.tdp, self.idle_w, self.max_sm, self.mem_clock = spec
        self.gpus: list[_Gpu] = []
        for i in range(config.gpus):
            digest = hashlib.sha256(f"{config.hostname}/{i}".encode()).hexdigest()
            self.gpus.append(_Gpu(i, f"GPU-{uuid.UUID(digest[:32])}", f"00000000:{0x18 + 0x10 * i:02X}:00.0",
                                  energy_mj=float(int(digest[32:40], 16) % 10**9)))

    def advance(self, dt: float, running: int, serving: bool) -> None:
        rng = self.rng
        util = 100 * (1 - math.exp(-running / 2)) if running else rng.uniform(0, 1)
        batch = min(1.0, running / 64)
        for gpu in self.gpus:
            v = gpu.values
            u = min(100.0, max(0.0, util + rng.gauss(0, 2))) if running else util
            power = self.idle_w + (self.tdp - self.idle_w) * (u / 100) * (0.45 + 0.55 * batch)
            power = min(float(self.tdp), max(self.idle_w * 0.8, power + rng.gauss(0, self.tdp * 0.01)))
            temp = gpu.temp_override if gpu.temp_override is not None else 30 + 45 * power / self.tdp
            gpu.energy_mj += power * dt * 1000
            if self.config.gpus > 1:
                gpu.nvlink += u / 100 * 2e4 * dt * rng.uniform(0.8, 1.2)
            fraction = gpu.fb_fraction_override
            if fraction is None:  # vLLM preallocates gpu_memory_utilization (0.9) of the memory
                fraction = 0.9 + rng.uniform(-0.002, 0.002) if serving else 0.006
            total = self.config.fb_total_mib
            used = min(total, round(total * fraction))
            v.update({
                "DCGM_FI_DEV_SM_CLOCK": self.max_sm - rng.choice((0, 15, 30)) if u > 5 else 345,
                "DCGM_FI_DEV_MEM_CLOCK": self.mem_clock,
                "DCGM_FI_DEV_MEMORY_TEMP": round(temp + 4 + rng.gauss(0, 0.3)),
                "DCGM_FI_DEV_GPU_TEMP": round(temp + (0 if gpu.temp_override is not None else rng.gauss(0, 0.3))),
                "DCGM_FI_DEV_POWER_USAGE": power,
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": gpu.energy_mj,
                "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": v.get("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 0),
                "DCGM_FI_DEV_GPU_UTIL": round(u),
                "DCGM_FI_DEV_MEM_COPY_UTIL": round(u * 0.45),
                "DCGM_FI_DEV_ENC_UTIL": 0,
                "DCGM_FI_DEV_DEC_UTIL": 0,
                "DCGM_FI_DEV_XID_ERRORS": gpu.xid,
                "DCGM_FI_DEV_FB_FREE": total - used,
                "DCGM_FI_DEV_FB_USED": used,
                "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": gpu.nvlink,
            })

    def exposition(self) -> bytes:
        cfg = self.config
        lines: list[str] = []
        for name, typ, doc in DCGM_FIELDS:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {typ}"]
            for gpu in self.gpus:
                labels = (f'gpu="{gpu.index}",UUID="{gpu.uuid}",pci_bus_id="{gpu.pci_bus_id}",'
                          f'device="nvidia{gpu.index}",modelName="{cfg.model_name}",Hostname="{cfg.hostname}",'
                          f'DCGM_FI_DRIVER_VERSION="{cfg.driver_version}"')
                value = gpu.values.get(name, 0)
                text = f"{value:.6f}" if name == "DCGM_FI_DEV_POWER_USAGE" else str(round(value))
                lines.append(f"{name}{{{labels}}} {text}")
        return ("\n".join(lines) + "\n").encode()


# -- Nginx ------------------------------------------------------------------------------------------------------
class _Nginx:
    """stub_status counters of the LB and its JSON access log (log_format gpufleet_json)."""

    def __init__(self, config: NginxLb, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.stub_status_up = True
        self.accepted = self.handled = self.requests = 0
        self.in_flight = 0
        self.keepalive_idle = 0
        self._log: IO[str] | None = None
        if config.access_log is not None:
            config.access_log.parent.mkdir(parents=True, exist_ok=True)
            self._log = config.access_log.open("a", encoding="utf-8")

    @property
    def logging(self) -> bool:
        return self._log is not None

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def client_request(self) -> None:
        self.requests += 1
        if self.rng.random() < 0.3:  # the rest reuse a keepalive connection
            self.accepted += 1
            self.handled += 1

    def exposition(self) -> bytes:
        # prometheus-nginx-exporter (collector/nginx.go): stub_status unreadable -> only nginx_up 0. Client_golang
        # sorts families by name; the exporter's Go runtime/process families and build info are left out.
        families: list[tuple[str, str, str, float]] = []
        if self.stub_status_up:
            self.requests += 1  # the exporter's own stub_status request, on a new connection
            self.accepted += 1
            self.handled += 1
            reading = self.rng.choice((0, 0, 0, 1))
            writing = self.in_flight + 1
            families = [
                ("nginx_connections_accepted", "counter", "Accepted client connections", self.accepted),
                ("nginx_connections_active", "gauge", "Active client connections",
                 reading + writing + self.keepalive_idle),
                ("nginx_connections_handled", "counter", "Handled client connections", self.handled),
                ("nginx_connections_reading", "gauge", "Connections where NGINX is reading the request header",
                 reading),
                ("nginx_connections_waiting", "gauge", "Idle client connections", self.keepalive_idle),
                ("nginx_connections_writing", "gauge",
                 "Connections where NGINX is writing the response back to the client", writing),
                ("nginx_http_requests_total", "counter", "Total http requests", self.requests),
            ]
        families.append(("nginx_up", "gauge", "Status of the last metric scrape", 1 if self.stub_status_up else 0))
        lines: list[str] = []
        for name, typ, doc, value in families:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {typ}", f"{name} {_go_float(value)}"]
        return ("\n".join(lines) + "\n").encode()

    def log(self, entries: list[tuple[float, str]]) -> None:
        if self._log is None or not entries:
            return
        entries.sort(key=lambda e: e[0])
        self._log.write("".join(line + "\n" for _, line in entries))
        self._log.flush()

    def line(self, *, wall_end: float, request_time: float, status: int, model: str, deployment: str,
             bytes_sent: int, upstream: Sequence[tuple[str, str, float, float, float]] = ()) -> str:
        """One access-log line in the field order and types of ``log_format gpufleet_json``.

        ``upstream``: the tries, each (address, status, connect time, header time, response time); nginx joins
        several tries with ", " and logs variables without a value as "" (escape=json).
        """
        rng = self.rng

        def joined(values: Iterable[str]) -> str:
            return json.dumps(", ".join(values))

        fields = [
            ("time", json.dumps(datetime.fromtimestamp(wall_end).astimezone().isoformat(timespec="seconds"))),
            ("request_id", json.dumps(f"{rng.getrandbits(128):032x}")),
            ("client", json.dumps(f"10.20.{rng.randrange(4)}.{rng.randrange(2, 60)}")),
            ("method", json.dumps("POST")),
            ("uri", json.dumps(rng.choice(("/v1/chat/completions",) * 4 + ("/v1/completions",)))),
            ("status", str(status)),
            ("bytes_sent", str(bytes_sent)),
            ("request_time", f"{request_time:.3f}"),
            ("model", json.dumps(model)),
            ("deployment", json.dumps(deployment)),
            ("upstream_addr", joined(u[0] for u in upstream)),
            ("upstream_status", joined(u[1] for u in upstream)),
            ("upstream_connect_time", joined(f"{u[2]:.3f}" for u in upstream)),
            ("upstream_header_time", joined(f"{u[3]:.3f}" for u in upstream)),
            ("upstream_response_time", joined(f"{u[4]:.3f}" for u in upstream)),
        ]
        return "{" + ",".join(f'"{key}":{value}' for key, value in fields) + "}"


# -- HTTP endpoints ---------------------------------------------------------------------------------------------
Renderer = Callable[[str | None], tuple[bytes, str]]  # Accept header -> (body, content type)


class _Endpoint:
    """A loopback HTTP server in a background thread that can stop listening and listen again on its port."""

    def __init__(self, info: EndpointInfo, render: Renderer | None) -> None:
        self.info = info
        self._render = render
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.mode: Literal["up", "503", "closed"] = "closed"

    def open(self) -> None:
        if self._server is not None:
            self.mode = "up"
            return
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the http.server interface
                endpoint._handle(self)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        server = ThreadingHTTPServer((self.info.host, self.info.port), Handler)  # SO_REUSEADDR: re-bindable
        server.daemon_threads = True
        if self.info.port == 0:
            self.info = dataclasses.replace(self.info, port=server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"emulator {self.info.name}", daemon=True)
        self._thread.start()
        self.mode = "up"

    def close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self.mode = "closed"
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        metrics = self._render is not None and path == self.info.metrics_path
        if metrics and self._render is not None and self.mode == "up":
            try:
                body, content_type = self._render(request.headers.get("Accept"))
            except Exception as exc:  # a broken emulator must fail the scrape visibly, not hang it
                body, content_type, status = f"emulator error: {exc!r}\n".encode(), "text/plain", 500
            else:
                status = 200
        elif (metrics or path in self.info.health_paths) and self.mode == "503":
            body, content_type, status = b"Service Unavailable\n", "text/plain", 503
        elif path in self.info.health_paths:
            body, content_type, status = b"", "application/json", 200
        else:
            body, content_type, status = b"Not Found\n", "text/plain", 404
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


# -- the emulator -------------------------------------------------------------------------------------------------
class Emulator:
    """Emulated engine replicas, dcgm-exporter hosts and Nginx exporter; use as a context manager.

    Replica knobs take a ``target``: a replica name, or a deployment name for all its replicas.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        if not config.replicas:
            raise ValueError("at least one engine replica")
        if config.tick_s <= 0:
            raise ValueError("tick_s must be > 0")
        self.config = config
        self._lock = threading.RLock()
        self._rng = random.Random(config.seed)
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        warmup = config.warmup_s
        if warmup is None:
            warmup = min(60.0, max(5.0, 3 * max(r.load.typical_e2e_s for r in config.replicas)))
        self._warmup = warmup
        created = self._wall(self._mono0 - warmup)
        self._replicas: dict[str, _Replica] = {}
        self._deployments: dict[str, list[_Replica]] = {}
        self._multipliers: dict[str, float] = {}
        for replica in config.replicas:
            group = self._deployments.setdefault(replica.deployment, [])
            name = replica.name or f"{replica.deployment}-{len(group)}"
            if name in self._replicas or name in {r.deployment for r in config.replicas}:
                raise ValueError(f"replica name {name!r} is not unique (nor may it be a deployment name)")
            rep = _Replica(replica, random.Random(self._rng.getrandbits(64)), created)
            self._replicas[name] = rep
            group.append(rep)
            self._multipliers[replica.deployment] = 1.0
        self._hosts: dict[str, _Host] = {}
        for gpu_host in config.gpu_hosts:
            if gpu_host.hostname in self._hosts:
                raise ValueError(f"GPU host {gpu_host.hostname!r} twice")
            unknown = set(gpu_host.serves) - set(self._replicas)
            if unknown or (gpu_host.deployment is not None and gpu_host.deployment not in self._deployments):
                raise ValueError(f"GPU host {gpu_host.hostname!r} serves unknown replicas/deployment")
            self._hosts[gpu_host.hostname] = _Host(gpu_host, random.Random(self._rng.getrandbits(64)))
        self._nginx = _Nginx(config.nginx, random.Random(self._rng.getrandbits(64))) if config.nginx else None

        self._endpoints: dict[str, _Endpoint] = {}
        for name, rep in self._replicas.items():
            self._add_replica_endpoint(name, rep)
        for hostname, host in self._hosts.items():
            labels: tuple[tuple[str, str], ...] = ()
            if host.config.deployment is not None:
                model = self._deployments[host.config.deployment][0].config.served_model_name
                labels = ((DEPLOYMENT_LABEL, host.config.deployment), (MODEL_LABEL, model))
            self._add_endpoint(EndpointInfo(f"dcgm/{hostname}", DCGM_JOB, config.host, host.config.port, labels),
                               self._locked_renderer(host.exposition))
        if self._nginx is not None and config.nginx is not None:
            self._add_endpoint(EndpointInfo("nginx", NGINX_JOB, config.host, config.nginx.port),
                               self._locked_renderer(self._nginx.exposition))
        self._sim_time = self._mono0 - warmup
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> Emulator:
        """Simulate the warm-up history, open every endpoint and start the ticker."""
        with self._lock:
            if self._started:
                raise RuntimeError("emulator already started")
            self._started = True
            try:
                for endpoint in self._endpoints.values():  # first: the access log names replica addresses
                    endpoint.open()
                    self._sync_replica_address(endpoint)
                self._advance_to(time.monotonic())
            except BaseException:
                self._close_all()
                raise
        self._ticker = threading.Thread(target=self._tick_loop, name="emulator ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        """Stop the ticker and every endpoint, close the access log; re-raise a ticker failure."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
            self._ticker = None
        with self._lock:
            self._close_all()
        self.check()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def check(self) -> None:
        """Raise :class:`EmulatorError` if the background ticker failed."""
        if self._error is not None:
            raise EmulatorError("the emulator's ticker failed") from self._error

    def tick(self) -> None:
        """Advance the simulation to now (the ticker does this every ``tick_s``)."""
        with self._lock:
            self._advance_to(time.monotonic())

    # -- discovery --------------------------------------------------------------------------------------------
    @property
    def endpoints(self) -> tuple[EndpointInfo, ...]:
        return tuple(e.info for e in self._endpoints.values())

    def endpoint(self, name: str) -> EndpointInfo:
        """By name: ``<engine>/<replica>`` (``vllm/chat-0``), ``dcgm/<hostname>`` or ``nginx``."""
        return self._endpoint(name).info

    def replica_endpoint(self, replica: str) -> EndpointInfo:
        """A replica's endpoint by the replica's name, whatever its engine."""
        if replica not in self._replicas:
            raise KeyError(f"unknown replica {replica!r}; have {sorted(self._replicas)}")
        return self._replica_endpoint(self._replicas[replica]).info

    def replica_names(self, deployment: str | None = None) -> list[str]:
        return [n for n, r in self._replicas.items() if deployment in (None, r.config.deployment)]

    def file_sd(self, job: str) -> list[dict[str, object]]:
        """A Prometheus file_sd document (JSON-ready) for one job: one entry per endpoint with its labels (and
        ``__metrics_path__`` where the engine's path is not ``/metrics``); endpoints without metrics (Ollama)
        are left out, there is nothing to scrape."""
        return [{"targets": [e.address], "labels": e.file_sd_labels()} for e in self.endpoints
                if e.job == job and e.metrics_path is not None]

    # -- knobs: vLLM ------------------------------------------------------------------------------------------
    def set_replica_up(self, target: str, up: bool, *, mode: DownMode = "close", reset_counters: bool = False) -> None:
        """Take replicas down (``close``: stop listening, ``503``: answer 503) or back up on the same port.

        A down replica gets no traffic; its in-flight requests end as 502 at the LB. ``reset_counters`` on the
        way up simulates a restarted process (counters and histograms start from zero).
        """
        with self._lock:
            for rep in self._select(target):
                endpoint = self._replica_endpoint(rep)
                if up:
                    if reset_counters and not rep.up:
                        rep.reset_counters(time.time())
                    endpoint.open()
                    rep.up = True
                    continue
                if rep.up:
                    now = time.monotonic()
                    self._log_dropped(rep, rep.drop_in_flight(), now)
                rep.up = False
                if mode == "close":
                    endpoint.close()
                else:
                    endpoint.open()
                    endpoint.mode = "503"

    def set_error_ratio(self, target: str, ratio: float) -> None:
        """Fraction of new requests that end with ``finished_reason="error"`` (HTTP 500 at the LB)."""
        _check_fraction(ratio)
        with self._lock:
            for rep in self._select(target):
                rep.error_ratio = ratio

    def set_kv_cache_floor(self, target: str, floor: float) -> None:
        """Lower bound of the KV usage gauge (``vllm:kv_cache_usage_perc``, or the engine's). From 0.95 new
        requests queue up (waiting grows); from 0.97 running requests are also preempted now and then."""
        _check_fraction(floor)
        with self._lock:
            for rep in self._select(target):
                rep.kv_floor = floor
                rep.kv_usage = max(rep.kv_usage, floor)

    def force_preemptions(self, target: str, count: int = 1) -> None:
        """Add ``count`` preemptions (to each selected replica) at the next tick."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            for rep in self._select(target):
                rep.pending_preemptions += count

    def set_rate_multiplier(self, deployment: str | None, multiplier: float) -> None:
        """Scale a deployment's arrival rate (``None``: every deployment)."""
        if multiplier < 0:
            raise ValueError("multiplier must be >= 0")
        with self._lock:
            names = list(self._deployments) if deployment is None else [deployment]
            for name in names:
                if name not in self._deployments:
                    raise KeyError(f"unknown deployment {name!r}")
                self._multipliers[name] = multiplier

    # -- knobs: GPUs --------------------------------------------------------------------------------------------
    def set_gpu_temperature(self, hostname: str, celsius: float | None, gpu: int | None = None) -> None:
        """Pin the GPU temperature (``None``: follow the load again); ``gpu=None``: every GPU of the host."""
        with self._lock:
            for g in self._gpus(hostname, gpu):
                g.temp_override = celsius

    def set_gpu_xid(self, hostname: str, code: int, gpu: int | None = None) -> None:
        """Set the last XID error (``DCGM_FI_DEV_XID_ERRORS``; 0 clears it)."""
        with self._lock:
            for g in self._gpus(hostname, gpu):
                g.xid = code

    def set_gpu_fb_used_fraction(self, hostname: str, fraction: float | None, gpu: int | None = None) -> None:
        """Pin framebuffer usage as a fraction of the total (``None``: vLLM's preallocation again)."""
        if fraction is not None:
            _check_fraction(fraction)
        with self._lock:
            for g in self._gpus(hostname, gpu):
                g.fb_fraction_override = fraction

    # -- knobs: Nginx and any endpoint -------------------------------------------------------------------------
    def set_nginx_up(self, up: bool) -> None:
        """Whether the exporter can read stub_status (``nginx_up``); the exporter itself stays scrapable."""
        with self._lock:
            if self._nginx is None:
                raise KeyError("no Nginx configured")
            self._nginx.stub_status_up = up

    def set_endpoint_up(self, name: str, up: bool, *, mode: DownMode = "close") -> None:
        """Stop/restart any endpoint by name (an exporter crash); for engine replicas prefer :meth:`set_replica_up`."""
        with self._lock:
            endpoint = self._endpoint(name)
            if up:
                endpoint.open()
            elif mode == "close":
                endpoint.close()
            else:
                endpoint.open()
                endpoint.mode = "503"

    # -- internals ------------------------------------------------------------------------------------------------
    def _wall(self, t: float) -> float:
        return self._wall0 + (t - self._mono0)

    def _add_endpoint(self, info: EndpointInfo, render: Renderer | None) -> None:
        self._endpoints[info.name] = _Endpoint(info, render)

    def _add_replica_endpoint(self, name: str, rep: _Replica) -> None:
        """The replica's server: vLLM's families, or the engine's catalog signals, on its metrics path."""
        cfg, engine = rep.config, rep.config.inference_engine
        target = ((DEPLOYMENT_LABEL, cfg.deployment), (MODEL_LABEL, cfg.served_model_name), (ENGINE_LABEL, engine.name))
        health = tuple(dict.fromkeys((engine.health.path, engine.health.ready_for(cfg.served_model_name))))
        info = EndpointInfo(f"{engine.name}/{name}", ENGINE_JOB, self.config.host, cfg.port, target,
                            engine.metrics.path, health)
        render: Renderer | None = None
        if engine.name == "vllm":  # vLLM's full family set, as its prometheus_client registry writes it
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_ReplicaCollector(self, rep))
            render = self._vllm_renderer(registry)
        elif engine.metrics.path is not None:
            render = self._locked_renderer(rep.signal_page)
        self._add_endpoint(info, render)

    def _vllm_renderer(self, registry: CollectorRegistry) -> Renderer:
        def render(accept: str | None) -> tuple[bytes, str]:
            encoder, content_type = choose_encoder(accept or "")  # as vLLM (prometheus_client's ASGI app)
            return encoder(registry), content_type
        return render

    def _locked_renderer(self, exposition: Callable[[], bytes]) -> Renderer:
        def render(_accept: str | None) -> tuple[bytes, str]:
            with self._lock:
                return exposition(), "text/plain; version=0.0.4; charset=utf-8"
        return render

    def _endpoint(self, name: str) -> _Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise KeyError(f"unknown endpoint {name!r}; have {sorted(self._endpoints)}") from None

    def _sync_replica_address(self, endpoint: _Endpoint) -> None:
        if endpoint.info.job == ENGINE_JOB:
            self._replicas[endpoint.info.name.split("/", 1)[1]].address = endpoint.info.address

    def _replica_endpoint(self, rep: _Replica) -> _Endpoint:
        return self._endpoint(f"{rep.config.engine}/{self._name_of(rep)}")

    def _name_of(self, rep: _Replica) -> str:
        return next(n for n, r in self._replicas.items() if r is rep)

    def _select(self, target: str) -> list[_Replica]:
        if target in self._replicas:
            return [self._replicas[target]]
        if target in self._deployments:
            return list(self._deployments[target])
        raise KeyError(f"{target!r} is neither a replica ({sorted(self._replicas)}) nor a deployment")

    def _gpus(self, hostname: str, gpu: int | None) -> list[_Gpu]:
        if hostname not in self._hosts:
            raise KeyError(f"unknown GPU host {hostname!r}")
        gpus = self._hosts[hostname].gpus
        if gpu is None:
            return list(gpus)
        if not 0 <= gpu < len(gpus):
            raise KeyError(f"{hostname} has no GPU {gpu}")
        return [gpus[gpu]]

    def _close_all(self) -> None:
        for endpoint in self._endpoints.values():
            endpoint.close()
        if self._nginx is not None:
            self._nginx.close()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_s):
            try:
                self.tick()
            except BaseException as exc:  # kept for stop()/check(): a dead ticker must fail the test
                self._error = exc
                return

    def _advance_to(self, now: float) -> None:
        step = self.config.tick_s
        while self._sim_time < now - 1e-9:
            t1 = min(now, self._sim_time + step)
            self._step(self._sim_time, t1)
            self._sim_time = t1

    def _step(self, t0: float, t1: float) -> None:
        """One simulation step: LB arrivals, replica progress, GPU and stub_status state, access log."""
        log: list[tuple[float, str]] = []
        for deployment, group in self._deployments.items():
            rate = self._multipliers[deployment] * sum(r.config.load.request_rate for r in group)
            arrivals = sorted(self._rng.uniform(t0, t1) for _ in range(_poisson(self._rng, rate * (t1 - t0))))
            for t in arrivals:
                self._arrive(deployment, group, t, rate, log)
        nginx = self._nginx if self._nginx is not None and self._nginx.logging else None
        for rep in self._replicas.values():
            if rep.up:
                finished = rep.advance(t0, t1, self._wall)
                if nginx is not None:
                    log.extend(self._request_line(nginx, rep, req) for req in finished)
        for host in self._hosts.values():
            serves = [self._replicas[n] for n in host.config.serves]
            if not serves and host.config.deployment is not None:
                serves = self._deployments[host.config.deployment]
            running = sum(r.running for r in serves if r.up)
            host.advance(t1 - t0, running, any(r.up for r in serves))
        if self._nginx is not None:
            self._nginx.in_flight = sum(len(r.in_flight) for r in self._replicas.values())
            total_rate = sum(self._multipliers[r.config.deployment] * r.config.load.request_rate
                             for r in self._replicas.values())
            self._nginx.keepalive_idle = max(0, round(total_rate * 1.5 + self._rng.gauss(0, 1)))
            self._nginx.log(log)

    def _arrive(self, deployment: str, group: list[_Replica], t: float, rate: float,
                log: list[tuple[float, str]]) -> None:
        """One client request at the LB: answered by Nginx itself, rejected, or proxied to a replica."""
        rng, nginx = self._rng, self._nginx
        model = group[0].config.served_model_name
        if nginx is not None:
            nginx.client_request()
            lb = nginx.config
            draw = rng.random()
            for status, ratio, dep, mdl in ((401, lb.unauthorized_ratio, "", model),
                                            (404, lb.not_found_ratio, "", "no-such-model"),
                                            (429, lb.rate_limited_ratio, deployment, model)):
                if draw < ratio:
                    end = t + rng.uniform(0.0005, 0.002)
                    log.append((end, nginx.line(wall_end=self._wall(end), request_time=end - t, status=status,
                                                model=mdl, deployment=dep, bytes_sent=150)))
                    return
                draw -= ratio
        up = [r for r in group if r.up]
        if not up:  # every try fails to connect
            if nginx is not None:
                end = t + 0.001
                tries = [(r.address, "502", 0.0, 0.0, 0.0) for r in group[:2]]
                log.append((end, nginx.line(wall_end=self._wall(end), request_time=end - t, status=502,
                                            model=model, deployment=deployment, bytes_sent=157, upstream=tries)))
            return
        best = min(len(r.in_flight) for r in up)
        rep = rng.choice([r for r in up if len(r.in_flight) == best])  # least_conn
        if rng.random() < rep.config.load.rejection_ratio:
            rep.reject()
            if nginx is not None:
                end = t + rng.uniform(0.002, 0.01)
                log.append((end, nginx.line(wall_end=self._wall(end), request_time=end - t, status=400,
                                            model=model, deployment=deployment, bytes_sent=210,
                                            upstream=[(rep.address, "400", 0.0, end - t, end - t)])))
            return
        req = rep.admit(t, rate / len(up))
        down = [r for r in group if not r.up]
        if down and rng.random() < 0.1:  # Nginx retries a down server after fail_timeout, then moves on
            req.failed_tries = (rng.choice(down).address,)

    def _request_line(self, nginx: _Nginx, rep: _Replica, req: _Request) -> tuple[float, str]:
        status = {"error": 500, "abort": 499}.get(req.reason, 200)
        connect = self._rng.uniform(0.0, 0.001)
        header = connect + (req.queue + 0.001 if req.streamed else req.e2e)
        upstream_status = "" if status == 499 else str(status)
        tries = [(addr, "502", 0.0, 0.0, 0.0) for addr in req.failed_tries]
        tries.append((rep.address, upstream_status, connect, header, req.e2e))
        body = 200 + req.output * (180 if req.streamed else 4) if status == 200 else 180
        return req.finish, nginx.line(wall_end=self._wall(req.finish), request_time=req.e2e + connect,
                                            status=status, model=req.model, deployment=rep.config.deployment,
                                            bytes_sent=body, upstream=tries)

    def _log_dropped(self, rep: _Replica, dropped: list[_Request], now: float) -> None:
        """Requests in flight on a replica that goes down: the connection breaks, Nginx answers 502."""
        if self._nginx is None:
            return
        entries = []
        for req in dropped:
            elapsed = max(0.001, now - req.arrival)
            entries.append((now, self._nginx.line(
                wall_end=self._wall(now), request_time=elapsed, status=502, model=req.model,
                deployment=rep.config.deployment, bytes_sent=157,
                upstream=[(rep.address, "502", 0.0, 0.0, elapsed)])))
        self._nginx.log(entries)


# -- demo -------------------------------------------------------------------------------------------------------
def demo_config(access_log: Path | None = None) -> EmulatorConfig:
    """Two deployments (2 + 1 replicas), two GPU hosts, the LB."""
    chat = LoadProfile(request_rate=4.0, mean_prompt_tokens=800, mean_output_tokens=200, ttft_s=0.12,
                       tpot_s=0.02)
    code = LoadProfile(request_rate=1.0, mean_prompt_tokens=3000, mean_output_tokens=400, ttft_s=0.4,
                       tpot_s=0.035)
    return EmulatorConfig(
        replicas=(EngineReplica("chat", "llama-3.1-8b-instruct", chat),
                  EngineReplica("chat", "llama-3.1-8b-instruct", chat),
                  EngineReplica("code", "qwen2.5-coder-32b", code, tensor_parallel_size=2, model_params=32e9)),
        gpu_hosts=(GpuHost("gpu-chat-0", gpus=2, deployment="chat"),
                   GpuHost("gpu-code-0", gpus=2, deployment="code", model_name="NVIDIA A100-SXM4-80GB",
                           fb_total_mib=81_920)),
        nginx=NginxLb(access_log=access_log),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.metrics_emulator",
                                     description="Emulated engine, dcgm-exporter and Nginx exporter endpoints.")
    parser.add_argument("--demo", action="store_true", help="run the demo fleet until interrupted")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0: Ctrl-C)")
    parser.add_argument("--access-log", type=Path, help="append the LB's JSON access log here")
    args = parser.parse_args(argv)
    if not args.demo:
        parser.print_help()
        return 2
    with Emulator(demo_config(args.access_log)) as emulator:
        for e in emulator.endpoints:
            labels = ",".join(f"{k}={v}" for k, v in e.labels)
            print(f"{e.job:6} {e.url if e.metrics_path else e.health_url}  {labels}")
        if args.access_log:
            print(f"access log: {args.access_log}")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            deadline = time.monotonic() + args.seconds if args.seconds > 0 else math.inf
            while time.monotonic() < deadline:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return 0


if __name__ == "__main__":
    sys.exit(main())

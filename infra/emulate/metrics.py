"""The emulated vLLM replica's ``/metrics``: the pinned vLLM metric families, fed by the requests it really serves.

(Replicas of the other engines expose their catalog signals instead: :mod:`infra.emulate.signals`.)

Every family that vLLM 0.33 exposes by default (``reference/vllm-0.33-metrics.tsv``, ``default=True``) is
here with vLLM's names, types and labels (``model_name``, ``engine="0"``), in one ``CollectorRegistry`` per
replica, written by prometheus_client 0.22.1 (pinned: later versions rewrite ``vllm:x`` for old Prometheus).
Values come from the engine's events, as vLLM's ``PrometheusStatLogger`` gets them from its iteration and
finished-request stats: per step (iteration tokens, preemptions, estimated work), per token (TTFT on the
first, inter-token latency after), per finished request (finish reason, latency phases, token counts).
So ``vllm:generation_tokens_total`` equals the completion tokens the clients received, and so on.

Approximations (documented, deliberate):

- Histogram buckets are vLLM-like (those of ``tests/e2e/metrics_emulator.py``), not read from the 0.33 source.
- No prefix caching is modelled: ``prefix_cache_queries`` counts the tokens looked up on each admission,
  ``prefix_cache_hits`` and every cached-token counter stay 0; external/multi-modal caches stay 0.
- ``estimated_*_per_gpu`` count 2·parameters FLOPs per computed token, the weights plus the decode KV read
  per step and the KV written per token, without attention FLOPs.
- Latencies are wall-clock, so with ``time_scale`` < 1 they are scaled like everything a client measures.
- Off-by-default families (spec decode, KV block sampling, corrupted requests) are not exposed;
  ``vllm:lora_requests_info`` is, when the profile has LoRA adapters (vLLM has it with LoRA enabled).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from infra.emulate.engine import Request
from infra.emulate.scheduler import Step
from infra.plan.simulate import EngineConfig

FINISH_REASONS = ("stop", "length", "abort", "error")
ENGINE = "0"
BASE_LABELS = ("model_name", "engine")

# vLLM-like buckets (see the module docstring).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                         10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50)


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to ``max_value``."""
    buckets: list[int] = []
    for exponent in range(20):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(value)
    return tuple(buckets)


class EngineState(Protocol):
    """What the gauges read at scrape time (the :class:`Engine` has it)."""

    @property
    def num_running(self) -> int: ...
    @property
    def num_waiting(self) -> int: ...
    @property
    def kv_usage(self) -> float: ...


@dataclass(frozen=True)
class WorkModel:
    """Per-GPU sizes for the ``estimated_*_per_gpu`` counters (bytes, parameters)."""

    params_per_gpu: float
    weight_bytes_per_gpu: float
    kv_bytes_per_token: float  # all layers, this GPU's KV heads


@dataclass(frozen=True)
class CacheInfo:
    """What ``vllm:cache_config_info`` shows (vLLM's ``CacheConfig.metrics_info()``, every value a string)."""

    block_size: int
    num_gpu_blocks: int
    gpu_memory_utilization: float
    cache_dtype: str = "auto"

    def labels(self) -> dict[str, str]:
        return {
            "block_size": str(self.block_size), "cache_dtype": self.cache_dtype, "calculate_kv_scales": "False",
            "cpu_offload_gb": "0", "enable_prefix_caching": "True",
            "gpu_memory_utilization": str(self.gpu_memory_utilization), "is_attention_free": "False",
            "num_cpu_blocks": "None", "num_gpu_blocks": str(self.num_gpu_blocks),
            "num_gpu_blocks_override": "None", "prefix_caching_hash_algo": "sha256", "sliding_window": "None",
            "engine": ENGINE,
        }


class ReplicaMetrics:
    """The metric families of one replica; implements the engine's ``EngineObserver``."""

    def __init__(
        self,
        model_name: str,
        config: EngineConfig,
        *,
        cache: CacheInfo | None = None,
        work: WorkModel | None = None,
        lora_adapters: tuple[str, ...] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        self.work = work
        self._model = model_name
        self._labels = {"model_name": model_name, "engine": ENGINE}
        self._state: EngineState | None = None
        self._gauges(cache or CacheInfo(config.block_size, config.num_blocks, 0.92))
        self._counters()
        self._histograms(config.max_model_len)
        self.lora_info: Gauge | None = None
        self.max_lora = str(len(lora_adapters))
        if lora_adapters:
            self.lora_info = Gauge("vllm:lora_requests_info", "Running stats on lora requests.",
                                   ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                                   registry=self.registry)
            self.on_lora("")

    def bind(self, state: EngineState) -> None:
        """Where the gauges read the engine's state (at scrape time)."""
        self._state = state

    def render(self, accept: str) -> tuple[bytes, str]:
        """The /metrics body and content type, negotiated by the ``Accept`` header as vLLM does."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _running(self) -> float:
        return float(self._state.num_running) if self._state is not None else 0.0

    def _waiting(self) -> float:
        return float(self._state.num_waiting) if self._state is not None else 0.0

    def _kv_usage(self) -> float:
        return self._state.kv_usage if self._state is not None else 0.0

    def _counter(self, name: str, doc: str) -> Counter:
        c = Counter(f"vllm:{name}", doc, BASE_LABELS, registry=self.registry)
        c.labels(**self._labels)  # exposed at 0 from the start, as vLLM does
        return c

    def _labelled_counter(self, name: str, doc: str, label: str, values: tuple[str, ...]) -> Counter:
        c = Counter(f"vllm:{name}", doc, [*BASE_LABELS, label], registry=self.registry)
        for value in values:
            c.labels(**self._labels, **{label: value})
        return c

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        h = Histogram(f"vllm:{name}", doc, BASE_LABELS, registry=self.registry, buckets=buckets)
        h.labels(**self._labels)
        return h

    def _gauges(self, cache: CacheInfo) -> None:
        reg, labels = self.registry, self._labels
        for name, doc, read in (
            ("num_requests_running", "Number of requests in model execution batches.", self._running),
            ("num_requests_waiting", "Number of requests waiting to be processed.", self._waiting),
            ("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", self._kv_usage),
        ):
            Gauge(f"vllm:{name}", doc, BASE_LABELS, registry=reg).labels(**labels).set_function(read)
        by_reason = Gauge("vllm:num_requests_waiting_by_reason", "Number of requests waiting, by reason.",
                          [*BASE_LABELS, "reason"], registry=reg)
        by_reason.labels(**labels, reason="capacity").set_function(self._waiting)
        by_reason.labels(**labels, reason="deferred").set(0)  # no admission deferral is modelled
        sleep = Gauge("vllm:engine_sleep_state", "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 "
                      "means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep "
                      "level 2.", [*BASE_LABELS, "sleep_state"], registry=reg)
        for state, value in (("awake", 1.0), ("weights_offloaded", 0.0), ("discard_all", 0.0)):
            sleep.labels(**labels, sleep_state=state).set(value)
        info = cache.labels()
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", list(info),
              registry=reg).labels(**info).set(1)

    def _counters(self) -> None:
        counter = self._counter
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens processed.")
        counter("prompt_tokens_cached", "Number of cached prompt tokens (local + external).")
        self.prefix_cache_queries = counter("prefix_cache_queries",
                                            "Prefix cache queries, in terms of number of queried tokens.")
        counter("prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        counter("external_prefix_cache_queries", "External prefix cache queries from KV connector cross-instance "
                "cache sharing, in terms of number of queried tokens.")
        counter("external_prefix_cache_hits", "External prefix cache hits from KV connector cross-instance cache "
                "sharing, in terms of number of cached tokens.")
        counter("mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.")
        counter("mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.")
        self.num_preemptions = counter("num_preemptions", "Cumulative number of preemption from the engine.")
        self.flops = counter("estimated_flops_per_gpu", "Estimated number of floating point operations per GPU.")
        self.read_bytes = counter("estimated_read_bytes_per_gpu", "Estimated number of bytes read from memory per GPU.")
        self.write_bytes = counter("estimated_write_bytes_per_gpu",
                                   "Estimated number of bytes written to memory per GPU.")
        self.request_success = self._labelled_counter(
            "request_success", "Count of successfully processed requests.", "finished_reason", FINISH_REASONS)
        self.prompt_by_source = self._labelled_counter(
            "prompt_tokens_by_source", "Number of prompt tokens by source.", "source",
            ("local_compute", "local_cache_hit", "external_kv_transfer"))
        self._labelled_counter("prompt_tokens_cached_by_source", "Number of cached prompt tokens by source.", "source",
                               ("local_cache_hit", "external_kv_transfer"))
        # vLLM labels this family with model_name only (no engine): rejections happen before any engine.
        self.admission_rejections = Counter("vllm:admission_rejections", "Requests rejected at admission, by reason.",
                                            ["model_name", "reason"], registry=self.registry)
        for reason in ("max_model_len_exceeded", "queue_full"):
            self.admission_rejections.labels(model_name=self._model, reason=reason)

    def _histograms(self, max_model_len: int) -> None:
        histogram = self._histogram
        tokens = tuple(float(b) for b in build_1_2_5_buckets(max_model_len))
        latency = REQUEST_LATENCY_BUCKETS
        self.ttft = histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             TOKEN_LATENCY_BUCKETS)
        self.tpot = histogram("request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", TOKEN_LATENCY_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", latency)
        self.queue_time = histogram("request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", latency)
        self.inference_time = histogram("request_inference_time_seconds",
                                        "Histogram of time spent in RUNNING phase for request.", latency)
        self.prefill_time = histogram("request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.", latency)
        self.decode_time = histogram("request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.", latency)
        self.request_prompt = histogram("request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.request_generation = histogram("request_generation_tokens", "Number of generation tokens processed.",
                                            tokens)
        self.max_generation = histogram("request_max_num_generation_tokens",
                                        "Histogram of maximum number of requested generation tokens.", tokens)
        self.params_max_tokens = histogram("request_params_max_tokens",
                                           "Histogram of the max_tokens request parameter.", tokens)
        self.params_n = histogram("request_params_n", "Histogram of the n request parameter.",
                                  tuple(float(b) for b in PARAMS_N_BUCKETS))
        self.request_preemptions = histogram("request_num_preemptions", "Number of preemptions per request.",
                                             tuple(float(b) for b in PREEMPTION_BUCKETS))
        self.prefill_kv_computed = histogram("request_prefill_kv_computed_tokens", "Histogram of new KV tokens "
                                             "computed during prefill (excluding cached tokens).", tokens)
        self.iteration_tokens = histogram("iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                          tuple(float(b) for b in ITERATION_TOKEN_BUCKETS))

    # ------------------------------------------------------------------------ events outside the engine

    def on_rejected(self, reason: str = "max_model_len_exceeded") -> None:
        """A request refused before the engine (prompt + max_tokens beyond max_model_len)."""
        self.admission_rejections.labels(model_name=self._model, reason=reason).inc()

    def on_error(self) -> None:
        """A request answered with an error before reaching the engine (the "error" fault)."""
        self.request_success.labels(**self._labels, finished_reason="error").inc()

    def on_lora(self, running: str) -> None:
        """The LoRA adapters of the running requests changed (comma-separated names)."""
        if self.lora_info is not None:
            self.lora_info.labels(max_lora=self.max_lora, waiting_lora_adapters="",
                                  running_lora_adapters=running).set(time.time())

    # ------------------------------------------------------------------------ EngineObserver

    def on_admitted(self, req: Request, now: float) -> None:
        self.prefix_cache_queries.labels(**self._labels).inc(req.prompt_tokens)

    def on_step(self, step: Step, seconds: float) -> None:
        batch = step.batch
        tokens = batch.prefill_tokens + batch.decode_seqs
        self.iteration_tokens.labels(**self._labels).observe(tokens)
        if step.preempted:
            self.num_preemptions.labels(**self._labels).inc(len(step.preempted))
        if self.work is not None:
            w = self.work
            self.flops.labels(**self._labels).inc(2.0 * w.params_per_gpu * tokens)
            self.read_bytes.labels(**self._labels).inc(w.weight_bytes_per_gpu
                                                       + batch.decode_context * w.kv_bytes_per_token)
            self.write_bytes.labels(**self._labels).inc(tokens * w.kv_bytes_per_token)

    def on_token(self, req: Request, now: float) -> None:
        labels = self._labels
        self.generation_tokens.labels(**labels).inc()
        if req.emitted == 1:
            self.ttft.labels(**labels).observe(now - req.arrival)
            self.prompt_tokens.labels(**labels).inc(req.prompt_tokens)
            self.prompt_by_source.labels(**labels, source="local_compute").inc(req.prompt_tokens)
        else:
            self.itl.labels(**labels).observe(now - req.last_token)

    def on_finished(self, req: Request, now: float) -> None:
        """Per-request stats, as vLLM's ``FinishedRequestStats`` (phases from its first scheduling)."""
        labels = self._labels
        assert req.finished is not None
        self.request_success.labels(**labels, finished_reason=req.finished).inc()
        self.e2e.labels(**labels).observe(now - req.arrival)
        scheduled = req.first_scheduled if not math.isnan(req.first_scheduled) else now
        first = req.first_token if not math.isnan(req.first_token) else now
        last = req.last_token if not math.isnan(req.last_token) else now
        self.queue_time.labels(**labels).observe(scheduled - req.arrival)
        self.prefill_time.labels(**labels).observe(first - scheduled)
        self.decode_time.labels(**labels).observe(last - first)
        self.inference_time.labels(**labels).observe(last - scheduled)
        if req.emitted > 1:
            self.tpot.labels(**labels).observe((last - first) / (req.emitted - 1))
        self.request_prompt.labels(**labels).observe(req.prompt_tokens)
        self.request_generation.labels(**labels).observe(req.emitted)
        self.max_generation.labels(**labels).observe(req.max_tokens)
        if req.max_tokens_param is not None:
            self.params_max_tokens.labels(**labels).observe(req.max_tokens_param)
        self.params_n.labels(**labels).observe(1)
        self.request_preemptions.labels(**labels).observe(req.preemptions)
        self.prefill_kv_computed.labels(**labels).observe(req.prompt_tokens)

"""Deployment detail: latency distributions, scheduler state, KV cache, preemptions and the GPUs.

Reads raw vLLM series (job ``engine``, ``inference_engine="vllm"``) so both variables apply and the windows
follow ``$__rate_interval``, and dcgm-exporter series (job ``dcgm``, carrying the target label ``deployment`` and
the exporter's ``gpu``, ``UUID``, ``Hostname`` and ``modelName``, the GPU model). Select one deployment to read it
as a detail view; with several selected, the series are per deployment and the heatmaps add them up. The engine
panels are vLLM's (its queue-time histogram, finished reasons, prefix cache have no counterpart elsewhere); a
deployment on another engine shows its GPUs here and its engine's series on the fleet overview.

Metric names keep vLLM's colons (``vllm:…``): the project's exporters and the pinned prometheus-client keep them
(0.23–0.26 as an exporter make Prometheus 2.42 store ``vllm_…``, client_python#1177; see pyproject).
"""

from __future__ import annotations

from infra.render.dashboards.common import DEP, RATE, VLLM, Board, Q, Row, heatmap, sel, timeseries
from infra.render.prometheus_rules import GPU_TEMP_C, KV_FULL, LATENCY_HISTOGRAMS, QUANTILES
from infra.render.telemetry import DCGM_JOB

D = f"{{{DEP}}}"
GPU = f"{{{sel(DCGM_JOB)}}}"
GPU_LEGEND = "{{deployment}} {{Hostname}} GPU {{gpu}}"


def _buckets(family: str, by: str = "le") -> str:
    return f"sum by ({by}) (rate({family}_bucket{{{VLLM}}}[{RATE}]))"


def _quantiles(family: str) -> list[Q]:
    return [Q(f"histogram_quantile({q}, {_buckets(family, 'le, deployment')})", f"{{{{deployment}}}} p{round(q * 100)}")
            for q in QUANTILES]


def _latency() -> Row:
    ttft, tpot, e2e = (LATENCY_HISTOGRAMS[k] for k in ("ttft", "tpot", "e2e"))
    per_rate = "per request, from vLLM's histogram rate over $__rate_interval"
    return Row("Latency", [
        timeseries("TTFT p50/p95/p99 vs SLO", f"Time to first token {per_rate} (histogram_quantile over "
                   f"{ttft}_bucket); dashed red: the deployment's TTFT p95 SLO.", "s",
                   [*_quantiles(ttft), Q(f"gpufleet:slo_ttft_p95_seconds{D}", "{{deployment}} SLO p95", line="slo")],
                   width=8),
        timeseries("TPOT p50/p95/p99 vs SLO", f"Time per output token (inter-token latency) {per_rate} "
                   f"(histogram_quantile over {tpot}_bucket); dashed red: the TPOT p95 SLO.", "s",
                   [*_quantiles(tpot), Q(f"gpufleet:slo_tpot_p95_seconds{D}", "{{deployment}} SLO p95", line="slo")],
                   width=8),
        timeseries("E2E latency p50/p95/p99", f"Whole-request latency (queue + prefill + decode) {per_rate} "
                   f"(histogram_quantile over {e2e}_bucket).", "s", _quantiles(e2e), width=8),
        heatmap("TTFT distribution", f"Requests per second in each time-to-first-token bucket ({ttft}_bucket "
                "rates, summed over the selected deployments and models; cells are per-bucket, not cumulative).",
                "s", _buckets(ttft), width=8),
        heatmap("TPOT distribution", f"Output tokens per second in each inter-token latency bucket ({tpot}_bucket "
                "rates); one observation per generated token after the first.", "s", _buckets(tpot), width=8,
                cell_unit="short"),
        heatmap("E2E latency distribution", f"Requests per second in each end-to-end latency bucket "
                f"({e2e}_bucket rates).", "s", _buckets(e2e), width=8),
        heatmap("Queue time distribution", "Requests per second in each bucket of time spent waiting before "
                "scheduling (vllm:request_queue_time_seconds_bucket rates): queueing, not compute.",
                "s", _buckets("vllm:request_queue_time_seconds"), width=12),
        timeseries("Requests/s by finished reason", "Completed requests per second by vLLM's finished_reason "
                   "(stop, length, abort, error), from vllm:request_success_total.", "reqps",
                   [Q(f"sum by (deployment, finished_reason) (rate(vllm:request_success_total{{{VLLM}}}[{RATE}]))",
                      "{{deployment}} {{finished_reason}}")], width=12),
    ])


def _scheduler() -> Row:
    return Row("Scheduler and KV cache", [
        timeseries("Requests running / waiting", "Sequences in the running batch and requests waiting to be "
                   "scheduled (gauges vllm:num_requests_running, vllm:num_requests_waiting), summed over "
                   "replicas. A growing queue with a full KV cache means the deployment is saturated.", "short",
                   [Q(f"sum by (deployment) (vllm:num_requests_running{{{VLLM}}})", "{{deployment}} running"),
                    Q(f"sum by (deployment) (vllm:num_requests_waiting{{{VLLM}}})", "{{deployment}} waiting")],
                   width=8),
        timeseries("KV-cache usage", "Fraction of each replica's KV-cache blocks in use (vllm:kv_cache_usage_perc, "
                   f"0..1). The queue alert uses the fullest replica above {round(KV_FULL * 100)}%.", "percentunit",
                   [Q(f"max by (deployment, instance) (vllm:kv_cache_usage_perc{{{VLLM}}})",
                      "{{deployment}} {{instance}}")], width=8, max_val=1),
        timeseries("Prefix-cache hit rate", "Share of prompt tokens looked up in the prefix cache that were hits "
                   "(rate of vllm:prefix_cache_hits_total / rate of vllm:prefix_cache_queries_total).", "percentunit",
                   [Q(f"sum by (deployment) (rate(vllm:prefix_cache_hits_total{{{VLLM}}}[{RATE}]))"
                      f" / sum by (deployment) (rate(vllm:prefix_cache_queries_total{{{VLLM}}}[{RATE}]))",
                      "{{deployment}}")], width=8, max_val=1),
        timeseries("Preemptions/s", "Sequences vLLM preempted per second because it ran out of KV-cache blocks "
                   "(rate of vllm:num_preemptions_total); any sustained value inflates TPOT.", "short",
                   [Q(f"sum by (deployment) (rate(vllm:num_preemptions_total{{{VLLM}}}[{RATE}]))", "{{deployment}}")],
                   width=12),
        timeseries("Tokens/s", "Prompt and generated tokens per second (rates of vllm:prompt_tokens_total and "
                   "vllm:generation_tokens_total).", "short",
                   [Q(f"sum by (deployment) (rate(vllm:prompt_tokens_total{{{VLLM}}}[{RATE}]))",
                      "{{deployment}} prompt"),
                    Q(f"sum by (deployment) (rate(vllm:generation_tokens_total{{{VLLM}}}[{RATE}]))",
                      "{{deployment}} output")], width=12),
    ])


def _gpu() -> Row:
    return Row("GPUs (dcgm-exporter)", [
        timeseries("GPU utilisation", "Share of time a kernel was running on each GPU "
                   "(DCGM_FI_DEV_GPU_UTIL, percent) of the hosts of the selected deployments.", "percent",
                   [Q(f"DCGM_FI_DEV_GPU_UTIL{GPU}", GPU_LEGEND)], max_val=100, calcs=("mean", "max")),
        timeseries("GPU memory used", "Framebuffer memory in use per GPU (DCGM_FI_DEV_FB_USED, MiB; vLLM "
                   "preallocates gpu_memory_utilization of it) and the GPU's total (used + free, dashed).",
                   "decmbytes", [Q(f"DCGM_FI_DEV_FB_USED{GPU}", GPU_LEGEND),
                                 Q(f"DCGM_FI_DEV_FB_USED{GPU} + DCGM_FI_DEV_FB_FREE{GPU}", f"{GPU_LEGEND} total",
                                   line="ref")], calcs=("max", "lastNotNull")),
        timeseries("GPU power", "Power draw per GPU (DCGM_FI_DEV_POWER_USAGE, watts).", "watt",
                   [Q(f"DCGM_FI_DEV_POWER_USAGE{GPU}", GPU_LEGEND)], calcs=("mean", "max")),
        timeseries("GPU temperature", f"GPU die temperature (DCGM_FI_DEV_GPU_TEMP, °C); GpufleetGpuTemperatureHigh "
                   f"fires after 5 m above {GPU_TEMP_C} °C.", "celsius",
                   [Q(f"DCGM_FI_DEV_GPU_TEMP{GPU}", GPU_LEGEND)], calcs=("mean", "max")),
    ])


def deployment_board(stack: str) -> Board:
    return Board(uid=f"gpufleet-{stack}-deployment", title=f"gpufleet {stack} / Deployment detail",
                 description=f"One deployment of the {stack} stack in depth: latency distributions, scheduler "
                             "and KV cache, preemptions and its GPUs.",
                 tags=["gpufleet", stack], rows=[_latency(), _scheduler(), _gpu()])

"""Fleet overview: per deployment, load, tokens, latency against the SLO, errors, replicas and cost.

Read from the recording rules (``deployment:*`` over 5 m, ``gpufleet:*`` plan constants), so it shows exactly
what the alerts evaluate; only the per-model request rate reads raw vLLM series.
"""

from __future__ import annotations

from infra.render.dashboards.common import DEP, RATE, VLLM, Board, Q, Row, stat, timeseries
from infra.render.prometheus_rules import ERROR_BUDGET, FAST_BURN

D = f"{{{DEP}}}"


# Nginx-derived recorded series also exist for deployment="" (requests Nginx answered before routing); the
# fleet overview is about deployments, so those stay on the load-balancer dashboard.
ROUTED = f'{{{DEP},deployment!=""}}'


def _now() -> Row:
    return Row("Fleet now (selected deployments)", [
        stat("Requests/s", "Completed requests per second over the last 5 minutes, summed over the selected "
             "deployments (deployment:engine_requests:rate5m, every finished_reason).",
             "reqps", [Q(f"sum(deployment:engine_requests:rate5m{D})", "req/s")]),
        stat("Output tokens/s", "Generated tokens per second over the last 5 minutes, summed over the selected "
             "deployments (deployment:engine_generation_tokens:rate5m).",
             "short", [Q(f"sum(deployment:engine_generation_tokens:rate5m{D})", "tokens/s")]),
        stat("Error rate (worst)", "Client-visible error ratio over 5 m of the worst selected deployment "
             "(deployment:request_errors:ratio_rate5m: the larger of vLLM's finished_reason=\"error\" share and "
             "the LB's 5xx share; what the error-budget burn alerts use). Orange from the error budget "
             f"({ERROR_BUDGET:.1%}), red from the fast-burn threshold ({FAST_BURN * ERROR_BUDGET:.1%}).",
             "percentunit", [Q(f"max(deployment:request_errors:ratio_rate5m{ROUTED})", "errors")],
             decimals=2, thresholds=[(None, "green"), (ERROR_BUDGET, "orange"), (FAST_BURN * ERROR_BUDGET, "red")]),
        stat("Replicas up / planned", "vLLM replicas answering Prometheus' scrape (up == 1) against the "
             "replicas the plan provisions (gpufleet:plan_replicas).",
             "short", [Q(f"sum(deployment:engine_replicas_up:sum{D})", "up"),
                       Q(f"sum(gpufleet:plan_replicas{D})", "planned")], decimals=0),
        stat("$/hour (plan)", "Hourly cost of the selected deployments' instances as planned "
             "(gpufleet:plan_hourly_usd: on-demand price x replicas; on-prem: amortised).",
             "currencyUSD", [Q(f"sum(gpufleet:plan_hourly_usd{D})", "$/h")], decimals=2),
        stat("$/1M output tokens (all)", "Planned hourly cost divided by the output tokens actually generated in the "
             "last 5 minutes (scaled to 1M tokens/hour); empty while nothing is generated.",
             "currencyUSD", [Q(f"sum(gpufleet:plan_hourly_usd{D})"
                               f" / (sum(deployment:engine_generation_tokens:rate5m{D}) * 3600 / 1e6 > 0)",
                               "$/1M tokens")], decimals=2),
    ])


def _load() -> Row:
    return Row("Load and latency per deployment", [
        timeseries("Requests/s vs planned capacity", "Completed requests per second per deployment over 5 m "
                   "(solid) against the capacity the plan sized it for (dashed: target qps per replica x "
                   "replicas, gpufleet:plan_capacity_qps). Above the line the plan's latency no longer holds.",
                   "reqps", [Q(f"deployment:engine_requests:rate5m{D}", "{{deployment}}"),
                             Q(f"gpufleet:plan_capacity_qps{D}", "{{deployment}} capacity", line="ref")]),
        timeseries("Tokens/s", "Prompt (prefill) and generated (output) tokens per second per deployment over "
                   "5 m (deployment:engine_prompt_tokens:rate5m, deployment:engine_generation_tokens:rate5m).",
                   "short", [Q(f"deployment:engine_prompt_tokens:rate5m{D}", "{{deployment}} prompt"),
                             Q(f"deployment:engine_generation_tokens:rate5m{D}", "{{deployment}} output")]),
        timeseries("TTFT p95 vs SLO", "Time to first token, 95th percentile over 5 m per deployment, from vLLM's "
                   "histogram (solid), against the deployment's TTFT p95 SLO (dashed red, "
                   "gpufleet:slo_ttft_p95_seconds). The GpufleetTtftP95AboveSlo alert fires after 10 m above.",
                   "s", [Q(f"deployment:engine_ttft_seconds:p95_5m{D}", "{{deployment}} p95"),
                         Q(f"gpufleet:slo_ttft_p95_seconds{D}", "{{deployment}} SLO", line="slo")]),
        timeseries("TPOT p95 vs SLO", "Time per output token (inter-token latency), 95th percentile over 5 m "
                   "per deployment (solid), against the TPOT p95 SLO (dashed red, gpufleet:slo_tpot_p95_seconds).",
                   "s", [Q(f"deployment:engine_tpot_seconds:p95_5m{D}", "{{deployment}} p95"),
                         Q(f"gpufleet:slo_tpot_p95_seconds{D}", "{{deployment}} SLO", line="slo")]),
        timeseries("Error rate by deployment", "Per deployment over 5 m: the client-visible error ratio "
                   "(deployment:request_errors:ratio_rate5m, solid), and its two sources: the share of requests "
                   "vLLM finished with finished_reason=\"error\" and the share of responses the load balancer "
                   "routed to the deployment that were 5xx (502/503/504 include requests no replica answered). "
                   "Aborted streams are not errors.",
                   "percentunit", [Q(f"deployment:request_errors:ratio_rate5m{ROUTED}", "{{deployment}}"),
                                   Q(f"deployment:engine_request_errors:ratio_rate5m{D}", "{{deployment}} vLLM"),
                                   Q(f"deployment:nginx_http_errors:ratio_rate5m{ROUTED}", "{{deployment}} LB 5xx")],
                   max_val=None),
        timeseries("Replicas up vs planned", "vLLM replicas per deployment answering Prometheus' scrape "
                   "(solid) against the replicas the plan provisions (dashed, gpufleet:plan_replicas).",
                   "short", [Q(f"deployment:engine_replicas_up:sum{D}", "{{deployment}} up"),
                             Q(f"gpufleet:plan_replicas{D}", "{{deployment}} planned", line="ref")]),
    ])


def _cost() -> Row:
    return Row("Cost and models", [
        stat("$/hour by deployment (plan)", "Planned hourly cost of each deployment "
             "(gpufleet:plan_hourly_usd).", "currencyUSD",
             [Q(f"gpufleet:plan_hourly_usd{D}", "{{deployment}}")], width=8, height=8, decimals=2),
        timeseries("$/1M output tokens", "Planned hourly cost of each deployment divided by the output tokens "
                   "it generated over 5 m, per million tokens (deployment:engine_usd_per_m_output_tokens:rate5m); "
                   "falls as utilisation rises, empty while idle.",
                   "currencyUSD", [Q(f"deployment:engine_usd_per_m_output_tokens:rate5m{D}", "{{deployment}}")],
                   width=8, height=8),
        timeseries("Requests/s by model", "Completed requests per second by served model name (model_name) "
                   "and deployment, from the raw vLLM counter; follows the model variable.",
                   "reqps", [Q("sum by (deployment, model_name) "
                               f"(rate(vllm:request_success_total{{{VLLM}}}[{RATE}]))",
                               "{{deployment}} {{model_name}}")], width=8, height=8),
    ])


def fleet_uid(stack: str) -> str:
    return f"gpufleet-{stack}-fleet"


def fleet_board(stack: str) -> Board:
    return Board(uid=fleet_uid(stack), title=f"gpufleet {stack} / Fleet overview",
                 description=f"Every deployment of the {stack} stack: load, latency against the SLO, errors, "
                             "replicas and cost, from the gpufleet recording rules.",
                 tags=["gpufleet", stack], rows=[_now(), _load(), _cost()])

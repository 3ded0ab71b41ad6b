"""Fleet overview: per deployment, load, tokens, latency against the SLO, errors, replicas and cost.

Read from the recording rules (``deployment:*`` over 5 m, ``gpufleet:*`` plan constants), so it shows exactly
what the alerts evaluate, for every engine alike: each engine's own metrics reach the dashboard through the
``deployment:engine_*`` series its rule group records. The plan's ``gpufleet:plan_info`` says which engine (and
version) each deployment runs, ``gpufleet:slo_unmonitored`` which SLOs its engine cannot measure. No panel or
variable reads an engine's raw metric.
"""

from __future__ import annotations

from infra.render.dashboards.common import DEP, MODEL, Board, Q, Row, names, stat, timeseries
from infra.render.prometheus_rules import ERROR_BUDGET, FAST_BURN

D = f"{{{DEP}}}"


# Nginx-derived recorded series also exist for deployment="" (requests Nginx answered before routing); the
# fleet overview is about deployments, so those stay on the load-balancer dashboard.
ROUTED = f'{{{DEP},deployment!=""}}'


def _now() -> Row:
    return Row("Fleet now (selected deployments)", [
        stat("Requests/s", "Completed requests per second over the last 5 minutes, summed over the selected "
             "deployments (deployment:engine_requests:rate5m; engines without a request counter are missing).",
             "reqps", [Q(f"sum(deployment:engine_requests:rate5m{D})", "req/s")]),
        stat("Output tokens/s", "Generated tokens per second over the last 5 minutes, summed over the selected "
             "deployments (deployment:engine_generation_tokens:rate5m).",
             "short", [Q(f"sum(deployment:engine_generation_tokens:rate5m{D})", "tokens/s")]),
        stat("Error rate (worst)", "Client-visible error ratio over 5 m of the worst selected deployment "
             "(deployment:request_errors:ratio_rate5m: the larger of the engine's failed-request share, where it "
             "counts them, and the LB's 5xx share; what the error-budget burn alerts use). Orange from the error "
             "budget "
             f"({ERROR_BUDGET:.1%}), red from the fast-burn threshold ({FAST_BURN * ERROR_BUDGET:.1%}).",
             "percentunit", [Q(f"max(deployment:request_errors:ratio_rate5m{ROUTED})", "errors")],
             decimals=2, thresholds=[(None, "green"), (ERROR_BUDGET, "orange"), (FAST_BURN * ERROR_BUDGET, "red")]),
        stat("Replicas up / planned", "Engine replicas answering Prometheus' scrape (up == 1) against the "
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
        timeseries("TTFT p95 vs SLO", "Time to first token, 95th percentile over 5 m per deployment, from its "
                   "engine's histogram (solid; none for engines without one, see \"SLOs without an engine signal\"), "
                   "against the deployment's TTFT p95 SLO (dashed red, "
                   "gpufleet:slo_ttft_p95_seconds). The GpufleetTtftP95AboveSlo alert fires after 10 m above.",
                   "s", [Q(f"deployment:engine_ttft_seconds:p95_5m{D}", "{{deployment}} p95"),
                         Q(f"gpufleet:slo_ttft_p95_seconds{D}", "{{deployment}} SLO", line="slo")]),
        timeseries("TPOT p95 vs SLO", "Time per output token (inter-token latency), 95th percentile over 5 m "
                   "per deployment from its engine's histogram (solid), against the TPOT p95 SLO (dashed red, "
                   "gpufleet:slo_tpot_p95_seconds).",
                   "s", [Q(f"deployment:engine_tpot_seconds:p95_5m{D}", "{{deployment}} p95"),
                         Q(f"gpufleet:slo_tpot_p95_seconds{D}", "{{deployment}} SLO", line="slo")]),
        timeseries("Error rate by deployment", "Per deployment over 5 m: the client-visible error ratio "
                   "(deployment:request_errors:ratio_rate5m, solid), and its two sources: the share of requests "
                   "the engine failed (where it counts them: vLLM, TGI) and the share of responses the load balancer "
                   "routed to the deployment that were 5xx (502/503/504 include requests no replica answered). "
                   "Aborted streams are not errors.",
                   "percentunit", [Q(f"deployment:request_errors:ratio_rate5m{ROUTED}", "{{deployment}}"),
                                   Q(f"deployment:engine_request_errors:ratio_rate5m{D}", "{{deployment}} engine"),
                                   Q(f"deployment:nginx_http_errors:ratio_rate5m{ROUTED}", "{{deployment}} LB 5xx")],
                   max_val=None),
        timeseries("Replicas up vs planned", "Engine replicas per deployment answering Prometheus' scrape "
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
        timeseries("Requests/s by model", "Completed requests per second over 5 m by served model name and "
                   "engine (deployment:engine_requests:rate5m joined with the plan's gpufleet:plan_info); follows "
                   "the model variable.",
                   "reqps", [Q(f"deployment:engine_requests:rate5m{D} * on (deployment) group_left (model, "
                               f"inference_engine) gpufleet:plan_info{{{DEP},{MODEL}}}",
                               "{{deployment}} {{model}} ({{inference_engine}})")], width=8, height=8),
    ])


def _engines() -> Row:
    return Row("Engines", [
        names("Engine per deployment", "The inference engine and its pinned version each selected deployment "
              "runs (gpufleet:plan_info, from the plan); every other panel reads the same recorded series "
              "whatever the engine.",
              [Q(f"gpufleet:plan_info{{{DEP},{MODEL}}}",
                 "{{deployment}}: {{inference_engine}} {{engine_version}} ({{model}})")], width=12),
        names("SLOs without an engine signal", "SLOs of the selected deployments that their engine cannot "
              "measure (gpufleet:slo_unmonitored: no TTFT or inter-token histogram, e.g. TGI's missing TTFT, "
              "llama.cpp, Ollama): no alert watches them and their latency panels stay empty.",
              [Q(f"gpufleet:slo_unmonitored{D}", "{{deployment}}: {{slo}} ({{inference_engine}})")], width=12),
    ])


def fleet_uid(stack: str) -> str:
    return f"gpufleet-{stack}-fleet"


def fleet_board(stack: str) -> Board:
    return Board(uid=fleet_uid(stack), title=f"gpufleet {stack} / Fleet overview",
                 description=f"Every deployment of the {stack} stack: load, latency against the SLO, errors, "
                             "replicas and cost, from the gpufleet recording rules.",
                 tags=["gpufleet", stack], rows=[_now(), _load(), _engines(), _cost()])

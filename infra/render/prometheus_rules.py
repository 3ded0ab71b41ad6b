"""Prometheus recording and alerting rules generated from the plan (kind ``prometheus-rules``).

Rendered file: ``prometheus/rules/gpufleet.rules.yaml`` — one file per stack, validated by
``promtool check rules`` and unit-tested alert by alert with ``promtool test rules``.

Label and job contract (the scrape config must produce exactly these):

- job ``vllm``: one target per vLLM replica, with the target label ``deployment`` = the deployment's name
  (and the usual ``instance``). vLLM itself adds ``model_name`` (the served model name) and ``engine``;
  the rules aggregate by ``deployment`` only, so they survive a renamed served model. Counters are read
  with their exposed ``_total`` suffix; every metric name used here is in the pinned vLLM's metric list
  (``reference/vllm-0.33-metrics.tsv``), checked by the tests.
- job ``nginx``: Debian's ``prometheus-nginx-exporter`` reading ``stub_status`` (``nginx_up``,
  ``nginx_http_requests_total``, ``nginx_connections_*``). stub_status has no status codes:
- job ``nginx-log``: mtail over the LB's JSON access log (``templates/mtail/``) counts responses by
  ``deployment`` and ``status`` and times the upstream.

Errors: two sources, recorded separately and combined into ``deployment:request_errors:ratio_rate<W>``
(the worse of the two), which the burn-rate alerts read. vLLM's ``vllm:request_success_total`` with
``finished_reason="error"`` counts engine failures; Nginx's 5xx also count requests that never reached a
replica (502/503/504). ``abort`` (client gone, e.g. a cancelled stream) is recorded separately and does not
burn budget; neither do 4xx (the client's fault: bad key, rate limit, too large).
- job ``dcgm``: NVIDIA dcgm-exporter (``DCGM_FI_DEV_XID_ERRORS``, ``DCGM_FI_DEV_GPU_TEMP``,
  ``DCGM_FI_DEV_FB_USED``/``DCGM_FI_DEV_FB_FREE``). GPU alerts keep the series' labels; a ``deployment``
  target label is expected on hosts dedicated to one deployment and is then carried into the alert.

Every alert has the labels ``severity`` (``critical`` pages, ``warning`` tickets) and, where it applies,
``deployment``, and the annotations ``summary``, ``description`` and ``runbook`` (what to do, as text).
Annotations carry no ``{{ }}`` templates: thresholds and names are baked in at render time, which keeps
them exact in the unit tests; the firing series' labels identify the instance or GPU.

Error budget: a success objective of :data:`SUCCESS_OBJECTIVE` (the spec has no availability field yet),
multi-window multi-burn-rate alerts as in the Google SRE workbook, ch. 5: 14.4× over 1 h and 5 m
(critical), 6× over 6 h and 30 m (warning).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.telemetry import (
    DCGM_JOB,
    ENGINE_JOB,
    NGINX_JOB,
    NGINX_LOG_JOB,
    NGINX_RESPONSES,
    NGINX_UPSTREAM_SECONDS,
)

RULES_PATH = "prometheus/rules/gpufleet.rules.yaml"


SUCCESS_OBJECTIVE = 0.995
ERROR_BUDGET = 1 - SUCCESS_OBJECTIVE
FAST_BURN = 14.4  # 2% of a 30-day budget in 1 h
SLOW_BURN = 6.0  # 5% of a 30-day budget in 6 h
KV_FULL = 0.95
GPU_TEMP_C = 85
GPU_FB_USED = 0.95  # above vLLM's preallocation (gpu_memory_utilization, default 0.9)
QUANTILES = (0.5, 0.95, 0.99)
BURN_WINDOWS = ("5m", "30m", "1h", "6h")

# vLLM histograms: short name in the recorded series -> pinned vLLM metric family.
LATENCY_HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "tpot": "vllm:inter_token_latency_seconds",
    "e2e": "vllm:e2e_request_latency_seconds",
}
VLLM_METRICS_USED = (
    "vllm:request_success",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    *LATENCY_HISTOGRAMS.values(),
)

V = f'job="{ENGINE_JOB}"'
L = f'job="{NGINX_LOG_JOB}"'


def _num(value: float) -> str:
    """A PromQL number literal: stable, no float noise (repr is shortest round-trip)."""
    return repr(float(value)) if value != int(value) else str(int(value))


def _q(quantile: float) -> str:
    return f"p{round(quantile * 100)}"


def recording_rules() -> list[dict[str, Any]]:
    """Per-deployment series, aggregated over replicas (label ``deployment``)."""
    rules: list[dict[str, Any]] = []

    def rec(name: str, expr: str) -> None:
        rules.append({"record": name, "expr": expr})

    rec("deployment:engine_requests:rate5m", f"sum by (deployment) (rate(vllm:request_success_total{{{V}}}[5m]))")
    rec("deployment:engine_prompt_tokens:rate5m", f"sum by (deployment) (rate(vllm:prompt_tokens_total{{{V}}}[5m]))")
    rec("deployment:engine_generation_tokens:rate5m",
        f"sum by (deployment) (rate(vllm:generation_tokens_total{{{V}}}[5m]))")
    for short, family in LATENCY_HISTOGRAMS.items():
        for quantile in QUANTILES:
            rec(f"deployment:engine_{short}_seconds:{_q(quantile)}_5m",
                f"histogram_quantile({quantile}, sum by (deployment, le) (rate({family}_bucket{{{V}}}[5m])))")
    for window in BURN_WINDOWS:
        rec(f"deployment:engine_request_errors:ratio_rate{window}",
            f'sum by (deployment) (rate(vllm:request_success_total{{{V},finished_reason="error"}}[{window}]))'
            f" / sum by (deployment) (rate(vllm:request_success_total{{{V}}}[{window}]))")
        # mtail creates a status's series at its first occurrence: without a 5xx yet, `or ... * 0` makes the
        # ratio 0 instead of no data.
        all_responses = f"sum by (deployment) (rate({NGINX_RESPONSES}{{{L}}}[{window}]))"
        rec(f"deployment:nginx_http_errors:ratio_rate{window}",
            f'(sum by (deployment) (rate({NGINX_RESPONSES}{{{L},status=~"5.."}}[{window}])) or {all_responses} * 0)'
            f" / {all_responses}")
        # What clients see: the worse of the two. Nginx's 5xx include requests that never reached a replica
        # (502/503/504); vLLM's errors cover a target whose LB logs are not scraped. label_replace keeps
        # both series apart for `or`, max folds them.
        rec(f"deployment:request_errors:ratio_rate{window}",
            f'max by (deployment) (label_replace(deployment:engine_request_errors:ratio_rate{window}, '
            f'"source", "vllm", "", "") or label_replace(deployment:nginx_http_errors:ratio_rate{window}, '
            f'"source", "nginx", "", ""))')
    rec("deployment:engine_request_aborts:ratio_rate5m",
        f'sum by (deployment) (rate(vllm:request_success_total{{{V},finished_reason="abort"}}[5m]))'
        f" / sum by (deployment) (rate(vllm:request_success_total{{{V}}}[5m]))")
    rec("deployment:nginx_http_responses:rate5m",
        f"sum by (deployment, status) (rate({NGINX_RESPONSES}{{{L}}}[5m]))")
    for quantile in QUANTILES:
        rec(f"deployment:nginx_upstream_seconds:{_q(quantile)}_5m",
            f"histogram_quantile({quantile}, sum by (deployment, le) "
            f"(rate({NGINX_UPSTREAM_SECONDS}_bucket{{{L}}}[5m])))")
    rec("deployment:engine_requests_waiting:sum", f"sum by (deployment) (vllm:num_requests_waiting{{{V}}})")
    rec("deployment:engine_requests_running:sum", f"sum by (deployment) (vllm:num_requests_running{{{V}}})")
    rec("deployment:engine_kv_cache_usage:max", f"max by (deployment) (vllm:kv_cache_usage_perc{{{V}}})")
    rec("deployment:engine_prefix_cache_hits:ratio_rate5m",
        f"sum by (deployment) (rate(vllm:prefix_cache_hits_total{{{V}}}[5m]))"
        f" / sum by (deployment) (rate(vllm:prefix_cache_queries_total{{{V}}}[5m]))")
    rec("deployment:engine_replicas_up:sum", f"sum by (deployment) (up{{{V}}})")
    rec("deployment:engine_replicas_scraped:count", f"count by (deployment) (up{{{V}}})")
    rec("deployment:engine_usd_per_m_output_tokens:rate5m",
        "gpufleet:plan_hourly_usd / on (deployment)"
        " (deployment:engine_generation_tokens:rate5m * 3600 / 1e6 > 0)")  # no output, no +Inf
    return rules


def plan_rules(deployments: Iterable[DeploymentPlan]) -> list[dict[str, Any]]:
    """The plan's numbers as constant series, so dashboards and rules can divide by them."""
    rules: list[dict[str, Any]] = []
    for d in deployments:
        assert d.chosen is not None
        name = d.deployment.name
        capacity = d.chosen.target_qps_per_replica * d.chosen.replicas
        for record, value in (("gpufleet:plan_hourly_usd", d.chosen.hourly_usd),
                              ("gpufleet:plan_replicas", d.chosen.replicas),
                              ("gpufleet:plan_capacity_qps", capacity),
                              ("gpufleet:slo_ttft_p95_seconds", d.deployment.slo.ttft_p95_ms / 1000),
                              ("gpufleet:slo_tpot_p95_seconds", d.deployment.slo.tpot_p95_ms / 1000),
                              *e2e_slo(d)):
            rules.append({"record": record, "expr": f"vector({_num(round(value, 6))})",
                          "labels": {"deployment": name}})
    return rules


def e2e_slo(d: DeploymentPlan) -> list[tuple[str, float]]:
    """The optional end-to-end SLO as a constant series (none when the spec sets no e2eP95Ms)."""
    e2e_ms = d.deployment.slo.e2e_p95_ms
    return [] if e2e_ms is None else [("gpufleet:slo_e2e_p95_seconds", e2e_ms / 1000)]


def _alert(name: str, expr: str, for_: str, severity: str, deployment: str | None,  # noqa: PLR0917
           summary: str, description: str, runbook: str) -> dict[str, Any]:
    labels = {"severity": severity}
    if deployment is not None:
        labels["deployment"] = deployment
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ != "0m":
        rule["for"] = for_
    rule["labels"] = labels
    rule["annotations"] = {"summary": summary, "description": description, "runbook": runbook}
    return rule


def deployment_alerts(d: DeploymentPlan) -> list[dict[str, Any]]:
    assert d.chosen is not None
    name = d.deployment.name
    sel = f'deployment="{name}"'
    slo = d.deployment.slo
    ttft_s = slo.ttft_p95_ms / 1000
    tpot_s = slo.tpot_p95_ms / 1000
    capacity = round(d.chosen.target_qps_per_replica * d.chosen.replicas, 6)
    fast = round(FAST_BURN * ERROR_BUDGET, 6)
    slow = round(SLOW_BURN * ERROR_BUDGET, 6)
    served = d.profile.resolved_served_name
    scale = ("Check the load against the plan (GpufleetLoadAboveCapacity), replicas up and KV-cache usage; "
             "add replicas (raise replicas.min in the stack and re-plan) or shed load.")
    return [
        *e2e_alert(d),
        _alert("GpufleetTtftP95AboveSlo",
               f"deployment:engine_ttft_seconds:p95_5m{{{sel}}} > {_num(ttft_s)}", "10m", "warning", name,
               f"{name}: TTFT p95 above its SLO of {_num(slo.ttft_p95_ms)} ms",
               f"Time to first token p95 of {name} ({served}) over 5 m has been above {_num(ttft_s)} s "
               "for 10 minutes.",
               "Long prompts or queueing: look at requests waiting and prefix-cache hit rate. " + scale),
        _alert("GpufleetTpotP95AboveSlo",
               f"deployment:engine_tpot_seconds:p95_5m{{{sel}}} > {_num(tpot_s)}", "10m", "warning", name,
               f"{name}: TPOT p95 above its SLO of {_num(slo.tpot_p95_ms)} ms",
               f"Inter-token latency p95 of {name} ({served}) over 5 m has been above {_num(tpot_s)} s "
               "for 10 minutes.",
               "Too many concurrent sequences per replica or preemptions: check running requests, KV-cache "
               "usage and preemptions; lower max_num_seqs or " + scale[0].lower() + scale[1:]),
        _alert("GpufleetErrorBudgetFastBurn",
               f"deployment:request_errors:ratio_rate1h{{{sel}}} > {_num(fast)}"
               f" and deployment:request_errors:ratio_rate5m{{{sel}}} > {_num(fast)}",
               "2m", "critical", name,
               f"{name}: error budget burning {_num(FAST_BURN)}x too fast",
               f"More than {_num(fast * 100)}% of {name}'s requests failed "
               "(vLLM finished_reason=error, or a 5xx from Nginx) over "
               f"both 1 h and 5 m; at this rate the {_num(SUCCESS_OBJECTIVE * 100)}% success objective's "
               "30-day budget is gone in about 2 days.",
               "Read the vLLM logs of the deployment's replicas (journalctl -u the vLLM unit) for engine "
               "errors or CUDA faults; check GPU XID alerts; restart a failing replica; roll back a "
               "recent model or config change."),
        _alert("GpufleetErrorBudgetSlowBurn",
               f"deployment:request_errors:ratio_rate6h{{{sel}}} > {_num(slow)}"
               f" and deployment:request_errors:ratio_rate30m{{{sel}}} > {_num(slow)}",
               "15m", "warning", name,
               f"{name}: error budget burning {_num(SLOW_BURN)}x too fast",
               f"More than {_num(slow * 100)}% of {name}'s requests failed "
               "(vLLM finished_reason=error, or a 5xx from Nginx) over "
               f"both 6 h and 30 m; the {_num(SUCCESS_OBJECTIVE * 100)}% success objective's 30-day budget "
               "is gone in about 5 days.",
               "Find which replica returns the errors (vllm:request_success_total by instance) and read its "
               "logs; look for requests that exceed max_model_len or bad client parameters; fix or roll back."),
        _alert("GpufleetQueueGrowingKvCacheFull",
               f"deriv(deployment:engine_requests_waiting:sum{{{sel}}}[10m]) > 0"
               f" and deployment:engine_kv_cache_usage:max{{{sel}}} > {_num(KV_FULL)}",
               "5m", "warning", name,
               f"{name}: queue growing while the KV cache is over {_num(KV_FULL * 100)}% full",
               f"Requests waiting on {name} have grown for 10 minutes while a replica's KV cache is above "
               f"{_num(KV_FULL * 100)}%: the fleet cannot admit the load it gets.",
               "Add replicas or shed load; check for unusually long prompts or max_tokens; a larger "
               "gpu_memory_utilization or a quantized KV cache gives more room. " + scale),
        _alert("GpufleetPreemptions",
               f"sum by (deployment) (increase(vllm:num_preemptions_total{{{V},{sel}}}[10m])) > 0",
               "0m", "warning", name,
               f"{name}: vLLM preempted requests in the last 10 minutes",
               f"vLLM on {name} ran out of KV-cache blocks and preempted running sequences (recomputed "
               "later), which inflates TPOT and E2E latency.",
               "Lower max_num_seqs or max_num_batched_tokens, raise gpu_memory_utilization, or add "
               "replicas; check that the plan's KV-cache estimate matches the real prompt lengths."),
        _alert("GpufleetBackendDown",
               f"up{{{V},{sel}}} == 0", "2m", "warning", name,
               f"{name}: a vLLM replica is down",
               f"A vLLM replica of {name} has not answered Prometheus' scrape for 2 minutes; Nginx "
               "routes around it, the remaining replicas carry the load.",
               "Check the replica's unit (systemctl status / journalctl) on the instance in the instance "
               "label: OOM, failed model download, GPU fault (XID alerts). Restart it; replace the host "
               "if the GPU is faulty."),
        _alert("GpufleetAllBackendsDown",
               f"sum by (deployment) (up{{{V},{sel}}}) == 0"
               f" or max by (deployment) (absent(up{{{V},{sel}}}))",
               "2m", "critical", name,
               f"{name}: every vLLM replica is down",
               f"No replica of {name} ({served}) answers; Nginx returns errors for every request to it.",
               "Outage. Check the vLLM units on every host of the deployment and the Prometheus targets "
               "page; look for a bad rollout (image, model revision, flags) and roll back; check GPU "
               "alerts and the cloud provider's status."),
        _alert("GpufleetLoadAboveCapacity",
               f"deployment:engine_requests:rate5m{{{sel}}} > {_num(capacity)}", "15m", "warning", name,
               f"{name}: load above the planned capacity of {_num(capacity)} req/s",
               f"{name} has served more than {_num(capacity)} requests/s (target_qps_per_replica "
               f"{_num(round(d.chosen.target_qps_per_replica, 6))} x {d.chosen.replicas} replicas) for "
               "15 minutes; the plan's latency predictions no longer hold.",
               "Raise the deployment's expected load in the stack spec and re-plan (more replicas), or "
               "apply rate limits to the heaviest API keys."),
    ]


def e2e_alert(d: DeploymentPlan) -> list[dict[str, Any]]:
    e2e_ms = d.deployment.slo.e2e_p95_ms
    if e2e_ms is None:
        return []
    name = d.deployment.name
    return [_alert(
        "GpufleetE2eP95AboveSlo",
        f'deployment:engine_e2e_seconds:p95_5m{{deployment="{name}"}} > {_num(e2e_ms / 1000)}', "10m", "warning", name,
        f"{name}: end-to-end latency p95 above its SLO of {_num(e2e_ms)} ms",
        f"End-to-end request latency p95 of {name} ({d.profile.resolved_served_name}) over 5 m has been above "
        f"{_num(e2e_ms / 1000)} s for 10 minutes.",
        "Longer outputs than planned or slow decoding: compare output tokens per request with the traffic "
        "spec and check TPOT and queueing; re-plan with the real output lengths or add replicas.")]


def fleet_alerts() -> list[dict[str, Any]]:
    d = f'job="{DCGM_JOB}"'
    return [
        _alert("GpufleetLoadBalancerDown",
               f'up{{job="{NGINX_JOB}"}} == 0 or nginx_up{{job="{NGINX_JOB}"}} == 0', "2m", "critical", None,
               "The Nginx load balancer is down",
               "The Nginx exporter cannot be scraped or cannot read stub_status for 2 minutes: no request "
               "reaches any deployment.",
               "Check nginx on the LB host (systemctl status nginx, nginx -t); check the exporter "
               "(prometheus-nginx-exporter) and that stub_status answers on loopback."),
        _alert("GpufleetGpuXidError",
               f"DCGM_FI_DEV_XID_ERRORS{{{d}}} > 0", "0m", "critical", None,
               "GPU reported an XID error",
               "dcgm-exporter reports a non-zero last XID error on a GPU (value = XID code).",
               "Look up the XID code (nvidia-smi -q, dmesg): 13/31/43 are usually application faults - "
               "restart the vLLM replica; 48/63/64/74/79/94/95 are hardware or driver faults - drain the "
               "host, reset the GPU or replace the instance."),
        _alert("GpufleetGpuTemperatureHigh",
               f"DCGM_FI_DEV_GPU_TEMP{{{d}}} > {GPU_TEMP_C}", "5m", "warning", None,
               f"GPU temperature above {GPU_TEMP_C} C",
               f"A GPU has been above {GPU_TEMP_C} C for 5 minutes; it will throttle clocks and latency "
               "rises.",
               "Check cooling and fans of the host (on-prem: airflow, data-centre temperature); check "
               "clocks throttle reasons with nvidia-smi -q -d PERFORMANCE; move load off the host if it "
               "persists."),
        _alert("GpufleetGpuMemoryHigh",
               f"DCGM_FI_DEV_FB_USED{{{d}}} / (DCGM_FI_DEV_FB_USED{{{d}}} + DCGM_FI_DEV_FB_FREE{{{d}}})"
               f" > {_num(GPU_FB_USED)}",
               "10m", "warning", None,
               f"GPU framebuffer memory above {_num(GPU_FB_USED * 100)}%",
               "A GPU's framebuffer has been over "
               f"{_num(GPU_FB_USED * 100)}% used for 10 minutes: more than vLLM's preallocation, so another "
               "process uses the GPU or gpu_memory_utilization is set too high; OOM is near.",
               "List GPU processes (nvidia-smi); stop stray processes; lower gpu_memory_utilization in "
               "the stack and re-render if vLLM itself is the user."),
    ]


def rules_document(plan: FleetPlan) -> dict[str, Any]:
    planned = [d for d in plan.deployments if d.chosen is not None]
    groups: list[dict[str, Any]] = [
        {"name": "gpufleet-plan", "rules": plan_rules(planned)},
        {"name": "gpufleet-engine-recording", "rules": recording_rules()},
    ]
    for d in planned:
        groups.append({"name": f"gpufleet-alerts-{d.deployment.name}", "rules": deployment_alerts(d)})
    groups.append({"name": "gpufleet-alerts-fleet", "rules": fleet_alerts()})
    return {"groups": groups}


def render_prometheus_rules(plan: FleetPlan) -> list[Artifact]:
    text = yaml.safe_dump(rules_document(plan), sort_keys=False, width=120, allow_unicode=True)
    header = f"# Generated by gpufleet from stack {plan.stack}: do not edit.\n"
    return [Artifact(RULES_PATH, "prometheus-rules", None, header + text)]

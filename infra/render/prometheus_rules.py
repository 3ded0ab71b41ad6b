"""Prometheus recording and alerting rules generated from the plan (kind ``prometheus-rules``).

Rendered file: ``prometheus/rules/gpufleet.rules.yaml`` — one file per stack, validated by
``promtool check rules`` and unit-tested alert by alert with ``promtool test rules``.

Label and job contract (the scrape config must produce exactly these, :mod:`infra.render.telemetry`):

- job ``engine``: one target per inference-engine replica, with the target labels ``deployment`` (the
  deployment's name), ``model`` (the served model name) and ``inference_engine`` (the engine, a key of
  ``engines.yaml``), scraped at the engine's own metrics path. The rules aggregate by ``deployment`` only, so
  they survive a renamed served model.
- job ``nginx``: Debian's ``prometheus-nginx-exporter`` reading ``stub_status`` (``nginx_up``,
  ``nginx_http_requests_total``, ``nginx_connections_*``). stub_status has no status codes:
- job ``nginx-log``: mtail over the LB's JSON access log (``templates/mtail/``) counts responses by
  ``deployment`` and ``status`` and times the upstream.
- job ``dcgm``: NVIDIA dcgm-exporter (``DCGM_FI_DEV_XID_ERRORS``, ``DCGM_FI_DEV_GPU_TEMP``,
  ``DCGM_FI_DEV_FB_USED``/``DCGM_FI_DEV_FB_FREE``). GPU alerts keep the series' labels; a ``deployment``
  target label is expected on hosts dedicated to one deployment and is then carried into the alert.

Engines: the alerts and dashboards read engine-neutral recorded series ``deployment:engine_*``. Each engine
that runs a deployment of the plan gets one rule group, ``gpufleet-engine-<engine>``, that records them from
that engine's own metric names, the catalog's signals (``infra/catalog/data/engines.yaml``; counters with the
sample name the engine exposes, histograms from their ``_bucket``), selected with
``{job="engine",inference_engine="<engine>"}``. So a record name appears once per engine, and each
deployment's series come from exactly one rule. :data:`SIGNAL_RECORDS` is the one signal -> series mapping; a
signal the engine does not expose records nothing. vLLM's prefix-cache hit ratio is not a catalog signal and is
recorded for vLLM only. Each engine's rules add the label ``inference_engine`` to what they record.

Errors: two sources, recorded separately and combined into ``deployment:request_errors:ratio_rate<W>``
(the worse of the two), which the burn-rate alerts read. The engine's count of failed requests (the catalog's
``outcomes``: vLLM's ``finished_reason="error"``; TGI's ``tgi_request_failure`` less its client-side causes)
and Nginx's 5xx, which also count requests that never reached a replica (502/503/504). Where an engine gives
no error signal (SGLang, llama.cpp, TensorRT-LLM, Ollama), only Nginx's 5xx count. Aborts (client gone, e.g. a
cancelled stream) are recorded separately where the engine tells them apart and do not burn budget; neither
do 4xx (the client's fault: bad key, rate limit, too large).

Alerts exist for a deployment only where its engine has the signal, with these fallbacks:

- E2E p95 SLO: without an engine e2e histogram (llama.cpp, Ollama), the LB's
  ``deployment:nginx_upstream_seconds:p95_5m`` (the whole proxied request, from mtail).
- Load above capacity: without an engine request counter (llama.cpp, Ollama), the LB's rate of non-4xx
  responses routed to the deployment.
- TTFT and TPOT SLOs: no honest LB substitute (a stream's headers leave before the first token), so the alert
  is left out and the plan records ``gpufleet:slo_unmonitored{deployment,slo="ttft"|"tpot",
  inference_engine}`` = 1, which the fleet dashboard lists.
- Queue growing with a full KV cache needs both gauges; preemptions need the counter: left out otherwise.
- Backend down reads ``up{job="engine"}``: Ollama has no metrics endpoint, hence no scrape target and no
  backend-down alerts (its failures show as the LB's 5xx, i.e. the burn-rate alerts).

Alert texts name the deployment's engine by its catalog title, never another's.

Every alert has the labels ``severity`` (``critical`` pages, ``warning`` tickets) and, where it applies,
``deployment``, and the annotations ``summary``, ``description`` and ``runbook`` (what to do, as text).
Annotations carry no ``{{ }}`` templates: thresholds and names are baked in at render time, which keeps
them exact in the unit tests; the firing series' labels identify the instance or GPU.

Error budget: a success objective of :data:`SUCCESS_OBJECTIVE` (the spec has no availability field yet),
multi-window multi-burn-rate alerts as in the Google SRE workbook, ch. 5: 14.4× over 1 h and 5 m
(critical), 6× over 6 h and 30 m (warning).

Groups are evaluated independently: a rule reading another group's record may lag it by one interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from infra.catalog import load_catalog
from infra.catalog.schema import EngineMetric, EngineOutcomes, EngineSignal, InferenceEngine
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.telemetry import (
    DCGM_JOB,
    ENGINE_JOB,
    ENGINE_LABEL,
    MODEL_LABEL,
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
GPU_FB_USED = 0.95  # above an engine's preallocation (vLLM's gpu_memory_utilization defaults to 0.9)
QUANTILES = (0.5, 0.95, 0.99)
BURN_WINDOWS = ("5m", "30m", "1h", "6h")

SIGNAL_RECORDS: dict[EngineSignal, str] = {
    "requests_finished": "deployment:engine_requests:rate5m",
    "prompt_tokens": "deployment:engine_prompt_tokens:rate5m",
    "generation_tokens": "deployment:engine_generation_tokens:rate5m",
    "ttft_seconds": "deployment:engine_ttft_seconds:{q}_5m",
    "inter_token_seconds": "deployment:engine_tpot_seconds:{q}_5m",
    "e2e_seconds": "deployment:engine_e2e_seconds:{q}_5m",
    "requests_waiting": "deployment:engine_requests_waiting:sum",
    "requests_running": "deployment:engine_requests_running:sum",
    "kv_cache_usage": "deployment:engine_kv_cache_usage:max",
}
"""Signal -> the recorded series (``{q}``: p50/p95/p99 of a histogram). How it is computed follows from the
metric's kind: a counter's 5 m rate summed over replicas; a gauge aggregated over replicas by the record's last
part (``sum``, ``max``); a histogram's quantiles over its summed bucket rates. ``preemptions`` is read by its
alert only."""

# vLLM's prefix cache: not a catalog signal (no other engine exposes the pair), recorded for vLLM only.
VLLM_PREFIX_CACHE = ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries")
VLLM = load_catalog().engines["vllm"]
_LATENCY_SIGNALS: dict[str, EngineSignal] = {"ttft": "ttft_seconds", "tpot": "inter_token_seconds",
                                             "e2e": "e2e_seconds"}
LATENCY_HISTOGRAMS = {short: VLLM.metrics.signals[signal].name for short, signal in _LATENCY_SIGNALS.items()}
"""The vLLM histograms the deployment dashboard reads raw: short name -> metric family."""
VLLM_METRICS_USED = (*(m.name for m in VLLM.metrics.signals.values()), *VLLM_PREFIX_CACHE)

L = f'job="{NGINX_LOG_JOB}"'


def _num(value: float) -> str:
    """A PromQL number literal: stable, no float noise (repr is shortest round-trip)."""
    return repr(float(value)) if value != int(value) else str(int(value))


def _q(quantile: float) -> str:
    return f"p{round(quantile * 100)}"


def engine_selector(engine: InferenceEngine) -> str:
    """The label matchers of every raw series of one engine's replicas."""
    return f'job="{ENGINE_JOB}",{ENGINE_LABEL}="{engine.name}"'


def _rate(metric: EngineMetric, sel: str, window: str, matcher: str | None = None) -> str:
    matchers = sel if matcher is None else f"{sel},{matcher}"
    return f"sum by (deployment) (rate({metric.sample()}{{{matchers}}}[{window}]))"


def signal_rules(engine: InferenceEngine) -> list[dict[str, Any]]:
    """The recorded ``deployment:engine_*`` series of :data:`SIGNAL_RECORDS` from one engine's signals."""
    sel = engine_selector(engine)
    rules: list[dict[str, Any]] = []
    for signal, record in SIGNAL_RECORDS.items():
        metric = engine.metrics.signals.get(signal)
        if metric is None:
            continue
        if metric.kind == "histogram":
            for quantile in QUANTILES:
                rules.append({"record": record.format(q=_q(quantile)),
                              "expr": f"histogram_quantile({quantile}, sum by (deployment, le) "
                                      f"(rate({metric.sample('bucket')}{{{sel}}}[5m])))"})
        elif metric.kind == "counter":
            rules.append({"record": record, "expr": _rate(metric, sel, "5m")})
        else:
            aggregation = record.rsplit(":", 1)[1]
            rules.append({"record": record, "expr": f"{aggregation} by (deployment) ({metric.sample()}{{{sel}}})"})
    return rules


def outcome_ratio(engine: InferenceEngine, outcomes: EngineOutcomes, matcher: str, window: str) -> str:
    """Share of an engine's finished requests that match ``matcher`` (an error or an abort) over ``window``.

    With the labels on requests_finished, the share of that counter. With a separate failure counter, of
    successes + failures; ``or … * 0`` makes it 0, not "no data", before the engine's first failure."""
    sel = engine_selector(engine)
    finished = engine.metrics.signals["requests_finished"]
    if outcomes.failures is None:
        return f"{_rate(finished, sel, window, matcher)} / {_rate(finished, sel, window)}"
    zero = f"{_rate(finished, sel, window)} * 0"
    failed = f"({_rate(outcomes.failures, sel, window, matcher)} or {zero})"
    total = f"({_rate(finished, sel, window)} + ({_rate(outcomes.failures, sel, window)} or {zero}))"
    return f"{failed} / {total}"


def outcome_rules(engine: InferenceEngine) -> list[dict[str, Any]]:
    outcomes = engine.metrics.outcomes
    if outcomes is None:
        return []
    rules = []
    if outcomes.error is not None:
        rules += [{"record": f"deployment:engine_request_errors:ratio_rate{window}",
                   "expr": outcome_ratio(engine, outcomes, outcomes.error, window)} for window in BURN_WINDOWS]
    if outcomes.abort is not None:
        rules.append({"record": "deployment:engine_request_aborts:ratio_rate5m",
                      "expr": outcome_ratio(engine, outcomes, outcomes.abort, "5m")})
    return rules


def engine_rules(engine: InferenceEngine) -> list[dict[str, Any]]:
    """Everything recorded from one engine's own metric names."""
    rules = signal_rules(engine) + outcome_rules(engine)
    if engine.name == VLLM.name:
        sel = engine_selector(engine)
        hits, queries = VLLM_PREFIX_CACHE
        rules.append({"record": "deployment:engine_prefix_cache_hits:ratio_rate5m",
                      "expr": f"sum by (deployment) (rate({hits}_total{{{sel}}}[5m]))"
                              f" / sum by (deployment) (rate({queries}_total{{{sel}}}[5m]))"})
    # The engine as a rule label: every engine's group records the same names, and promtool's duplicate-rules
    # lint (same name, same labels) would flag them; the label also tells a series' engine at a glance.
    return [{**rule, "labels": {ENGINE_LABEL: engine.name}} for rule in rules]


def recording_rules() -> list[dict[str, Any]]:
    """Per-deployment series from the load balancer and the scrape itself, whatever the engine."""
    rules: list[dict[str, Any]] = []

    def rec(name: str, expr: str) -> None:
        rules.append({"record": name, "expr": expr})

    for window in BURN_WINDOWS:
        # mtail creates a status's series at its first occurrence: without a 5xx yet, `or ... * 0` makes the
        # ratio 0 instead of no data.
        all_responses = f"sum by (deployment) (rate({NGINX_RESPONSES}{{{L}}}[{window}]))"
        rec(f"deployment:nginx_http_errors:ratio_rate{window}",
            f'(sum by (deployment) (rate({NGINX_RESPONSES}{{{L},status=~"5.."}}[{window}])) or {all_responses} * 0)'
            f" / {all_responses}")
        # What clients see: the worse of the two. Nginx's 5xx include requests that never reached a replica
        # (502/503/504); the engine's errors cover a target whose LB logs are not scraped. label_replace keeps
        # both series apart for `or`, max folds them. No engine error series: Nginx's alone.
        rec(f"deployment:request_errors:ratio_rate{window}",
            f'max by (deployment) (label_replace(deployment:engine_request_errors:ratio_rate{window}, '
            f'"source", "engine", "", "") or label_replace(deployment:nginx_http_errors:ratio_rate{window}, '
            f'"source", "nginx", "", ""))')
    rec("deployment:nginx_http_responses:rate5m",
        f"sum by (deployment, status) (rate({NGINX_RESPONSES}{{{L}}}[5m]))")
    for quantile in QUANTILES:
        rec(f"deployment:nginx_upstream_seconds:{_q(quantile)}_5m",
            f"histogram_quantile({quantile}, sum by (deployment, le) "
            f"(rate({NGINX_UPSTREAM_SECONDS}_bucket{{{L}}}[5m])))")
    rec("deployment:engine_replicas_up:sum", f'sum by (deployment) (up{{job="{ENGINE_JOB}"}})')
    rec("deployment:engine_replicas_scraped:count", f'count by (deployment) (up{{job="{ENGINE_JOB}"}})')
    rec("deployment:engine_usd_per_m_output_tokens:rate5m",
        "gpufleet:plan_hourly_usd / on (deployment)"
        " (deployment:engine_generation_tokens:rate5m * 3600 / 1e6 > 0)")  # no output, no +Inf
    return rules


UNMONITORED_SLOS: dict[str, EngineSignal] = {"ttft": "ttft_seconds", "tpot": "inter_token_seconds"}
"""SLOs only the engine can measure: without the histogram, ``gpufleet:slo_unmonitored`` says so."""


def plan_rules(deployments: Iterable[DeploymentPlan]) -> list[dict[str, Any]]:
    """The plan's numbers as constant series, so dashboards and rules can divide by them; which engine (and
    version) each deployment runs; the SLOs its engine cannot measure."""
    rules: list[dict[str, Any]] = []
    for d in deployments:
        assert d.chosen is not None
        name = d.deployment.name
        engine = d.engine
        capacity = d.chosen.target_qps_per_replica * d.chosen.replicas
        for record, value in (("gpufleet:plan_hourly_usd", d.chosen.hourly_usd),
                              ("gpufleet:plan_replicas", d.chosen.replicas),
                              ("gpufleet:plan_capacity_qps", capacity),
                              ("gpufleet:slo_ttft_p95_seconds", d.deployment.slo.ttft_p95_ms / 1000),
                              ("gpufleet:slo_tpot_p95_seconds", d.deployment.slo.tpot_p95_ms / 1000),
                              *e2e_slo(d)):
            rules.append({"record": record, "expr": f"vector({_num(round(value, 6))})",
                          "labels": {"deployment": name}})
        rules.append({"record": "gpufleet:plan_info", "expr": "vector(1)",
                      "labels": {"deployment": name, ENGINE_LABEL: engine.name, "engine_version": engine.version,
                                 MODEL_LABEL: d.profile.resolved_served_name}})
        rules.extend({"record": "gpufleet:slo_unmonitored", "expr": "vector(1)",
                      "labels": {"deployment": name, "slo": slo, ENGINE_LABEL: engine.name}}
                     for slo, signal in UNMONITORED_SLOS.items() if signal not in engine.metrics.signals)
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


def _has(engine: InferenceEngine, *signals: EngineSignal) -> bool:
    return all(signal in engine.metrics.signals for signal in signals)


def deployment_alerts(d: DeploymentPlan) -> list[dict[str, Any]]:
    """The deployment's alerts, each labelled with its engine (whether its expression reads an engine series
    or the LB's), so routes and silences can select an engine."""
    alerts = _deployment_alerts(d)
    for alert in alerts:
        alert["labels"][ENGINE_LABEL] = d.profile.engine
    return alerts


def _deployment_alerts(d: DeploymentPlan) -> list[dict[str, Any]]:
    """The deployment's alerts, each only where its engine has the signal (fallbacks: module doc)."""
    assert d.chosen is not None
    engine = d.engine
    title = engine.title
    name = d.deployment.name
    sel = f'deployment="{name}"'
    raw = f"{engine_selector(engine)},{sel}"
    slo = d.deployment.slo
    ttft_s = slo.ttft_p95_ms / 1000
    tpot_s = slo.tpot_p95_ms / 1000
    fast = round(FAST_BURN * ERROR_BUDGET, 6)
    slow = round(SLOW_BURN * ERROR_BUDGET, 6)
    served = d.profile.resolved_served_name
    vllm = engine.name == VLLM.name
    seqs = "max_num_seqs" if vllm else f"{title}'s limit on concurrent requests"
    memory = "gpu_memory_utilization" if vllm else f"{title}'s share of GPU memory for the KV cache"
    batched = "max_num_batched_tokens" if vllm else "the batched-token limit"
    scale = ("Check the load against the plan (GpufleetLoadAboveCapacity), replicas up and KV-cache usage; "
             "add replicas (raise replicas.min in the stack and re-plan) or shed load.")
    outcomes = engine.metrics.outcomes
    engine_errors = outcomes is not None and outcomes.error is not None
    if engine_errors:
        assert outcomes is not None
        counter = outcomes.failures or engine.metrics.signals["requests_finished"]
        failed = f"{title} {counter.sample()}{{{outcomes.error}}}, or a 5xx from Nginx"
        find = f"Find which replica returns the errors ({counter.sample()} by instance) and read its logs"
    else:
        failed = f"a 5xx from Nginx; {title} exposes no count of failed requests"
        find = ("Find which replica returns the errors (the upstream address of 5xx lines in the LB's access "
                "log) and read its logs")
    alerts = [*e2e_alert(d)]
    if _has(engine, "ttft_seconds"):
        alerts.append(_alert(
            "GpufleetTtftP95AboveSlo",
            f"deployment:engine_ttft_seconds:p95_5m{{{sel}}} > {_num(ttft_s)}", "10m", "warning", name,
            f"{name}: TTFT p95 above its SLO of {_num(slo.ttft_p95_ms)} ms",
            f"Time to first token p95 of {name} ({served}) over 5 m has been above {_num(ttft_s)} s "
            "for 10 minutes.",
            "Long prompts or queueing: look at requests waiting and prefix-cache hit rate. " + scale))
    if _has(engine, "inter_token_seconds"):
        alerts.append(_alert(
            "GpufleetTpotP95AboveSlo",
            f"deployment:engine_tpot_seconds:p95_5m{{{sel}}} > {_num(tpot_s)}", "10m", "warning", name,
            f"{name}: TPOT p95 above its SLO of {_num(slo.tpot_p95_ms)} ms",
            f"Inter-token latency p95 of {name} ({served}) over 5 m has been above {_num(tpot_s)} s "
            "for 10 minutes.",
            "Too many concurrent sequences per replica or preemptions: check running requests, KV-cache "
            f"usage and preemptions; lower {seqs} or " + scale[0].lower() + scale[1:]))
    alerts += [
        _alert("GpufleetErrorBudgetFastBurn",
               f"deployment:request_errors:ratio_rate1h{{{sel}}} > {_num(fast)}"
               f" and deployment:request_errors:ratio_rate5m{{{sel}}} > {_num(fast)}",
               "2m", "critical", name,
               f"{name}: error budget burning {_num(FAST_BURN)}x too fast",
               f"More than {_num(fast * 100)}% of {name}'s requests failed ({failed}) over "
               f"both 1 h and 5 m; at this rate the {_num(SUCCESS_OBJECTIVE * 100)}% success objective's "
               "30-day budget is gone in about 2 days.",
               f"Read the {title} logs of the deployment's replicas (journalctl -u the {title} unit) for engine "
               "errors or CUDA faults; check GPU XID alerts; restart a failing replica; roll back a "
               "recent model or config change."),
        _alert("GpufleetErrorBudgetSlowBurn",
               f"deployment:request_errors:ratio_rate6h{{{sel}}} > {_num(slow)}"
               f" and deployment:request_errors:ratio_rate30m{{{sel}}} > {_num(slow)}",
               "15m", "warning", name,
               f"{name}: error budget burning {_num(SLOW_BURN)}x too fast",
               f"More than {_num(slow * 100)}% of {name}'s requests failed ({failed}) over "
               f"both 6 h and 30 m; the {_num(SUCCESS_OBJECTIVE * 100)}% success objective's 30-day budget "
               "is gone in about 5 days.",
               f"{find}; look for requests that exceed the context length or bad client parameters; fix or "
               "roll back."),
    ]
    if _has(engine, "requests_waiting", "kv_cache_usage"):
        alerts.append(_alert(
            "GpufleetQueueGrowingKvCacheFull",
            f"deriv(deployment:engine_requests_waiting:sum{{{sel}}}[10m]) > 0"
            f" and deployment:engine_kv_cache_usage:max{{{sel}}} > {_num(KV_FULL)}",
            "5m", "warning", name,
            f"{name}: queue growing while the KV cache is over {_num(KV_FULL * 100)}% full",
            f"Requests waiting on {name} have grown for 10 minutes while a replica's KV cache is above "
            f"{_num(KV_FULL * 100)}%: the fleet cannot admit the load it gets.",
            "Add replicas or shed load; check for unusually long prompts or max_tokens; a larger "
            f"{memory} or a quantized KV cache gives more room. " + scale))
    if _has(engine, "preemptions"):
        preempted = engine.metrics.signals["preemptions"]
        alerts.append(_alert(
            "GpufleetPreemptions",
            f"sum by (deployment) (increase({preempted.sample()}{{{raw}}}[10m])) > 0",
            "0m", "warning", name,
            f"{name}: {title} preempted requests in the last 10 minutes",
            f"{title} on {name} ran out of KV-cache blocks and preempted running sequences (recomputed "
            "later), which inflates TPOT and E2E latency.",
            f"Lower {seqs} or {batched}, raise {memory}, or add "
            "replicas; check that the plan's KV-cache estimate matches the real prompt lengths."))
    if engine.metrics.path is not None:
        up = f'job="{ENGINE_JOB}",{sel}'
        alerts += [
            _alert("GpufleetBackendDown",
                   f"up{{{up}}} == 0", "2m", "warning", name,
                   f"{name}: a {title} replica is down",
                   f"A {title} replica of {name} has not answered Prometheus' scrape for 2 minutes; Nginx "
                   "routes around it, the remaining replicas carry the load.",
                   "Check the replica's unit (systemctl status / journalctl) on the instance in the instance "
                   "label: OOM, failed model download, GPU fault (XID alerts). Restart it; replace the host "
                   "if the GPU is faulty."),
            _alert("GpufleetAllBackendsDown",
                   f"sum by (deployment) (up{{{up}}}) == 0"
                   f" or max by (deployment) (absent(up{{{up}}}))",
                   "2m", "critical", name,
                   f"{name}: every {title} replica is down",
                   f"No replica of {name} ({served}) answers; Nginx returns errors for every request to it.",
                   f"Outage. Check the {title} units on every host of the deployment and the Prometheus targets "
                   "page; look for a bad rollout (image, model revision, flags) and roll back; check GPU "
                   "alerts and the cloud provider's status."),
        ]
    alerts.append(load_alert(d, engine))
    return alerts


def load_alert(d: DeploymentPlan, engine: InferenceEngine) -> dict[str, Any]:
    """Requests/s above the plan's capacity: the engine's finished requests, else the LB's non-4xx responses."""
    assert d.chosen is not None
    name = d.deployment.name
    capacity = round(d.chosen.target_qps_per_replica * d.chosen.replicas, 6)
    if _has(engine, "requests_finished"):
        expr = f'deployment:engine_requests:rate5m{{deployment="{name}"}} > {_num(capacity)}'
        served = "served"
    else:
        expr = (f'sum by (deployment) (deployment:nginx_http_responses:rate5m{{deployment="{name}",status!~"4.."}})'
                f" > {_num(capacity)}")
        served = f"answered (the LB's non-4xx responses: {engine.title} counts no requests)"
    return _alert(
        "GpufleetLoadAboveCapacity", expr, "15m", "warning", name,
        f"{name}: load above the planned capacity of {_num(capacity)} req/s",
        f"{name} has {served} more than {_num(capacity)} requests/s (target_qps_per_replica "
        f"{_num(round(d.chosen.target_qps_per_replica, 6))} x {d.chosen.replicas} replicas) for "
        "15 minutes; the plan's latency predictions no longer hold.",
        "Raise the deployment's expected load in the stack spec and re-plan (more replicas), or "
        "apply rate limits to the heaviest API keys.")


def e2e_alert(d: DeploymentPlan) -> list[dict[str, Any]]:
    """The E2E SLO from the engine's histogram, or from the LB's upstream time when the engine has none."""
    e2e_ms = d.deployment.slo.e2e_p95_ms
    if e2e_ms is None:
        return []
    name = d.deployment.name
    engine = d.engine
    if _has(engine, "e2e_seconds"):
        series = "deployment:engine_e2e_seconds:p95_5m"
        what = "End-to-end request latency p95"
    else:
        series = "deployment:nginx_upstream_seconds:p95_5m"
        what = (f"The load balancer's upstream time p95 (the whole proxied request; {engine.title} has no "
                "end-to-end histogram)")
    return [_alert(
        "GpufleetE2eP95AboveSlo",
        f'{series}{{deployment="{name}"}} > {_num(e2e_ms / 1000)}', "10m", "warning", name,
        f"{name}: end-to-end latency p95 above its SLO of {_num(e2e_ms)} ms",
        f"{what} of {name} ({d.profile.resolved_served_name}) over 5 m has been above "
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
               "restart the engine replica; 48/63/64/74/79/94/95 are hardware or driver faults - drain the "
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
               f"{_num(GPU_FB_USED * 100)}% used for 10 minutes: more than an inference engine preallocates, so "
               "another process uses the GPU or the engine's memory fraction is set too high; OOM is near.",
               "List GPU processes (nvidia-smi); stop stray processes; lower the engine's memory fraction "
               "in the stack and re-render if the engine itself is the user."),
    ]


def rules_document(plan: FleetPlan) -> dict[str, Any]:
    planned = [d for d in plan.deployments if d.chosen is not None]
    engines = {d.profile.engine for d in planned}
    groups: list[dict[str, Any]] = [{"name": "gpufleet-plan", "rules": plan_rules(planned)}]
    for engine in load_catalog().engines.values():  # catalog order: stable
        rules = engine_rules(engine) if engine.name in engines else []
        if rules:
            groups.append({"name": f"gpufleet-engine-{engine.name}", "rules": rules})
    groups.append({"name": "gpufleet-recording", "rules": recording_rules()})
    for d in planned:
        groups.append({"name": f"gpufleet-alerts-{d.deployment.name}", "rules": deployment_alerts(d)})
    groups.append({"name": "gpufleet-alerts-fleet", "rules": fleet_alerts()})
    return {"groups": groups}


def render_prometheus_rules(plan: FleetPlan) -> list[Artifact]:
    text = yaml.safe_dump(rules_document(plan), sort_keys=False, width=120, allow_unicode=True)
    header = f"# Generated by gpufleet from stack {plan.stack}: do not edit.\n"
    return [Artifact(RULES_PATH, "prometheus-rules", None, header + text)]

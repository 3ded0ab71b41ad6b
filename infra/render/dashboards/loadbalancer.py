"""Load balancer: status codes, upstream times and connections of the Nginx in front of the deployments.

Two sources (:mod:`infra.render.telemetry`): job ``nginx`` is prometheus-nginx-exporter reading stub_status
(LB-wide connection gauges and counters, no per-deployment labels: the deployment variable does not apply to
them); job ``nginx-log`` is mtail reading the JSON access log: responses by ``deployment`` (the deployment the LB
routed to, empty when Nginx answered itself) and ``status``, and the upstream response-time histogram by
``deployment``. The variable's "All" (``.*``) includes the empty deployment; a single deployment excludes it.
"""

from __future__ import annotations

from infra.render.dashboards.common import DEP, RATE, Board, Q, Row, heatmap, sel, stat, timeseries
from infra.render.prometheus_rules import QUANTILES
from infra.render.telemetry import NGINX_JOB, NGINX_LOG_JOB, NGINX_RESPONSES, NGINX_UPSTREAM_SECONDS

LOG = sel(NGINX_LOG_JOB)
NGINX = f'{{job="{NGINX_JOB}"}}'
RESPONSES = f"rate({NGINX_RESPONSES}{{{LOG}}}[{RATE}])"
SERVER_ERRORS = f'rate({NGINX_RESPONSES}{{{LOG},status=~"5.."}}[{RATE}])'
STATUS_CLASS = f'label_replace({RESPONSES}, "class", "${{1}}xx", "status", "([1-5])..")'
UPSTREAM = f"rate({NGINX_UPSTREAM_SECONDS}_bucket{{{LOG}}}[{RATE}])"


def _status() -> Row:
    return Row("Responses (access log)", [
        stat("LB up", "1 when Prometheus scrapes the Nginx exporter and it reads stub_status (nginx_up), per "
             "LB instance; 0 means no request reaches any deployment.", "short",
             [Q(f"min by (instance) (nginx_up{NGINX})", "{{instance}}")], width=4, height=8,
             thresholds=[(None, "red"), (1, "green")]),
        timeseries("Responses/s by status class", "Responses per second by status class (2xx…5xx) from the "
                   f"access log ({NGINX_RESPONSES}, status mapped to its class with label_replace), for the "
                   "selected deployments; \"All\" includes responses Nginx gave itself (deployment empty).",
                   "reqps", [Q(f"sum by (class) ({STATUS_CLASS})", "{{class}}")], width=10, stack=True),
        timeseries("5xx share by deployment", "Share of responses routed to each deployment that were 5xx: over "
                   "5 m from the recording rule deployment:nginx_http_errors:ratio_rate5m (dashed), and over "
                   "$__rate_interval from the raw counter, which also shows responses Nginx answered itself "
                   "(empty deployment).", "percentunit",
                   # mtail creates a status's series with its first line: `or ... * 0` shows 0, not no data.
                   [Q(f"(sum by (deployment) ({SERVER_ERRORS}) or sum by (deployment) ({RESPONSES}) * 0)"
                      f" / sum by (deployment) ({RESPONSES})", "{{deployment}}"),
                    Q(f"deployment:nginx_http_errors:ratio_rate5m{{{DEP}}}", "{{deployment}} 5m", line="ref")],
                   width=10),
        timeseries("Responses/s by status code", f"Responses per second by exact status code ({NGINX_RESPONSES}), "
                   "e.g. 499 client closed, 502 no backend, 504 upstream timeout.", "reqps",
                   [Q(f"sum by (status) ({RESPONSES})", "{{status}}")], width=12),
        timeseries("Responses/s by deployment", f"Responses per second per routed deployment ({NGINX_RESPONSES}); "
                   "an empty deployment label means Nginx answered without routing.", "reqps",
                   [Q(f"sum by (deployment) ({RESPONSES})", "{{deployment}}")], width=12),
    ])


def _upstream() -> Row:
    quantiles = [Q(f"histogram_quantile({q}, sum by (le, deployment) ({UPSTREAM}))",
                   f"{{{{deployment}}}} p{round(q * 100)}") for q in QUANTILES]
    return Row("Upstream response time", [
        timeseries("Upstream time p50/p95/p99", "Time from Nginx connecting to a vLLM replica to the last byte of "
                   f"its response ($upstream_response_time: the whole stream), from {NGINX_UPSTREAM_SECONDS}; "
                   "long generations make it long by design, compare with E2E latency.", "s", quantiles),
        heatmap("Upstream time distribution", "Proxied requests per second in each upstream response-time bucket "
                f"({NGINX_UPSTREAM_SECONDS}_bucket rates, summed over the selected deployments).", "s",
                f"sum by (le) ({UPSTREAM})"),
    ])


def _connections() -> Row:
    return Row("Connections (stub_status)", [
        timeseries("Client connections", "Client connections per LB instance (stub_status gauges): active in "
                   "total, and of those reading the request, writing the response (streams in progress) and "
                   "idle keep-alive waiting. LB-wide: the deployment variable does not apply.", "short",
                   [Q(f"sum by (instance) (nginx_connections_{state}{NGINX})", f"{{{{instance}}}} {state}")
                    for state in ("active", "reading", "writing", "waiting")], width=8),
        timeseries("Connections/s accepted vs handled", "New client connections per second accepted and handled "
                   "(rates of the stub_status counters nginx_connections_accepted/_handled); a gap means Nginx "
                   "dropped connections (worker_connections limit).", "short",
                   [Q(f"sum by (instance) (rate(nginx_connections_{c}{NGINX}[{RATE}]))", f"{{{{instance}}}} {c}")
                    for c in ("accepted", "handled")], width=8),
        timeseries("HTTP requests/s (stub_status)", "Client requests per second seen by Nginx "
                   "(rate of nginx_http_requests_total), all servers and locations, per LB instance.", "reqps",
                   [Q(f"sum by (instance) (rate(nginx_http_requests_total{NGINX}[{RATE}]))", "{{instance}}")],
                   width=8),
    ])


def loadbalancer_board(stack: str) -> Board:
    return Board(uid=f"gpufleet-{stack}-loadbalancer", title=f"gpufleet {stack} / Load balancer",
                 description=f"The Nginx load balancer of the {stack} stack: status codes and upstream times per "
                             "routed deployment (mtail on the access log), connections (stub_status).",
                 tags=["gpufleet", stack], rows=[_status(), _upstream(), _connections()], with_model=False)

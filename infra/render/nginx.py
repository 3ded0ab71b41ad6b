"""The Nginx load balancer in front of the fleet's vLLM deployments (kind ``nginx-conf``).

Rendered files (paths relative to the render directory; installed under ``/etc/gpufleet/nginx/``):

- ``nginx/nginx.conf`` — the whole LB: one upstream per deployment, streaming-correct proxying, routing of
  ``/v1/*`` by the JSON body's ``model`` (njs) with a ``/<deployment>/v1/*`` path-prefix fallback, API-key
  check, per-key rate limits, body limit, TLS, ``/healthz``, ``stub_status`` on loopback, JSON access log.
- ``nginx/gpufleet.js`` — the njs module: hashes the presented key, routes by model, OpenAI-style errors.

Written at deploy time, never rendered (the render holds no address that changes and no secret):

- ``/etc/gpufleet/nginx/upstreams/<deployment>.conf`` — the ``server`` lines of the deployment's upstream,
  one per vLLM replica, formatted by :func:`upstream_include` so every target writes the same thing. Cloud
  targets fill it from the instances the provisioning step created (their addresses are known only then);
  on-prem the Ansible role fills it from the inventory and the placement of replicas on ``gpuServers``.
  One format and one path on every target keeps nginx.conf identical whatever the target is.
- ``/etc/gpufleet/nginx/api-key-hashes.map`` — one line per accepted key, ``<sha256 hex of the key> 1;``
  (an nginx ``map`` include), written from the stack's ``apiKey`` secret, e.g.
  ``printf '%s' "$KEY" | sha256sum | awk '{print $1 " 1;"}'``. Several lines allow key rotation; a
  reload (``nginx -s reload``) picks changes up. A missing file stops nginx from starting: fail closed.
- ``/etc/gpufleet/tls/fullchain.pem`` and ``privkey.pem`` — when Nginx terminates TLS (tls.source file or
  self-signed).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass

from infra.hostagent.formats import upstream_conf
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONFIG_DIR, VLLM_PORT
from infra.render.templating import render_template
from infra.spec.stack import StackSpec

# Debian bookworm's libnginx-mod-http-js installs the njs HTTP module here (`dpkg -L libnginx-mod-http-js`).
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"

# proxy_read_timeout bounds the gap between two reads from vLLM. A non-streamed completion sends nothing
# until it is finished, so the gap can be the whole generation: the longest one is the TTFT SLO plus
# max_model_len tokens at the TPOT SLO (vLLM caps prompt + output at max_model_len). Floor: slow starts
# under load; ceiling: a hung replica must not hold a client for hours.
READ_TIMEOUT_FLOOR_S = 60
READ_TIMEOUT_CEILING_S = 3600
# A token is ~4 bytes of text; JSON escaping of non-ASCII (\uXXXX) and chat-message overhead make 16 bytes
# a generous bound. Floor 1 MiB. The body must fit in one memory buffer for njs to read it (see template).
BODY_BYTES_PER_TOKEN = 16
BODY_FLOOR_BYTES = 1 << 20
# Per-key rate limit: the deployment's planned SLO capacity, with bursts of RATE_BURST_S seconds of it.
RATE_BURST_S = 10
RATE_BURST_FLOOR = 10


@dataclass(frozen=True)
class NginxLayout:
    """Where the LB's files live and which ports it listens on. The defaults are the production host;
    tests render the same plan with a temporary prefix and loopback high ports."""

    config_dir: str = f"{CONFIG_DIR}/nginx"
    tls_dir: str = f"{CONFIG_DIR}/tls"
    log_dir: str = "/var/log/nginx"
    pid_file: str = "/run/nginx.pid"
    user: str = "www-data"  # Debian's nginx user
    listen_address: str = ""  # "" = every address
    http_port: int = 80
    https_port: int = 443
    status_port: int = 8081  # stub_status, 127.0.0.1 only: scraped by nginx-prometheus-exporter
    njs_module: str = NJS_MODULE

    @property
    def upstream_dir(self) -> str:
        return f"{self.config_dir}/upstreams"

    @property
    def key_hash_file(self) -> str:
        return f"{self.config_dir}/api-key-hashes.map"

    @property
    def script(self) -> str:
        return f"{self.config_dir}/gpufleet.js"

    def listen(self, port: int) -> str:
        return f"{self.listen_address}:{port}" if self.listen_address else str(port)


@dataclass(frozen=True)
class Route:
    """What the LB needs to know about one deployment."""

    name: str
    models: tuple[str, ...]
    """Names clients send as `model`: the served model name first, then LoRA adapters."""
    read_timeout_s: int
    rate_per_minute: int
    burst: int
    affinity_variable: str | None = None
    """nginx variable of the session header for consistent hashing; None = least_conn."""


def read_timeout_s(plan: DeploymentPlan) -> int:
    assert plan.chosen is not None
    slo = plan.deployment.slo
    longest_ms = slo.ttft_p95_ms + plan.chosen.replica.limits.max_model_len * slo.tpot_p95_ms
    if slo.e2e_p95_ms is not None:
        longest_ms = max(longest_ms, slo.e2e_p95_ms)
    return min(READ_TIMEOUT_CEILING_S, max(READ_TIMEOUT_FLOOR_S, math.ceil(longest_ms / 1000)))


def rate_per_minute(plan: DeploymentPlan) -> int:
    """Requests per minute the deployment carries within its SLO at the planned replica count (per minute
    because limit_req rates are integers and small deployments carry under 1 request/s)."""
    assert plan.chosen is not None
    return max(1, math.ceil(plan.chosen.replicas * plan.chosen.capacity.max_qps * 60))


def route(plan: DeploymentPlan) -> Route:
    models = (plan.profile.resolved_served_name, *(a.name for a in plan.profile.lora_adapters))
    rate = rate_per_minute(plan)
    burst = max(RATE_BURST_FLOOR, math.ceil(rate / 60 * RATE_BURST_S))
    balancing = plan.deployment.load_balancing
    affinity = None
    if balancing.policy == "session-affinity":
        affinity = "$http_" + balancing.session_header.lower().replace("-", "_")  # nginx's header variables
    return Route(plan.deployment.name, models, read_timeout_s(plan), rate, burst, affinity)


def body_limit_mib(plans: Iterable[DeploymentPlan]) -> int:
    """client_max_body_size for the largest prompt any deployment accepts, in whole MiB."""
    tokens = max(p.chosen.replica.limits.max_model_len for p in plans if p.chosen is not None)
    size = max(BODY_FLOOR_BYTES, tokens * BODY_BYTES_PER_TOKEN)
    return math.ceil(size / (1 << 20))


def terminates_tls(spec: StackSpec) -> bool:
    """Nginx holds the certificate for file and self-signed sources. An ACM certificate cannot leave AWS:
    TLS then ends on the AWS network load balancer in front of Nginx, which sees plain HTTP (NLB instance
    targets keep the client's address, so the allow-list below still applies)."""
    return spec.network.tls.source in ("file", "self-signed")


# When TLS ends on an AWS network load balancer (aws-ec2, eks): ELB docs, "Security policies", the
# recommended TLS policy (TLS 1.3 and 1.2).
NLB_TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


def private_clients_only(client_cidrs: Iterable[str]) -> bool:
    """True when only private networks may connect: an internet-facing load balancer would serve nobody else."""
    return all(ipaddress.ip_network(cidr).is_private for cidr in client_cidrs)


def lb_replicas(fleet: FleetPlan) -> int:
    """Nginx instances (EC2 hosts, Kubernetes pods): two in two zones when any deployment asks n+1."""
    return 2 if any(d.deployment.slo.redundancy == "n+1" for d in fleet.deployments) else 1


def model_table(routes: Iterable[Route]) -> dict[str, str]:
    table: dict[str, str] = {}
    for r in routes:
        for model in r.models:
            if table.setdefault(model, r.name) != r.name:
                raise ValueError(f"model '{model}' is served by deployments '{table[model]}' and '{r.name}'")
    return dict(sorted(table.items()))


def render_nginx(plan: FleetPlan, layout: NginxLayout | None = None) -> list[Artifact]:
    layout = layout or NginxLayout()
    routes = sorted((route(d) for d in plan.deployments), key=lambda r: r.name)
    context = {
        "stack": plan.stack,
        "layout": layout,
        "routes": routes,
        "models": model_table(routes),
        "deployments": [r.name for r in routes],
        "allowed_cidrs": sorted(plan.spec.network.allowed_client_cidrs),
        "server_name": plan.spec.network.domain or "_",
        "tls": terminates_tls(plan.spec),
        "tls_source": plan.spec.network.tls.source,
        "body_limit_mib": body_limit_mib(plan.deployments),
        "vllm_port": VLLM_PORT,
    }
    return [
        Artifact("nginx/nginx.conf", "nginx-conf", None, render_template("nginx/nginx.conf.j2", **context)),
        Artifact("nginx/gpufleet.js", "nginx-conf", None, render_template("nginx/gpufleet.js.j2", **context)),
    ]


def upstream_include(deployment: str, addresses: Iterable[str], port: int = VLLM_PORT) -> str:
    """The content of /etc/gpufleet/nginx/upstreams/<deployment>.conf for the given replica addresses
    (host names or IPs; "host:port" keeps its own port). The format is infra/hostagent/formats.py's, which the
    discovery agent of the cloud targets writes too."""
    return upstream_conf(deployment, addresses, port)

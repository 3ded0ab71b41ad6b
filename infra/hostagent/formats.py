"""The formats of the files written at deploy time (the one definition every target uses).

- ``/etc/gpufleet/nginx/upstreams/<deployment>.conf``: the ``server`` lines of a deployment's upstream
  (:func:`upstream_conf`), included by the rendered nginx.conf (infra/render/nginx.py);
- Prometheus file_sd files under ``/etc/gpufleet/prometheus/targets/`` (:func:`file_sd`), read by the
  rendered prometheus.yml (infra/render/prometheus_config.py).

On-prem the render writes them (the addresses are in the spec); on aws-ec2 and eks the discovery agent of
this package writes them from what is running. Standard library only (see the package docstring).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

# Passive health check of open-source nginx: a replica that fails this many times within FAIL_TIMEOUT_S is
# left alone for FAIL_TIMEOUT_S. Seconds, not the 10000s of vLLM's docs example: a restarted replica is back
# in ~1 min.
MAX_FAILS = 3
FAIL_TIMEOUT_S = 10
# A deployment with no replica yet (or none healthy) still needs a server line: nginx refuses an empty
# upstream block. A server marked `down` is never used, so every request fails over to "no live upstreams",
# which nginx answers with 502, with the rendered error_page's OpenAI-style body "No replica of this
# deployment is available" (nginx docs, ngx_http_upstream_module: "down marks the server as permanently
# unavailable").
UNAVAILABLE_SERVER = "127.0.0.1:9 down"


def with_port(address: str, port: int) -> str:
    """``host`` -> ``host:port``; an address that has a port keeps it."""
    return address if ":" in address else f"{address}:{port}"


def upstream_conf(deployment: str, addresses: Iterable[str], port: int, *, allow_empty: bool = False) -> str:
    """The content of ``upstreams/<deployment>.conf`` for the replica addresses (host names or IPs; "host:port"
    keeps its own port), sorted and without duplicates.

    ``allow_empty``: a deployment without an address gets the one ``down`` server line
    (:data:`UNAVAILABLE_SERVER`) instead of an error; for discovery, where "no replica yet" is a state
    of the fleet, not a mistake of the spec."""
    servers = sorted({with_port(a, port) for a in addresses})
    lines = [
        f"# Replicas of deployment '{deployment}' (written at deploy time by gpufleet; included by nginx.conf).",
        "# Passive health check: max_fails failures (connection error, timeout, 502, 503: proxy_next_upstream)",
        "# within fail_timeout take a replica out for fail_timeout.",
    ]
    if not servers:
        if not allow_empty:
            raise ValueError(f"deployment '{deployment}' has no replica address: an empty upstream stops nginx")
        lines.append("# No replica is available: requests fail (502) until discovery finds one.")
        lines.append(f"server {UNAVAILABLE_SERVER};")
    lines += [f"server {s} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_S}s;" for s in servers]
    return "\n".join(lines) + "\n"


def file_sd(targets: Iterable[str], labels: Mapping[str, str], port: int) -> str:
    """The content of a file_sd JSON file: ``targets`` are host names or IPs ("host:port" keeps its port).
    No target: an empty list (Prometheus then has no target for the job, which `absent()`-style alerts see)."""
    hosts = sorted({with_port(t, port) for t in targets})
    groups = [{"targets": hosts, "labels": dict(sorted(labels.items()))}] if hosts else []
    return json.dumps(groups, indent=2) + "\n"

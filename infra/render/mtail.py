"""The mtail program that turns the load balancer's JSON access log into Prometheus metrics (kind
``prometheus-config``: no kind names mtail, and this file defines scraped series, as a scrape config does).

Rendered file: ``mtail/nginx.mtail``, installed on the LB host as ``/etc/gpufleet/mtail/nginx.mtail``.
mtail (Debian package ``mtail``) reads it with ``--progs /etc/gpufleet/mtail``, tails
``/var/log/nginx/access.log`` (``log_format gpufleet_json`` of ``nginx/nginx.conf``) and serves
``/metrics`` on :data:`~infra.render.telemetry.MTAIL_PORT`, scraped by Prometheus as job
:data:`~infra.render.telemetry.NGINX_LOG_JOB`. stub_status (job ``nginx``) has no status codes and no
upstream times; this program derives them:

- :data:`~infra.render.telemetry.NGINX_RESPONSES`, counter by ``deployment`` and ``status``;
- :data:`~infra.render.telemetry.NGINX_UPSTREAM_SECONDS`, histogram by ``deployment`` with
  :data:`~infra.render.telemetry.NGINX_UPSTREAM_BUCKETS` (the last upstream attempt of each proxied request).

``deployment`` is empty for requests Nginx answers before routing (bad key, unknown model or path, body too
large). The program's header says how mtail is run; its comments explain the parsing.
"""

from __future__ import annotations

from infra.plan.optimize import FleetPlan
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONFIG_DIR
from infra.render.nginx import NginxLayout
from infra.render.telemetry import (
    MTAIL_PORT,
    NGINX_JOB,
    NGINX_LOG_JOB,
    NGINX_RESPONSES,
    NGINX_UPSTREAM_BUCKETS,
    NGINX_UPSTREAM_SECONDS,
)
from infra.render.templating import render_template

MTAIL_PATH = "mtail/nginx.mtail"
PROGS_DIR = f"{CONFIG_DIR}/mtail"


def render_mtail(plan: FleetPlan) -> list[Artifact]:
    text = render_template(
        "mtail/nginx.mtail.j2",
        stack=plan.stack,
        install_path=f"{PROGS_DIR}/nginx.mtail",
        progs_dir=PROGS_DIR,
        access_log=f"{NginxLayout().log_dir}/access.log",
        port=MTAIL_PORT,
        nginx_job=NGINX_JOB,
        log_job=NGINX_LOG_JOB,
        responses=NGINX_RESPONSES,
        upstream_seconds=NGINX_UPSTREAM_SECONDS,
        buckets=NGINX_UPSTREAM_BUCKETS,
    )
    return [Artifact(MTAIL_PATH, "prometheus-config", None, text)]

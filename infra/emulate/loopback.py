"""A rendered stack brought up on loopback: emulated vLLM replicas behind the real Nginx load balancer with
its rendered config, and the real monitoring (prometheus-nginx-exporter, mtail, Prometheus, Alertmanager)
with theirs. ``make demo`` runs it for people; the end-to-end tests run it to prove the data plane.

Everything is rendered by the same functions as a deployment, with a layout that puts files under one
folder and listeners on free loopback ports. The deploy-time files (Nginx upstreams and key hashes,
file_sd targets, Alertmanager secrets, a TLS certificate when Nginx terminates TLS) are written the way
provisioning writes them. What differs from a fleet: no GPU (the emulator's step times come from the
capacity model), the stack's alert receivers are replaced by an optional webhook (the real ones are
PagerDuty or Slack), and no dcgm-exporter runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.emulate.processes import (
    Service,
    alertmanager,
    free_port,
    http_get,
    mtail,
    nginx_exporter,
    program,
    prometheus,
    service,
    wait_until,
)
from infra.plan.optimize import FleetPlan
from infra.render.alertmanager import AlertmanagerLayout, render_alertmanager, secret_files
from infra.render.mtail import render_mtail
from infra.render.nginx import NJS_MODULE, NginxLayout, render_nginx, terminates_tls, upstream_include
from infra.render.prometheus_config import (
    PrometheusLayout,
    host_targets,
    render_prometheus_yml,
    targets_file,
    vllm_targets,
)
from infra.render.prometheus_rules import RULES_PATH, render_prometheus_rules
from infra.render.telemetry import ENGINE_JOB, NGINX_JOB, NGINX_LOG_JOB
from infra.spec.alerting import Alerting

DEMO_API_KEY = "sk-gpufleet-demo"  # loopback only; printed by `make demo`
MAX_REPLICAS = 3  # per deployment, unless asked: a demo needs a few, not a prod fleet's 20


@dataclass(frozen=True)
class LoopbackOptions:
    replicas: int | None = None
    """Emulated replicas per deployment; default: the plan's, at most MAX_REPLICAS."""
    time_scale: float = 1.0
    """Emulator step times × this (1.0: as fast as the planned GPU)."""
    api_key: str = DEMO_API_KEY
    monitoring: bool = True
    scrape_interval: str = "5s"
    webhook_url: str | None = None
    """Alertmanager sends every alert here; None: alerts only show in its UI."""
    emulate_args: tuple[str, ...] = ()
    """Extra `gpufleet emulate` options for every replica (e.g. --compute-scale 0.8)."""


@dataclass
class Replica:
    deployment: str
    index: int
    port: int
    service: Service
    ready_path: str = "/health"  # the engine's readiness path (engines.yaml)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ready_url(self) -> str:
        return f"http://{self.address}{self.ready_path}"


@dataclass
class LoopbackFleet:
    plan: FleetPlan
    project_dir: Path
    root: Path
    options: LoopbackOptions = LoopbackOptions()
    replicas: list[Replica] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    nginx: NginxLayout = field(init=False)
    prometheus_port: int = 0
    alertmanager_port: int = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> LoopbackFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_replicas()
        self._start_nginx()
        if self.options.monitoring:
            self._start_monitoring()

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        for replica in self.replicas:
            replica.service.stop()

    # -- what callers use --------------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return terminates_tls(self.plan.spec)

    @property
    def lb_url(self) -> str:
        if self.tls:
            return f"https://127.0.0.1:{self.nginx.https_port}"
        return f"http://127.0.0.1:{self.nginx.http_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def replicas_of(self, deployment: str) -> list[Replica]:
        return [r for r in self.replicas if r.deployment == deployment]

    def kill_replica(self, deployment: str, index: int) -> None:
        """SIGKILL one replica (a crash: its streams are cut, its port refuses)."""
        self.replicas_of(deployment)[index].service.kill()

    def restart_replica(self, deployment: str, index: int) -> None:
        """Start a killed replica again on its port and wait until it is healthy."""
        replica = self.replicas_of(deployment)[index]
        replica.service.start().wait_ready(replica.ready_url)

    # -- replicas ----------------------------------------------------------------------------------------------

    def _replica_count(self, planned: int) -> int:
        return self.options.replicas or min(planned, MAX_REPLICAS)

    def _start_replicas(self) -> None:
        gpufleet = program("gpufleet")
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        for d in self.plan.deployments:
            assert d.chosen is not None
            ready_path = d.engine.health.ready_for(d.profile.resolved_served_name)
            for index in range(self._replica_count(d.chosen.replicas)):
                port = free_port()
                args = [gpufleet, "emulate", "-C", str(self.project_dir), "-s", self.plan.stack,
                        "-d", d.deployment.name, "--port", str(port),
                        "--time-scale", repr(self.options.time_scale), *self.options.emulate_args]
                svc = service(f"vllm-{d.deployment.name}-{index}", args, logs,
                              env={"VLLM_API_KEY": self.options.api_key})
                self.replicas.append(Replica(d.deployment.name, index, port, svc.start(), ready_path))
        for replica in self.replicas:
            replica.service.wait_ready(replica.ready_url)

    # -- the load balancer -------------------------------------------------------------------------------------

    def _start_nginx(self) -> None:
        base = self.root / "lb"
        self.nginx = NginxLayout(
            config_dir=str(base / "nginx"), tls_dir=str(base / "tls"), log_dir=str(base / "log"),
            pid_file=str(base / "nginx.pid"), listen_address="127.0.0.1",
            http_port=free_port(), https_port=free_port(), status_port=free_port(),
        )
        config_dir = Path(self.nginx.config_dir)
        Path(self.nginx.upstream_dir).mkdir(parents=True)
        for artifact in render_nginx(self.plan, self.nginx):
            (config_dir / Path(artifact.path).name).write_text(artifact.content, encoding="utf-8")
        for d in self.plan.deployments:
            name = d.deployment.name
            addresses = [r.address for r in self.replicas_of(name)]
            (Path(self.nginx.upstream_dir) / f"{name}.conf").write_text(upstream_include(name, addresses),
                                                                        encoding="utf-8")
        key_hash = hashlib.sha256(self.options.api_key.encode()).hexdigest()
        Path(self.nginx.key_hash_file).write_text(f"{key_hash} 1;\n", encoding="utf-8")
        Path(self.nginx.log_dir).mkdir(parents=True)
        if self.tls:
            self._self_signed_certificate(Path(self.nginx.tls_dir))
        if not Path(NJS_MODULE).exists():
            raise FileNotFoundError(f"the njs module {NJS_MODULE} is missing (apt: libnginx-mod-http-js)")
        svc = service("nginx", [program("nginx"), "-p", str(base), "-e", f"{self.nginx.log_dir}/error.log",
                                "-c", str(config_dir / "nginx.conf"), "-g", "daemon off;"], self.root / "logs")
        self.services.append(svc.start())
        svc.wait_ready(f"http://127.0.0.1:{self.nginx.http_port}/healthz")

    @staticmethod
    def _self_signed_certificate(folder: Path) -> None:
        folder.mkdir(parents=True)
        subprocess.run(
            [program("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-keyout", str(folder / "privkey.pem"), "-out", str(folder / "fullchain.pem")],
            check=True, capture_output=True, timeout=60,
        )

    # -- monitoring --------------------------------------------------------------------------------------------

    def _alerting_plan(self) -> FleetPlan:
        """The stack's receivers are real PagerDuty/Slack integrations: replace them with the webhook."""
        alerting = None
        if self.options.webhook_url is not None:
            alerting = Alerting.model_validate({"receivers": [
                {"name": "loopback", "webhook": {"url": self.options.webhook_url}}]})
        return dataclasses.replace(self.plan, spec=self.plan.spec.model_copy(update={"alerting": alerting}))

    def _start_monitoring(self) -> None:
        logs = self.root / "logs"
        exporter_port, mtail_port = free_port(), free_port()
        self.prometheus_port, self.alertmanager_port = free_port(), free_port()

        exporter = nginx_exporter(f"http://127.0.0.1:{self.nginx.status_port}/stub_status", exporter_port, logs)
        self.services.append(exporter.start())
        progs = self.root / "mtail"
        progs.mkdir()
        [program_artifact] = render_mtail(self.plan)
        (progs / "nginx.mtail").write_text(program_artifact.content, encoding="utf-8")
        tail = mtail(progs, Path(self.nginx.log_dir) / "access.log", mtail_port, logs)
        self.services.append(tail.start())

        plan = self._alerting_plan()
        am_layout = AlertmanagerLayout(secrets_dir=str(self.root / "alertmanager" / "secrets"))
        Path(am_layout.secrets_dir).mkdir(parents=True)
        assert not secret_files(plan.spec, am_layout)  # the webhook has no secret
        [am_config] = render_alertmanager(plan, am_layout)
        (self.root / "alertmanager" / "alertmanager.yml").write_text(am_config.content, encoding="utf-8")
        manager = alertmanager(self.root / "alertmanager" / "alertmanager.yml", self.root / "alertmanager" / "data",
                               self.alertmanager_port, logs)
        self.services.append(manager.start())

        layout = PrometheusLayout(config_dir=str(self.root / "prometheus"),
                                  scrape_interval=self.options.scrape_interval,
                                  scrape_timeout=self.options.scrape_interval,
                                  evaluation_interval=self.options.scrape_interval,
                                  alertmanager=f"127.0.0.1:{self.alertmanager_port}",
                                  prometheus=f"127.0.0.1:{self.prometheus_port}")
        self._write_prometheus(layout, exporter_port, mtail_port)
        server = prometheus(Path(layout.config_dir) / "prometheus.yml", self.root / "prometheus" / "data",
                            self.prometheus_port, logs)
        self.services.append(server.start())

        exporter.wait_ready(f"http://127.0.0.1:{exporter_port}/metrics")
        tail.wait_ready(f"http://127.0.0.1:{mtail_port}/metrics")
        manager.wait_ready(f"{self.alertmanager_url}/-/ready")
        server.wait_ready(f"{self.prometheus_url}/-/ready")

    def _write_prometheus(self, layout: PrometheusLayout, exporter_port: int, mtail_port: int) -> None:
        targets = Path(layout.targets_dir)
        targets.mkdir(parents=True)
        for d in self.plan.deployments:
            name = d.deployment.name
            text = vllm_targets(d, [r.address for r in self.replicas_of(name)])
            (targets / targets_file(ENGINE_JOB, name)).write_text(text, encoding="utf-8")
        for job, port in ((NGINX_JOB, exporter_port), (NGINX_LOG_JOB, mtail_port)):
            (targets / targets_file(job)).write_text(host_targets(job, [f"127.0.0.1:{port}"]), encoding="utf-8")
        Path(layout.rules_dir).mkdir(parents=True)
        [rules] = render_prometheus_rules(self.plan)
        (Path(layout.rules_dir) / Path(RULES_PATH).name).write_text(rules.content, encoding="utf-8")
        config = render_prometheus_yml(self.plan, layout)
        (Path(layout.config_dir) / "prometheus.yml").write_text(config.content, encoding="utf-8")

    def wait_for_targets(self, timeout_s: float = 60) -> None:
        """Until Prometheus scrapes every target successfully."""
        def all_up() -> bool:
            status, body = http_get(f"{self.prometheus_url}/api/v1/targets?state=active")
            if status != 200:
                return False
            targets = json.loads(body)["data"]["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)
        wait_until(all_up, timeout_s, "every Prometheus target up")

"""The live proof of the monitoring: real Prometheus, Alertmanager, mtail and node_exporter run with what
gpufleet rendered for the onprem-a800 stack, and scrape an emulator of its vLLM replicas, GPU hosts and
Nginx exporter (tests/e2e/metrics_emulator.py) on loopback.

Only test knobs differ from production: loopback ports and a temporary directory (the renderers' layout
parameters), a 1 s scrape/evaluation interval so that 5-minute windows fill in seconds, and the stack's
receivers replaced by one webhook receiver (with a bearer token read from a secret file) that records what
Alertmanager sends. The file_sd files are written with the functions provisioning uses.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.catalog import load_catalog
from infra.plan.optimize import DeploymentPlan, FleetPlan, plan_stack
from infra.render.alertmanager import AlertmanagerLayout, render_alertmanager, secret_files
from infra.render.dashboards import render_dashboards
from infra.render.dashboards.queries import dashboard_queries, expand
from infra.render.mtail import render_mtail
from infra.render.prometheus_config import (
    PrometheusLayout,
    dcgm_targets,
    host_targets,
    render_prometheus_config,
    targets_file,
    vllm_targets,
)
from infra.render.prometheus_rules import render_prometheus_rules, rules_document
from infra.render.telemetry import DCGM_JOB, ENGINE_JOB, NGINX_JOB, NGINX_LOG_JOB, NODE_JOB
from infra.spec.alerting import Alerting
from infra.spec.load import Project, load_stack
from tests.e2e import services
from tests.e2e.metrics_emulator import Emulator, EmulatorConfig, EngineReplica, GpuHost, LoadProfile, NginxLb
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACK = "onprem-a800"
REPLICAS_PER_DEPLOYMENT = 2
BEARER_TOKEN = "live-test-token"
DATA_TIMEOUT_S = 60

pytestmark = pytest.mark.xdist_group("monitoring-live")  # one Prometheus for the module, in one worker
ALERT_TIMEOUT_S = 60


@dataclass
class Live:
    plan: FleetPlan
    emulator: Emulator
    prometheus_port: int
    alertmanager_port: int
    webhook: services.WebhookReceiver

    def query(self, expr: str) -> list[dict[str, Any]]:
        return services.query(self.prometheus_port, expr)

    def gpu_host(self, deployment: str) -> str:
        return f"gpu-{deployment}"


def with_webhook(plan: FleetPlan, url: str) -> FleetPlan:
    """The stack's alerting replaced by one webhook receiver that gets every alert."""
    alerting = Alerting.model_validate({"receivers": [{"name": "live-test", "webhook": {
        "url": url, "bearerToken": {"source": "env", "name": "LIVE_TEST_TOKEN"}}}]})
    return dataclasses.replace(plan, spec=plan.spec.model_copy(update={"alerting": alerting}))


def load_for(d: DeploymentPlan) -> LoadProfile:
    """Traffic well inside the SLO, so no latency alert fires by itself."""
    slo = d.deployment.slo
    return LoadProfile(request_rate=2.0, mean_prompt_tokens=d.deployment.traffic.input_tokens.mean,
                       mean_output_tokens=min(200, d.deployment.traffic.output_tokens.mean),
                       ttft_s=slo.ttft_p95_ms / 1000 / 4, tpot_s=slo.tpot_p95_ms / 1000 / 3)


def emulator_config(plan: FleetPlan, access_log: Path) -> EmulatorConfig:
    replicas = []
    hosts = []
    for d in plan.deployments:
        name = d.deployment.name
        replicas += [EngineReplica(name, d.profile.resolved_served_name, load=load_for(d), engine=d.profile.engine)
                     for _ in range(REPLICAS_PER_DEPLOYMENT)]
        assert d.chosen is not None
        hosts.append(GpuHost(f"gpu-{name}", gpus=d.chosen.config.tp, model_name="NVIDIA A800-SXM4-80GB",
                             deployment=name))
    return EmulatorConfig(tuple(replicas), tuple(hosts), NginxLb(access_log=access_log), seed=5)


def write_targets(plan: FleetPlan, emulator: Emulator, folder: Path, mtail_port: int, node_port: int) -> None:
    """file_sd files exactly as provisioning writes them, with the emulator's loopback addresses."""
    folder.mkdir(parents=True)
    for d in plan.deployments:
        name = d.deployment.name
        replicas = [emulator.replica_endpoint(r).address for r in emulator.replica_names(name)]
        (folder / targets_file(ENGINE_JOB, name)).write_text(vllm_targets(d, replicas), encoding="utf-8")
        gpu = emulator.endpoint(f"dcgm/gpu-{name}").address
        (folder / targets_file(DCGM_JOB, name)).write_text(dcgm_targets(d, [gpu]), encoding="utf-8")
    jobs = {NGINX_JOB: emulator.endpoint("nginx").address, NGINX_LOG_JOB: f"127.0.0.1:{mtail_port}",
            NODE_JOB: f"127.0.0.1:{node_port}"}
    for job, address in jobs.items():
        (folder / targets_file(job)).write_text(host_targets(job, [address]), encoding="utf-8")


def one(artifacts: list[Any]) -> str:
    [artifact] = artifacts
    text: str = artifact.content
    return text


@contextmanager
def live_fleet(stack_name: str, root: Path) -> Iterator[Live]:
    """Prometheus, Alertmanager, mtail and node_exporter with what gpufleet renders for ``stack_name``, scraping
    the emulated replicas (each of its profile's engine), GPU hosts and LB on loopback."""
    for tool in ("prometheus", "prometheus-alertmanager", "mtail", "prometheus-node-exporter", "amtool"):
        require_tool(tool)
    ports = {name: services.free_port() for name in ("prometheus", "alertmanager", "mtail", "node")}
    with ExitStack() as stack:
        webhook = stack.enter_context(services.WebhookReceiver())
        plan = with_webhook(plan_stack(load_stack(Project(ROOT), stack_name)), webhook.url)
        emulator = stack.enter_context(Emulator(emulator_config(plan, root / "access.log")))

        progs = root / "mtail"
        progs.mkdir()
        (progs / "nginx.mtail").write_text(one(render_mtail(plan)), encoding="utf-8")
        stack.enter_context(services.running(services.mtail(progs, root / "access.log", ports["mtail"], root),
                                             f"http://127.0.0.1:{ports['mtail']}/metrics"))
        stack.enter_context(services.running(services.node_exporter(ports["node"], root),
                                             f"http://127.0.0.1:{ports['node']}/metrics"))

        am_layout = AlertmanagerLayout(secrets_dir=str(root / "am-secrets"))
        (root / "am-secrets").mkdir()
        for path, _ref in secret_files(plan.spec, am_layout):
            Path(path).write_text(BEARER_TOKEN, encoding="utf-8")
        (root / "alertmanager.yml").write_text(one(render_alertmanager(plan, am_layout)), encoding="utf-8")
        stack.enter_context(services.running(
            services.alertmanager(root / "alertmanager.yml", root / "am-data", ports["alertmanager"], root),
            f"http://127.0.0.1:{ports['alertmanager']}/-/ready"))

        layout = PrometheusLayout(config_dir=str(root / "prometheus"), scrape_interval="1s", scrape_timeout="1s",
                                  evaluation_interval="1s", alertmanager=f"127.0.0.1:{ports['alertmanager']}",
                                  prometheus=f"127.0.0.1:{ports['prometheus']}")
        write_targets(plan, emulator, Path(layout.targets_dir), ports["mtail"], ports["node"])
        Path(layout.rules_dir).mkdir(parents=True)
        (Path(layout.rules_dir) / "gpufleet.rules.yaml").write_text(one(render_prometheus_rules(plan)),
                                                                     encoding="utf-8")
        config = Path(layout.config_dir) / "prometheus.yml"
        config.write_text(one(render_prometheus_config(plan, layout)), encoding="utf-8")
        stack.enter_context(services.running(services.prometheus(config, root / "tsdb", ports["prometheus"], root),
                                             f"http://127.0.0.1:{ports['prometheus']}/-/ready"))
        yield Live(plan, emulator, ports["prometheus"], ports["alertmanager"], webhook)
        emulator.check()  # the emulator's ticker did not fail meanwhile


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_fleet(STACK, tmp_path_factory.mktemp("monitoring")) as running:
        yield running


def deployments(live: Live) -> set[str]:
    return {d.deployment.name for d in live.plan.deployments}


def test_every_target_is_up(live: Live) -> None:
    def all_up() -> bool:
        result = live.query("up")
        return len(result) == expected and all(r["value"][1] == "1" for r in result)
    # two replicas per deployment, a GPU host per deployment, nginx, mtail, node, Prometheus, Alertmanager
    expected = len(live.plan.deployments) * (REPLICAS_PER_DEPLOYMENT + 1) + 5
    services.wait_until(all_up, DATA_TIMEOUT_S, "every target up")
    jobs = {r["metric"]["job"] for r in live.query("up")}
    assert jobs == {ENGINE_JOB, DCGM_JOB, NGINX_JOB, NGINX_LOG_JOB, NODE_JOB, "prometheus", "alertmanager"}
    labels = {r["metric"]["deployment"] for r in live.query(f'up{{job="{ENGINE_JOB}"}}')}
    assert labels == deployments(live)


def recorded(plan: FleetPlan) -> list[str]:
    names = [rule["record"] for group in rules_document(plan)["groups"] for rule in group["rules"]
             if "record" in rule]
    return list(dict.fromkeys(names))


Lacking = Callable[[list[dict[str, Any]]], set[str]]


def lacking_deployments(live: Live) -> Lacking:
    """The deployments a result has no series for."""
    return lambda result: deployments(live) - {r["metric"].get("deployment", "") for r in result}


def empty(result: list[dict[str, Any]]) -> set[str]:
    return set() if result else {"no data"}


def still_lacking(live: Live, exprs: dict[str, str], lacking: Lacking) -> dict[str, set[str]]:
    """Poll until no expression lacks anything or time is up; what is still lacking then. 5-minute rate
    windows need two samples of each series, and mtail's status series appear with their first log line."""
    deadline = time.monotonic() + DATA_TIMEOUT_S
    todo = dict(exprs)
    while True:
        missing = {label: lack for label, expr in todo.items() if (lack := lacking(live.query(expr)))}
        if not missing or time.monotonic() > deadline:
            return missing
        todo = {label: exprs[label] for label in missing}
        time.sleep(1)


def test_every_recording_rule_returns_data_for_every_deployment(live: Live) -> None:
    names = recorded(live.plan)
    assert len(names) > 40
    assert still_lacking(live, {name: name for name in names}, lacking_deployments(live)) == {}


def test_every_dashboard_query_returns_data_for_every_deployment(live: Live) -> None:
    """Each panel query with the dashboard's variables set to one deployment and its model: the panel a
    user sees for that deployment is not empty."""
    exprs = {}
    for artifact in render_dashboards(live.plan):
        if artifact.kind != "grafana-dashboard":
            continue
        board = json.loads(artifact.content)
        for title, expr in dashboard_queries(board):
            for d in live.plan.deployments:
                name = d.deployment.name
                if "gpufleet:slo_unmonitored" in expr and not unmonitored_slos(d):
                    continue  # the panel lists SLOs an engine cannot measure: rightly empty here
                expanded = expand(expr, deployment=name, model=d.profile.resolved_served_name)
                exprs[f"{board['title']} / {title} / {name}: {expanded}"] = expanded
    assert len(exprs) > 100
    assert still_lacking(live, exprs, empty) == {}


def unmonitored_slos(d: DeploymentPlan) -> list[str]:
    signals = load_catalog().engines[d.profile.engine].metrics.signals
    return [slo for slo, signal in (("ttft", "ttft_seconds"), ("tpot", "inter_token_seconds")) if signal not in signals]


def firing(live: Live, alertname: str) -> list[dict[str, Any]]:
    return [a for a in live.webhook.alerts() if a["labels"]["alertname"] == alertname and a["status"] == "firing"]


def test_an_xid_error_pages_through_alertmanager_to_the_webhook(live: Live) -> None:
    """Emulated GPU fault -> dcgm series -> rendered alert rule -> rendered Alertmanager route -> receiver."""
    d = live.plan.deployments[0].deployment.name
    assert not firing(live, "GpufleetGpuXidError")
    live.emulator.set_gpu_xid(live.gpu_host(d), 79, gpu=0)  # 79: GPU fallen off the bus
    services.wait_until(lambda: bool(firing(live, "GpufleetGpuXidError")), ALERT_TIMEOUT_S,
                        "the XID alert at the webhook")
    [alert] = firing(live, "GpufleetGpuXidError")
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["deployment"] == d  # the GPU host's target label, carried into the alert
    assert alert["labels"]["gpu"] == "0"
    assert alert["annotations"]["runbook"]
    [message] = [m for m in live.webhook.received if alert in m["payload"]["alerts"]]
    assert message["authorization"] == f"Bearer {BEARER_TOKEN}"  # read from the secret file
    assert message["payload"]["receiver"] == "live-test"
    assert message["payload"]["commonLabels"]["alertname"] == "GpufleetGpuXidError"


def amtool(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("amtool"), f"--alertmanager.url=http://127.0.0.1:{live.alertmanager_port}",
                           *args], check=False, capture_output=True, text=True, timeout=30)


def test_a_critical_alert_inhibits_the_warning_of_its_deployment(live: Live) -> None:
    """The rendered inhibit rules, applied by the real Alertmanager: all replicas down silences one replica
    down of the same deployment only."""
    down, other = (d.deployment.name for d in live.plan.deployments)
    for labels in ([f"deployment={down}", "severity=critical", "alertname=GpufleetAllBackendsDown"],
                   [f"deployment={down}", "severity=warning", "alertname=GpufleetBackendDown", "instance=a"],
                   [f"deployment={other}", "severity=warning", "alertname=GpufleetBackendDown", "instance=b"]):
        result = amtool(live, "alert", "add", *labels)
        assert result.returncode == 0, result.stderr

    def inhibited() -> dict[str, bool]:
        status, body = services.http_get(f"http://127.0.0.1:{live.alertmanager_port}/api/v2/alerts")
        assert status == 200
        return {f"{a['labels']['alertname']}/{a['labels']['deployment']}": bool(a["status"]["inhibitedBy"])
                for a in json.loads(body) if a["labels"]["alertname"].startswith("GpufleetBackend")
                or a["labels"]["alertname"] == "GpufleetAllBackendsDown"}
    expected = {f"GpufleetAllBackendsDown/{down}": False, f"GpufleetBackendDown/{down}": True,
                f"GpufleetBackendDown/{other}": False}
    services.wait_until(lambda: inhibited() == expected, 15, "the inhibition")

"""A converged monitoring host (role monitoring): Prometheus, Alertmanager and node_exporter on the render."""

from __future__ import annotations

import pytest

from tests.infra.probe import eventually, http, privileged

pytestmark = pytest.mark.infra_group("monitoring")

PROMETHEUS_DIR = "/etc/gpufleet/prometheus"
ALERTMANAGER_DIR = "/etc/gpufleet/alertmanager"


@pytest.mark.parametrize(("comm", "flag"), [
    ("prometheus", f"--config.file={PROMETHEUS_DIR}/prometheus.yml"),
    ("prometheus-aler", f"--config.file={ALERTMANAGER_DIR}/alertmanager.yml"),  # comm: 15 characters
    ("prometheus-node", ""),
])
def test_running(host, comm, flag):
    # Debian's service runs as user prometheus; other instances (tests) may run beside it under other users.
    ours = [p for p in host.process.filter(comm=comm, user="prometheus") if flag in p.args]
    assert len(ours) == 1, f"{comm} ({flag or 'Debian defaults'}) is not running as user prometheus"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9090/-/ready", "http://127.0.0.1:9093/-/ready"])
def test_ready(host, url):
    def ready() -> None:
        assert http(host, url).status == 200
    eventually(ready)


def test_node_exporter_answers(host):
    metrics = http(host, "http://127.0.0.1:9100/metrics")
    assert metrics.status == 200
    assert "node_cpu_seconds_total" in metrics.body


def test_prometheus_loaded_the_rendered_rules(host):
    def loaded() -> list[dict]:
        groups = http(host, "http://127.0.0.1:9090/api/v1/rules").json()["data"]["groups"]
        files = {g["file"] for g in groups}
        assert files == {f"{PROMETHEUS_DIR}/rules/gpufleet.rules.yaml"}
        return groups
    groups = eventually(loaded)
    rules = [r for g in groups for r in g["rules"]]
    assert any(r["type"] == "alerting" for r in rules)
    assert any(r["type"] == "recording" for r in rules)
    assert all(r["health"] != "err" for r in rules), [r for r in rules if r["health"] == "err"]


def test_targets_files_present(host):
    for name in ("node.json", "nginx.json", "nginx-log.json"):
        assert host.file(f"{PROMETHEUS_DIR}/targets/{name}").is_file
    assert host.file(f"{PROMETHEUS_DIR}/targets").listdir(), "no file_sd file"


def test_prometheus_discovered_the_targets(host):
    def discovered() -> None:
        targets = http(host, "http://127.0.0.1:9090/api/v1/targets").json()["data"]["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        assert {"engine", "nginx", "nginx-log", "node", "prometheus", "alertmanager"} <= jobs
    eventually(discovered)


def test_prometheus_sends_to_alertmanager(host):
    def connected() -> None:
        managers = http(host, "http://127.0.0.1:9090/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"]
        assert [m["url"] for m in managers] == ["http://127.0.0.1:9093/api/v2/alerts"]
    eventually(connected)


def test_alertmanager_runs_alone(host):
    status = http(host, "http://127.0.0.1:9093/api/v2/status").json()
    assert status["cluster"]["status"] == "disabled"


def test_alertmanager_secret_files(host):
    secrets = host.file(f"{ALERTMANAGER_DIR}/secrets")
    with privileged(host):
        names = secrets.listdir() if secrets.exists else []
        for name in names:
            secret = host.file(f"{ALERTMANAGER_DIR}/secrets/{name}")
            assert (secret.user, secret.group, secret.mode) == ("root", "prometheus", 0o640), name
            assert secret.size > 0, f"{name} is empty"

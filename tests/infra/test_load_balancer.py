"""A converged load balancer (role nginx_lb): nginx on the rendered config, exporter, mtail."""

from __future__ import annotations

import os

import pytest

from tests.infra.probe import Response, eventually, http, privileged

pytestmark = pytest.mark.infra_group("load_balancers")

CONF = "/etc/gpufleet/nginx/nginx.conf"


def test_nginx_runs_the_rendered_config(host):
    # Other nginx instances may run on the same machine (tests start their own): only ours counts.
    masters = [p for p in host.process.filter(comm="nginx")
               if p.args.startswith("nginx: master") and f"-c {CONF}" in p.args]
    assert len(masters) == 1, "one nginx master process on the rendered config"
    assert masters[0].user == "root"


def test_nginx_config_is_valid(host):
    with privileged(host):
        result = host.run(f"nginx -t -c {CONF}")
    assert result.rc == 0, result.stderr


@pytest.mark.parametrize("spec", ["tcp://0.0.0.0:80", "tcp://0.0.0.0:443", "tcp://127.0.0.1:8081",
                                  "tcp://9113", "tcp://3903"])
def test_listening(host, spec):
    assert host.socket(spec).is_listening


def test_stub_status_is_loopback_only(host):
    assert not host.socket("tcp://0.0.0.0:8081").is_listening


@pytest.mark.parametrize("url", ["http://127.0.0.1/healthz", "https://127.0.0.1/healthz"])
def test_healthz(host, url):
    response = http(host, url)
    assert response.status == 200
    assert response.json() == {"status": "ok"}


def test_api_refuses_a_request_without_key(host):
    response = http(host, "https://127.0.0.1/v1/models")
    assert response.status == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_api_lists_the_models_with_the_key(host):
    key = os.environ.get("GPUFLEET_API_KEY")
    if not key:
        pytest.fail("GPUFLEET_API_KEY (the stack's vLLM API key) is needed to check the key-hash map")
    response = http(host, "https://127.0.0.1/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200, response.body
    assert response.json()["data"], "the LB serves at least one model"


def test_exporter_reads_stub_status(host):
    def up() -> None:
        metrics = http(host, "http://127.0.0.1:9113/metrics")
        assert metrics.status == 200
        assert "\nnginx_up 1\n" in "\n" + metrics.body
    eventually(up)


def test_mtail_counts_the_access_log(host):
    http(host, "https://127.0.0.1/v1/models")  # a logged 401 (healthz is not logged)

    def counted() -> Response:
        metrics = http(host, "http://127.0.0.1:3903/metrics")
        assert metrics.status == 200
        assert 'gpufleet_nginx_http_responses_total{deployment="",status="401"}' in metrics.body
        return metrics
    eventually(counted, timeout_s=15)

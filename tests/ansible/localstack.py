"""A copy of the onprem-a800 stack whose every host is this machine, rendered by the real renderer.

The on-prem render is used as it is (inventory, group_vars, upstreams, file_sd targets, configs); only the
spec changes before planning:

- hosts: the load balancer and the monitoring host are 127.0.0.1, the GPU servers 127.0.0.2 and 127.0.0.3
  (loopback too, so upstreams and targets stay distinct), and Ansible connects locally as root;
- alerting: one webhook receiver on 127.0.0.1's discard port with a bearer token (a secret file), instead of
  PagerDuty and Slack, so that an alert that fires on this machine never leaves it.

The vault variables the render refers to get test values in ``vault.yml`` (a throwaway certificate and key).
``python -m tests.ansible.localstack DIR`` writes the same thing for a manual run.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from infra.plan.optimize import plan_stack
from infra.render.artifacts import write_artifacts
from infra.render.stack import render_fleet
from infra.spec.alerting import Alerting
from infra.spec.load import Project, load_stack
from infra.spec.stack import OnpremSite

ROOT = Path(__file__).resolve().parents[2]
STACK = "onprem-a800"
API_KEY = "gpufleet-local-test-key"
HOOK_URL = "http://127.0.0.1:9/alerts"  # discard port: nothing listens, nothing leaves the machine


@dataclass(frozen=True)
class LocalStack:
    render_dir: Path
    inventory: Path
    vault: Path
    """Extra-vars file with the vault variables the render's group_vars refer to."""


def local_spec_update() -> dict[str, object]:
    onprem = OnpremSite.model_validate({
        "sshUser": "root",
        "gpuServers": [
            {"name": "gpu-a800-01", "address": "127.0.0.2", "serverType": "onprem-8xa800"},
            {"name": "gpu-a800-02", "address": "127.0.0.3", "serverType": "onprem-8xa800"},
        ],
        "loadBalancers": [{"name": "lb-01", "address": "127.0.0.1"}],
        "monitoring": {"name": "mon-01", "address": "127.0.0.1"},
        "adminCidrs": ["192.0.2.0/24"],
    })
    alerting = Alerting.model_validate({"receivers": [{
        "name": "local-hook",
        "webhook": {"url": HOOK_URL, "bearerToken": {"source": "ansible-vault", "name": "vault_local_hook_token"}},
    }]})
    return {"onprem": onprem, "alerting": alerting}


def self_signed(directory: Path) -> tuple[str, str]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert.read_text(encoding="utf-8"), key.read_text(encoding="utf-8")


def build(out: Path) -> LocalStack:
    """Render the local stack into ``out/render`` and write the vault variables beside it."""
    loaded = load_stack(Project(ROOT), STACK)
    loaded = replace(loaded, spec=loaded.spec.model_copy(update=local_spec_update()))
    render_dir = out / "render"
    write_artifacts(render_fleet(plan_stack(loaded)), render_dir)
    inventory = render_dir / "ansible" / "inventory.yml"
    # Local connection for every host: they are all this machine.
    doc = yaml.safe_load(inventory.read_text(encoding="utf-8"))
    doc["all"]["vars"]["ansible_connection"] = "local"
    # Debian's Python (with python3-apt for the apt module), not whatever python3 comes first in PATH.
    doc["all"]["vars"]["ansible_python_interpreter"] = "/usr/bin/python3"
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    cert, key = self_signed(out)
    vault = out / "vault.yml"
    vault.write_text(yaml.safe_dump({
        "vault_vllm_api_key": API_KEY,
        "vault_llm_tls_cert": cert,
        "vault_llm_tls_key": key,
        "vault_local_hook_token": "local-test-token",
    }), encoding="utf-8")
    return LocalStack(render_dir, inventory, vault)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    built = build(target)
    print(f"render: {built.render_dir}\ninventory: {built.inventory}\nvault vars: {built.vault}")

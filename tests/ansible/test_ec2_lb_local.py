"""An aws-ec2 LB host on this machine, end to end: the config bundle `pulumi up` uploads, the host agent's
sync converging the LB from it, discovery finding a GPU instance by its tags, and a request through Nginx
reaching the replica on that instance.

AWS is moto's server (S3, SSM, Secrets Manager, EC2), reached the way a host reaches AWS: boto3 with an
endpoint. The GPU instance's private IP is in a VPC of 127.0.0.0/16, so the replica (``gpufleet emulate``)
listens on that very address. What CI cannot do: systemd is not PID 1 here, so the LB runs on Debian's init
scripts (``gpufleet_service_manager=sysvinit``) and the ec2_agent role's timer is replaced by running
discovery directly (``--skip-tags discovery``); the role itself is linted and listed in tests/render.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from infra.emulate.processes import Service
from infra.hostagent import layout
from infra.plan.optimize import FleetPlan, plan_stack
from infra.provision.aws.bundle import Bundle, write_bundle
from infra.render.stack import render_fleet
from infra.spec.load import Project, load_stack
from tests.ansible.runner import BIN, ROOT, XDIST_GROUP, machine_lock
from tests.infra.probe import eventually
from tests.tooling import require_tool

pytestmark = pytest.mark.xdist_group(XDIST_GROUP)

STACK = "dev"
REGION = "us-east-1"
API_KEY = "gpufleet-ec2-local-test-key"
BUCKET = "gpufleet-dev-config-test"
SERVICES = ["nginx", "prometheus-nginx-exporter", "mtail", "prometheus-node-exporter"]
CONFIG_DIRS = ["nginx", "tls", "mtail"]  # under /etc/gpufleet: what the LB play writes
UPSTREAM = Path("/etc/gpufleet/nginx/upstreams")
AGENT_SOURCE = ROOT / "infra" / "hostagent"


@dataclass
class Host:
    plan: FleetPlan
    work: Path
    endpoint: str
    bundle: Bundle
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]

    def client(self, service: str) -> Any:
        return aws_client(self.endpoint, service)


def aws_client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def agent_env(work: Path) -> dict[str, str]:
    """A host's environment: the copied package on PYTHONPATH, credentials that reach only the emulator."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    return {**base, "PYTHONPATH": str(work / "agent"), "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(work / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
            "NO_PROXY": "127.0.0.1,localhost"}


def agent(work: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"hostagent.{module}", *args], cwd=work, env=agent_env(work),
                          capture_output=True, text=True, timeout=900, check=False)


def sync(work: Path) -> subprocess.CompletedProcess[str]:
    return agent(work, "sync", "--host-config", str(work / "host.json"), "--state-dir", str(work / "state"),
                 "--secrets-dir", str(work / "run"))


def publish(endpoint: str, bundle: Bundle, api_key_name: str) -> None:
    """What the program's ConfigStore does (the bundle under its content key, the pointer), and the API key
    the stack's operators store."""
    s3, ssm = aws_client(endpoint, "s3"), aws_client(endpoint, "ssm")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=bundle.key, Body=bundle.path.read_bytes())
    pointer = {"bucket": BUCKET, "key": bundle.key, "sha256": bundle.sha256}
    ssm.put_parameter(Name=layout.bundle_parameter(STACK), Type="String", Value=json.dumps(pointer))
    aws_client(endpoint, "secretsmanager").create_secret(Name=api_key_name, SecretString=API_KEY)


def host_files(work: Path, endpoint: str) -> None:
    shutil.copytree(AGENT_SOURCE, work / "agent" / "hostagent", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "ci-vars.yml").write_text(yaml.safe_dump({"gpufleet_service_manager": "sysvinit"}), encoding="utf-8")
    (work / "host.json").write_text(json.dumps({
        "role": "lb", "stack": STACK, "region": REGION, "parameter": layout.bundle_parameter(STACK),
        "endpoint_url": endpoint, "ansible_playbook": str(BIN / "ansible-playbook"),
        "extra_args": ["-e", f"@{work / 'ci-vars.yml'}", "--skip-tags", "discovery"],
    }), encoding="utf-8")


def stop_services() -> None:
    for name in SERVICES:
        subprocess.run(["service", name, "stop"], capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    for tool in ("nginx", "mtail"):  # the LB role validates with them
        require_tool(tool)
    work = tmp_path_factory.mktemp("ec2-lb")
    plan = plan_stack(load_stack(Project(ROOT), STACK))
    bundle = write_bundle(render_fleet(plan), work / "bundle.tar.gz")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    address, port = server.get_host_and_port()
    endpoint = f"http://{address}:{port}"
    try:
        with machine_lock():  # ports 80/443 and /etc/gpufleet, as tests/ansible/test_lb_and_monitoring_local.py
            # moto keeps its state per process, shared by every server in it (tests/hostagent's too): start empty.
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
            publish(endpoint, bundle, plan.spec.api_key.name)
            host_files(work, endpoint)
            first = sync(work)
            second = sync(work)
            yield Host(plan, work, endpoint, bundle, first, second)
            stop_services()
            for name in CONFIG_DIRS:
                shutil.rmtree(Path("/etc/gpufleet") / name, ignore_errors=True)
    finally:
        server.stop()


def test_sync_converges_the_lb_from_the_bundle(host: Host) -> None:
    assert host.first.returncode == 0, (host.first.stdout + host.first.stderr)[-20000:]
    assert "PLAY [Load balancers]" in host.first.stdout and "TASK [firewall" not in host.first.stdout
    bundles = host.work / "state" / "bundles"
    assert (bundles / "current").resolve().name == host.bundle.sha256
    assert list((host.work / "run").iterdir()) == []  # the secrets' extra-vars file is gone


def test_second_sync_changes_nothing(host: Host) -> None:
    assert host.second.returncode == 0, host.second.stderr
    assert "up to date" in host.second.stdout and "PLAY" not in host.second.stdout


def test_a_new_lb_answers_unavailable_until_discovery_finds_a_replica(host: Host) -> None:
    assert "down;" in (UPSTREAM / "chat.conf").read_text()
    status, body = request(host, API_KEY)
    # 502 (nginx's "no live upstreams"), with the rendered error_page's OpenAI-style body.
    assert status == 502 and json.loads(body)["error"]["code"] == "service_unavailable", body


def request(host: Host, key: str | None) -> tuple[int, str]:
    model = host.plan.deployments[0].profile.resolved_served_name
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the role's self-signed certificate
    req = urllib.request.Request("https://127.0.0.1/v1/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def replica(host: Host) -> Iterator[str]:
    """A running GPU instance of deployment chat (tags as gpu.py sets them) and its replica, emulated."""
    ec2 = host.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.7.0/24")["Subnet"]["SubnetId"]
    tags = {layout.STACK_TAG: STACK, layout.ROLE_TAG: "gpu", layout.DEPLOYMENT_TAG: "chat"}
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet, TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["Instances"][0]
    address = instance["PrivateIpAddress"]
    emulator = Service("replica", (str(BIN / "gpufleet"), "emulate", "-s", STACK, "-d", "chat", "--host", address,
                                   "--port", "8000", "--time-scale", "0.01"),
                       host.work / "replica.log", env={"VLLM_API_KEY": API_KEY}).start()
    try:
        emulator.wait_ready(f"http://{address}:8000/health")
        yield address
    finally:
        emulator.stop()


def discover(host: Host) -> subprocess.CompletedProcess[str]:
    variables = yaml.safe_load((host.work / "state/bundles/current/render/ansible/group_vars/all.yml").read_text())
    config = {**variables["gpufleet_discovery"], "endpoint_url": host.endpoint, "targets": None,
              "state_file": str(host.work / "discovery-state.json")}
    config["upstreams"]["reload"] = ["service", "nginx", "reload"]  # sysvinit here; systemctl on the hosts
    path = host.work / "discovery.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return agent(host.work, "discover", "--config", str(path))


def test_discovery_admits_the_replica_and_nginx_routes_to_it(host: Host, replica: str) -> None:
    found = discover(host)
    assert found.returncode == 0, found.stdout + found.stderr
    assert f"server {replica}:8000 " in (UPSTREAM / "chat.conf").read_text()

    def routed() -> str:
        status, body = request(host, API_KEY)
        assert status == 200, body
        return body

    # `nginx reload` returns once the master has its SIGHUP: until the new workers take over, an old one may
    # still answer from the config without the replica (a CI run got its 502 at once after discovery).
    body = eventually(routed, timeout_s=10, interval_s=0.2)
    assert json.loads(body)["choices"]
    assert request(host, None)[0] == 401
    again = discover(host)
    assert again.returncode == 0 and not again.stdout.strip(), again.stdout  # nothing changed, nothing written

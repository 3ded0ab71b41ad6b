"""hostagent.discover against the AWS emulator, with real HTTP replicas on loopback IPs: the files it writes
(exactly the formats' output), the health hysteresis, when it checks and reloads nginx, and how it fails."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infra.hostagent import discover, formats, layout
from tests.hostagent.conftest import AMI, Replica, client, closed_port, free_port
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHAT_LABELS = {"deployment": "chat", "model": "m", "gpu_type": "L4"}
EMBED_LABELS = {"deployment": "embed", "model": "e", "gpu_type": "L4"}
JOBS = [
    {"file": "node.json", "roles": ["gpu", "lb", "monitoring"], "port": 9100, "per_deployment": False},
    {"file": "nginx.json", "roles": ["lb"], "port": 9113, "per_deployment": False},
    {"file": "nginx-log.json", "roles": ["lb"], "port": 3903, "per_deployment": False},
    {"file": "dcgm-{deployment}.json", "roles": ["gpu"], "port": 9400, "per_deployment": True},
    {"file": "vllm-{deployment}.json", "roles": ["gpu"], "port": None, "per_deployment": True},
]


@dataclass
class Fleet:
    """The emulated account: a VPC on 127.0.0.0/16 and instances launched with chosen IPs and tags."""

    ec2: Any
    subnet: str
    ids: dict[str, str] = field(default_factory=dict)  # ip -> instance id

    def launch(self, ip: str, role: str, deployment: str | None = None, stack: str = "dev") -> str:
        tags = {layout.STACK_TAG: stack, layout.ROLE_TAG: role, **({layout.DEPLOYMENT_TAG: deployment} if deployment
                                                                   else {})}
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        reply = self.ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, SubnetId=self.subnet,
                                       PrivateIpAddress=ip, TagSpecifications=spec)
        self.ids[ip] = reply["Instances"][0]["InstanceId"]
        return self.ids[ip]

    def terminate(self, ip: str) -> None:
        self.ec2.terminate_instances(InstanceIds=[self.ids[ip]])

    def stop(self, ip: str) -> None:
        self.ec2.stop_instances(InstanceIds=[self.ids[ip]])


@pytest.fixture
def fleet(aws: str) -> Fleet:
    ec2 = client(aws, "ec2")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/16")["Subnet"]["SubnetId"]
    return Fleet(ec2, subnet)


@dataclass
class Agent:
    """A discovery configuration in tmp_path and the means to run passes with it."""

    root: Path
    endpoint: str
    deployments: dict[str, dict[str, Any]]
    check: list[str] = field(default_factory=list)
    reload: list[str] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=lambda: {"path": "/health", "timeout_s": 2.0,
                                                             "failures_to_remove": 3})

    def __post_init__(self) -> None:
        self.check = self.check or self.recorder("check")
        self.reload = self.reload or self.recorder("reload")

    @property
    def config_path(self) -> Path:
        return self.root / "discovery.json"

    @property
    def upstreams(self) -> Path:
        return self.root / "upstreams"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().split() if log.exists() else []

    def recorder(self, name: str, status: int = 0) -> list[str]:
        return ["sh", "-c", f"echo {name} >> {self.root / 'calls.log'}; exit {status}"]

    def document(self) -> dict[str, Any]:
        return {
            "stack": "dev", "region": "us-east-1", "endpoint_url": self.endpoint,
            "deployments": self.deployments, "health": self.health,
            "upstreams": {"dir": str(self.upstreams), "check": self.check, "reload": self.reload},
            "targets": {"dir": str(self.targets), "jobs": copy.deepcopy(JOBS)},
            "state_file": str(self.root / "state" / "discovery-state.json"),
        }

    def run(self) -> int:
        self.config_path.write_text(json.dumps(self.document()))
        return discover.main(["--config", str(self.config_path), "--once"])

    def upstream(self, deployment: str) -> str:
        return (self.upstreams / f"{deployment}.conf").read_text()

    def target_groups(self, name: str) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = json.loads((self.targets / name).read_text())
        return groups

    def stats(self) -> dict[str, tuple[int, int]]:
        files = [*self.upstreams.iterdir(), *self.targets.iterdir(), self.root / "state" / "discovery-state.json"]
        return {str(p): (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in files}


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


@pytest.fixture
def agent(tmp_path: Path, aws: str, ports: tuple[int, int, int]) -> Agent:
    chat_1, chat_2, embed = ports
    return Agent(tmp_path, aws, {"chat": {"ports": [chat_1, chat_2], "labels": CHAT_LABELS},
                                 "embed": {"ports": [embed], "labels": EMBED_LABELS}})


GPU_A, GPU_B, GPU_QUIET = "127.0.1.1", "127.0.1.2", "127.0.1.3"
GPU_STOPPED, GPU_TERMINATED, GPU_OTHER_STACK, GPU_UNKNOWN = "127.0.1.4", "127.0.1.5", "127.0.1.6", "127.0.1.9"
LB_1, LB_2, MONITORING = "127.0.2.1", "127.0.2.2", "127.0.3.1"


@pytest.fixture
def chat_fleet(fleet: Fleet, agent: Agent, replicas: Callable[[str, int], Replica]) -> dict[str, list[Replica]]:
    """Two healthy chat replicas (two slots each), one running but silent, and instances discovery must not
    take: stopped, terminated, of another stack, of a deployment not in the config (all healthy!)."""
    chat_ports = agent.deployments["chat"]["ports"]
    for ip in (GPU_A, GPU_B, GPU_QUIET, GPU_STOPPED, GPU_TERMINATED, GPU_OTHER_STACK):
        fleet.launch(ip, "gpu", "chat", stack="prod" if ip == GPU_OTHER_STACK else "dev")
    fleet.launch(GPU_UNKNOWN, "gpu", "retired")
    for ip in (LB_1, LB_2):
        fleet.launch(ip, "lb")
    fleet.launch(MONITORING, "monitoring")
    fleet.stop(GPU_STOPPED)
    fleet.terminate(GPU_TERMINATED)
    serving = {ip: [replicas(ip, port) for port in chat_ports]
               for ip in (GPU_A, GPU_B, GPU_STOPPED, GPU_TERMINATED, GPU_OTHER_STACK, GPU_UNKNOWN)}
    return serving


def slots(ip: str, ports: list[int]) -> list[str]:
    return [f"{ip}:{port}" for port in ports]


# -- the files ---------------------------------------------------------------------------------------------

def test_a_pass_writes_the_upstreams_and_targets_of_the_running_fleet(
        agent: Agent, chat_fleet: dict[str, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    chat_ports, embed_port = agent.deployments["chat"]["ports"], agent.deployments["embed"]["ports"][0]
    assert agent.run() == 0
    healthy = slots(GPU_A, chat_ports) + slots(GPU_B, chat_ports)
    assert agent.upstream("chat") == formats.upstream_conf("chat", healthy, chat_ports[0])
    # No replica: the one `down` server, so nginx.conf still loads and requests get the 503.
    assert agent.upstream("embed") == formats.upstream_conf("embed", [], embed_port, allow_empty=True)
    assert f"server {formats.UNAVAILABLE_SERVER};" in agent.upstream("embed")

    gpus = [GPU_A, GPU_B, GPU_QUIET]  # running, of this stack and a configured deployment; health aside
    assert agent.target_groups("node.json") == [
        {"targets": sorted(f"{ip}:9100" for ip in [*gpus, LB_1, LB_2, MONITORING]), "labels": {}}]
    assert agent.target_groups("nginx.json") == [{"targets": [f"{LB_1}:9113", f"{LB_2}:9113"], "labels": {}}]
    assert agent.target_groups("nginx-log.json") == [{"targets": [f"{LB_1}:3903", f"{LB_2}:3903"], "labels": {}}]
    assert agent.target_groups("dcgm-chat.json") == [
        {"targets": [f"{ip}:9400" for ip in gpus], "labels": CHAT_LABELS}]
    assert agent.target_groups("vllm-chat.json") == [
        {"targets": sorted(a for ip in gpus for a in slots(ip, chat_ports)), "labels": CHAT_LABELS}]
    assert agent.target_groups("dcgm-embed.json") == agent.target_groups("vllm-embed.json") == []
    assert (agent.targets / "vllm-chat.json").read_text() == formats.file_sd(
        [a for ip in gpus for a in slots(ip, chat_ports)], CHAT_LABELS, chat_ports[0])
    assert sorted(p.name for p in agent.targets.iterdir()) == sorted(
        ["node.json", "nginx.json", "nginx-log.json", "dcgm-chat.json", "vllm-chat.json", "dcgm-embed.json",
         "vllm-embed.json"])  # no temporary file left behind
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in [*agent.targets.iterdir(), *agent.upstreams.iterdir()])

    assert agent.calls == ["check", "reload"]
    out, err = capsys.readouterr()
    assert f"upstream chat: + {GPU_A}:{chat_ports[0]} (healthy)" in out
    assert "retired" in err and GPU_UNKNOWN in err  # the unknown deployment's instance, said once on stderr


def test_nothing_is_rewritten_or_reloaded_when_nothing_changed(
        agent: Agent, chat_fleet: dict[str, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.run() == 0
    before = agent.stats()
    capsys.readouterr()
    assert agent.run() == 0
    assert agent.stats() == before  # same inode and mtime: not even rewritten with the same bytes
    assert agent.calls == ["check", "reload"]
    assert capsys.readouterr().out == ""


def test_the_targets_of_a_removed_deployment_are_removed(agent: Agent, chat_fleet: dict[str, list[Replica]],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.run() == 0
    (agent.targets / "custom.json").write_text("[]\n")  # not a file of a per-deployment job
    del agent.deployments["embed"]
    assert agent.run() == 0
    assert sorted(p.name for p in agent.targets.iterdir()) == sorted(
        ["node.json", "nginx.json", "nginx-log.json", "dcgm-chat.json", "vllm-chat.json", "custom.json"])
    assert f"removed {agent.targets / 'vllm-embed.json'}" in capsys.readouterr().out
    assert (agent.upstreams / "embed.conf").exists()  # included by no nginx.conf now; left alone


# -- health ------------------------------------------------------------------------------------------------

def test_a_failing_replica_stays_until_the_third_failure_and_returns_on_its_first_success(
        agent: Agent, chat_fleet: dict[str, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    chat_ports = agent.deployments["chat"]["ports"]
    both = slots(GPU_A, chat_ports) + slots(GPU_B, chat_ports)
    assert agent.run() == 0
    for replica in chat_fleet[GPU_B]:
        replica.status = 503
    for failures in (1, 2):
        assert agent.run() == 0
        assert agent.upstream("chat") == formats.upstream_conf("chat", both, chat_ports[0]), failures
        assert f"{GPU_B}:{chat_ports[0]} failed its health probe ({failures}/3): HTTP 503" in capsys.readouterr().out
    assert agent.run() == 0
    assert agent.upstream("chat") == formats.upstream_conf("chat", slots(GPU_A, chat_ports), chat_ports[0])
    assert f"- {GPU_B}:{chat_ports[0]} (3 failed health probes in a row" in capsys.readouterr().out
    for replica in chat_fleet[GPU_B]:
        replica.status = 200
    assert agent.run() == 0
    assert agent.upstream("chat") == formats.upstream_conf("chat", both, chat_ports[0])
    assert agent.calls == ["check", "reload"] * 3  # written on the first pass, the removal and the return


def test_one_success_resets_the_count_of_failures(agent: Agent, chat_fleet: dict[str, list[Replica]]) -> None:
    chat_ports = agent.deployments["chat"]["ports"]
    both = slots(GPU_A, chat_ports) + slots(GPU_B, chat_ports)
    assert agent.run() == 0
    for status in (503, 503, 200, 503, 503):
        for replica in chat_fleet[GPU_B]:
            replica.status = status
        assert agent.run() == 0
    assert agent.upstream("chat") == formats.upstream_conf("chat", both, chat_ports[0])


def test_a_terminated_replica_leaves_at_once(fleet: Fleet, agent: Agent,
                                             chat_fleet: dict[str, list[Replica]]) -> None:
    chat_ports = agent.deployments["chat"]["ports"]
    assert agent.run() == 0
    fleet.terminate(GPU_B)  # its server still answers 200: the instance state decides
    assert agent.run() == 0
    assert agent.upstream("chat") == formats.upstream_conf("chat", slots(GPU_A, chat_ports), chat_ports[0])
    assert agent.target_groups("dcgm-chat.json")[0]["targets"] == [f"{GPU_A}:9400", f"{GPU_QUIET}:9400"]


def test_the_last_replica_gone_leaves_the_down_server(fleet: Fleet, agent: Agent,
                                                      chat_fleet: dict[str, list[Replica]]) -> None:
    assert agent.run() == 0
    for ip in (GPU_A, GPU_B, GPU_QUIET):
        fleet.terminate(ip)
    assert agent.run() == 0
    assert agent.upstream("chat") == formats.upstream_conf("chat", [], 1, allow_empty=True)
    assert agent.target_groups("vllm-chat.json") == []


@pytest.fixture
def silent_replicas(fleet: Fleet, agent: Agent) -> Iterator[list[str]]:
    """Ten replicas whose port accepts connections (the kernel's backlog) but never answers."""
    ips = [f"127.0.4.{n}" for n in range(1, 11)]
    listeners = []
    for ip in ips:
        fleet.launch(ip, "gpu", "chat")
        for port in agent.deployments["chat"]["ports"]:
            listener = socket.socket()
            listener.bind((ip, port))
            listener.listen(8)
            listeners.append(listener)
    yield ips
    for listener in listeners:
        listener.close()


def test_probes_run_concurrently_and_a_timeout_is_a_failure(agent: Agent, silent_replicas: list[str]) -> None:
    agent.health["timeout_s"] = 0.5
    started = time.monotonic()
    assert agent.run() == 0
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"20 probes of 0.5 s took {elapsed:.1f} s: not concurrent (one by one: 10 s)"
    assert agent.upstream("chat") == formats.upstream_conf("chat", [], 1, allow_empty=True)


@pytest.fixture
def garbled_replica(fleet: Fleet, agent: Agent) -> Iterator[str]:
    """A replica whose port answers something that is not HTTP."""
    ip, port = "127.0.5.1", agent.deployments["chat"]["ports"][0]
    fleet.launch(ip, "gpu", "chat")
    listener = socket.create_server((ip, port))

    def answer() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"SSH-2.0-not-http\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    yield f"{ip}:{port}"
    listener.close()


def test_a_reply_that_is_not_http_is_a_failed_probe(agent: Agent, garbled_replica: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.run() == 0
    assert garbled_replica not in agent.upstream("chat")
    assert "Traceback" not in capsys.readouterr().err


def test_an_unreadable_state_starts_afresh(agent: Agent, chat_fleet: dict[str, list[Replica]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    state = agent.root / "state" / "discovery-state.json"
    state.parent.mkdir()
    state.write_text("{not json")
    assert agent.run() == 0
    assert "starting afresh" in capsys.readouterr().err
    assert GPU_A in agent.upstream("chat")
    assert json.loads(state.read_text())["upstreams"]["chat"]


# -- nginx check and reload --------------------------------------------------------------------------------

def test_a_failed_check_restores_the_files_and_does_not_reload(
        fleet: Fleet, agent: Agent, chat_fleet: dict[str, list[Replica]],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.run() == 0
    before = agent.upstream("chat")
    fleet.terminate(GPU_B)
    agent.deployments["new"] = {"ports": [8000], "labels": {"deployment": "new"}}  # a file that is not there yet
    agent.check = agent.recorder("bad-check", status=1)
    capsys.readouterr()
    assert agent.run() == 1
    assert agent.upstream("chat") == before
    assert not (agent.upstreams / "new.conf").exists()
    assert agent.calls == ["check", "reload", "bad-check"]
    err = capsys.readouterr().err
    assert "nginx check" in err and "restored" in err and "Traceback" not in err
    agent.check = agent.recorder("check")  # nginx.conf fixed: the change goes through on the next pass
    assert agent.run() == 0
    assert GPU_B not in agent.upstream("chat")
    assert agent.calls[-2:] == ["check", "reload"]


def test_a_failed_reload_is_retried_by_the_next_pass(agent: Agent, chat_fleet: dict[str, list[Replica]]) -> None:
    agent.reload = agent.recorder("bad-reload", status=1)
    assert agent.run() == 1
    agent.reload = agent.recorder("reload")
    assert agent.run() == 0  # nothing changed in the files, but the reload is still owed
    assert agent.calls == ["check", "bad-reload", "reload"]
    assert agent.run() == 0
    assert agent.calls == ["check", "bad-reload", "reload"]


def test_the_upstream_files_are_valid_nginx(tmp_path: Path, agent: Agent,
                                            chat_fleet: dict[str, list[Replica]]) -> None:
    nginx = require_tool("nginx")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    upstreams = "\n".join(f"    upstream {name} {{ include {agent.upstreams / name}.conf; }}"
                          for name in agent.deployments)
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(f"""pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{}}
http {{
    access_log off;
{temp_paths}
{upstreams}
    server {{
        listen 127.0.0.1:{closed_port()};
        location /chat {{ proxy_pass http://chat; }}
        location /embed {{ proxy_pass http://embed; }}
    }}
}}
""")
    agent.check = [nginx, "-t", "-q", "-p", str(prefix), "-e", str(prefix / "logs/error.log"), "-c", str(conf)]
    assert agent.run() == 0  # exit 1 would be a failed check: the real nginx refused what was written
    assert "max_fails=3" in agent.upstream("chat") and " down;" in agent.upstream("embed")
    (agent.upstreams / "chat.conf").write_text("server nonsense nonsense;\n")
    assert subprocess.run(agent.check, capture_output=True, check=False).returncode != 0  # the check can fail


def test_each_deployment_is_probed_on_its_engines_readiness_path(
        agent: Agent, chat_fleet: dict[str, list[Replica]]) -> None:
    """SGLang's /ready, Ollama's /v1/models/<name>: the deployment's health_path, not the default /health."""
    agent.deployments["chat"]["health_path"] = "/ready"
    assert agent.run() == 0
    for ip in (GPU_A, GPU_B):  # the running replicas of this stack (the others are never probed)
        assert all(replica.probes and set(replica.probes) == {"/ready"} for replica in chat_fleet[ip])
    chat_ports = agent.deployments["chat"]["ports"]
    # The stand-ins answer 404 on /ready: not ready, so no chat replica joins.
    assert agent.upstream("chat") == formats.upstream_conf("chat", [], chat_ports[0], allow_empty=True)


# -- failures ----------------------------------------------------------------------------------------------

def valid_document(tmp_path: Path) -> dict[str, Any]:
    return Agent(tmp_path, "http://127.0.0.1:1", {"chat": {"ports": [8000], "labels": CHAT_LABELS}}).document()


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d.pop("stack"), "'stack': missing"),
    (lambda d: d.update(region=7), "'region'"),
    (lambda d: d["deployments"]["chat"].update(ports=[]), "'deployments.chat.ports'"),
    (lambda d: d["deployments"]["chat"].update(ports=[70000]), "'deployments.chat.ports'"),
    (lambda d: d["deployments"].update({"../etc": d["deployments"]["chat"]}), "'deployments.../etc'"),
    (lambda d: d["health"].update(timeout_s="2"), "'health.timeout_s'"),
    (lambda d: d["deployments"]["chat"].update(health_path="ready"), "'deployments.chat.health_path'"),
    (lambda d: d["upstreams"].update(check="nginx -t"), "'upstreams.check'"),
    (lambda d: d["targets"]["jobs"][0].update(port=None), "'targets.jobs[0].port'"),
    (lambda d: d["targets"]["jobs"][3].update(file="dcgm.json"), "'targets.jobs[3].file'"),
    (lambda d: d["targets"]["jobs"][1].update(roles=["web"]), "'targets.jobs[1].roles'"),
    (lambda d: d.update(upstream=None), "'upstream': unknown field"),
])
def test_a_bad_config_exits_2_naming_the_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        edit: Callable[[dict[str, Any]], Any], field: str) -> None:
    document = valid_document(tmp_path)
    edit(document)
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps(document))
    assert discover.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and f"field {field}" in err, err


def test_a_missing_or_broken_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.json"
    assert discover.main(["--config", str(missing)]) == 2
    assert f"config {missing}: cannot read it" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert discover.main(["--config", str(broken)]) == 2
    assert f"config {broken}: not JSON" in capsys.readouterr().err


def test_aws_unreachable_exits_1_without_a_traceback(tmp_path: Path, aws: str) -> None:
    document = valid_document(tmp_path)
    document["endpoint_url"] = f"http://127.0.0.1:{closed_port()}"
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps(document))
    result = subprocess.run([sys.executable, "-m", "infra.hostagent.discover", "--config", str(path), "--once"],
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("discover: AWS API error:") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "upstreams").exists()

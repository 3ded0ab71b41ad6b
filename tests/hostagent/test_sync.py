"""hostagent.sync against the AWS emulator: bundles in S3, the pointer in SSM, secrets in Secrets Manager and
SSM. A fake ansible-playbook records what sync hands it (the contract); one test runs the real one."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.hostagent import layout, sync
from infra.plan.optimize import plan_stack
from infra.provision.aws.bundle import Member, archive, members
from infra.render.stack import render_fleet
from infra.spec.load import Project, load_stack
from tests.hostagent.conftest import client, closed_port
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "gpufleet-dev-config-test"
PARAMETER = layout.bundle_parameter("dev")
API_KEY = "sk-test-0123456789"
TLS_KEY = "-----BEGIN PRIVATE KEY-----\nMIItest\n-----END PRIVATE KEY-----\n"
LB_SECRETS = {
    "api_key": {"source": "aws-secrets-manager", "name": "dev/api-key"},
    "tls_key": {"source": "aws-ssm-parameter", "name": "/dev/tls-key"},
}
# Not created in the emulator: the LB host must not even ask for the monitoring host's secrets.
MONITORING_SECRETS = {"slack_url": {"source": "aws-secrets-manager", "name": "dev/slack"}}

FAKE_PLAYBOOK = """#!{python}
# Records what hostagent.sync passed to ansible-playbook, then exits with the code in {exit_file} (or 0).
import json, os, stat, sys
from pathlib import Path
args = sys.argv[1:]
extra = Path(args[args.index("-e") + 1].removeprefix("@"))
record = {{
    "argv": args, "cwd": os.getcwd(),
    "env": {{k: os.environ.get(k) for k in ("ANSIBLE_CONFIG", "ANSIBLE_ROLES_PATH", "ANSIBLE_FORCE_COLOR")}},
    "extra_vars": json.loads(extra.read_text()), "extra_vars_mode": stat.S_IMODE(extra.stat().st_mode),
}}
with open({log!r}, "a") as log:
    log.write(json.dumps(record) + "\\n")
exit_file = Path({exit_file!r})
sys.exit(int(exit_file.read_text()) if exit_file.exists() else 0)
"""


def small_bundle(version: str = "1", secrets: dict[str, Any] | None = None) -> dict[str, bytes]:
    """The files of a bundle that sync needs (``version`` makes another sha256)."""
    tables = {"lb": LB_SECRETS, "monitoring": MONITORING_SECRETS} if secrets is None else secrets
    return {
        "render/ansible/inventory.yml": b"all:\n  hosts:\n    gpufleet-lb: {}\n",
        "render/ansible/group_vars/all.yml": yaml.safe_dump({"gpufleet_aws_secrets": tables,
                                                             "version": version}).encode(),
        "ansible/ansible.cfg": b"[defaults]\n",
        "ansible/playbooks/site.yml": b"- hosts: all\n  tasks: []\n",
        "ansible/roles/nginx_lb/tasks/main.yml": b"[]\n",
        "hostagent/sync.py": b"# the agent\n",
        "render/bin/tool.sh": b"#!/bin/sh\n",
    }


def packed(files: dict[str, bytes]) -> bytes:
    """The bundle as infra/provision/aws/bundle.py packs it."""
    return archive([Member(path, data, 0o755 if path.endswith(".sh") else 0o644)
                    for path, data in sorted(files.items())])


@dataclass
class Host:
    """An LB host's directories in tmp_path, its host config and the emulated account it syncs from."""

    root: Path
    endpoint: str
    extra_args: list[str] = field(default_factory=lambda: ["-v"])

    def __post_init__(self) -> None:
        self.s3, self.ssm = client(self.endpoint, "s3"), client(self.endpoint, "ssm")
        self.s3.create_bucket(Bucket=BUCKET)
        self.playbook.write_text(FAKE_PLAYBOOK.format(python=sys.executable, log=str(self.root / "calls.jsonl"),
                                                      exit_file=str(self.root / "exit-code")))
        self.playbook.chmod(0o755)
        self.write_config()

    @property
    def playbook(self) -> Path:
        return self.root / "fake-ansible-playbook"

    @property
    def config(self) -> Path:
        return self.root / "host.json"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "run"

    @property
    def bundles(self) -> Path:
        return self.state / "bundles"

    def write_config(self, **changes: Any) -> None:
        document = {"role": "lb", "stack": "dev", "region": "us-east-1", "parameter": PARAMETER,
                    "endpoint_url": self.endpoint, "ansible_playbook": str(self.playbook),
                    "extra_args": self.extra_args, **changes}
        self.config.write_text(json.dumps(document))

    def publish(self, data: bytes, sha256: str | None = None) -> str:
        """Uploads a bundle and points the parameter at it (``sha256``: a wrong one, for the mismatch)."""
        digest = hashlib.sha256(data).hexdigest()
        key = layout.bundle_key(digest)
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        pointer = {"bucket": BUCKET, "key": key, "sha256": sha256 or digest}
        self.ssm.put_parameter(Name=PARAMETER, Value=json.dumps(pointer), Type="String", Overwrite=True)
        return digest

    def store_secrets(self) -> None:
        client(self.endpoint, "secretsmanager").create_secret(Name="dev/api-key", SecretString=API_KEY)
        self.ssm.put_parameter(Name="/dev/tls-key", Value=TLS_KEY, Type="SecureString")

    def run(self, *args: str) -> int:
        return sync.main(["--host-config", str(self.config), "--state-dir", str(self.state),
                          "--secrets-dir", str(self.secrets_dir), *args])

    @property
    def calls(self) -> list[dict[str, Any]]:
        log = self.root / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def fail_playbook(self, code: int) -> None:
        (self.root / "exit-code").write_text(str(code))

    def current(self) -> str | None:
        link = self.bundles / "current"
        return os.readlink(link) if link.is_symlink() else None

    def bundle_dirs(self) -> set[str]:
        return {p.name for p in self.bundles.iterdir()} - {"current"} if self.bundles.exists() else set()


@pytest.fixture
def host(tmp_path: Path, aws: str) -> Host:
    return Host(tmp_path, aws)


# -- converging --------------------------------------------------------------------------------------------

def test_the_first_sync_converges_and_hands_ansible_the_bundle_and_the_secrets(host: Host) -> None:
    host.store_secrets()
    sha = host.publish(packed(small_bundle()))
    assert host.run() == 0
    bundle = host.bundles / sha
    extra_vars = host.secrets_dir / f"extra-vars-{sha}.json"
    [call] = host.calls
    assert call["argv"] == ["-i", f"{bundle}/render/ansible/inventory.yml", f"{bundle}/ansible/playbooks/site.yml",
                            "--limit", "gpufleet-lb", "--skip-tags", "firewall", "-e", f"@{extra_vars}", "-v"]
    assert call["cwd"] == str(bundle)
    assert call["env"] == {"ANSIBLE_CONFIG": f"{bundle}/ansible/ansible.cfg",
                           "ANSIBLE_ROLES_PATH": f"{bundle}/ansible/roles", "ANSIBLE_FORCE_COLOR": "0"}
    assert call["extra_vars"] == {"gpufleet_secrets": {"api_key": API_KEY, "tls_key": TLS_KEY}}
    assert call["extra_vars_mode"] == 0o600
    assert not extra_vars.exists()
    assert host.current() == sha and (bundle / ".converged").is_file()
    assert host.bundle_dirs() == {sha}
    assert (bundle / "render/ansible/inventory.yml").read_bytes() == small_bundle()["render/ansible/inventory.yml"]
    assert stat.S_IMODE((bundle / "render/bin/tool.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((bundle / "ansible/ansible.cfg").stat().st_mode) == 0o644
    assert stat.S_IMODE((bundle / "ansible/roles/nginx_lb").stat().st_mode) == 0o755


def test_a_converged_bundle_is_not_converged_again_unless_forced(host: Host,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    host.store_secrets()
    sha = host.publish(packed(small_bundle()))
    assert host.run() == 0
    capsys.readouterr()
    assert host.run() == 0
    assert len(host.calls) == 1 and "up to date" in capsys.readouterr().out
    assert host.run("--force") == 0
    assert len(host.calls) == 2 and host.current() == sha


def test_a_new_pointer_converges_the_new_bundle_keeping_the_previous_one(host: Host) -> None:
    host.store_secrets()
    shas = [host.publish(packed(small_bundle(version))) for version in ("1", "2", "3")]
    host.publish(packed(small_bundle("1")))
    assert host.run() == 0
    for number, sha in enumerate(shas[1:], start=2):
        host.publish(packed(small_bundle(str(number))))
        assert host.run() == 0
        assert host.current() == sha
    assert host.bundle_dirs() == set(shas[1:])  # the current and the one before; the oldest pruned
    assert len(host.calls) == 3


def test_a_bundle_without_secrets_gets_an_empty_table(host: Host) -> None:
    files = small_bundle()
    del files["render/ansible/group_vars/all.yml"]
    host.publish(packed(files))
    assert host.run() == 0
    assert host.calls[0]["extra_vars"] == {"gpufleet_secrets": {}}


# -- refusing ----------------------------------------------------------------------------------------------

def test_a_sha256_mismatch_unpacks_nothing(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.store_secrets()
    host.publish(packed(small_bundle()), sha256="0" * 64)
    assert host.run() == 1
    assert "sha256" in capsys.readouterr().err
    assert host.bundle_dirs() == set() and host.calls == []


def test_a_failed_playbook_leaves_current_at_the_last_good_bundle(host: Host,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    host.store_secrets()
    good = host.publish(packed(small_bundle("1")))
    assert host.run() == 0
    bad = host.publish(packed(small_bundle("2")))
    host.fail_playbook(3)
    assert host.run() == 1
    assert "exited with 3" in capsys.readouterr().err
    assert host.current() == good and not (host.bundles / bad / ".converged").exists()
    assert list(host.secrets_dir.iterdir()) == []
    host.fail_playbook(0)  # fixed: the next run converges the same bundle
    assert host.run() == 0
    assert host.current() == bad and len(host.calls) == 3


def evil_archive(member: tarfile.TarInfo) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        regular = tarfile.TarInfo("render/ansible/inventory.yml")
        regular.size = 4
        tar.addfile(regular, io.BytesIO(b"all:"))
        tar.addfile(member, io.BytesIO(b"evil") if member.isreg() else None)
    return raw.getvalue()


def evil(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    member.size = 4 if kind == tarfile.REGTYPE else 0
    return member


@pytest.mark.parametrize("member", [
    evil("../escaped"),
    evil("render/../../escaped"),
    evil("/tmp/escaped"),
    evil("render/link", tarfile.SYMTYPE, "/etc/passwd"),
    evil("render/hard", tarfile.LNKTYPE, "render/ansible/inventory.yml"),
    evil("render/fifo", tarfile.FIFOTYPE),
    evil("render/dev", tarfile.CHRTYPE),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo", "device"])
def test_unsafe_members_are_refused_and_nothing_is_unpacked(host: Host, member: tarfile.TarInfo,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = evil_archive(member)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert member.name in tar.getnames()  # the archive really carries the member as written
    host.publish(data)
    assert host.run() == 1
    assert "refused member" in capsys.readouterr().err
    assert host.bundle_dirs() == set() and host.calls == []
    assert not (host.state / "escaped").exists() and not (host.root / "escaped").exists()


def test_a_missing_secret_is_named(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.publish(packed(small_bundle()))  # secrets not stored
    assert host.run() == 1
    err = capsys.readouterr().err
    assert "'api_key'" in err and "dev/api-key" in err and "Traceback" not in err
    assert host.calls == [] and host.current() is None
    assert not host.secrets_dir.exists() or list(host.secrets_dir.iterdir()) == []


def test_a_bad_pointer_exits_1(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.ssm.put_parameter(Name=PARAMETER, Value='{"bucket": "b", "key": "k"}', Type="String")
    assert host.run() == 1
    assert f"parameter {PARAMETER}" in capsys.readouterr().err


def test_a_held_lock_skips_the_run(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.store_secrets()
    host.publish(packed(small_bundle()))
    host.state.mkdir()
    with open(host.state / "sync.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert host.run() == 0
    assert "another sync holds" in capsys.readouterr().out
    assert host.calls == [] and host.bundle_dirs() == set()
    assert host.run() == 0 and len(host.calls) == 1  # released: the next run converges


@pytest.mark.parametrize(("edit", "field"), [
    ({"role": "gpu"}, "'role'"),
    ({"parameter": None}, "'parameter': missing"),
    ({"region": 3}, "'region'"),
    ({"extra_args": "-v"}, "'extra_args'"),
])
def test_a_bad_host_config_exits_2_naming_the_field(host: Host, capsys: pytest.CaptureFixture[str],
                                                    edit: dict[str, Any], field: str) -> None:
    host.write_config(**edit)
    assert host.run() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(host.config) in err and f"field {field}" in err, err


def test_a_missing_host_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "host.json"
    assert sync.main(["--host-config", str(missing), "--state-dir", str(tmp_path / "state")]) == 2
    assert f"host config {missing}: cannot read it" in capsys.readouterr().err


def test_aws_unreachable_exits_1_without_a_traceback(host: Host) -> None:
    host.write_config(endpoint_url=f"http://127.0.0.1:{closed_port()}")
    result = subprocess.run([sys.executable, "-m", "infra.hostagent.sync", "--host-config", str(host.config),
                             "--state-dir", str(host.state), "--secrets-dir", str(host.secrets_dir)],
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("sync: AWS API error:") and result.stderr.count("\n") == 1, result.stderr


# -- with the real bundle and the real ansible-playbook ----------------------------------------------------

@cache
def dev_bundle() -> bytes:
    return archive(members(render_fleet(plan_stack(load_stack(Project(ROOT), "dev")))))


def test_the_real_bundle_of_an_aws_ec2_stack_syncs(host: Host) -> None:
    """What the render and bundle.py produce is what sync expects: the paths, and the secrets table."""
    data = dev_bundle()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        handle = tar.extractfile("render/ansible/group_vars/all.yml")
        assert handle is not None
        table = yaml.safe_load(handle.read())["gpufleet_aws_secrets"]["lb"]
    assert table, "the dev stack's LB reads its API key at least"
    secretsmanager = client(host.endpoint, "secretsmanager")
    for variable, ref in table.items():
        if ref["source"] == "aws-secrets-manager":
            secretsmanager.create_secret(Name=ref["name"], SecretString=f"value of {variable}")
        else:
            host.ssm.put_parameter(Name=ref["name"], Value=f"value of {variable}", Type="SecureString")
    sha = host.publish(data)
    assert host.run() == 0
    [call] = host.calls
    assert call["extra_vars"] == {"gpufleet_secrets": {v: f"value of {v}" for v in table}}
    assert (host.bundles / sha / "ansible/roles/nginx_lb/tasks/main.yml").is_file()
    assert (host.bundles / sha / "hostagent/sync.py").read_bytes() == Path(sync.__file__).read_bytes()


@pytest.fixture
def ansible_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "ansible-home"
    monkeypatch.setenv("ANSIBLE_HOME", str(home))
    monkeypatch.setenv("ANSIBLE_LOCAL_TEMP", str(home / "tmp"))
    yield home


def real_bundle(out: Path) -> dict[str, bytes]:
    """A localhost play whose role (found through ANSIBLE_ROLES_PATH) writes a secret it got as extra vars."""
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {"load_balancers": {"hosts": {"gpufleet-lb": {}}},
                     "monitoring": {"hosts": {"gpufleet-monitoring": {}}}},
    }}
    role = textwrap.dedent(f"""\
        - name: Write the API key
          ansible.builtin.copy:
            content: "{{{{ gpufleet_secrets.api_key }}}}"
            dest: "{out}/{{{{ inventory_hostname }}}}.txt"
            mode: "0600"
        """)
    site = textwrap.dedent("""\
        - name: Firewall
          hosts: all
          tags: [firewall]
          gather_facts: false
          tasks:
            - name: Never on AWS
              ansible.builtin.fail:
                msg: the firewall play ran
        - name: Load balancers
          hosts: load_balancers
          gather_facts: false
          roles:
            - write_secret
        """)
    return {
        "render/ansible/inventory.yml": yaml.safe_dump(inventory).encode(),
        "render/ansible/group_vars/all.yml": yaml.safe_dump({"gpufleet_aws_secrets": {"lb": {
            "api_key": LB_SECRETS["api_key"]}}}).encode(),
        "ansible/ansible.cfg": b"[defaults]\ninterpreter_python = auto_silent\n",
        "ansible/playbooks/site.yml": site.encode(),
        "ansible/roles/write_secret/tasks/main.yml": role.encode(),
    }


def test_the_real_ansible_playbook_gets_the_secrets(host: Host, ansible_home: Path) -> None:
    playbook = require_tool("ansible-playbook")
    out = host.root / "out"
    out.mkdir()
    host.store_secrets()
    host.write_config(ansible_playbook=playbook, extra_args=[])
    sha = host.publish(packed(real_bundle(out)))
    assert host.run() == 0
    assert (out / "gpufleet-lb.txt").read_text() == API_KEY
    assert not (out / "gpufleet-monitoring.txt").exists()  # --limit: this host only
    assert host.current() == sha and list(host.secrets_dir.iterdir()) == []


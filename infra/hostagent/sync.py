"""Converges an aws-ec2 LB or monitoring host to the config bundle its SSM parameter names (the contract is
layout's). Run by a systemd timer and at boot; cloud-init ships just this module, layout and __init__, so it
imports only them, the standard library, boto3/botocore and PyYAML.

The host config may add ``endpoint_url`` (tests), ``ansible_playbook`` and ``extra_args``. Secrets: the
bundle's ``gpufleet_aws_secrets[role]`` (variable -> ``{source, name}``) into a 0600 extra-vars file
``{"gpufleet_secrets": {variable: value}}``, removed after the run. A failed run leaves ``current`` at the
last converged bundle. Exit: 0 converged, nothing to do or locked; 1 runtime failure; 2 bad host config.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

import boto3
import botocore.config
import botocore.exceptions
import yaml

from . import layout

SYNCED_ROLES = ("lb", "monitoring")  # the GPU hosts are configured by their user data, not by a bundle
LOCK_FILE = "sync.lock"
BUNDLES = "bundles"  # under the state dir: layout.BUNDLES_DIR for the default one
CURRENT = "current"  # symlink in BUNDLES to the last converged bundle
CONVERGED = ".converged"  # marker file in a bundle directory: site.yml succeeded with it
PARTIAL = ".partial"  # suffix of a bundle directory being unpacked
# Paths in a bundle
INVENTORY = f"{layout.BUNDLE_RENDER}/ansible/inventory.yml"
GROUP_VARS = f"{layout.BUNDLE_RENDER}/ansible/group_vars/all.yml"
PLAYBOOK = f"{layout.BUNDLE_ANSIBLE}/playbooks/site.yml"
ANSIBLE_CFG = f"{layout.BUNDLE_ANSIBLE}/ansible.cfg"
ROLES = f"{layout.BUNDLE_ANSIBLE}/roles"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SECRET_VARIABLE = re.compile(r"^[a-z0-9_]+$")
SECRET_SOURCES = ("aws-secrets-manager", "aws-ssm-parameter")  # what the EC2 hosts' instance roles may read
AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class HostConfigError(Exception):
    """Exit 2."""


class SyncError(Exception):
    """A runtime failure: exit 1 with its message."""


def log(message: str) -> None:
    print(f"sync: {message}", flush=True)  # flushed: ansible-playbook writes to the same journal after it


# -- host config -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostConfig:
    role: layout.Role
    stack: str
    region: str
    parameter: str
    endpoint_url: str | None
    ansible_playbook: str
    extra_args: tuple[str, ...]


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise HostConfigError(f"field '{key}': " + ("missing" if value is None else f"not a string: {value!r}"))
    return value


def load_host_config(path: Path) -> HostConfig:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HostConfigError(f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise HostConfigError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HostConfigError(f"not a JSON object: {body!r}")
    if (role := _text(body, "role")) not in SYNCED_ROLES:
        raise HostConfigError(f"field 'role': expected one of {list(SYNCED_ROLES)}, got {role!r}")
    extra = body.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise HostConfigError(f"field 'extra_args': not a list of strings: {extra!r}")
    return HostConfig(cast(layout.Role, role), _text(body, "stack"), _text(body, "region"), _text(body, "parameter"),
                      None if body.get("endpoint_url") is None else _text(body, "endpoint_url"),
                      _text(body, "ansible_playbook", f"{layout.ANSIBLE_VENV}/bin/ansible-playbook"), tuple(extra))


# -- AWS ---------------------------------------------------------------------------------------------------

def client(config: HostConfig, service: str) -> Any:
    settings = botocore.config.Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3})
    return boto3.client(service, region_name=config.region, endpoint_url=config.endpoint_url, config=settings)


def parse_pointer(text: str, parameter: str) -> layout.BundlePointer:
    try:
        document = json.loads(text)
    except ValueError:
        raise SyncError(f"parameter {parameter}: not JSON") from None
    if not isinstance(document, dict) or set(document) != layout.BundlePointer.__required_keys__ or \
            not all(isinstance(v, str) and v for v in document.values()) or not SHA256.match(document["sha256"]):
        raise SyncError(f"parameter {parameter}: not {{bucket, key, sha256 (64 hex digits)}}: {text!r}")
    return cast(layout.BundlePointer, document)


def download(config: HostConfig, pointer: layout.BundlePointer) -> bytes:
    data = cast(bytes, client(config, "s3").get_object(Bucket=pointer["bucket"], Key=pointer["key"])["Body"].read())
    digest = hashlib.sha256(data).hexdigest()
    if digest != pointer["sha256"]:
        raise SyncError(f"{pointer['key']}: sha256 {digest}, not the pointer's: not unpacked")
    return data


# -- unpacking ---------------------------------------------------------------------------------------------

class UnsafeMember(ValueError):
    pass


def member_path(name: str) -> PurePosixPath:
    """The member's path inside the bundle (``.`` for the bundle itself); one that could land outside it is
    refused."""
    path = PurePosixPath(name)  # drops "." parts and repeated slashes
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise UnsafeMember(f"refused member {name!r}: not a relative path inside the bundle")
    return path


def make_dirs(root: Path, relative: PurePosixPath) -> None:
    """Creates the directories of ``relative`` under ``root``, 0755 whatever the umask."""
    current = root
    for part in relative.parts:
        current = current / part
        if not current.exists():
            current.mkdir()
            current.chmod(0o755)
        elif current.is_symlink() or not current.is_dir():
            raise UnsafeMember(f"refused {relative}: {current.name} is not a directory")


def extract(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path) -> None:
    """By hand, not ``extractall``: Debian 12's Python 3.11.2 predates tarfile's extraction filters."""
    relative = member_path(member.name)
    if member.isdir():
        make_dirs(root, relative)
        return
    if not member.isreg():
        kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "a device or FIFO"
        raise UnsafeMember(f"refused member {member.name!r}: {kind}")
    make_dirs(root, relative.parent)
    mode = 0o755 if member.mode & 0o111 else 0o644
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has data
    # O_EXCL|O_NOFOLLOW: a duplicate member fails instead of overwriting, and no link is ever followed.
    fd = os.open(root.joinpath(*relative.parts), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(source, target)
        os.fchmod(target.fileno(), mode)


def unpack(data: bytes, bundles: Path, sha: str) -> Path:
    """``bundles/<sha>``, complete or absent: unpacked into ``<sha>.partial``, then renamed."""
    final = bundles / sha
    if final.is_dir():
        return final  # a rename made it, so it is complete; the sha256 names its content
    partial = bundles / f"{sha}{PARTIAL}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    partial.chmod(0o755)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                extract(tar, member, partial)
    except (tarfile.TarError, UnsafeMember, OSError, EOFError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise SyncError(f"bundle {sha}: {exc}; nothing unpacked") from None
    partial.rename(final)
    return final


# -- secrets -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SecretRef:
    variable: str
    source: str
    name: str


def secret_refs(group_vars: Path, role: str) -> list[SecretRef]:
    """This role's table of ``gpufleet_aws_secrets`` in the bundle's group_vars (none: no secrets)."""
    where = f"{GROUP_VARS}: gpufleet_aws_secrets.{role}"
    try:
        variables = yaml.safe_load(group_vars.read_text(encoding="utf-8")) if group_vars.is_file() else None
        table = ((variables or {}).get("gpufleet_aws_secrets") or {}).get(role) or {}
        entries = sorted(table.items())
    except (yaml.YAMLError, AttributeError, TypeError) as exc:
        raise SyncError(f"{where}: not a mapping in YAML ({exc})") from None
    refs = []
    for variable, entry in entries:
        if not isinstance(variable, str) or not SECRET_VARIABLE.match(variable):
            raise SyncError(f"{where}.{variable}: not a variable name")
        if not isinstance(entry, dict) or entry.get("source") not in SECRET_SOURCES or \
                not isinstance(entry.get("name"), str) or not entry["name"]:
            raise SyncError(f"{where}.{variable}: not {{source: {' | '.join(SECRET_SOURCES)}, name}}: {entry!r}")
        refs.append(SecretRef(variable, entry["source"], entry["name"]))
    return refs


def fetch_secret(config: HostConfig, ref: SecretRef) -> str:
    try:
        if ref.source == "aws-ssm-parameter":
            value = client(config, "ssm").get_parameter(Name=ref.name, WithDecryption=True)["Parameter"]["Value"]
        else:
            value = client(config, "secretsmanager").get_secret_value(SecretId=ref.name).get("SecretString")
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SyncError(f"secret '{ref.variable}' ({ref.source} {ref.name}): {code}") from None
    if not isinstance(value, str):
        raise SyncError(f"secret '{ref.variable}' ({ref.source} {ref.name}) has no string value")
    return value


@contextlib.contextmanager
def extra_vars_file(directory: Path, sha: str, secrets: Mapping[str, str]) -> Iterator[Path]:
    """The secrets as Ansible extra vars, readable by root alone, gone when the run ends."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"extra-vars-{sha}.json"
    path.unlink(missing_ok=True)  # a killed run's leftover; O_EXCL below then never writes into a foreign file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"gpufleet_secrets": dict(secrets)}, handle)
        yield path
    finally:
        path.unlink(missing_ok=True)


# -- the run -----------------------------------------------------------------------------------------------

def run_playbook(config: HostConfig, bundle: Path, extra_vars: Path) -> int:
    command = [config.ansible_playbook, "-i", str(bundle / INVENTORY), str(bundle / PLAYBOOK),
               "--limit", layout.inventory_host(config.role), "--skip-tags", "firewall",
               "-e", f"@{extra_vars}", *config.extra_args]
    # The bundle leaves out playbooks/roles (a link to ../roles in the repository): the roles are named here.
    env = {**os.environ, "ANSIBLE_CONFIG": str(bundle / ANSIBLE_CFG), "ANSIBLE_ROLES_PATH": str(bundle / ROLES),
           "ANSIBLE_FORCE_COLOR": "0"}
    log(f"running {' '.join(command)}")
    try:
        return subprocess.run(command, env=env, cwd=bundle, check=False).returncode
    except OSError as exc:
        raise SyncError(f"cannot run {config.ansible_playbook}: {exc.strerror or exc}") from None


def current_sha(bundles: Path) -> str | None:
    """The bundle ``current`` points at (only converged bundles are ever pointed at)."""
    try:
        name = Path(os.readlink(bundles / CURRENT)).name
    except OSError:
        return None
    return name if (bundles / name / CONVERGED).is_file() else None


def repoint_current(bundles: Path, sha: str) -> None:
    temporary = bundles / f".{CURRENT}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(sha)  # relative: the state directory may be moved or mounted elsewhere
    os.replace(temporary, bundles / CURRENT)


def prune(bundles: Path, keep: set[str]) -> None:
    """Removes the bundle directories (and leftovers of unpacking) not in ``keep``; nothing else."""
    for entry in bundles.iterdir():
        sha = entry.name.removesuffix(PARTIAL)
        if SHA256.match(sha) and entry.name not in keep and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            log(f"removed bundle {entry.name}")


def sync(config: HostConfig, bundles: Path, secrets_dir: Path, *, force: bool) -> int:
    value = client(config, "ssm").get_parameter(Name=config.parameter)["Parameter"]["Value"]
    pointer = parse_pointer(str(value), config.parameter)
    sha, previous = pointer["sha256"], current_sha(bundles)
    if sha == previous and not force:
        log(f"bundle {sha} is converged: up to date")
        return 0
    bundles.mkdir(mode=0o755, parents=True, exist_ok=True)
    bundle = unpack(download(config, pointer), bundles, sha)
    for needed in (INVENTORY, PLAYBOOK, ANSIBLE_CFG):
        if not (bundle / needed).is_file():
            raise SyncError(f"bundle {sha} has no {needed}")
    secrets = {ref.variable: fetch_secret(config, ref) for ref in secret_refs(bundle / GROUP_VARS, config.role)}
    with extra_vars_file(secrets_dir, sha, secrets) as extra_vars:
        status = run_playbook(config, bundle, extra_vars)
    if status != 0:
        raise SyncError(f"ansible-playbook exited with {status}: bundle {sha} not converged; current stays "
                        f"{previous or 'unset'}")
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    (bundle / CONVERGED).write_text(f"{stamp}\n", encoding="utf-8")
    repoint_current(bundles, sha)
    prune(bundles, {sha} | ({previous} if previous else set()))
    log(f"converged bundle {sha}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hostagent.sync", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host-config", default=layout.HOST_CONFIG)
    parser.add_argument("--state-dir", default=layout.STATE_DIR)
    parser.add_argument("--secrets-dir", default=layout.SECRETS_DIR, help="tmpfs")
    parser.add_argument("--force", action="store_true", help="converge even a converged bundle")
    return parser.parse_args(argv)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[bool]:
    """True when this run holds the lock; False when another run does (timer and boot overlapping)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_host_config(Path(args.host_config))
    except HostConfigError as exc:
        print(f"sync: host config {args.host_config}: {exc}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(state_dir / LOCK_FILE) as locked:
            if not locked:
                log(f"another sync holds {state_dir / LOCK_FILE}: not running")
                return 0
            return sync(config, state_dir / BUNDLES, Path(args.secrets_dir), force=args.force)
    except SyncError as exc:
        print(f"sync: {exc}", file=sys.stderr)
    except AWS_ERRORS as exc:
        print(f"sync: AWS API error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"sync: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

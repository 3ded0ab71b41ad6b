"""Discovery agent of an aws-ec2 fleet: one pass turns the running instances into the deploy-time files.

``python3 -m hostagent.discover [--config PATH] [--once]``, run by a systemd timer every 15-30 s on the LB
hosts (Nginx upstreams) and the monitoring host (Prometheus file_sd targets); the configuration is
:data:`layout.DISCOVERY_CONFIG`. One pass:

1. lists the instances of the stack (tag :data:`layout.STACK_TAG`) that are running, with their role and
   deployment tags and private IPs;
2. ``upstreams``: probes every replica's ``/health`` concurrently and writes ``<dir>/<deployment>.conf``
   (:func:`formats.upstream_conf`). Hysteresis, kept in ``state_file``: a replica joins on its first healthy
   probe and leaves after ``failures_to_remove`` failed probes in a row, or at once when its instance is no
   longer running. A changed file is checked (``check``, e.g. ``nginx -t``) before ``reload``: a failed
   check restores the previous files and exits 1 without reloading;
3. ``targets``: writes each job's file_sd file(s) (:func:`formats.file_sd`) from the running instances,
   health aside (Prometheus records a down target as ``up == 0``, which is what alerts want). Prometheus
   re-reads file_sd files itself. The per-deployment files of a deployment no longer in the configuration
   are removed (they still match the scrape jobs' globs: their targets, gone with the deployment's
   instances, would show ``up == 0`` forever); its upstream file is left, included by no nginx.conf.

Every write is atomic (a temporary file in the same directory, then ``os.replace``) and happens only when the
content changes, so an idle fleet causes no rewrite and no reload. Exit codes: 0 done, 1 a runtime failure
(AWS API, nginx check or reload; one line on stderr), 2 a bad or missing configuration. Each change is one
line on stdout (the journal). ``--once`` names the only mode: the timer schedules the passes.

Runs on the hosts with python3, boto3 and PyYAML only: imports the standard library, boto3/botocore and its
siblings (relatively: the package is ``hostagent`` there, ``infra.hostagent`` in the repository).
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from . import files, formats, layout
from .files import Written, atomic_write, log, restore, run_command, write_if_changed

DEFAULT_HEALTH = layout.DISCOVERY_HEALTH
# The spec's deployment names (infra/spec/profile.py); they name files here, so no `/` and no leading dot.
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
FILE_NAME = DEPLOYMENT_NAME
DEPLOYMENT_FIELD = "{deployment}"
# Probes in flight at once: 100 two-slot replicas with a dead network path take 4 timeouts, not 200.
MAX_PROBES = 64
AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class ConfigError(Exception):
    """The configuration is missing, unreadable or has a field of the wrong shape (exit 2)."""


# -- configuration -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Deployment:
    name: str
    ports: tuple[int, ...]
    labels: dict[str, str]
    health_path: str | None = None
    """The engine's readiness path (SGLang /ready, Ollama /v1/models/<name>); None: health.path."""


@dataclass(frozen=True)
class Health:
    path: str
    timeout_s: float
    failures_to_remove: int


@dataclass(frozen=True)
class Upstreams:
    dir: Path
    check: tuple[str, ...]
    reload: tuple[str, ...]


@dataclass(frozen=True)
class TargetJob:
    file: str  # per_deployment jobs: with DEPLOYMENT_FIELD
    roles: frozenset[str]
    port: int | None  # None: every port of the deployment
    per_deployment: bool


@dataclass(frozen=True)
class Targets:
    dir: Path
    jobs: tuple[TargetJob, ...]


@dataclass(frozen=True)
class Config:
    stack: str
    region: str
    endpoint_url: str | None
    deployments: dict[str, Deployment]
    health: Health
    upstreams: Upstreams | None
    targets: Targets | None
    state_file: Path


def _fail(name: str, problem: str) -> ConfigError:
    return ConfigError(f"field '{name}': {problem}")


def _mapping(value: Any, name: str, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    """A JSON object; with ``allowed``, unknown keys are refused (a misspelt key must not be ignored)."""
    if not isinstance(value, dict):
        raise _fail(name, f"expected an object, got {value!r}")
    unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
    if unknown:
        raise _fail(f"{name}.{unknown[0]}" if name else unknown[0], "unknown field")
    return value


def _required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise _fail(f"{where}.{key}" if where else key, "missing")
    return obj[key]


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(name, f"expected a non-empty string, got {value!r}")
    return value


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(name, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _command(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise _fail(name, f"expected a non-empty list of strings (a command), got {value!r}")
    return tuple(value)


def _deployment(name: str, value: Any) -> Deployment:
    where = f"deployments.{name}"
    if not DEPLOYMENT_NAME.match(name):
        raise _fail(where, "not a deployment name (letters, digits, '-', '_', '.')")
    body = _mapping(value, where, ("ports", "labels", "health_path"))
    ports = _required(body, "ports", where)
    if not isinstance(ports, list) or not ports:
        raise _fail(f"{where}.ports", f"expected a non-empty list of ports, got {ports!r}")
    labels = _mapping(_required(body, "labels", where), f"{where}.labels")
    for key, label in labels.items():
        _string(label, f"{where}.labels.{key}")
    health_path = body.get("health_path")
    if health_path is not None and not _string(health_path, f"{where}.health_path").startswith("/"):
        raise _fail(f"{where}.health_path", f"expected an absolute URL path, got {health_path!r}")
    return Deployment(name, tuple(_integer(p, f"{where}.ports", 1, 65535) for p in ports), dict(labels),
                      health_path)


def _health(value: Any) -> Health:
    body = _mapping(value, "health", DEFAULT_HEALTH)
    path = _string(body.get("path", DEFAULT_HEALTH["path"]), "health.path")
    if not path.startswith("/"):
        raise _fail("health.path", f"expected an absolute URL path, got {path!r}")
    timeout = body.get("timeout_s", DEFAULT_HEALTH["timeout_s"])
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise _fail("health.timeout_s", f"expected seconds in (0, 60], got {timeout!r}")
    failures = _integer(body.get("failures_to_remove", DEFAULT_HEALTH["failures_to_remove"]),
                        "health.failures_to_remove", 1, 100)
    return Health(path, float(timeout), failures)


def _upstreams(value: Any) -> Upstreams | None:
    if value is None:
        return None
    body = _mapping(value, "upstreams", ("dir", "check", "reload"))
    return Upstreams(Path(_string(_required(body, "dir", "upstreams"), "upstreams.dir")),
                     _command(_required(body, "check", "upstreams"), "upstreams.check"),
                     _command(_required(body, "reload", "upstreams"), "upstreams.reload"))


def _job(index: int, value: Any) -> TargetJob:
    where = f"targets.jobs[{index}]"
    body = _mapping(value, where, ("file", "roles", "port", "per_deployment"))
    per_deployment = _required(body, "per_deployment", where)
    if not isinstance(per_deployment, bool):
        raise _fail(f"{where}.per_deployment", f"expected true or false, got {per_deployment!r}")
    file = _string(_required(body, "file", where), f"{where}.file")
    # One file per deployment needs the deployment in its name, and a shared file must not have it.
    if (DEPLOYMENT_FIELD in file) != per_deployment or not FILE_NAME.match(file.replace(DEPLOYMENT_FIELD, "x")):
        need = f"a file name with {DEPLOYMENT_FIELD}" if per_deployment else f"a file name without {DEPLOYMENT_FIELD}"
        raise _fail(f"{where}.file", f"expected {need}, got {file!r}")
    roles = _required(body, "roles", where)
    if not isinstance(roles, list) or not roles or not set(roles) <= set(layout.ROLES):
        raise _fail(f"{where}.roles", f"expected a non-empty list of {list(layout.ROLES)}, got {roles!r}")
    port = _required(body, "port", where)
    if port is None and not per_deployment:
        raise _fail(f"{where}.port", "null (the deployment's ports) needs per_deployment true")
    return TargetJob(file, frozenset(roles), None if port is None else _integer(port, f"{where}.port", 1, 65535),
                     per_deployment)


def _targets(value: Any) -> Targets | None:
    if value is None:
        return None
    body = _mapping(value, "targets", ("dir", "jobs"))
    jobs = _required(body, "jobs", "targets")
    if not isinstance(jobs, list):
        raise _fail("targets.jobs", f"expected a list, got {jobs!r}")
    parsed = tuple(_job(i, job) for i, job in enumerate(jobs))
    files = [job.file for job in parsed]
    duplicate = next((f for f in files if files.count(f) > 1), None)
    if duplicate is not None:
        raise _fail("targets.jobs", f"two jobs write {duplicate!r}")
    return Targets(Path(_string(_required(body, "dir", "targets"), "targets.dir")), parsed)


CONFIG_FIELDS = ("stack", "region", "endpoint_url", "deployments", "health", "upstreams", "targets", "state_file")


def parse_config(document: Any) -> Config:
    body = _mapping(document, "", CONFIG_FIELDS)
    endpoint = body.get("endpoint_url")
    deployments = _mapping(_required(body, "deployments", ""), "deployments")
    return Config(
        stack=_string(_required(body, "stack", ""), "stack"),
        region=_string(_required(body, "region", ""), "region"),
        endpoint_url=None if endpoint is None else _string(endpoint, "endpoint_url"),
        deployments={name: _deployment(name, value) for name, value in sorted(deployments.items())},
        health=_health(body.get("health", DEFAULT_HEALTH)),
        upstreams=_upstreams(body.get("upstreams")),
        targets=_targets(body.get("targets")),
        state_file=Path(_string(body.get("state_file", layout.DISCOVERY_STATE), "state_file")),
    )


def load_config(path: Path) -> Config:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}") from None
    return parse_config(document)


# -- the fleet ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instance:
    instance_id: str
    ip: str
    role: str
    deployment: str | None


def warn(message: str) -> None:
    files.warn("discover", message)


def aws_client(service: str, config: Config) -> Any:
    # Few retries: the next pass is one timer interval away, and a stuck pass delays every later one.
    settings = botocore.config.Config(connect_timeout=5, read_timeout=15,
                                      retries={"max_attempts": 2, "mode": "standard"})
    return boto3.session.Session().client(service, region_name=config.region, endpoint_url=config.endpoint_url,
                                          config=settings)


def _tags(raw: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}


def running_instances(config: Config) -> list[Instance]:
    """The stack's running instances with a known role and a private IP, sorted by IP."""
    pages = aws_client("ec2", config).get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{layout.STACK_TAG}", "Values": [config.stack]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ])
    found = []
    for page in pages:
        for reservation in page["Reservations"]:
            for raw in reservation["Instances"]:
                tags, ip = _tags(raw), raw.get("PrivateIpAddress")
                role = tags.get(layout.ROLE_TAG, "")
                if role not in layout.ROLES or not ip:
                    warn(f"ignoring instance {raw['InstanceId']}: role tag {role!r}, private IP {ip!r}")
                    continue
                found.append(Instance(raw["InstanceId"], ip, role, tags.get(layout.DEPLOYMENT_TAG)))
    return sorted(found, key=lambda i: (i.ip, i.instance_id))


def known_instances(config: Config, instances: Iterable[Instance]) -> list[Instance]:
    """Without the GPU instances of a deployment the configuration does not have (one being removed, or
    launched before the configuration caught up): neither upstreams nor targets know its ports and labels."""
    known = []
    for instance in instances:
        if instance.role == "gpu" and instance.deployment not in config.deployments:
            warn(f"ignoring GPU instance {instance.instance_id} ({instance.ip}): deployment "
                 f"{instance.deployment!r} is not in the configuration")
        else:
            known.append(instance)
    return known


def replica_addresses(deployment: Deployment, instances: Iterable[Instance]) -> list[str]:
    """"ip:port" of every vLLM slot of the deployment's running GPU instances."""
    return [f"{i.ip}:{port}" for i in instances if i.role == "gpu" and i.deployment == deployment.name
            for port in deployment.ports]


# -- upstreams ---------------------------------------------------------------------------------------------

@dataclass
class State:
    """What a pass leaves the next: the servers in each upstream with their failed probes in a row, and
    whether a reload is still owed (the files were written but the reload failed: without the flag the next
    pass would see nothing to change and never reload)."""

    upstreams: dict[str, dict[str, int]]
    reload_pending: bool = False

    def text(self) -> str:
        document = {"upstreams": self.upstreams, "reload_pending": self.reload_pending}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def load_state(path: Path) -> State:
    """A missing or unreadable state starts afresh (every healthy replica joins at once): losing the
    hysteresis is better than keeping the LB from following the fleet."""
    text = files.read_text_or_none(path)
    if text is None:
        return State({})
    try:
        document = json.loads(text)
        upstreams = {str(d): {str(s): int(n) for s, n in servers.items()}
                     for d, servers in document["upstreams"].items()}
        return State(upstreams, bool(document.get("reload_pending", False)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        warn(f"state file {path} is unreadable ({exc!r}); starting afresh")
        return State({})


def probe(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 200, else why not."""
    # No proxy: an http_proxy in the environment must not stand between the LB and its replicas.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError; a garbled reply is neither
        return str(getattr(exc, "reason", exc)) or type(exc).__name__
    return None if status == 200 else f"HTTP {status}"


def probe_all(paths: Mapping[str, str], health: Health) -> dict[str, str | None]:
    """Probe each address (``host:port``) on its path: None if healthy, else why not."""
    addresses = sorted(paths)
    if not addresses:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PROBES, len(addresses))) as pool:
        results = pool.map(lambda address: probe(f"http://{address}{paths[address]}", health.timeout_s), addresses)
        return dict(zip(addresses, results, strict=True))


def next_members(members: Mapping[str, int], candidates: Iterable[str], probes: Mapping[str, str | None],
                 failures_to_remove: int) -> tuple[dict[str, int], list[str]]:
    """The upstream's servers after this pass's probes (server -> failed probes in a row), and what changed.
    A candidate joins on its first healthy probe; a member leaves after ``failures_to_remove`` failures in a
    row, or at once when it is no longer a candidate (its instance stopped, or its port left the config)."""
    wanted = set(candidates)
    after: dict[str, int] = {}
    changes = []
    for server in sorted(wanted):
        reason = probes[server]
        if server not in members:
            if reason is None:
                after[server] = 0
                changes.append(f"+ {server} (healthy)")
        elif reason is None:
            after[server] = 0
        elif members[server] + 1 >= failures_to_remove:
            changes.append(f"- {server} ({failures_to_remove} failed health probes in a row, last: {reason})")
        else:
            after[server] = members[server] + 1
            changes.append(f"! {server} failed its health probe ({after[server]}/{failures_to_remove}): {reason}")
    changes += [f"- {server} (no longer a running replica)" for server in sorted(set(members) - wanted)]
    return after, changes


def update_upstreams(config: Config, upstreams: Upstreams, instances: Sequence[Instance]) -> int:
    state = load_state(config.state_file)
    candidates = {name: replica_addresses(d, instances) for name, d in config.deployments.items()}
    paths = {address: config.deployments[name].health_path or config.health.path
             for name, addresses in candidates.items() for address in addresses}
    probes = probe_all(paths, config.health)
    members: dict[str, dict[str, int]] = {}
    written: list[Written] = []
    try:
        for name, deployment in config.deployments.items():
            members[name], changes = next_members(state.upstreams.get(name, {}), candidates[name], probes,
                                                  config.health.failures_to_remove)
            for change in changes:
                log(f"upstream {name}: {change}")
            content = formats.upstream_conf(name, members[name], deployment.ports[0], allow_empty=True)
            if (item := write_if_changed(upstreams.dir / f"{name}.conf", content)) is not None:
                written.append(item)
    except BaseException:
        restore(written)  # all or nothing: a half-written set would be neither checked nor reloaded
        raise
    if written and (failure := run_command(upstreams.check, "nginx check")) is not None:
        restore(written)
        warn(f"{failure}; restored {', '.join(str(w.path) for w in written)}; nginx not reloaded")
        return 1  # the state is not saved either: the next pass starts from the files nginx still has
    after = State(members, reload_pending=state.reload_pending or bool(written))
    status = 0
    if after.reload_pending:
        if (failure := run_command(upstreams.reload, "nginx reload")) is None:
            log("reloaded nginx")
            after.reload_pending = False
        else:
            warn(f"{failure}; the next pass retries")
            status = 1
    if files.read_text_or_none(config.state_file) != after.text():
        atomic_write(config.state_file, after.text())
    return status


# -- targets -----------------------------------------------------------------------------------------------

def target_files(targets: Targets, deployments: Mapping[str, Deployment],
                 instances: Sequence[Instance]) -> dict[str, str]:
    """file name -> file_sd content, for every job (per deployment: every configured deployment, with or
    without instances: an empty file tells Prometheus the replicas are gone)."""
    files = {}
    for job in targets.jobs:
        chosen = [i for i in instances if i.role in job.roles]
        if not job.per_deployment:
            assert job.port is not None  # parse_config refuses a shared job without a port
            files[job.file] = formats.file_sd([i.ip for i in chosen], {}, job.port)
            continue
        for name, deployment in deployments.items():
            ips = [i.ip for i in chosen if i.deployment == name]
            ports = deployment.ports if job.port is None else (job.port,)
            addresses = [f"{ip}:{port}" for ip in ips for port in ports]
            files[job.file.replace(DEPLOYMENT_FIELD, name)] = formats.file_sd(addresses, deployment.labels,
                                                                             ports[0])
    return files


def stale_target_files(targets: Targets, wanted: Iterable[str]) -> list[Path]:
    """Files of a per-deployment job for a deployment not configured (any more), never one that is wanted
    (another job's pattern may match it)."""
    keep = set(wanted)
    stale = []
    for job in targets.jobs:
        if not job.per_deployment:
            continue
        prefix, suffix = job.file.split(DEPLOYMENT_FIELD, 1)
        for path in sorted(targets.dir.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}")):
            deployment = path.name[len(prefix):len(path.name) - len(suffix)]
            if path.name not in keep and DEPLOYMENT_NAME.match(deployment) and path.is_file():
                stale.append(path)
    return stale


def update_targets(config: Config, targets: Targets, instances: Sequence[Instance]) -> None:
    files = target_files(targets, config.deployments, instances)
    for name, content in files.items():
        write_if_changed(targets.dir / name, content)
    for path in stale_target_files(targets, files):
        path.unlink()
        log(f"removed {path} (deployment no longer configured)")


# -- main --------------------------------------------------------------------------------------------------

def run_pass(config: Config) -> int:
    instances = known_instances(config, running_instances(config))
    if config.targets is not None:
        update_targets(config, config.targets, instances)
    if config.upstreams is not None:
        return update_upstreams(config, config.upstreams, instances)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hostagent.discover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=layout.DISCOVERY_CONFIG,
                        help=f"the discovery configuration (default {layout.DISCOVERY_CONFIG})")
    parser.add_argument("--once", action="store_true",
                        help="one pass, then exit (the only mode: a systemd timer schedules the passes)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        warn(f"config {args.config}: {exc}")
        return 2
    try:
        return run_pass(config)
    except AWS_ERRORS as exc:
        warn(f"AWS API error: {exc}")
    except OSError as exc:
        warn(f"{exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

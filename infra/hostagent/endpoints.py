"""Upstream writer of an eks fleet: the ready endpoints of each deployment's Service -> the Nginx upstreams.

``python3 -m hostagent.endpoints --config PATH [--once]`` runs as a sidecar beside nginx in the load
balancer's pod (infra/render/k8s_lb.py), the Kubernetes counterpart of :mod:`.discover` on aws-ec2. One pass:

1. re-reads the service-account token (EKS tokens are bound and rotate hourly; the kubelet refreshes the
   file, so a token read once at start would expire);
2. lists each deployment's EndpointSlices (label ``kubernetes.io/service-name``) and takes the addresses of
   the endpoints that are ready (``conditions.ready`` true or absent: the API says "nil should be
   interpreted as true") and not terminating, with the slice's port named ``port_name`` (else ``port``);
3. writes ``<dir>/<deployment>.conf`` (:func:`formats.upstream_conf`, the format of every target) when its
   content changes; a changed file is checked (``check``: ``nginx -t``) and a failed check restores the
   previous files without reloading. Then ``reload`` once nginx runs (``pid_file`` holds a pid); before that,
   the reload stays owed, as it does after a failed reload: the next pass retries it. (A pid file that
   exists but is empty is not a running nginx: ``nginx -t`` leaves one behind.)
4. after a pass where every deployment was listed and every file written and checked, writes
   ``ready_file`` (the time of the pass), which the pod's startup probe waits for before nginx starts.

A deployment whose listing fails (API unreachable, HTTP 401/403/5xx, a reply that is not an EndpointSlice
list) keeps its file as it is: an unreachable API must never empty an upstream. The failure is one line
on stderr naming the deployment, and the pass counts as failed.

Without ``--once`` a pass runs every ``interval_s`` forever; a failed pass is retried at the next interval,
and SIGTERM (or SIGINT) ends the loop at once with exit 0. With ``--once``: one pass, exit 0 or 1 (a
reload owed by a failed reload is not remembered between two ``--once`` runs). A bad or missing
configuration exits 2 in both modes. Each change is one line on stdout; failures go to stderr.

Configuration (JSON; :func:`config_document` builds it, :func:`parse_config` reads it)::

    {"namespace": "gpufleet",
     "api_url": "https://kubernetes.default.svc",
     "token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
     "ca_file": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
     "interval_s": 5,
     "deployments": {"chat-70b": {"service": "gpufleet-vllm-chat-70b", "port_name": "http", "port": 8000}},
     "upstreams": {"dir": "/etc/gpufleet/nginx/upstreams",
                   "check": ["nginx", "-t", "-q", "-c", "/etc/gpufleet/nginx/nginx.conf"],
                   "reload": ["nginx", "-s", "reload", "-c", "/etc/gpufleet/nginx/nginx.conf"],
                   "pid_file": "/run/nginx.pid"},
     "ready_file": "/run/gpufleet/upstreams.ready"}

``api_url``, ``token_file`` and ``ca_file`` are optional: the defaults are the pod's in-cluster API
(``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``) and service-account files. ``ca_file`` is
used for an ``https`` API only.

Standard library only (the LB image has python3 and nothing else of Python's): imports :mod:`.files` and
:mod:`.formats` relatively, as ``hostagent`` in the pod and ``infra.hostagent`` in the repository.
"""

from __future__ import annotations

import argparse
import datetime
import email.message
import http.client
import ipaddress
import json
import os
import re
import signal
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import files, formats
from .files import log

PROGRAM = "endpoints"
CONFIG_PATH = "/etc/gpufleet/endpoints.json"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TOKEN_FILE = f"{SERVICE_ACCOUNT_DIR}/token"
DEFAULT_CA_FILE = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
# The API server's name inside every cluster (its certificate has it); only used to validate a document
# that leaves api_url to the pod's environment.
IN_CLUSTER_NAME = "https://kubernetes.default.svc"
INTERVAL_S = (1, 300)
API_TIMEOUT_S = 5  # a pass every few seconds: a stalled API must not hold one for long
MAX_REQUESTS = 16  # listings in flight at once: a stalled API costs one timeout per pass, not one per deployment
SERVICE_LABEL = "kubernetes.io/service-name"  # set by the EndpointSlice controller on every slice of a Service
SLICES_PATH = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6}  # FQDN slices are skipped: nginx resolves a name only when it starts

# The spec's deployment names (infra/spec/profile.py), as discover has them; they name files here.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]*")
# Kubernetes names: a namespace and a port name are DNS-1123 labels, a Service name a DNS-1035 label. Checked,
# so the label selector and URL path can hold nothing else. All names are matched whole (fullmatch: `$` would
# let a trailing newline through).
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")

CONFIG_FIELDS = ("namespace", "api_url", "token_file", "ca_file", "interval_s", "deployments", "upstreams",
                 "ready_file")
DEPLOYMENT_FIELDS = ("service", "port_name", "port")
UPSTREAMS_FIELDS = ("dir", "check", "reload", "pid_file")


class ConfigError(ValueError):
    """The configuration is missing, unreadable or has a field of the wrong shape (exit 2)."""


class ApiError(Exception):
    """The Kubernetes API did not give an EndpointSlice list; the message says why, in one line."""


def warn(message: str) -> None:
    files.warn(PROGRAM, message)


# -- configuration -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Deployment:
    name: str
    service: str
    port_name: str
    port: int  # when no port of a slice is named port_name


@dataclass(frozen=True)
class Upstreams:
    dir: Path
    check: tuple[str, ...]
    reload: tuple[str, ...]
    pid_file: Path  # holds nginx's pid while it runs: only then is there an nginx to reload


@dataclass(frozen=True)
class Config:
    namespace: str
    api_url: str  # without a trailing slash
    token_file: Path
    ca_file: Path
    interval_s: int
    deployments: dict[str, Deployment]
    upstreams: Upstreams
    ready_file: Path


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


def _name(value: Any, name: str, pattern: re.Pattern[str], kind: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(name, f"expected {kind}, got {value!r}")
    return value


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(name, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _command(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise _fail(name, f"expected a non-empty list of strings (a command), got {value!r}")
    return tuple(value)


def _api_url(value: Any, environ: Mapping[str, str]) -> str:
    if value is None:
        return in_cluster_url(environ)
    url = _string(value, "api_url")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise _fail("api_url", f"expected an http(s) URL without query, got {url!r}")
    return url.rstrip("/")


def in_cluster_url(environ: Mapping[str, str]) -> str:
    """The API server as a pod sees it: the variables the kubelet sets in every container."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise _fail("api_url", "missing, and KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT is not set "
                               "(not in a pod?)")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _deployment(name: str, value: Any) -> Deployment:
    where = f"deployments.{name}"
    if not DEPLOYMENT_NAME.fullmatch(name):
        raise _fail(where, "not a deployment name (letters, digits, '-', '_', '.')")
    body = _mapping(value, where, DEPLOYMENT_FIELDS)
    return Deployment(
        name=name,
        service=_name(_required(body, "service", where), f"{where}.service", DNS_1035_LABEL,
                      "a Service name (DNS-1035 label)"),
        port_name=_name(_required(body, "port_name", where), f"{where}.port_name", DNS_1123_LABEL,
                        "a Service port name (DNS-1123 label)"),
        port=_integer(_required(body, "port", where), f"{where}.port", 1, 65535),
    )


def _deployments(value: Any) -> dict[str, Deployment]:
    body = _mapping(value, "deployments")
    if not body:
        raise _fail("deployments", "expected at least one deployment")
    return {name: _deployment(name, body[name]) for name in sorted(body)}


def _upstreams(value: Any) -> Upstreams:
    body = _mapping(value, "upstreams", UPSTREAMS_FIELDS)
    return Upstreams(
        dir=Path(_string(_required(body, "dir", "upstreams"), "upstreams.dir")),
        check=_command(_required(body, "check", "upstreams"), "upstreams.check"),
        reload=_command(_required(body, "reload", "upstreams"), "upstreams.reload"),
        pid_file=Path(_string(_required(body, "pid_file", "upstreams"), "upstreams.pid_file")),
    )


def parse_config(document: Any, environ: Mapping[str, str] | None = None) -> Config:
    """``environ``: where the default ``api_url`` comes from (:data:`os.environ` when None)."""
    body = _mapping(document, "", CONFIG_FIELDS)
    return Config(
        namespace=_name(_required(body, "namespace", ""), "namespace", DNS_1123_LABEL,
                        "a namespace (DNS-1123 label)"),
        api_url=_api_url(body.get("api_url"), os.environ if environ is None else environ),
        token_file=Path(_string(body.get("token_file", DEFAULT_TOKEN_FILE), "token_file")),
        ca_file=Path(_string(body.get("ca_file", DEFAULT_CA_FILE), "ca_file")),
        interval_s=_integer(_required(body, "interval_s", ""), "interval_s", *INTERVAL_S),
        deployments=_deployments(_required(body, "deployments", "")),
        upstreams=_upstreams(_required(body, "upstreams", "")),
        ready_file=Path(_string(_required(body, "ready_file", ""), "ready_file")),
    )


def load_config(path: Path) -> Config:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}") from None
    return parse_config(document)


def config_document(*, namespace: str, deployments: Mapping[str, tuple[str, str, int]], upstreams_dir: str,
                    nginx_conf: str, pid_file: str, ready_file: str, interval_s: int) -> dict[str, Any]:
    """The configuration of the writer in a pod (the one definition of its format, for the render).

    ``deployments``: deployment -> (Service name, Service port name, port when a slice has no such port).
    The API, token and CA are the pod's own (the defaults). Raises :class:`ConfigError` for anything the
    writer would refuse."""
    document: dict[str, Any] = {
        "namespace": namespace,
        "interval_s": interval_s,
        "deployments": {name: {"service": service, "port_name": port_name, "port": port}
                        for name, (service, port_name, port) in sorted(deployments.items())},
        "upstreams": {"dir": upstreams_dir,
                      "check": ["nginx", "-t", "-q", "-c", nginx_conf],
                      "reload": ["nginx", "-s", "reload", "-c", nginx_conf],
                      "pid_file": pid_file},
        "ready_file": ready_file,
    }
    # Checked as the writer will read it; the pod's environment, not this machine's, will give the API URL.
    parse_config({**document, "api_url": IN_CLUSTER_NAME})
    return document


# -- the Kubernetes API ------------------------------------------------------------------------------------

class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an HTTP error: urllib would send the bearer token on to wherever it points, and the token
    is for the API server only (which never redirects a list). The method's signature is urllib's."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,  # noqa: PLR0917
                         headers: email.message.Message, newurl: str) -> None:
        return None


@dataclass(frozen=True)
class Api:
    """What one pass talks to the API with."""

    url: str
    token: str
    opener: urllib.request.OpenerDirector


def connect(config: Config) -> Api:
    """Reads the token (every pass: it rotates) and the CA (for an https API)."""
    try:
        token = config.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ApiError(f"cannot read the service-account token {config.token_file}: {exc.strerror or exc}") from None
    if not token:
        raise ApiError(f"the service-account token {config.token_file} is empty")
    context = None
    if config.api_url.startswith("https:"):
        try:
            context = ssl.create_default_context(cafile=str(config.ca_file))
        except OSError as exc:  # ssl.SSLError (not a certificate) is an OSError too
            raise ApiError(f"cannot load the API's CA {config.ca_file}: {exc.strerror or exc}") from None
    # No proxy: an https_proxy in the environment must not stand between the pod and its cluster's API.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirects(),
                                         urllib.request.HTTPSHandler(context=context))
    return Api(config.api_url, token, opener)


def slices_url(api_url: str, namespace: str, service: str) -> str:
    query = urllib.parse.urlencode({"labelSelector": f"{SERVICE_LABEL}={service}"})
    return f"{api_url}{SLICES_PATH.format(namespace=namespace)}?{query}"


def status_message(body: bytes) -> str | None:
    """The ``message`` of a Kubernetes Status object (the API's error replies), on one line."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("kind") != "Status":
        return None
    message = document.get("message")
    if not isinstance(message, str):
        return None
    return " ".join(message.split()) or None


def http_failure(error: urllib.error.HTTPError) -> str:
    try:
        message = status_message(error.read())
    except (OSError, http.client.HTTPException):  # the error body itself broke off
        message = None
    finally:
        error.close()
    return f"HTTP {error.code}: {message}" if message else f"HTTP {error.code}"


def get_json(api: Api, url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api.token}",
                                                   "Accept": "application/json"})
    try:
        with api.opener.open(request, timeout=API_TIMEOUT_S) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise ApiError(http_failure(exc)) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise ApiError(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(f"the reply is not JSON ({exc})") from None


# -- EndpointSlices ----------------------------------------------------------------------------------------

def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    """A list of JSON objects; an absent one (null) is empty, as the API omits empty lists."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ApiError(f"the reply is not an EndpointSlice list ({what}: {value!r:.80})")
    return value


def is_ready(endpoint: Mapping[str, Any]) -> bool:
    conditions = endpoint.get("conditions") or {}
    ready = conditions.get("ready")
    return (ready is None or ready is True) and conditions.get("terminating") is not True


def slice_port(ports: Iterable[Mapping[str, Any]], deployment: Deployment) -> int:
    for port in ports:
        number = port.get("port")
        if port.get("name") == deployment.port_name and isinstance(number, int) and 0 < number < 65536:
            return number
    return deployment.port


def server(address: Any, version: int, port: int) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6 (formats.with_port takes any ':' for a port)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    # Checked, not copied: the address lands in nginx's configuration.
    if ip is None or ip.version != version:
        raise ApiError(f"the reply has an endpoint address that is not IPv{version}: {address!r:.80}")
    return f"[{ip.compressed}]:{port}" if version == 6 else f"{ip.compressed}:{port}"


def slice_servers(item: Mapping[str, Any], deployment: Deployment) -> set[str]:
    version = ADDRESS_TYPES.get(item.get("addressType", ""))
    if version is None:
        return set()
    port = slice_port(_objects(item.get("ports"), "ports"), deployment)
    found: set[str] = set()
    for endpoint in _objects(item.get("endpoints"), "endpoints"):
        addresses = endpoint.get("addresses")
        if not isinstance(addresses, list):
            raise ApiError(f"the reply is not an EndpointSlice list (addresses: {addresses!r:.80})")
        if is_ready(endpoint):
            found |= {server(address, version, port) for address in addresses}
    return found


def ready_servers(document: Any, deployment: Deployment) -> set[str]:
    """The ``ip:port`` of every ready endpoint in an EndpointSliceList; a pod in two slices (as during an
    update of the Service's slices) is there once."""
    if not isinstance(document, dict) or "items" not in document:
        raise ApiError(f"the reply is not an EndpointSlice list: {document!r:.80}")
    found: set[str] = set()
    for item in _objects(document["items"], "items"):
        found |= slice_servers(item, deployment)
    return found


def list_servers(api: Api, namespace: str, deployment: Deployment) -> set[str]:
    return ready_servers(get_json(api, slices_url(api.url, namespace, deployment.service)), deployment)


def list_all(config: Config, api: Api) -> dict[str, set[str]]:
    """deployment -> its ready servers, for every deployment the API listed; the others said on stderr."""
    deployments = list(config.deployments.values())
    found = {}
    with ThreadPoolExecutor(max_workers=min(MAX_REQUESTS, len(deployments))) as pool:
        futures = {d.name: pool.submit(list_servers, api, config.namespace, d) for d in deployments}
        for deployment in deployments:
            try:
                found[deployment.name] = futures[deployment.name].result()
            except ApiError as exc:
                warn(f"deployment {deployment.name}: cannot list the endpoints of service "
                     f"{config.namespace}/{deployment.service}: {exc}; its upstream is left as it is")
    return found


# -- upstreams ---------------------------------------------------------------------------------------------

@dataclass
class State:
    """What a pass leaves the next, in memory: whether a reload is owed (files were written, and nginx was
    not running yet or its reload failed: without the flag the next pass would see nothing to change and
    never reload)."""

    reload_pending: bool = False


def servers_in(content: str | None) -> set[str]:
    """The servers of an upstream file in the formats' format (none for the ``down`` placeholder)."""
    placeholder = f"server {formats.UNAVAILABLE_SERVER};"
    servers = set()
    for line in (content or "").splitlines():
        words = line.split()
        if line != placeholder and len(words) > 1 and words[0] == "server":
            servers.add(words[1])
    return servers


def changes(previous: str | None, servers: set[str]) -> list[str]:
    before = servers_in(previous)
    return ([f"+ {s} (ready)" for s in sorted(servers - before)]
            + [f"- {s} (no longer a ready endpoint)" for s in sorted(before - servers)])


def write_upstreams(upstreams: Upstreams, deployments: Mapping[str, Deployment],
                    found: Mapping[str, set[str]]) -> list[files.Written]:
    written: list[files.Written] = []
    try:
        for name, servers in found.items():
            content = formats.upstream_conf(name, servers, deployments[name].port, allow_empty=True)
            if (item := files.write_if_changed(upstreams.dir / f"{name}.conf", content)) is not None:
                written.append(item)
                for change in changes(item.previous, servers):
                    log(f"upstream {name}: {change}")
    except BaseException:
        files.restore(written)  # all or nothing: a half-written set would be neither checked nor reloaded
        raise
    return written


def nginx_runs(pid_file: Path) -> bool:
    """Whether the pid file holds a pid. Not whether it exists: ``nginx -t`` (the check) creates it empty when
    there is none (ngx_create_pidfile in test mode), so it exists from the first check on, nginx or not."""
    text = (files.read_text_or_none(pid_file) or "").strip()
    return text.isdigit() and int(text) > 0


def reload_if_owed(upstreams: Upstreams, state: State) -> bool:
    if not state.reload_pending:
        return True
    if not nginx_runs(upstreams.pid_file):
        # No nginx yet: it reads the files when it starts. The reload stays owed all the same: nginx may
        # have read its configuration just before this pass wrote it and not have written its pid yet.
        return True
    if (failure := files.run_command(upstreams.reload, "nginx reload")) is not None:
        warn(f"{failure}; the next pass retries")
        return False
    log("reloaded nginx")
    state.reload_pending = False
    return True


def update_upstreams(config: Config, state: State, found: Mapping[str, set[str]]) -> bool:
    upstreams = config.upstreams
    written = write_upstreams(upstreams, config.deployments, found)
    if written and (failure := files.run_command(upstreams.check, "nginx check")) is not None:
        files.restore(written)
        warn(f"{failure}; restored {', '.join(str(w.path) for w in written)}; nginx not reloaded")
        return False
    state.reload_pending = state.reload_pending or bool(written)
    return reload_if_owed(upstreams, state)


def mark_ready(path: Path) -> None:
    """Rewritten after every good pass (a tmpfs file: cheap), so its time says when the last one ran."""
    if not path.exists():
        log(f"every upstream is written: {path}")
    files.atomic_write(path, datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds") + "\n")


# -- main --------------------------------------------------------------------------------------------------

def run_pass(config: Config, state: State) -> bool:
    """True when every deployment was listed and its file written, checked and (nginx running) reloaded."""
    try:
        api = connect(config)
    except ApiError as exc:
        warn(f"{exc}; no upstream updated")
        return False
    try:
        found = list_all(config, api)
        ok = update_upstreams(config, state, found) and len(found) == len(config.deployments)
        if ok:
            mark_ready(config.ready_file)
    except OSError as exc:  # a file the writer cannot write (full or read-only volume)
        warn(f"{exc}")
        return False
    return ok


def serve(config: Config, stop: threading.Event) -> None:
    """A pass every ``interval_s`` until ``stop`` is set; a failed pass is retried at the next interval."""
    state = State()
    while not stop.is_set():
        run_pass(config, state)
        stop.wait(config.interval_s)  # returns as soon as stop is set: a pod's termination does not wait


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hostagent.endpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG_PATH, help=f"the writer's configuration (default {CONFIG_PATH})")
    parser.add_argument("--once", action="store_true",
                        help="one pass, then exit 0 (done) or 1 (failed); without it, a pass every interval_s")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        warn(f"config {args.config}: {exc}")
        return 2
    if args.once:
        return 0 if run_pass(config, State()) else 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The handler only sets the event: the pass in progress finishes its writes, the wait ends at once.
        signal.signal(signum, lambda *_: stop.set())
    log(f"watching the endpoints of {len(config.deployments)} deployment(s) in namespace {config.namespace} "
        f"every {config.interval_s} s")
    serve(config, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

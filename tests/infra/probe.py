"""HTTP requests made on the host under test (``host.run``), with the host's Debian Python: no curl needed,
and the same call works over local://, ssh:// and ansible://."""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

PYTHON = "/usr/bin/python3"  # Debian's: Ansible needs it on every host anyway

SCRIPT = r"""
import json, ssl, sys, urllib.request, urllib.error
url, method, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the LB's certificate names the public domain, not 127.0.0.1
req = urllib.request.Request(url, method=method, headers=headers, data=b"{}" if method == "POST" else None)
try:
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))
"""


@dataclass(frozen=True)
class Response:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def http(host: Any, url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
    cmd = " ".join(shlex.quote(a) for a in (PYTHON, "-c", SCRIPT, url, method, json.dumps(headers or {})))
    out = json.loads(host.check_output(cmd))
    return Response(out["status"], out["body"])


def eventually(check: Any, timeout_s: float = 30, interval_s: float = 1) -> Any:
    """Retry ``check`` (raising AssertionError until it holds) for up to ``timeout_s``: services just
    (re)started by a handler need a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval_s)


def privileged(host: Any) -> contextlib.AbstractContextManager[Any]:
    """Run as root: via sudo unless the backend is root already (CI containers run as root and have no sudo)."""
    if host.run("id -u").stdout.strip() == "0":
        return contextlib.nullcontext()
    return host.sudo()

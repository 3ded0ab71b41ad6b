"""Reading queries back out of a rendered dashboard, and expanding Grafana's variables in them.

Pure functions over the dashboard JSON (a ``dict``), without the SDK: the tests check every query with
``promtool``, the live monitoring test sends them to Prometheus' ``/api/v1/query``, and a user can do the same
against their own Prometheus.
"""

from __future__ import annotations

import re
from typing import Any

ALL = ".*"
"""The ``allValue`` of the ``deployment`` and ``model`` variables: "All" also matches series where the label is
empty (e.g. requests Nginx answered before routing them to a deployment)."""

_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\$(?P<bare>\w+)")
_REGEX_SPECIALS = re.compile(r"[\\^$.|?*+()\[\]{}]")


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every target of every panel, including panels inside collapsed rows, in
    dashboard order."""
    out: list[tuple[str, str]] = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend((panel.get("title", ""), target["expr"])
                       for target in panel.get("targets") or [] if "expr" in target)
            visit(panel.get("panels") or [])

    visit(dashboard.get("panels") or [])
    return out


def _regex_value(value: str) -> str:
    """A single value of a multi-value variable as Grafana interpolates it into a PromQL regex matcher:
    regex specials escaped, then backslashes doubled for the PromQL string literal. ``ALL`` passes through."""
    if value == ALL:
        return value
    escaped = _REGEX_SPECIALS.sub(lambda m: "\\" + m.group(0), value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def expand(expr: str, *, deployment: str, model: str, rate_interval: str = "1m",
           interval: str | None = None, range_: str = "1h") -> str:
    """``expr`` with the dashboard variables replaced, ready for ``/api/v1/query`` or ``promtool``.

    ``deployment`` and ``model`` are single values (or :data:`ALL`); ``$__interval`` defaults to
    ``rate_interval``. Numeric references (``${1}`` in ``label_replace``) are left alone, as Grafana does;
    any other unknown variable is an error, so a typo cannot slip through as a literal string.
    """
    values = {
        "deployment": _regex_value(deployment),
        "model": _regex_value(model),
        "__rate_interval": rate_interval,
        "__interval": interval or rate_interval,
        "__range": range_,
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name.isdigit():
            return match.group(0)
        if name not in values:
            raise ValueError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(substitute, expr)

"""A pinned Helm chart: where it comes from, which version, which namespace, and where the pin was checked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    repo: str
    chart: str
    version: str
    namespace: str
    source: str

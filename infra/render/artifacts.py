"""Rendered files and the manifest that lists them (contract in DESIGN.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ArtifactKind = Literal[
    "vllm-config",
    "vllm-args",
    "engine-config",
    "engine-args",
    "nginx-conf",
    "systemd-unit",
    "cloud-init",
    "dockerfile",
    "k8s-manifest",
    "prometheus-config",
    "prometheus-rules",
    "alertmanager-config",
    "grafana-dashboard",
    "ansible-vars",
    "compose",
]
MANIFEST = "manifest.json"


@dataclass(frozen=True, order=True)
class Artifact:
    path: str
    """Relative to the output directory, with forward slashes."""
    kind: ArtifactKind
    deployment: str | None
    content: str


def manifest_text(artifacts: Iterable[Artifact]) -> str:
    entries = [{"path": a.path, "kind": a.kind, "deployment": a.deployment} for a in sorted(artifacts)]
    return json.dumps(entries, indent=2) + "\n"


def write_artifacts(artifacts: list[Artifact], out: Path) -> list[Path]:
    """Write every artifact and the manifest; files a previous render listed and this one does not are
    removed, so the directory always equals the manifest. Output is byte-identical for the same input."""
    paths = {a.path for a in artifacts}
    if len(paths) != len(artifacts):
        raise ValueError("two artifacts share a path")
    old_manifest = out / MANIFEST
    if old_manifest.is_file():
        for entry in json.loads(old_manifest.read_text(encoding="utf-8")):
            stale = out / entry["path"]
            if entry["path"] not in paths and stale.is_file():
                stale.unlink()
    written = []
    for artifact in sorted(artifacts):
        target = out / artifact.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(artifact.content, encoding="utf-8")
        written.append(target)
    old_manifest.parent.mkdir(parents=True, exist_ok=True)
    old_manifest.write_text(manifest_text(artifacts), encoding="utf-8")
    return written

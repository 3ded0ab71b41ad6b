"""The config bundle of an aws-ec2 stack's LB and monitoring hosts (infra/hostagent/layout.py).

A ``.tar.gz`` with ``render/`` (every rendered artifact and the manifest, as ``gpufleet render`` writes
them), ``ansible/`` (this repository's playbooks, roles and ansible.cfg: the same roles that converge
on-prem hosts) and ``hostagent/`` (the programs the hosts run). Built from the artifacts in memory, not from
a directory, so it holds exactly this render and nothing an older one left behind.

Deterministic: members sorted, every timestamp 0, owner root, modes 0644 (0755 where the repository's file
is executable), gzip header without name or time. The same inputs give the same bytes, hence the same
sha256, on every machine: the sha256 names the object (``layout.bundle_key``), so a ``pulumi up`` that
changes nothing uploads nothing and no host re-converges.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.hostagent import layout
from infra.render.artifacts import MANIFEST, Artifact, manifest_text

ROOT = Path(__file__).resolve().parents[3]
ANSIBLE_DIR = ROOT / "ansible"
AGENT_DIR = Path(layout.__file__).resolve().parent
SKIPPED_PARTS = frozenset({"__pycache__", ".pytest_cache"})


@dataclass(frozen=True)
class Member:
    path: str
    data: bytes
    mode: int


def _tree(directory: Path, prefix: str, pattern: str = "*") -> Iterator[Member]:
    """Regular files under ``directory``. Symlinks are left out (``playbooks/roles`` links to ``../roles``:
    hostagent.sync points ANSIBLE_ROLES_PATH at the bundle's roles instead), and so are caches."""
    for path in sorted(directory.rglob(pattern)):
        relative = path.relative_to(directory)
        if path.is_symlink() or not path.is_file() or SKIPPED_PARTS & set(relative.parts) or path.suffix == ".pyc":
            continue
        mode = 0o755 if os.access(path, os.X_OK) else 0o644
        yield Member(f"{prefix}/{relative.as_posix()}", path.read_bytes(), mode)


def members(artifacts: Iterable[Artifact], ansible_dir: Path = ANSIBLE_DIR,
            agent_dir: Path = AGENT_DIR) -> list[Member]:
    rendered = sorted(artifacts)
    found = [Member(f"{layout.BUNDLE_RENDER}/{a.path}", a.content.encode(), 0o644) for a in rendered]
    found.append(Member(f"{layout.BUNDLE_RENDER}/{MANIFEST}", manifest_text(rendered).encode(), 0o644))
    found += _tree(ansible_dir, layout.BUNDLE_ANSIBLE)
    found += _tree(agent_dir, layout.BUNDLE_AGENT, "*.py")
    return sorted(found, key=lambda m: m.path)


def archive(items: Iterable[Member]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            info = tarfile.TarInfo(item.path)
            info.size, info.mode, info.mtime = len(item.data), item.mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(item.data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str

    @property
    def key(self) -> str:
        return layout.bundle_key(self.sha256)


def write_bundle(artifacts: Iterable[Artifact], path: Path) -> Bundle:
    """Build the bundle and write it to ``path`` (for the upload), returning its sha256."""
    data = archive(members(artifacts))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Bundle(path, hashlib.sha256(data).hexdigest())

"""The aws-ec2 config bundle (infra/provision/aws/bundle.py): what it holds, that it is byte-for-byte
reproducible, and that the hosts' unpacker meets only regular files with safe modes."""

from __future__ import annotations

import hashlib
import io
import tarfile
from functools import cache
from pathlib import Path

from infra.hostagent import layout
from infra.plan.optimize import plan_stack
from infra.provision.aws.bundle import AGENT_DIR, ANSIBLE_DIR, archive, members, write_bundle
from infra.render.artifacts import Artifact
from infra.render.stack import render_fleet
from infra.spec.load import Project, load_stack

ROOT = Path(__file__).resolve().parents[2]


@cache
def dev_artifacts() -> tuple[Artifact, ...]:
    return tuple(render_fleet(plan_stack(load_stack(Project(ROOT), "dev"))))


def unpacked(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_bundle_holds_the_render_the_roles_and_the_host_programs() -> None:
    data = archive(members(dev_artifacts()))
    names = set(unpacked(data))
    assert {f"render/{a.path}" for a in dev_artifacts()} | {"render/manifest.json"} <= names
    assert "ansible/playbooks/site.yml" in names and "ansible/ansible.cfg" in names
    assert "ansible/roles/nginx_lb/tasks/main.yml" in names and "ansible/roles/monitoring/tasks/main.yml" in names
    assert {f"hostagent/{p.name}" for p in AGENT_DIR.glob("*.py")} <= names
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {layout.BUNDLE_RENDER, layout.BUNDLE_ANSIBLE, layout.BUNDLE_AGENT}


def test_bundle_members_are_plain_files_owned_by_root_at_time_zero() -> None:
    for info in unpacked(archive(members(dev_artifacts()))).values():
        assert info.isfile(), f"{info.name}: only regular files (no links, devices, directories)"
        assert (info.uid, info.gid, info.mtime) == (0, 0, 0), info.name
        assert info.mode in (0o644, 0o755), (info.name, oct(info.mode))
        assert not info.name.startswith("/") and ".." not in info.name.split("/"), info.name
        assert "__pycache__" not in info.name and not info.name.endswith(".pyc")


def test_the_repository_link_to_the_roles_is_left_out() -> None:
    """ansible/playbooks/roles links to ../roles in the repository; the bundle has the roles once."""
    assert (ANSIBLE_DIR / "playbooks" / "roles").is_symlink()
    names = set(unpacked(archive(members(dev_artifacts()))))
    assert not any(name.startswith("ansible/playbooks/roles/") for name in names)


def test_same_render_same_bytes_any_other_change_another_sha(tmp_path: Path) -> None:
    first = write_bundle(dev_artifacts(), tmp_path / "a.tar.gz")
    second = write_bundle(list(reversed(dev_artifacts())), tmp_path / "b.tar.gz")
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    assert first.key == f"bundles/{first.sha256}.tar.gz"
    edited = [a if a.path != "nginx/nginx.conf" else Artifact(a.path, a.kind, a.deployment, a.content + "#\n")
              for a in dev_artifacts()]
    assert write_bundle(edited, tmp_path / "c.tar.gz").sha256 != first.sha256


def test_the_file_in_the_bundle_is_the_artifact() -> None:
    data = archive(members(dev_artifacts()))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for artifact in dev_artifacts():
            handle = tar.extractfile(f"render/{artifact.path}")
            assert handle is not None and handle.read().decode() == artifact.content, artifact.path

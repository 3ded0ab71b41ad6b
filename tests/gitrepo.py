"""Git repositories holding part of the example project: the synthetic commits `gpufleet diff` and the
workflows' scripts are tested on (tests/report/test_diff.py, tests/workflows)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV = "stacks/Pulumi.dev.yaml"
# A fixed identity and no system config: commits work on a machine without git settings (CI).
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return done.stdout


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def example_repo(root: Path, profiles: Iterable[str]) -> Path:
    """``root`` as a repository on ``main`` whose one commit holds Pulumi.yaml, the dev stack and ``profiles``."""
    shutil.copy(REPO / "Pulumi.yaml", root)
    (root / "stacks" / "models").mkdir(parents=True)
    shutil.copy(REPO / DEV, root / DEV)
    for name in profiles:
        shutil.copy(REPO / "stacks" / "models" / f"{name}.yaml", root / "stacks" / "models")
    git(root, "init", "-q", "-b", "main")
    commit(root, "base")
    return root


def clone(origin: Path, into: Path) -> Path:
    git(into.parent, "clone", "-q", str(origin), str(into))
    return into

"""Shared helpers of the Ansible tests: the venv's tools, the machine lock, how to run a playbook."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
SITE = ANSIBLE_DIR / "playbooks" / "site.yml"
BIN = Path(sys.executable).parent

XDIST_GROUP = "ansible-local"  # every test that changes this machine with Ansible
# Held while a test changes this machine with Ansible (packages, services, /etc/gpufleet, init scripts).
# xdist_group(XDIST_GROUP) puts the tests on one worker, but only when loadgroup groups at all (under pytest
# 9.2 it does not, xdist#1386: pyproject.toml pins pytest below it) and only within one session: two pytest
# sessions on one machine (a developer's and CI's) would race without the lock.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "gpufleet-ansible-local.lock"

RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


def env(**extra: str) -> dict[str, str]:
    """The venv's ansible-* first in PATH (testinfra calls ansible-inventory by name), the repo's config and
    roles, no colours; ``extra`` last."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0", **extra}


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """The PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, rescued, ignored}."""
        lines = self.output.split("PLAY RECAP", 1)[-1].splitlines()
        found = {}
        for line in lines:
            m = RECAP_LINE.match(line.strip())
            if m:
                found[m["host"]] = {k: int(v) for k, v in (c.split("=") for c in m["counts"].split())}
        return found


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold MACHINE_LOCK: from a test's first converge to its cleanup."""
    with MACHINE_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def playbook(*args: str, timeout: int = 900) -> Run:
    proc = subprocess.run([str(BIN / "ansible-playbook"), *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    return Run(proc.returncode, proc.stdout + proc.stderr)

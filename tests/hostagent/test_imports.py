"""The host agent runs on Debian 12 hosts with python3, python3-boto3 and python3-yaml only, as the top-level
package ``hostagent`` (not ``infra.hostagent``): it may import nothing else, and it must work copied alone."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.hostagent import layout
from infra.render.ec2_hosts import BOOT_MODULES

AGENT = Path(layout.__file__).resolve().parent
HOST_LIBRARIES = {"boto3", "botocore", "yaml"}  # python3-boto3 (with botocore) and python3-yaml
SOURCES = sorted(AGENT.glob("*.py"))
# The eks LB pod's writer runs on the LB image's python3 alone (no boto3, no PyYAML): these modules, and
# nothing else of the package, are what it imports.
STDLIB_ONLY = ("files.py", "formats.py", "endpoints.py")
ENDPOINTS_MODULES = ["__init__.py", *STDLIB_ONLY]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import; relative imports are the package's own."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_the_agent_imports_only_what_a_debian_host_has(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | HOST_LIBRARIES
    foreign = [(line, name) for line, name in imported_modules(path) if name not in allowed]
    assert not foreign, f"{path.name} imports {foreign}: the hosts have only {sorted(HOST_LIBRARIES)}"


@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_the_lb_pod_modules_import_only_the_standard_library(name: str) -> None:
    foreign = [(line, module) for line, module in imported_modules(AGENT / name)
               if module not in sys.stdlib_module_names]
    assert not foreign, f"{name} imports {foreign}: the LB image has python3 and nothing else"


def test_the_import_check_sees_a_foreign_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import json\nfrom infra.hostagent import layout\nfrom . import formats\nimport requests\n")
    assert [name for _, name in imported_modules(sample)] == ["json", "infra", "requests"]


def run_copied(tmp_path: Path, modules: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m`` from a copy of (some of) the package under ``tmp_path/hostagent``, with nothing of this
    repository on the path: what the hosts run from /usr/local/lib/gpufleet."""
    package = tmp_path / "hostagent"
    package.mkdir()
    for name in modules:
        shutil.copy2(AGENT / name, package / name)
    env = {"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-s", "-m", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=False, timeout=60)


@pytest.mark.parametrize("program", ["hostagent.discover", "hostagent.sync", "hostagent.endpoints"])
def test_the_package_runs_copied_alone(tmp_path: Path, program: str) -> None:
    result = run_copied(tmp_path, [p.name for p in SOURCES], program, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: {program}" in result.stdout


def test_sync_runs_with_only_the_modules_cloud_init_ships(tmp_path: Path) -> None:
    """The first sync of a new host runs before any bundle brought the rest of the package."""
    result = run_copied(tmp_path, list(BOOT_MODULES), "hostagent.sync", "--host-config",
                        str(tmp_path / "absent.json"))
    assert result.returncode == 2, result.stderr  # ran as far as reading its config: every import resolved
    assert "host config" in result.stderr and "Traceback" not in result.stderr


def test_the_endpoints_writer_runs_with_only_its_modules(tmp_path: Path) -> None:
    """What the eks LB pod mounts: the writer, the formats it writes and the files module, nothing else."""
    result = run_copied(tmp_path, ENDPOINTS_MODULES, "hostagent.endpoints", "--config",
                        str(tmp_path / "absent.json"), "--once")
    assert result.returncode == 2, result.stderr  # ran as far as reading its config: every import resolved
    assert result.stderr.startswith("endpoints: config ") and "Traceback" not in result.stderr

"""The base side of ``gpufleet diff`` planned and rendered by the base's own gpufleet.

A pull request changes code as well as specs: a template, a catalog price, the capacity model. Planning the
base's specs with the working tree's code would hide all of that, so the base is run with the code it holds:
the extracted base tree's ``infra`` package, on this Python (the same installed libraries), through the two
commands DESIGN.md makes a contract, ``gpufleet plan -s STACK --json`` and ``gpufleet render -s STACK -o DIR``
(with its ``manifest.json``). Their exit codes say what happened: 0 is done; 2 is the user's problem (a spec
that does not validate, or a plan that cannot be rendered), reported in the comment; anything else, or output
this version cannot read, means the base's code cannot be run here (:class:`BaseCodeFailed`), and the caller
plans the base with the working tree's code instead and says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infra.render.artifacts import MANIFEST
from infra.report.diff import Side

CLI = Path("infra") / "cli.py"
"""What a tree must hold to have a gpufleet of its own."""
TIMEOUT_S = 900
# Runs the base's CLI: its tree first on sys.path (before this environment's editable install of the
# working tree), and a check that the import really came from there.
BOOT = """\
import sys
from pathlib import Path
root = Path(sys.argv.pop(1)).resolve()
sys.path.insert(0, str(root))
import infra
if Path(infra.__file__).resolve().parent != root / "infra":
    sys.exit(f"imported infra from {infra.__file__}, not from the base at {root}")
from infra.cli import main
sys.argv[0] = "gpufleet"
main()
"""
# The commands' closing lines ("3 error(s); nothing was planned.") say nothing the lines above do not.
SUMMARY_LINE = re.compile(r"^(\d+ error\(s\)|nothing was)")


class BaseCodeFailed(Exception):
    """The base's gpufleet could not be run here; the message says why (one line)."""


def has_own_code(root: Path) -> bool:
    return (root / CLI).is_file()


def base_sides(root: Path, stacks: list[str], scratch: Path) -> dict[str, Side]:
    """Every stack of ``stacks`` planned and rendered by the gpufleet in ``root`` (two commands per stack,
    the stacks side by side); raises :class:`BaseCodeFailed` if any cannot be."""
    workers = max(1, min(len(stacks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(base_side, root, name, scratch / f"render-{index}")
                   for index, name in enumerate(stacks)}
        return {name: future.result() for name, future in futures.items()}


def base_side(root: Path, stack: str, out: Path) -> Side:
    """One stack (present at the base) through ``plan --json`` and ``render``."""
    planned = _gpufleet(root, "plan", "-s", stack, "--json")
    plan = _json(planned.stdout)
    if planned.returncode == 2 and plan is None:
        return Side("invalid", errors=_lines(planned.stderr))
    if planned.returncode not in (0, 2) or not isinstance(plan, dict):
        raise BaseCodeFailed(_failure(f"plan -s {stack} --json", planned))
    rendered = _gpufleet(root, "render", "-s", stack, "-o", str(out))
    if rendered.returncode == 2:
        return _readable(Side("infeasible", plan, errors=_lines(rendered.stderr)), stack)
    if rendered.returncode != 0:
        raise BaseCodeFailed(_failure(f"render -s {stack}", rendered))
    return _readable(Side("ok", plan, read_render(out, stack)), stack)


def read_render(out: Path, stack: str) -> dict[str, str]:
    """The rendered files ``manifest.json`` lists, by path."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return {entry["path"]: (out / entry["path"]).read_text(encoding="utf-8") for entry in manifest}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BaseCodeFailed(f"its `render -s {stack}` wrote no readable {MANIFEST}: {exc}") from exc


def _readable(side: Side, stack: str) -> Side:
    """``side``, once the diff can read the base's plan document (an older ``plan --json`` may lack keys)."""
    try:
        side.deployments()
        if side.plan is not None:
            float(side.plan["monthly_usd"])
            str(side.plan["target"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BaseCodeFailed(f"its `plan -s {stack} --json` lacks what the diff compares ({exc!r})") from exc
    return side


def _gpufleet(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH is dropped: only the base's tree and this environment's libraries are imported.
    env: Mapping[str, str] = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-c", BOOT, str(root), *args, "--project-dir", str(root)]
    try:
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise BaseCodeFailed(f"its `gpufleet {' '.join(args)}` ran longer than {TIMEOUT_S} s") from exc


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line for line in text.splitlines() if line.strip() and not SUMMARY_LINE.match(line))


def _failure(command: str, done: subprocess.CompletedProcess[str]) -> str:
    last = next((line.strip() for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
    return f"its `gpufleet {command}` exited {done.returncode}: {last}"

"""Writing the files the agents own (Nginx upstreams, Prometheus file_sd targets, markers) and running the
commands that check and reload what reads them; shared by :mod:`.discover` (aws-ec2 hosts) and
:mod:`.endpoints` (the eks LB pod).

Every write is atomic (a temporary file in the same directory, then ``os.replace``) and, through
:func:`write_if_changed`, happens only when the content changes. Each change is one line on stdout
(:func:`log`); a failure is one line on stderr (:func:`warn`). Standard library only: the eks sidecar has
no boto3 or PyYAML.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

COMMAND_TIMEOUT_S = 120  # nginx -t and a reload take well under a second; a hung one must not wedge the agent


def log(message: str) -> None:
    print(message, flush=True)  # flushed: the journal interleaves it with the check's own output


def warn(program: str, message: str) -> None:
    print(f"{program}: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Written:
    path: Path
    previous: str | None  # None: the file did not exist


def read_text_or_none(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")  # garbage compares unequal: rewritten
    except FileNotFoundError:
        return None


def atomic_write(path: Path, content: str) -> None:
    """Readers (nginx, Prometheus) see the old file or the new one, never half of one. The temporary name ends
    in ``.tmp``, so globs like ``*.conf`` and ``*.json`` never pick it up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; nginx's and Prometheus' users read these files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_if_changed(path: Path, content: str) -> Written | None:
    """Writes ``content`` unless the file already has it; what was there before, for :func:`restore`."""
    previous = read_text_or_none(path)
    if previous == content:
        return None
    atomic_write(path, content)
    log(f"wrote {path}")
    return Written(path, previous)


def restore(written: Iterable[Written]) -> None:
    """Puts back what :func:`write_if_changed` replaced (a file that did not exist is removed)."""
    for item in written:
        if item.previous is None:
            item.path.unlink(missing_ok=True)
        else:
            atomic_write(item.path, item.previous)


def run_command(argv: Sequence[str], what: str) -> str | None:
    """Runs ``argv`` with the agent's stdout/stderr (the tool's own message reaches the journal); returns
    why it failed, or None."""
    try:
        result = subprocess.run(list(argv), check=False, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{what} ({' '.join(argv)}) did not finish in {COMMAND_TIMEOUT_S} s"
    except OSError as exc:
        return f"{what} ({' '.join(argv)}) could not run: {exc.strerror or exc}"
    if result.returncode != 0:
        return f"{what} ({' '.join(argv)}) failed with exit code {result.returncode}"
    return None

"""``gpufleet diff --base REF``: the typer command (registered in infra/cli.py) and what it reads.

The base side is the project's folder at REF, extracted with ``git archive`` into a temporary directory (no
worktree: nothing is registered in the repository, so a failed run leaves nothing behind). It is planned and
rendered by the gpufleet it holds (infra/report/base_code.py), the working tree by this one, so the diff shows
what merging changes, code included. A base without gpufleet code of its own, or whose code cannot run here,
is planned by this code instead, and the comment says so.

User errors exit 2 with ``error: ...`` lines: not a git repository, an unknown ref, an unknown ``-s`` stack,
a working-tree spec that does not validate (the PR must fix it). Everything else (a base that does not
validate, an infeasible plan on either side) is reported in the comment, and the exit code stays 0: the
workflow decides from ``--json`` what fails the check.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from infra.cli_common import fail, find_project
from infra.plan.optimize import plan_stack
from infra.plan.serialize import fleet_json
from infra.render.stack import NotRenderable, render_fleet
from infra.report.base_code import BaseCodeFailed, base_sides, has_own_code
from infra.report.diff import (
    DEFAULT_DIFF_LINES,
    GITHUB_COMMENT_LIMIT,
    BaseCode,
    BaseRef,
    DiffReport,
    Limits,
    Side,
    compare_stack,
    markdown,
    summary_json,
)
from infra.spec.issues import SpecError
from infra.spec.load import Project, load_stack
from infra.spec.pydantic_issues import did_you_mean


@dataclass(frozen=True)
class Checkout:
    """Where the project sits in its git repository."""

    top: Path
    """The repository's top level."""
    prefix: str
    """The project's folder relative to ``top``, with a trailing slash; empty at the top level."""


def _git(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        fail(["error: git is not installed: gpufleet diff compares the working tree with a git ref"])


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def checkout_of(root: Path) -> Checkout:
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top.returncode != 0:
        # git's own reason matters here, e.g. "detected dubious ownership" in a CI container.
        fail([f"error: {root} is not in a git repository ({_first_line(top.stderr)}); gpufleet diff compares "
              "the working tree with a git ref"])
    prefix = _git(["rev-parse", "--show-prefix"], root).stdout.strip()
    return Checkout(Path(top.stdout.strip()), prefix)


def resolve_ref(checkout: Checkout, ref: str) -> str:
    """The commit ``ref`` names (``--end-of-options``: a ref is never read as an option)."""
    done = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], checkout.top)
    if done.returncode != 0:
        fail([f"error: --base: '{ref}' is not a commit in {checkout.top} (a shallow CI checkout needs the base "
              "fetched, e.g. `git fetch --depth=1 origin main` and --base origin/main)"])
    return done.stdout.strip()


def materialise(checkout: Checkout, commit: str, into: Path) -> Project:
    """The project as it is at ``commit``, extracted under ``into`` (empty if the project's folder is not there).

    ``git archive`` honours the commit's ``export-ignore``/``export-subst`` attributes; a project that marks
    its stacks so would compare against less than it has.
    """
    tree = into / "tree"
    root = tree / checkout.prefix
    root.mkdir(parents=True)
    if checkout.prefix and _git(["cat-file", "-e", f"{commit}:{checkout.prefix.rstrip('/')}"],
                                checkout.top).returncode != 0:
        return Project(root)  # the project did not exist yet: every stack is new
    archive = into / "base.tar"
    paths = ["--", checkout.prefix] if checkout.prefix else []
    done = _git(["archive", "--format=tar", f"--output={archive}", commit, *paths], checkout.top)
    if done.returncode != 0:
        fail([f"error: --base: git archive of {commit[:12]} failed: {_first_line(done.stderr)}"])
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")  # "data": no absolute paths, links out of the tree or devices
    except tarfile.TarError as exc:
        fail([f"error: --base: cannot extract {commit[:12]}: {exc}"])
    return Project(root)


def changed_paths(checkout: Checkout, commit: str) -> tuple[str, ...]:
    """The project's files that differ between ``commit`` and the working tree, untracked ones included.

    Relative to the project's folder. ``--no-renames``: a moved file counts at both its paths.
    """
    scope = ["--", checkout.prefix or "."]
    tracked = _git(["diff", "--name-only", "--no-renames", commit, *scope], checkout.top)
    untracked = _git(["ls-files", "--others", "--exclude-standard", "--full-name", *scope], checkout.top)
    for done in (tracked, untracked):
        if done.returncode != 0:
            fail([f"error: --base: cannot list the files changed since {commit[:12]}: {_first_line(done.stderr)}"])
    paths = {line for done in (tracked, untracked) for line in done.stdout.splitlines() if line}
    return tuple(sorted(path.removeprefix(checkout.prefix) for path in paths))


def snapshot(project: Project, stack: str) -> Side:
    """One side of one stack: loaded, planned and rendered, or why not."""
    if stack not in project.stack_names():
        return Side("absent")
    try:
        loaded = load_stack(project, stack)
    except SpecError as exc:
        return Side("invalid", errors=tuple(issue.format() for issue in exc.issues))
    fleet = plan_stack(loaded)
    plan = fleet_json(fleet)
    try:
        artifacts = render_fleet(fleet)
    except NotRenderable as exc:
        return Side("infeasible", plan, errors=(str(exc),))
    return Side("ok", plan, {a.path: a.content for a in artifacts})


def base_snapshots(project: Project, stacks: list[str], scratch: Path) -> tuple[dict[str, Side], BaseCode]:
    """The base's sides, planned and rendered by the base's own gpufleet when it has one that runs here."""
    present = [name for name in stacks if name in project.stack_names()]
    sides = {name: Side("absent") for name in stacks if name not in present}
    if not present:
        return sides, BaseCode(own=False, why_not="no stack at the base")
    if not has_own_code(project.root):
        why_not = "the base has no gpufleet code of its own"
    else:
        try:
            return {**sides, **base_sides(project.root, present, scratch)}, BaseCode(own=True)
        except BaseCodeFailed as exc:
            why_not = f"the base's gpufleet could not be run here: {exc}"
    return {**sides, **{name: snapshot(project, name) for name in present}}, BaseCode(own=False, why_not=why_not)


def selected_stacks(requested: list[str] | None, work: Project, base: Project, ref: str) -> list[str]:
    """``-s`` stacks (each on at least one side), or every stack present on either side."""
    known = sorted(set(work.stack_names()) | set(base.stack_names()))
    if not requested:
        if not known:
            fail([f"error: no stacks/Pulumi.*.yaml in {work.root}, neither in the working tree nor at {ref}"])
        return known
    unknown = [name for name in requested if name not in known]
    if unknown:
        fail([f"error: --stack: no stack '{name}' in the working tree or at {ref} ({did_you_mean(name, known)})"
              for name in unknown])
    return list(dict.fromkeys(requested))


def working_tree_sides(project: Project, stacks: list[str]) -> dict[str, Side]:
    """The working tree's sides; a spec that does not validate is the usual user error (every stack's at once)."""
    sides = {name: snapshot(project, name) for name in stacks}
    errors = [line for side in sides.values() if side.status == "invalid" for line in side.errors]
    if errors:
        fail([*errors, f"{len(errors)} error(s) in the working tree's specs; nothing was compared."])
    return sides


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail([f"error: cannot write {path}: {exc}"])


def diff_command(  # noqa: PLR0917 -- a typer command: one parameter per command-line option
    base: Annotated[str, typer.Option("--base", help="Git ref to compare with: branch, tag or commit (origin/main).")],
    stack: Annotated[
        list[str] | None,
        typer.Option("--stack", "-s", help="Stack name (repeatable). Default: every stack on either side."),
    ] = None,
    project_dir: Annotated[
        Path | None,
        typer.Option("--project-dir", "-C", help="Project root (the folder with Pulumi.yaml). Default: search upward."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the Markdown comment here instead of stdout.")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the machine-readable summary (costs, warnings) here.")
    ] = None,
    max_increase_percent: Annotated[
        float | None,
        typer.Option("--max-increase-percent", min=0, help="Warn when a stack's or the fleet's $/month rises more."),
    ] = None,
    max_diff_lines: Annotated[
        int, typer.Option("--max-diff-lines", min=3, help="Lines shown of one rendered file's diff.")
    ] = DEFAULT_DIFF_LINES,
    max_chars: Annotated[
        int, typer.Option("--max-chars", min=2000, help="Size of the whole comment (GitHub's limit by default).")
    ] = GITHUB_COMMENT_LIMIT,
) -> None:
    """Plan and render the stacks at a git ref and in the working tree; print a Markdown PR comment."""
    project = find_project(project_dir)
    checkout = checkout_of(project.root)
    commit = resolve_ref(checkout, base)
    with tempfile.TemporaryDirectory(prefix="gpufleet-diff-") as tmp:
        base_project = materialise(checkout, commit, Path(tmp))
        stacks = selected_stacks(stack, project, base_project, base)
        after = working_tree_sides(project, stacks)
        before, base_code = base_snapshots(base_project, stacks, Path(tmp))
    report = DiffReport(
        BaseRef(base, commit),
        tuple(compare_stack(name, before[name], after[name], max_increase_percent) for name in stacks),
        max_increase_percent,
        changed_paths(checkout, commit),
        base_code,
    )
    text = markdown(report, Limits(max_diff_lines, max_chars))
    if json_file is not None:
        _write(json_file, json.dumps(summary_json(report), indent=2) + "\n")
    if output is None:
        typer.echo(text, nl=False)
    else:
        _write(output, text)
        typer.echo(f"wrote {output}", err=True)

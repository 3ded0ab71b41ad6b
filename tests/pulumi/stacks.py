"""The example stacks in a temporary project, one stack file edited: what a pull request would change."""

from __future__ import annotations

import shutil
from pathlib import Path

from infra.spec.load import Project

ROOT = Path(__file__).resolve().parents[2]


def edited_project(root: Path, stack: str, edit: tuple[str, str] | None = None) -> Project:
    """``stacks/`` copied under ``root``, with one text replacement (which must match) in ``stack``'s file."""
    shutil.copytree(ROOT / "stacks", root / "stacks")
    if edit:
        stack_file = root / "stacks" / f"Pulumi.{stack}.yaml"
        text = stack_file.read_text(encoding="utf-8")
        assert edit[0] in text, edit[0]
        stack_file.write_text(text.replace(edit[0], edit[1]), encoding="utf-8")
    return Project(root)

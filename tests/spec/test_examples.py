"""The shipped example stacks validate, and the checked-in JSON Schemas are current and accept them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.spec.jsonschema import stale_schemas
from infra.spec.load import Project

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["dev", "staging", "prod", "onprem-a800", "engines"]


def test_examples_are_the_documented_ones() -> None:
    assert sorted(Project(ROOT).stack_names()) == sorted(EXAMPLES)


def test_validate_all_examples_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "validate", "--all", "-C", str(ROOT)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [f"ok  {s}" for s in sorted(EXAMPLES)]


def test_checked_in_schemas_are_current() -> None:
    assert stale_schemas(ROOT / "schemas") == [], "run `gpufleet schemas` and commit the result"


def test_schema_check_detects_a_stale_schema(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    (tmp_path / "schemas" / "stack.schema.json").write_text("{}\n")
    assert stale_schemas(tmp_path / "schemas") == ["stack.schema.json"]


def _check_jsonschema(schema: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is a dev dependency (pip install -e '.[dev]')"
    return subprocess.run(
        [tool, "--schemafile", str(ROOT / "schemas" / schema), *map(str, files)],
        capture_output=True, text=True, check=False,
    )


def test_example_stacks_conform_to_the_stack_schema() -> None:
    result = _check_jsonschema("stack.schema.json", sorted((ROOT / "stacks").glob("Pulumi.*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_profiles_conform_to_the_profile_schema() -> None:
    result = _check_jsonschema("model-profile.schema.json", sorted((ROOT / "stacks" / "models").glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("schema", "document"),
    [
        ("stack.schema.json", "config:\n  gpufleet:target: gcp\n"),
        ("stack.schema.json", "config:\n  gpufleet:taget: aws-ec2\n"),
        ("model-profile.schema.json", "name: x\nweights: {source: local, path: /m}\narchitecture: {baseModel: m}\n"
                                      "dtype: int3\n"),
    ],
)
def test_schemas_reject_what_validate_rejects(schema: str, document: str, tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(document)
    assert _check_jsonschema(schema, [path]).returncode == 1

"""Every checked-in engine flag schema (infra/render/data/*-flags.json) is exactly what its generator writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = sorted((ROOT / "infra" / "render" / "data").glob("*-flags.json"))


def test_each_generated_engine_has_its_schema() -> None:
    assert [path.name for path in SCHEMAS] == ["sglang-0.5.21-flags.json", "vllm-0.33.0-flags.json"]


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda path: path.name)
def test_schema_file_is_exactly_what_the_script_writes(path: Path) -> None:
    """Sorted options, fixed formatting: a regenerated file diffs only where the engine changed."""
    text = path.read_text(encoding="utf-8")
    document = json.loads(text)
    assert json.dumps(document, indent=2, ensure_ascii=False) + "\n" == text
    names = [o["name"] for o in document["options"]]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert document["schema"]["option_count"] == len(names)
    assert (ROOT / document["schema"]["generator"]).is_file()

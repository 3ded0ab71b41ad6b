"""Positions, duplicate keys and syntax errors of the YAML loader behind file:line:col messages."""

from __future__ import annotations

import pytest

from infra.spec.yamlpos import Mark, YamlSyntaxError, load_positioned

DOC = """\
config:
  gpufleet:target: aws-ec2
  gpufleet:deployments:
    - name: chat
      gpus: [L4, A10G]
"""


def test_values_and_keys_have_one_based_positions() -> None:
    doc = load_positioned(DOC)
    assert doc.data["config"]["gpufleet:deployments"][0]["gpus"] == ["L4", "A10G"]
    assert doc.value_marks[("config", "gpufleet:target")] == Mark(2, 20)
    assert doc.key_marks[("config", "gpufleet:target")] == Mark(2, 3)
    assert doc.value_marks[("config", "gpufleet:deployments", 0, "gpus", 1)] == Mark(5, 18)


def test_missing_path_falls_back_to_nearest_ancestor() -> None:
    doc = load_positioned(DOC)
    missing_field = ("config", "gpufleet:deployments", 0, "slo")
    assert doc.mark_of(missing_field) == Mark(4, 7)  # the list item that lacks it
    assert doc.mark_of(("config", "gpufleet:zones"), prefer_key=True) == Mark(1, 1)  # `config:` itself
    assert doc.mark_of(("config", "gpufleet:target", "x"), prefer_key=True) == Mark(2, 3)


def test_duplicate_keys_are_reported_not_silently_overwritten() -> None:
    doc = load_positioned("a: 1\nb: 2\na: 3\n")
    assert doc.duplicate_keys == [(("a",), Mark(3, 1))]


def test_merge_keys_are_resolved() -> None:
    doc = load_positioned("base: &b {x: 1}\nchild:\n  <<: *b\n  y: 2\n")
    assert doc.data["child"] == {"x": 1, "y": 2}


def test_syntax_error_has_a_position() -> None:
    with pytest.raises(YamlSyntaxError) as raised:
        load_positioned("a: [1, 2\nb: 3\n")
    assert raised.value.mark.line == 2
    assert raised.value.message.startswith("invalid YAML:")


def test_empty_document_is_none() -> None:
    assert load_positioned("# only a comment\n").data is None


def test_a_key_overriding_a_merged_one_is_no_duplicate() -> None:
    """`<<: *base` then `name: x` is how YAML specialises an anchor (the examples' engines stack does it)."""
    text = "base: &b {name: a, qps: 1}\nitems:\n  - <<: *b\n    name: x\n    name: y\n"
    doc = load_positioned(text)
    assert doc.data["items"] == [{"name": "y", "qps": 1}]
    assert doc.duplicate_keys == [(("items", 0, "name"), Mark(5, 5))]  # only the key written twice by hand

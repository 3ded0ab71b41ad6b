"""Checks of an engine's metrics page against the engine catalog, shared by the tests of both emulators
(``gpufleet emulate``'s in tests/emulate and the live monitoring test's in tests/e2e)."""

from __future__ import annotations

import re
import subprocess
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from infra.catalog.schema import InferenceEngine
from tests.tooling import require_tool

HISTOGRAM_SUFFIXES: tuple[Literal["bucket", "sum", "count"], ...] = ("bucket", "sum", "count")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s")
# promtool's linter (client_golang promlint) checks naming conventions that engines' real names break: colons
# (vLLM, SGLang, llama.cpp write `engine:metric`, a form the conventions keep for recording rules) and counters
# without `_total` (TGI's Rust exporter); and vLLM names one histogram `vllm:iteration_tokens_total`. The
# emulators must write those names as the engines do, so promtool may only complain about these; anything else
# (a parse error above all) fails.
COLON_LINT = "metric names should not contain ':'"
TOTAL_LINT = 'counter metrics should have "_total" suffix'
NON_COUNTER_TOTAL_LINT = 'non-counter metrics should not have "_total" suffix'
NON_COUNTERS_NAMED_TOTAL = {"vllm:iteration_tokens_total"}  # in reference/vllm-0.33-metrics.tsv


def declared(text: str) -> dict[str, str]:
    """``# TYPE`` lines as written: name -> type (read raw: the Python parser renames bare counters)."""
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}


def sample_names(text: str) -> set[str]:
    """Every sample name on the page, as written."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            names.add(match.group(1))
    return names


def catalog_samples(engine: InferenceEngine) -> dict[str, str]:
    """The sample names the catalog says the engine exposes -> the type of their family."""
    samples: dict[str, str] = {}
    for metric in engine.metrics.signals.values():
        if metric.kind == "histogram":
            samples.update({metric.sample(suffix): "histogram" for suffix in HISTOGRAM_SUFFIXES})
        else:
            samples[metric.sample()] = metric.kind
    return samples


def assert_catalog_page(engine: InferenceEngine, text: str) -> None:
    """Every catalog signal's samples are on the page with the family type the catalog says, the Python
    parser reads the page, and an engine other than vLLM exposes exactly its catalog samples (nothing of
    vLLM's, nor anything else, leaks in)."""
    names = sample_names(text)
    types = declared(text)
    expected = catalog_samples(engine)
    missing = set(expected) - names
    assert not missing, f"{engine.name}: missing {sorted(missing)}"
    for metric in engine.metrics.signals.values():
        typed = metric.name if metric.kind == "histogram" else metric.sample()
        assert types.get(typed) == metric.kind, (engine.name, typed, types.get(typed))
    parsed = {f.name: f.type for f in text_string_to_metric_families(text)}
    for metric in engine.metrics.signals.values():
        assert parsed.get(metric.name) == metric.kind, (engine.name, metric.name, parsed.get(metric.name))
    if engine.name != "vllm":
        assert names == set(expected), f"{engine.name}: not in the catalog: {sorted(names - set(expected))}"
        assert "vllm:" not in text


def promtool_problems(engine: InferenceEngine, text: str) -> list[str]:
    """``promtool check metrics`` on the page: it must parse; the lint findings it may have are returned
    after checking each is one of the two conventions real engine names break (see COLON_LINT)."""
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=60, check=False)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode in {0, 3}, f"{engine.name}: promtool cannot read the page: {output}"
    bare_counters = {m.name for m in engine.metrics.signals.values() if m.kind == "counter" and not m.total_suffix}
    problems = [line for line in output.splitlines() if line.strip()]
    for line in problems:
        name, _, message = line.partition(" ")
        if message == COLON_LINT:
            assert ":" in name, line
        elif message == NON_COUNTER_TOTAL_LINT:
            assert name in NON_COUNTERS_NAMED_TOTAL, f"{engine.name}: unexpected lint: {line}"
        else:
            assert message == TOTAL_LINT and name in bare_counters, f"{engine.name}: unexpected lint: {line}"
    assert (result.returncode == 3) == bool(problems), output
    return problems

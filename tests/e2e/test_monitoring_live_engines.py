"""The live proof for a fleet that mixes engines: the engines example stack (vLLM, SGLang, TGI, llama.cpp,
Ollama, TensorRT-LLM) rendered and run as in tests/e2e/test_monitoring_live.py, each replica emulated with its
engine's own metric names, metrics path and health paths (tests/e2e/metrics_emulator.py, from the catalog).

What it shows: the rendered scrape config scrapes every engine on its path (TensorRT-LLM /prometheus/metrics)
and leaves Ollama, which has no metrics endpoint, out; each engine's recording rules turn its own names into
the deployment:engine_* series; the fleet dashboard's panels have data from every engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from infra.catalog import load_catalog
from infra.render.dashboards import render_dashboards
from infra.render.dashboards.queries import ALL, dashboard_queries, expand
from infra.render.prometheus_rules import rules_document
from infra.render.telemetry import ENGINE_JOB, ENGINE_LABEL
from tests.e2e import services
from tests.e2e.test_monitoring_live import DATA_TIMEOUT_S, Live, empty, live_fleet, still_lacking

pytestmark = pytest.mark.xdist_group("monitoring-live-engines")
ENGINE_GROUP = "gpufleet-engine-"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_fleet("engines", tmp_path_factory.mktemp("monitoring-engines")) as running:
        yield running


def engines_of(live: Live) -> dict[str, str]:
    """deployment -> engine."""
    return {d.deployment.name: d.profile.engine for d in live.plan.deployments}


def test_the_fleet_runs_every_engine(live: Live) -> None:
    assert sorted(engines_of(live).values()) == sorted(load_catalog().engines)


def test_every_engine_with_metrics_is_scraped_on_its_path(live: Live) -> None:
    with_metrics = {d: e for d, e in engines_of(live).items() if load_catalog().engines[e].metrics.path}

    def scraped() -> dict[str, tuple[str, str]]:
        return {r["metric"]["deployment"]: (r["metric"][ENGINE_LABEL], r["value"][1])
                for r in live.query(f'up{{job="{ENGINE_JOB}"}}')}
    services.wait_until(lambda: {d: e for d, (e, up) in scraped().items() if up == "1"} == with_metrics,
                        DATA_TIMEOUT_S, "every engine with a metrics endpoint up")
    assert "ollama" not in {engine for engine, _ in scraped().values()}  # dropped, not reported down


def test_each_engines_rules_record_its_deployments_from_its_own_names(live: Live) -> None:
    exprs: dict[str, str] = {}
    deployments = engines_of(live)
    for group in rules_document(live.plan)["groups"]:
        if not group["name"].startswith(ENGINE_GROUP):
            continue
        engine = group["name"].removeprefix(ENGINE_GROUP)
        for rule in group["rules"]:
            for d in (name for name, e in deployments.items() if e == engine):
                exprs[f"{engine} {rule['record']} {d}"] = f'{rule["record"]}{{deployment="{d}"}}'
    engines = {label.split()[0] for label in exprs}
    assert engines == {n for n, e in load_catalog().engines.items() if e.metrics.signals}  # all but Ollama
    assert still_lacking(live, exprs, empty) == {}


def fleet_board(live: Live) -> dict[str, Any]:
    (board,) = [json.loads(a.content) for a in render_dashboards(live.plan)
                if a.path.endswith("gpufleet-fleet.json")]
    return board


def test_every_fleet_panel_has_data_with_every_engine_in_the_fleet(live: Live) -> None:
    exprs = {f"{title}: {expr}": expand(expr, deployment=ALL, model=ALL) for title, expr in
             dashboard_queries(fleet_board(live))}
    assert len(exprs) > 10
    assert still_lacking(live, exprs, empty) == {}


def test_the_fleet_boards_engine_panels_show_every_engine_that_has_the_signal(live: Live) -> None:
    """Each per-deployment panel that plots an engine-recorded series has a series for every deployment whose
    engine records it: the dashboards show each engine's metrics, under one name."""
    recorded_by: dict[str, set[str]] = {}
    for group in rules_document(live.plan)["groups"]:
        if group["name"].startswith(ENGINE_GROUP):
            for rule in group["rules"]:
                recorded_by.setdefault(rule["record"], set()).add(group["name"].removeprefix(ENGINE_GROUP))
    exprs: dict[str, str] = {}
    expected: dict[str, set[str]] = {}
    for title, expr in dashboard_queries(fleet_board(live)):
        record = expr.split("{", 1)[0]
        if record in recorded_by:  # a plain per-deployment selector of an engine series
            label = f"{title}: {record}"
            exprs[label] = expand(expr, deployment=ALL, model=ALL)
            expected[label] = {d for d, e in engines_of(live).items() if e in recorded_by[record]}
    assert len(exprs) >= 5

    def lacking(label: str) -> Any:
        return lambda result: expected[label] - {r["metric"].get("deployment", "") for r in result}
    missing = {label: lack for label in exprs
               if (lack := still_lacking(live, {label: exprs[label]}, lacking(label)))}
    assert missing == {}

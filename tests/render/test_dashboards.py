"""Grafana dashboards (infra/render/dashboards): structure, every query checked by the real promtool, the
monitoring contract (pinned vLLM metric names, recording rules, counters only through rate()), and the EKS
ConfigMaps validated with kubernetes-validate --strict.

promtool is required (scripts/install-system-deps.sh): a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.catalog import load_catalog
from infra.plan.optimize import DeploymentPlan, FleetPlan, plan_stack
from infra.render.artifacts import Artifact
from infra.render.dashboards import (
    ALL,
    CONFIGMAPS_PATH,
    DASHBOARD_DIR,
    dashboard_queries,
    expand,
    render_dashboards,
)
from infra.render.dashboards.sdk import JSONEncoder, dashboard_models
from infra.render.prometheus_rules import UNMONITORED_SLOS, rules_document
from infra.render.telemetry import GRAFANA_DASHBOARD_LABEL, K8S_MONITORING_NAMESPACE
from infra.spec.load import Project, load_stack
from tests.render.test_prometheus_rules import mixed_plan
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["dev", "staging", "prod", "onprem-a800", "engines"]
METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
NAMES = ("gpufleet-fleet", "gpufleet-deployment", "gpufleet-loadbalancer")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TIMEOUT_S = 60

# Names older dashboards use that current vLLM no longer exposes (reference/vllm.md, "Metrics").
REMOVED_VLLM = re.compile(r"vllm:gpu_cache_usage_perc|vllm:gpu_prefix_cache_"
                          r"|(?<![\w:])vllm:time_per_output_token_seconds")
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
SUFFIXLESS_COUNTERS = {"nginx_connections_accepted", "nginx_connections_handled"}  # stub_status
RATE_FUNCTIONS = {"rate", "irate", "increase"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


@cache
def plan_for(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


@cache
def artifacts(stack: str) -> dict[str, Artifact]:
    return {a.path: a for a in render_dashboards(plan_for(stack))}


def dashboards(stack: str) -> dict[str, dict[str, Any]]:
    return {name: json.loads(artifacts(stack)[f"{DASHBOARD_DIR}/{name}.json"].content) for name in NAMES}


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels inside (collapsed) rows included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """The series selector inside each query variable's label_values(selector, label)."""
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
            assert match, var["query"]
            out.append((f"variable {var['name']}", match.group(1)))
    return out


def every_query(stack: str) -> list[tuple[str, str]]:
    return [(f"{name}: {title}", expr) for name, d in dashboards(stack).items()
            for title, expr in dashboard_queries(d) + variable_queries(d)]


def counters_outside_rate(expr: str) -> list[str]:
    """Counter series (``*_total``, ``_count``, ``_sum``, ``_bucket`` and stub_status' suffixless counters) that
    are not inside a ``rate(``/``irate(``/``increase(`` call, tracking parentheses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    stack: list[str] = []
    bad = []
    for match in re.finditer(r"[A-Za-z_:][\w:]*\s*\(|\(|\)|[A-Za-z_:][\w:]*", text):
        token = match.group(0)
        if token.endswith("("):
            stack.append(token[:-1].strip())
        elif token == ")":
            stack.pop()
        elif stack and stack[-1] in LABEL_LISTS:
            continue  # a label name in by (...) / on (...)
        elif (token.endswith(COUNTER_SUFFIXES) or token in SUFFIXLESS_COUNTERS) and not RATE_FUNCTIONS & set(stack):
            bad.append(token)
    assert not stack, f"unbalanced parentheses in {expr!r}"
    return bad


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], check=False, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


# -- files, identity, SDK ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_three_dashboards_with_stable_uids(stack: str) -> None:
    rendered = artifacts(stack)
    files = {p: a for p, a in rendered.items() if a.kind == "grafana-dashboard"}
    assert set(files) == {f"{DASHBOARD_DIR}/{name}.json" for name in NAMES}
    assert all(a.deployment is None for a in files.values())
    boards = dashboards(stack)
    uids = [d["uid"] for d in boards.values()]
    assert uids == [f"gpufleet-{stack}-{name.removeprefix('gpufleet-')}" for name in NAMES]
    assert len(set(uids)) == len(uids)
    assert all(stack in d["title"] for d in boards.values())
    for path, artifact in files.items():  # sorted keys, 2-space indent, final newline: reproducible text
        assert artifact.content == json.dumps(json.loads(artifact.content), indent=2, sort_keys=True) + "\n", path


@pytest.mark.parametrize("stack", STACKS)
def test_json_is_the_sdk_model(stack: str) -> None:
    """Decoding each file with the SDK's model and encoding it again gives the same JSON: nothing was added
    by hand that the SDK does not know."""
    for name, board in dashboards(stack).items():
        again = json.loads(json.dumps(dashboard_models.Dashboard.from_json(board), cls=JSONEncoder))
        assert again == board, name


@pytest.mark.parametrize("stack", STACKS)
def test_panels_datasource_targets_units_layout(stack: str) -> None:
    for name, board in dashboards(stack).items():
        panels = all_panels(board)
        ids = [p["id"] for p in panels]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        assert all(isinstance(i, int) and i > 0 for i in ids), name
        titles = [p["title"] for p in panels if p["type"] != "row"]
        assert len(set(titles)) == len(titles), f"{name}: duplicate panel titles"
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area
            if panel["type"] == "row":
                continue
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            assert all(t["datasource"] == DATASOURCE and t["expr"] for t in panel["targets"]), where
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where
            assert len(panel.get("description", "")) > 30, where
            if panel["type"] == "heatmap":
                assert panel["options"]["calculate"] is False, where
                assert all(t["format"] == "heatmap" and "sum by (le)" in t["expr"] for t in panel["targets"]), where
                assert panel["options"]["yAxis"]["unit"] == "s", where
            else:
                assert panel["fieldConfig"]["defaults"]["unit"], where


@pytest.mark.parametrize("stack", STACKS)
def test_variables(stack: str) -> None:
    for name, board in dashboards(stack).items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        dep = variables["deployment"]
        assert dep["query"] == "label_values(gpufleet:plan_replicas, deployment)"
        assert dep["multi"] and dep["includeAll"] and dep["allValue"] == ALL
        assert dep["datasource"] == DATASOURCE
        if name == "gpufleet-loadbalancer":  # Nginx series have no model label
            assert "model" not in variables
            continue
        model = variables["model"]
        # the plan's series, not an engine's metric: every deployment's models, whatever the engine
        assert model["query"] == 'label_values(gpufleet:plan_info{deployment=~"$deployment"}, model)'
        assert model["multi"] and model["includeAll"] and model["datasource"] == DATASOURCE


def test_slo_lines_are_dashed_overrides() -> None:
    board = dashboards("prod")["gpufleet-fleet"]
    for short in ("ttft", "tpot"):
        [panel] = [p for p in all_panels(board) if p["title"] == f"{short.upper()} p95 vs SLO"]
        refs = {t["expr"].split("{")[0]: t["refId"] for t in panel["targets"]}
        assert f"deployment:engine_{short}_seconds:p95_5m" in refs
        slo_ref = refs[f"gpufleet:slo_{short}_p95_seconds"]
        [override] = panel["fieldConfig"]["overrides"]
        assert override["matcher"] == {"id": "byFrameRefID", "options": slo_ref}
        props = {p["id"]: p["value"] for p in override["properties"]}
        assert props["custom.lineStyle"]["fill"] == "dash"
        assert props["color"] == {"mode": "fixed", "fixedColor": "red"}


# -- queries -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_every_query_is_valid_promql(stack: str, tmp_path: Path) -> None:
    """Every panel query and variable selector, expanded for one deployment and for "All", is a valid rule
    expression for the real promtool."""
    d = plan_for(stack).deployments[0]
    rules = []
    for where, expr in every_query(stack):
        for deployment, model in ((d.deployment.name, d.profile.resolved_served_name), (ALL, ALL)):
            expanded = expand(expr, deployment=deployment, model=model)
            assert not re.search(r"\$(?!\{\d+\})", expanded), (where, expanded)
            rules.append({"record": f"gpufleet_dashboard_query_{len(rules)}", "expr": expanded})
    assert len(rules) > 50
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False),
                    encoding="utf-8")
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: an unbalanced expression is refused."""
    path = tmp_path / "broken.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum(rate(up[1m])"}]}]}),
                    encoding="utf-8")
    assert run_promtool("check", "rules", str(path)).returncode != 0


@pytest.mark.parametrize("stack", STACKS)
def test_only_pinned_vllm_metric_names(stack: str) -> None:
    with METRICS_TSV.open(encoding="utf-8") as f:
        exposed = {sample for row in csv.DictReader(f, delimiter="\t")
                   for sample in row["exposed_samples"].split(",")}
    used = {name for _, expr in every_query(stack) for name in re.findall(r"(?<![\w:])vllm:[a-z0-9_]+", expr)}
    assert len(used) >= 10, used
    assert used <= exposed, f"not exposed by the pinned vLLM: {sorted(used - exposed)}"
    for path, artifact in artifacts(stack).items():  # not even in a description
        assert not REMOVED_VLLM.search(artifact.content), path


@pytest.mark.parametrize("stack", STACKS)
def test_counters_only_inside_rate(stack: str) -> None:
    bad = [(where, expr) for where, expr in every_query(stack) if counters_outside_rate(expr)]
    assert not bad, bad


def test_counter_check_catches_raw_counters() -> None:
    assert counters_outside_rate('sum(vllm:request_success_total{job="engine"})') == ["vllm:request_success_total"]
    assert counters_outside_rate("histogram_quantile(0.9, sum by (le) (x_bucket))") == ["x_bucket"]
    assert counters_outside_rate("nginx_connections_accepted - nginx_connections_handled") == [
        "nginx_connections_accepted", "nginx_connections_handled"]
    assert counters_outside_rate('sum by (le) (rate(x_bucket{a="b_total"}[5m])) / sum(increase(y_count[1h]))') == []
    assert counters_outside_rate("sum by (x_total) (up)") == []  # a label list, not a series


@pytest.mark.parametrize("stack", STACKS)
def test_histograms_are_quantiles_over_bucket_rates(stack: str) -> None:
    for where, expr in every_query(stack):
        for call in re.finditer(r"histogram_quantile\(([0-9.]+), (sum by \(([^)]*)\) \(rate\(([\w:]+)\{)", expr):
            assert "le" in [label.strip() for label in call.group(3).split(",")], (where, expr)
            assert call.group(4).endswith("_bucket"), (where, expr)
        assert expr.count("histogram_quantile(") == len(re.findall(r"histogram_quantile\([0-9.]+, sum by", expr))


@pytest.mark.parametrize("stack", STACKS)
def test_raw_series_follow_the_variables(stack: str) -> None:
    """Raw vLLM series filter by deployment and model; recorded and per-job series at least by deployment
    (stub_status has no deployment label: LB-wide by design). The variables' own queries are exempt."""
    panel_queries = [(f"{name}: {title}", expr) for name, d in dashboards(stack).items()
                     for title, expr in dashboard_queries(d)]
    for where, expr in panel_queries:
        for name, matchers in re.findall(r"(?<![\w:])([A-Za-z_][\w:]*)\{([^}]*)\}", expr):
            if name.startswith("vllm:"):
                assert 'job="engine"' in matchers and 'inference_engine="vllm"' in matchers, (where, expr)
                assert 'model=~"$model"' in matchers, (where, expr)
            if not name.startswith("nginx_"):
                assert 'deployment=~"$deployment"' in matchers, (where, name)
        bare = re.findall(r"(?<![\w:\"])((?:vllm:|deployment:|gpufleet:|DCGM_FI_)[\w:]*)(?![\w:{])", expr)
        assert not bare, f"{where}: unfiltered series {bare}"


@pytest.mark.parametrize("stack", STACKS)
def test_recorded_series_exist(stack: str) -> None:
    # Some series exist only where an engine lacks a signal (gpufleet:slo_unmonitored): the mixed-engine fleet
    # records them; the stack's own rules record everything else.
    recorded = {rule["record"] for plan in (plan_for(stack), mixed_plan())
                for group in rules_document(plan)["groups"] for rule in group["rules"] if "record" in rule}
    used = {name for _, expr in every_query(stack)
            for name in re.findall(r"(?<![\w:])[A-Za-z_]\w*:[\w:]+", expr) if not name.startswith("vllm:")}
    assert {"gpufleet:slo_ttft_p95_seconds", "deployment:engine_usd_per_m_output_tokens:rate5m",
            "deployment:nginx_http_errors:ratio_rate5m"} <= used
    assert used <= recorded, f"not recorded by the rules: {sorted(used - recorded)}"


def engine_metric_prefixes() -> tuple[str, ...]:
    catalog = load_catalog()
    names = [m.name for e in catalog.engines.values() for m in e.metrics.signals.values()]
    return tuple(sorted({re.match(r"[a-z]+[:_]", name).group(0) for name in names}))  # type: ignore[union-attr]


@pytest.mark.parametrize("stack", STACKS)
def test_fleet_overview_reads_no_raw_engine_metric(stack: str) -> None:
    """The fleet overview and every variable read recorded and plan series only, so every engine's deployments
    show; the engine each one runs is on the board."""
    prefixes = engine_metric_prefixes()
    assert "sglang:" in prefixes and "tgi_" in prefixes
    board = dashboards(stack)["gpufleet-fleet"]
    for where, expr in dashboard_queries(board) + variable_queries(board):
        raw = [n for n in re.findall(r"(?<![\w:])[A-Za-z_][\w:]*", expr) if n.startswith(prefixes)]
        assert not raw, (where, raw)
    for name, other in dashboards(stack).items():
        for where, expr in variable_queries(other):
            assert expr.startswith("gpufleet:"), (name, where, expr)
    [info] = [expr for title, expr in dashboard_queries(board) if title == "Engine per deployment"]
    assert info.startswith("gpufleet:plan_info{")
    assert any(expr.startswith("gpufleet:slo_unmonitored{") for _, expr in dashboard_queries(board))


# -- expand / dashboard_queries ------------------------------------------------------------------------------

def test_expand() -> None:
    expr = ('sum by (c) (label_replace(rate(x_total{deployment=~"$deployment",model_name=~"${model}"}'
            '[$__rate_interval]), "c", "${1}xx", "s", "(.).."))[$__range:$__interval]')
    assert expand(expr, deployment="chat", model="meta-llama/Llama-3.1-8B", rate_interval="2m") == (
        'sum by (c) (label_replace(rate(x_total{deployment=~"chat",model_name=~"meta-llama/Llama-3\\\\.1-8B"}'
        '[2m]), "c", "${1}xx", "s", "(.).."))[1h:2m]')
    assert expand('x{deployment=~"$deployment"}', deployment=ALL, model=ALL) == 'x{deployment=~".*"}'
    with pytest.raises(ValueError, match="deploymnet"):
        expand('x{deployment=~"$deploymnet"}', deployment="chat", model="m")


def test_dashboard_queries_reads_collapsed_rows() -> None:
    board = {"panels": [
        {"type": "row", "title": "r", "panels": [{"type": "timeseries", "title": "inner", "targets": [{"expr": "a"}]}]},
        {"type": "stat", "title": "outer", "targets": [{"expr": "b"}, {"expr": "c"}]},
    ]}
    assert dashboard_queries(board) == [("inner", "a"), ("outer", "b"), ("outer", "c")]


# -- EKS ConfigMaps, determinism -----------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_configmaps_only_on_eks(stack: str) -> None:
    rendered = artifacts(stack)
    if plan_for(stack).spec.target != "eks":
        assert CONFIGMAPS_PATH not in rendered
        assert all(a.kind == "grafana-dashboard" for a in rendered.values())
        return
    artifact = rendered[CONFIGMAPS_PATH]
    assert artifact.kind == "k8s-manifest" and artifact.deployment is None
    docs = list(yaml.safe_load_all(artifact.content))
    assert [doc["metadata"]["name"] for doc in docs] == list(NAMES)
    for name, doc in zip(NAMES, docs, strict=True):
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
        assert doc["kind"] == "ConfigMap"
        assert doc["metadata"]["namespace"] == K8S_MONITORING_NAMESPACE
        assert doc["metadata"]["labels"][GRAFANA_DASHBOARD_LABEL] == "1"
        assert doc["data"] == {f"{name}.json": rendered[f"{DASHBOARD_DIR}/{name}.json"].content}


def test_eks_example_stack_exists() -> None:
    assert any(plan_for(stack).spec.target == "eks" for stack in STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_render_is_deterministic(stack: str) -> None:
    assert render_dashboards(plan_for(stack)) == render_dashboards(plan_for(stack))


# -- a few queries evaluated on synthetic series (promtool test rules) ---------------------------------------

def query(stack: str, dashboard: str, title: str, index: int = 0) -> str:
    exprs = [expr for t, expr in dashboard_queries(dashboards(stack)[dashboard]) if t == title]
    return expand(exprs[index], deployment=ALL, model=ALL, rate_interval="5m")


def test_queries_evaluate_as_intended(tmp_path: Path) -> None:
    """Worst client-visible error rate (an idle deployment's NaN and the unrouted deployment="" are left out),
    status classes with label_replace (including responses Nginx answered itself), prefix-cache hit rate from
    raw counters."""
    plan = mixed_plan()
    assert len(plan.deployments) >= 2
    busy, idle = plan.deployments[0], plan.deployments[1]
    [sglang] = [d for d in plan.deployments if d.profile.engine == "sglang"]

    def vllm(d: DeploymentPlan) -> str:
        return (f'job="engine",inference_engine="vllm",deployment="{d.deployment.name}",'
                f'instance="{d.deployment.name}-0:8000",model="{d.profile.resolved_served_name}",'
                f'model_name="{d.profile.resolved_served_name}",engine="0"')

    log = 'job="nginx-log",instance="lb-1:3903"'
    series = [
        {"series": f'vllm:request_success_total{{{vllm(busy)},finished_reason="stop"}}', "values": "0+5940x60"},
        {"series": f'vllm:request_success_total{{{vllm(busy)},finished_reason="error"}}', "values": "0+60x60"},
        {"series": f'vllm:request_success_total{{{vllm(idle)},finished_reason="stop"}}', "values": "0x60"},
        {"series": f"vllm:prefix_cache_queries_total{{{vllm(busy)}}}", "values": "0+400x60"},
        {"series": f"vllm:prefix_cache_hits_total{{{vllm(busy)}}}", "values": "0+100x60"},
        {"series": f'up{{job="engine",deployment="{busy.deployment.name}",instance="x"}}', "values": "1x60"},
        {"series": f'gpufleet_nginx_http_responses_total{{{log},deployment="{busy.deployment.name}",status="200"}}',
         "values": "0+600x60"},
        {"series": f'gpufleet_nginx_http_responses_total{{{log},deployment="{busy.deployment.name}",status="204"}}',
         "values": "0+60x60"},
        {"series": f'gpufleet_nginx_http_responses_total{{{log},deployment="",status="502"}}', "values": "0+120x60"},
        # an SGLang deployment's requests, under SGLang's own name, reach the fleet overview's per-model panel
        {"series": f'sglang:num_requests_total{{job="engine",inference_engine="sglang",'
                   f'deployment="{sglang.deployment.name}",instance="s-0:30000",model_name="m"}}',
         "values": "0+1200x60"},
    ]
    tests = [{"expr": query("prod", "gpufleet-fleet", "Error rate (worst)"), "eval_time": "30m",
              "exp_samples": [{"labels": "{}", "value": 0.01}]},
             {"expr": query("prod", "gpufleet-loadbalancer", "Responses/s by status class"), "eval_time": "30m",
              "exp_samples": [{"labels": '{class="2xx"}', "value": 11}, {"labels": '{class="5xx"}', "value": 2}]},
             {"expr": query("prod", "gpufleet-deployment", "Prefix-cache hit rate"), "eval_time": "30m",
              "exp_samples": [{"labels": f'{{deployment="{busy.deployment.name}"}}', "value": 0.25}]},
             {"expr": query("prod", "gpufleet-fleet", "Requests/s by model"), "eval_time": "30m",
              "exp_samples": [
                  {"labels": f'{{deployment="{d.deployment.name}",'
                             f'inference_engine="{d.profile.engine}",model="{d.profile.resolved_served_name}"}}',
                   "value": value} for d, value in ((busy, 100), (idle, 0), (sglang, 20))]},
             {"expr": query("prod", "gpufleet-fleet", "SLOs without an engine signal"), "eval_time": "30m",
              "exp_samples": [
                  {"labels": f'gpufleet:slo_unmonitored{{deployment="{d.deployment.name}",'
                             f'inference_engine="{d.profile.engine}",slo="{slo}"}}', "value": 1}
                  for d in plan.deployments for slo, signal in UNMONITORED_SLOS.items()
                  if signal not in load_catalog().engines[d.profile.engine].metrics.signals]}]
    rules = tmp_path / "gpufleet.rules.yaml"
    rules.write_text(yaml.safe_dump(rules_document(plan), sort_keys=False), encoding="utf-8")
    spec = tmp_path / "dashboards.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": tests}]}, sort_keys=False), encoding="utf-8")
    result = run_promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

"""`gpufleet report`: its figures are `plan --json`'s, what it derives agrees with the planner, and the HTML
page renders its headings and plots in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.catalog import load_catalog
from infra.plan.optimize import FleetPlan, plan_deployment, plan_stack
from infra.plan.pricing import HOURS_PER_MONTH
from infra.report.cost import QPS_MULTIPLES, memory_parts, monthly_at
from infra.report.svg import nice_ticks
from infra.report.whatif import naive_sizing
from infra.spec.load import LoadedStack, Project, load_stack
from tests.engine_profiles import on_engine
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("prod", "dev")


def gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)


@cache
def plan_for(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for stack in STACKS:
        directory = tmp_path_factory.mktemp(f"report-{stack}")
        done = gpufleet("report", "-s", stack, "-o", str(directory))
        assert done.returncode == 0, done.stderr
        out[stack] = directory
    return out


def report_json(reports: dict[str, Path], stack: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((reports[stack] / "report.json").read_text())
    return document


@pytest.mark.parametrize("stack", STACKS)
def test_figures_are_plan_json(reports: dict[str, Path], stack: str) -> None:
    done = gpufleet("plan", "-s", stack, "--json")
    assert done.returncode == 0, done.stderr
    assert report_json(reports, stack)["plan"] == json.loads(done.stdout)
    markdown = (reports[stack] / "report.md").read_text()
    for d in json.loads(done.stdout)["deployments"]:
        assert f"## Deployment {d['name']} " in markdown
        assert f"| $ per month | ${d['chosen']['monthly_usd']:,.2f} |" in markdown
        assert f"| $ per 1M output tokens | ${d['chosen']['usd_per_1m_output_tokens']:.4f} |" in markdown
        for alternative in d["alternatives"]:
            assert f"${alternative['monthly_usd']:,.2f}" in markdown


def test_cost_curve_at_the_target_is_the_plans_cost() -> None:
    """At the plan's own QPS the curve gives each option's planned $/month (the same replica arithmetic)."""
    for plan in plan_for("prod").deployments:
        assert plan.chosen is not None
        for option in (plan.chosen, *plan.alternatives):
            assert monthly_at(plan, option, plan.deployment.traffic.qps) == pytest.approx(option.monthly_usd)
        costs = [monthly_at(plan, plan.chosen, plan.deployment.traffic.qps * m) for m in QPS_MULTIPLES]
        known = [c for c in costs if c is not None]
        assert known == sorted(known), "more traffic never costs less"


def test_points_beyond_replicas_max_are_left_out(reports: dict[str, Path]) -> None:
    plan = next(d for d in plan_for("prod").deployments if d.deployment.name == "chat-70b")
    assert plan.chosen is not None
    huge = plan.deployment.traffic.qps * 1000
    assert monthly_at(plan, plan.chosen, huge) is None


def test_latency_curve_has_the_slo_lines_and_grows_with_load(reports: dict[str, Path]) -> None:
    document = report_json(reports, "prod")
    for name, extra in document["deployments"].items():
        ttft = extra["latency_curve"]["TTFT p95"]
        assert len(ttft) >= 5 and ttft[-1][1] > ttft[0][1], name
    svg = (reports["prod"] / "plots" / "support-latency.svg").read_text()
    slo = plan_for("prod").deployments[1].deployment.slo
    assert f"TTFT SLO {slo.ttft_p95_ms:g} ms" in svg and f"TPOT SLO {slo.tpot_p95_ms:g} ms" in svg


def test_memory_breakdown_adds_up_to_the_gpu() -> None:
    for plan in plan_for("prod").deployments:
        assert plan.chosen is not None
        parts, total = memory_parts(plan.chosen)
        assert sum(p.gib for p in parts) == pytest.approx(total)
        assert total == plan.chosen.config.gpu.memory_gib
        assert all(p.gib >= 0 for p in parts)


def test_what_ifs_price_the_chosen_machines(reports: dict[str, Path]) -> None:
    """prod (n+1, no spot): spot is priced from the catalog when it has a spot range, and flagged as not
    planned; the on-prem what-if is the planner's own answer on onprem-a800's servers."""
    fleet = plan_for("prod")
    document = report_json(reports, "prod")
    catalog = load_catalog()
    reference = load_stack(Project(ROOT), "onprem-a800")
    for plan in fleet.deployments:
        assert plan.chosen is not None
        what_ifs = {w["name"].split(" (")[0]: w for w in document["deployments"][plan.deployment.name]["what_ifs"]}
        record = plan.chosen.machine.instance.prices["us-east-1"]
        if record.spot_min is not None and record.spot_max is not None:
            spot = plan.chosen.machines * (record.spot_min + record.spot_max) / 2 * HOURS_PER_MONTH
            assert what_ifs["spot"]["monthly_usd"] == pytest.approx(spot)
            assert "n+1 deployments stay off spot" in what_ifs["spot"]["note"]
        gpus = sorted({catalog.instances[s.server_type].gpu for s in reference.spec.onprem.gpu_servers})  # type: ignore[union-attr]
        site = LoadedStack(reference.name, reference.spec, reference.provider_config,
                           {**reference.profiles, plan.deployment.model: plan.profile},
                           calibration=reference.calibration)
        onprem = plan_deployment(site, plan.deployment.model_copy(update={"gpus": gpus}))
        assert onprem.chosen is not None
        assert what_ifs["on-prem"]["monthly_usd"] == pytest.approx(onprem.chosen.monthly_usd)


def test_an_onprem_stack_is_priced_on_the_cloud(tmp_path: Path) -> None:
    """onprem-a800's other side: each deployment planned on the GPUs AWS rents, under prod's region and pricing
    (n+1 deployments stay off spot there too), as the planner itself plans it."""
    done = gpufleet("report", "-s", "onprem-a800", "--cloud-reference", "prod", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "report.json").read_text())
    catalog = load_catalog()
    reference = load_stack(Project(ROOT), "prod")
    gpus = sorted({i.gpu for i in catalog.instances.values() if i.provider == "aws"})
    assert "A800-80G" not in gpus and {"A100-80G", "H100-SXM", "L4"} <= set(gpus)
    for plan in plan_for("onprem-a800").deployments:
        site = LoadedStack(reference.name, reference.spec, reference.provider_config,
                           {**reference.profiles, plan.deployment.model: plan.profile},
                           calibration=reference.calibration)
        cloud = plan_deployment(site, plan.deployment.model_copy(update={"gpus": gpus})).chosen
        assert cloud is not None
        (what_if,) = document["deployments"][plan.deployment.name]["what_ifs"]  # owned servers: no spot, no block
        assert what_if["name"] == f"cloud ({cloud.label})"
        assert what_if["monthly_usd"] == pytest.approx(cloud.monthly_usd)
        assert "stacks/Pulumi.prod.yaml" in what_if["note"]
    assert "| cloud (" in (tmp_path / "report.md").read_text()


def test_a_reference_of_the_wrong_kind_is_a_user_error(tmp_path: Path) -> None:
    for args, message in ((("-s", "onprem-a800", "--cloud-reference", "onprem-a800"), "not an aws-ec2 or eks stack"),
                          (("-s", "dev", "--onprem-reference", "prod"), "not an onprem stack with pricing.onprem")):
        done = gpufleet("report", *args, "-o", str(tmp_path / "out"))
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out").exists()


def test_naive_sizing_reads_the_weights_once_per_token() -> None:
    for plan in plan_for("prod").deployments:
        assert plan.chosen is not None
        naive = naive_sizing(plan)
        gpu, memory = plan.chosen.config.gpu, plan.chosen.replica.memory
        assert naive.tokens_per_s == pytest.approx(gpu.memory_bandwidth_gbps * 1e9 / memory.weights)
        assert naive.qps_per_replica == pytest.approx(
            naive.tokens_per_s / plan.deployment.traffic.output_tokens.mean_tokens)
        # Without batching a replica serves far fewer requests: the rule of thumb over-buys.
        assert naive.replicas > plan.chosen.replicas and naive.monthly_usd > plan.chosen.monthly_usd


def test_report_is_deterministic(reports: dict[str, Path], tmp_path: Path) -> None:
    done = gpufleet("report", "-s", "dev", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in ("report.md", "report.html", "report.json"):
        assert (tmp_path / name).read_bytes() == (reports["dev"] / name).read_bytes(), name


def test_nice_ticks_cover_the_data() -> None:
    for low, high in ((0, 317_000), (0, 1.7), (12, 13), (0, 0)):
        ticks = nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2


# -- user errors ----------------------------------------------------------------------------------------------

def test_unknown_stack_is_a_user_error(tmp_path: Path) -> None:
    done = gpufleet("report", "-s", "nope", "-o", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_infeasible_stack_writes_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stacks", project / "stacks")
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    stack_file = project / "stacks" / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("ttftP95Ms: ", "ttftP95Ms: 1 #", 1))
    done = gpufleet("report", "-s", "dev", "-o", str(tmp_path / "out"), "-C", str(project))
    assert done.returncode == 2 and "no feasible plan" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# -- engines the capacity model is not calibrated for ----------------------------------------------------------

def test_a_vllm_report_carries_no_estimate_mark(reports: dict[str, Path]) -> None:
    for stack in STACKS:
        assert "≈" not in (reports[stack] / "report.md").read_text()


def test_an_uncalibrated_engine_marks_the_report_as_an_estimate(tmp_path: Path) -> None:
    """dev's model on llama.cpp: every figure of the deployment carries the mark, the engine row says why."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stacks", project / "stacks")
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    profile = project / "stacks" / "models" / "qwen2.5-7b-instruct.yaml"
    profile.write_text(yaml.safe_dump(on_engine(yaml.safe_load(profile.read_text()), "llamacpp"), sort_keys=False))
    done = gpufleet("report", "-s", "dev", "-o", str(tmp_path / "out"), "-C", str(project))
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "out" / "report.json").read_text())
    (deployment,) = document["plan"]["deployments"]
    assert deployment["engine"]["name"] == "llamacpp" and deployment["engine"]["calibrated"] is False
    throughput = load_catalog().engines["llamacpp"].throughput
    markdown = (tmp_path / "out" / "report.md").read_text()
    chosen = deployment["chosen"]
    assert f"| $ per month | ≈${chosen['monthly_usd']:,.2f} |" in markdown
    assert f"| SLO capacity per replica | ≈{chosen['capacity_qps_per_replica']:g} req/s |" in markdown
    assert f"| total |  | ≈${document['plan']['monthly_usd']:,.2f} |  |" in markdown
    (engine_row,) = [line for line in markdown.splitlines() if line.startswith("| engine |")]
    assert f"{throughput.factor:g}×" in engine_row and throughput.source.url in engine_row
    assert throughput.source.url in (tmp_path / "out" / "report.html").read_text()


# -- the HTML page in a real browser ---------------------------------------------------------------------------

class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}
        self._heading: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag in ("h1", "h2", "h3"):
            self._heading = tag
            self.headings.append((tag, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._heading:
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    return subprocess.run([require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def png_pixels(path: Path) -> bytes:
    """The raw scanlines of a PNG (zlib of the IDAT chunks), without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    return zlib.decompress(idat)


def test_html_renders_headings_and_plots_in_chromium(reports: dict[str, Path], tmp_path: Path) -> None:
    page = reports["prod"] / "report.html"
    done = chromium("--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr
    outline = _Outline()
    outline.feed(done.stdout)
    names = [d.deployment.name for d in plan_for("prod").deployments]
    assert outline.headings[0] == ("h1", "Cost report: stack prod (eks)")
    assert [text.split(" (")[0] for tag, text in outline.headings if tag == "h2"] == [
        f"Deployment {n}" for n in names]
    assert outline.counts["svg"] == 3 * len(names)
    assert outline.counts["polyline"] >= 2 * len(names)  # every line chart drew its series
    assert "script" not in outline.counts and "img" not in outline.counts  # self-contained
    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1000,3000", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr
    assert len(set(png_pixels(shot))) > 16, "the page rendered blank"

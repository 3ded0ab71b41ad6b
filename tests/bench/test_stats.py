"""Percentiles, TPOT and the summary on known data; length parsing and the planner's length draws."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from infra.bench.client import Outcome, chunk_text, request_body
from infra.bench.stats import percentile, percentiles, summarise
from infra.bench.workload import LengthSource, parse_lengths, synthetic_prompt
from infra.plan.capacity import Traffic
from infra.spec.tokens import FixedLengths, LogNormalLengths


def test_percentiles_of_known_data() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    assert percentiles([None, float("nan")]) == {"p50": None, "p95": None, "p99": None}


def test_percentiles_agree_with_numpy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 1) for _ in range(1001)]
    ours = percentiles(values)
    for q in (50, 95, 99):
        assert ours[f"p{q}"] == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_tpot_and_summary() -> None:
    a = Outcome(0.0, 10, 5, prompt_tokens=10, output_tokens=5, ttft_s=0.1, e2e_s=0.5, status=200)
    b = Outcome(0.5, 10, 1, prompt_tokens=10, output_tokens=1, ttft_s=0.2, e2e_s=0.2, status=200)
    c = Outcome(1.0, 10, 5, status=500, error="http_5xx")
    assert a.tpot_s == pytest.approx(0.1)
    assert b.tpot_s is None  # one output token: no time per output token
    summary = summarise([a, b, c], duration_s=2.0)
    assert (summary.completed, summary.errors) == (2, 1)
    assert summary.throughput_rps == pytest.approx(1.0)
    assert summary.output_tokens_per_s == pytest.approx(3.0)
    assert summary.latency["tpot_s"] == {q: pytest.approx(0.1) for q in ("p50", "p95", "p99")}
    assert summary.latency["ttft_s"]["p50"] == pytest.approx(0.15)
    assert summary.error_counts == {"http_5xx": 1}


def test_parse_lengths() -> None:
    assert parse_lengths("512", "--input-tokens") == FixedLengths(distribution="fixed", value=512)
    assert parse_lengths("1500,4000", "--input-tokens") == LogNormalLengths(mean=1500, p95=4000)
    for bad in ("abc", "0", "10,5", "1,2,3", ""):
        with pytest.raises(ValueError, match="--input-tokens"):
            parse_lengths(bad, "--input-tokens")


def test_lengths_are_the_planners_draw() -> None:
    inputs, outputs = LogNormalLengths(mean=1500, p95=4000), LogNormalLengths(mean=250, p95=700)
    source = LengthSource(inputs, outputs, max_model_len=8192)
    planner = Traffic.draw(inputs, outputs, 8192)
    assert [source(i) for i in range(600)] == list(zip(planner.input_lens, planner.output_lens, strict=True))
    beyond = [source(i) for i in range(600, 1300)]  # further blocks: new draws, not the first repeated
    assert beyond[:600] != [source(i) for i in range(600)]
    assert all(i >= 1 and o >= 1 and i + o <= 8192 for i, o in beyond)


def test_synthetic_prompts_are_sized_and_distinct() -> None:
    rng = random.Random(0)
    one, two = synthetic_prompt(300, rng, 0), synthetic_prompt(300, rng, 1)
    assert len(one.split()) == 300 and one != two
    assert not one.startswith(two[:8])


def test_request_body() -> None:
    chat = request_body("chat", "m", "hi", 7, stream=True)
    assert chat["messages"] == [{"role": "user", "content": "hi"}]
    assert (chat["max_tokens"], chat["ignore_eos"], chat["stream_options"]) == (7, True, {"include_usage": True})
    plain = request_body("completions", "m", "hi", 7, stream=False)
    assert plain["prompt"] == "hi" and "stream_options" not in plain


def test_chunk_text() -> None:
    assert chunk_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) == ""
    assert chunk_text({"choices": [{"delta": {"content": "a"}}]}) == "a"
    assert chunk_text({"choices": [{"delta": {"reasoning_content": "r"}}]}) == "r"
    assert chunk_text({"choices": [{"text": "t"}]}) == "t"
    assert chunk_text({"choices": [], "usage": {}}) == ""

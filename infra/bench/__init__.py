"""``gpufleet bench``: load an OpenAI-compatible endpoint, measure TTFT/TPOT/E2E, compare with the plan.

Modules: :mod:`workload` (request lengths, synthetic prompts, arrival times), :mod:`client` (one request,
SSE parsing, error classes), :mod:`runner` (open and closed loops), :mod:`stats` (percentiles, summary),
:mod:`compare` (the planner's prediction for the measured workload), :mod:`report` (JSON document and
rich tables), :mod:`schema` (the JSON Schema of the document), :mod:`cli` (the typer command).
"""

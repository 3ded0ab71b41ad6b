"""The JSON Schema of ``gpufleet bench -o FILE`` (format ``gpufleet-bench/1``), read by ``gpufleet calibrate``.

Kept as Python rather than a .json file so it ships with the package without a package-data entry. Every
object is closed (``additionalProperties: false``): a new field is a new format version.
"""

from __future__ import annotations

from typing import Any

from infra.bench.client import ERROR_CLASSES

FORMAT = "gpufleet-bench/1"

_NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
_PERCENTILES: dict[str, Any] = {
    "type": "object",
    "required": ["p50", "p95", "p99"],
    "additionalProperties": False,
    "properties": {"p50": _NUM_OR_NULL, "p95": _NUM_OR_NULL, "p99": _NUM_OR_NULL},
}
_ERROR_CLASSES = list(ERROR_CLASSES)

BENCH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://gpufleet.dev/schemas/bench-1.json",
    "title": "gpufleet bench result",
    "type": "object",
    "additionalProperties": False,
    "required": ["format", "endpoint", "model", "api", "stream", "mode", "rate_rps", "concurrency", "started_at",
                 "duration_s", "target", "requests", "summary", "prediction"],
    "properties": {
        "format": {"const": FORMAT},
        "endpoint": {"type": "string", "minLength": 1},
        "model": {"type": "string", "minLength": 1},
        "api": {"enum": ["chat", "completions"]},
        "stream": {"type": "boolean"},
        "mode": {"enum": ["poisson", "concurrency"]},
        "rate_rps": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "concurrency": {"type": ["integer", "null"], "minimum": 1},
        "started_at": {"type": "string", "format": "date-time",
                       "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$"},
        "duration_s": {"type": "number", "minimum": 0},
        "target": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["stack", "deployment", "gpu", "tp", "replicas", "instance_type"],
                    "properties": {
                        "stack": {"type": "string"},
                        "deployment": {"type": "string"},
                        "gpu": {"type": "string"},
                        "tp": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 1},
                        "instance_type": {"type": "string"},
                    },
                },
            ]
        },
        "requests": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["sent_s", "prompt_tokens", "output_tokens", "ttft_s", "e2e_s", "status", "error"],
                "properties": {
                    "sent_s": {"type": "number", "minimum": 0},
                    "prompt_tokens": {"type": ["integer", "null"], "minimum": 0},
                    "output_tokens": {"type": ["integer", "null"], "minimum": 0},
                    "ttft_s": {"type": ["number", "null"], "minimum": 0},
                    "e2e_s": {"type": ["number", "null"], "minimum": 0},
                    "status": {"type": ["integer", "null"]},
                    "error": {"oneOf": [{"type": "null"}, {"enum": _ERROR_CLASSES}]},
                },
            },
        },
        "summary": {
            "type": "object",
            "additionalProperties": False,
            "required": ["completed", "errors", "throughput_rps", "output_tokens_per_s", "ttft_s", "tpot_s", "e2e_s"],
            "properties": {
                "completed": {"type": "integer", "minimum": 0},
                "errors": {"type": "integer", "minimum": 0},
                "throughput_rps": {"type": "number", "minimum": 0},
                "output_tokens_per_s": {"type": "number", "minimum": 0},
                "ttft_s": _PERCENTILES,
                "tpot_s": _PERCENTILES,
                "e2e_s": _PERCENTILES,
            },
        },
        "prediction": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["per_replica_rate_rps", "ttft_s", "tpot_s", "e2e_s"],
                    "properties": {
                        "per_replica_rate_rps": {"type": "number", "minimum": 0},
                        "ttft_s": _PERCENTILES,
                        "tpot_s": _PERCENTILES,
                        "e2e_s": _PERCENTILES,
                    },
                },
            ]
        },
    },
}

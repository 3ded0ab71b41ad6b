"""Injected faults of the emulator (a test hook): what a replica does when it breaks.

Set at start (``gpufleet emulate --fault MODE --fault-rate R``) or at run time through the emulator's admin
endpoint ``POST /_emulator/faults`` with ``{"mode": ..., "rate": ..., "slowdown": ..., "drop_after": ...,
"linger_s": ...}`` (``GET`` shows the current plan). Modes:

- ``none``: healthy.
- ``crash``: the next completion request (each one with probability ``rate``) kills the engine: requests in
  flight end with ``error``, ``/health`` answers 503 for ``linger_s`` seconds, then the listener closes and the
  emulator's ``on_crash`` hook runs: ``gpufleet emulate`` exits with status 1 (``os._exit``), an in-process
  emulator just stops accepting connections.
- ``hang``: the engine stops stepping and every completion request, ``/health`` and ``/ping`` wait without
  answering until the fault is cleared (``/metrics``, ``/v1/models`` and the admin endpoint still answer).
  ``rate`` does not apply: the whole replica hangs, as a wedged GPU would.
- ``slow``: every step takes ``slowdown`` times the predicted time (``rate`` does not apply).
- ``error``: a fraction ``rate`` of completion requests fail at once with HTTP 500 in vLLM's error format,
  counted as ``vllm:request_success_total{finished_reason="error"}``.
- ``drop``: a fraction ``rate`` of completion requests lose their connection after ``drop_after`` tokens
  (mid-stream when streaming; no response at all otherwise); the engine counts them as ``abort``.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

FaultMode = Literal["none", "crash", "hang", "slow", "error", "drop"]
FAULT_MODES: tuple[str, ...] = get_args(FaultMode)


@dataclass(frozen=True)
class FaultPlan:
    mode: FaultMode = "none"
    rate: float = 1.0  # fraction of requests affected (crash, error, drop)
    slowdown: float = 2.0  # step-time multiplier (slow)
    drop_after: int = 1  # tokens a dropped request gets before its connection closes (drop)
    linger_s: float = 0.0  # crash: seconds /health answers 503 before the listener closes

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}, not {self.mode!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be a fraction in [0, 1], not {self.rate}")
        if not (self.slowdown > 0 and math.isfinite(self.slowdown)):
            raise ValueError(f"slowdown must be a positive number, not {self.slowdown}")
        if self.drop_after < 0:
            raise ValueError("drop_after must be >= 0")
        if not (self.linger_s >= 0 and math.isfinite(self.linger_s)):
            raise ValueError("linger_s must be >= 0")

    @classmethod
    def from_json(cls, document: Any) -> FaultPlan:
        """The admin endpoint's body; ValueError (with a message for the client) when it is not valid."""
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        unknown = set(document) - {"mode", "rate", "slowdown", "drop_after", "linger_s"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        fields: dict[str, Any] = {}
        for name, kind in (("rate", float), ("slowdown", float), ("drop_after", int), ("linger_s", float)):
            if name in document:
                value = document[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number")
                if kind is int and value != int(value):
                    raise ValueError(f"{name} must be an integer")
                fields[name] = kind(value)
        mode = document.get("mode", "none")
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        return cls(mode=cast(FaultMode, mode), **fields)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def hits(self, rng: random.Random) -> bool:
        """Whether this request is affected (``rate`` of them)."""
        return self.rate >= 1.0 or rng.random() < self.rate

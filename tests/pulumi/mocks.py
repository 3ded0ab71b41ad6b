"""Pulumi mocks that record every resource the program registers (type, name, inputs), in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pulumi
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

T = TypeVar("T")


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Registered] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        # A plain dict: Pulumi's mock monitor iterates a tuple's second item (failures), so (x, None) fails.
        return {}

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]


def ensure_event_loop() -> None:
    """Pulumi's mocks run on the thread's current event loop (asyncio.get_event_loop), and another test of the
    same worker that used asyncio.run() leaves none set: give the thread one. Not closed afterwards: Pulumi
    may still hold RPC coroutines on it."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(fn: Callable[[], T]) -> T:
    """Run ``fn`` as Pulumi runs a program: then wait until every resource registration has reached the
    mocks (what ``pulumi.runtime.test`` does for an Output). Exceptions of ``fn`` propagate."""
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    result: list[T] = []
    _sync_await(run_pulumi_func(lambda: result.append(fn())))
    return result[0]

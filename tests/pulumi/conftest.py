"""Every test here runs Pulumi programs under mocks, which need an event loop on the thread."""

from __future__ import annotations

import pytest

from tests.pulumi.mocks import ensure_event_loop


@pytest.fixture(autouse=True)
def event_loop_for_pulumi() -> None:
    ensure_event_loop()

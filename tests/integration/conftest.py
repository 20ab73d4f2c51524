"""Shared by every integration test: no daemon outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.harness import bearer as bearer_harness
from bench.harness import control as control_harness


@pytest.fixture(autouse=True)
def _no_bearer_left_running() -> Iterator[None]:
    """After each test (its own fixtures are torn down first), stop any control
    daemon, then any bearer, it started and did not stop: one whose assertion
    failed before its ``stop()`` would otherwise keep running, holding its
    ports."""
    yield
    control_harness.stop_leftovers()
    bearer_harness.stop_leftovers()

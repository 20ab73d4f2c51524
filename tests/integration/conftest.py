"""Shared by every integration test: no bearer outlives its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.bearer.harness import stop_leftovers


@pytest.fixture(autouse=True)
def _no_bearer_left_running() -> Iterator[None]:
    """After each test (its own fixtures are torn down first), stop any bearer
    it started and did not stop: one whose assertion failed before its
    ``stop()`` would otherwise keep running, holding its ports."""
    yield
    stop_leftovers()

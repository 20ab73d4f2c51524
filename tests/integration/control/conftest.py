"""Fixtures: a real softswitch-control with two real bearers per test."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.control import ControlProcess, start_switch


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[ControlProcess]:
    """Control + 2 bearers in ``tmp_path``; users alice/secret and bob/hunter2.

    Afterwards every daemon must have stopped with 0 and logged no traceback.
    """
    control, bearers = start_switch(tmp_path)
    yield control
    code = control.stop(signal.SIGTERM)
    for b in bearers:
        assert b.stop() == 0, b.log()
    assert code == 0, f"control exited {code}:\n{control.log()}"
    assert "Traceback" not in control.log(), control.log()

"""Fixtures: a real softswitch-bearer per test, stopped (and checked) afterwards."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.bearer import BearerProcess, Phone, start_bearer


@pytest.fixture
def bearer(tmp_path: Path) -> Iterator[BearerProcess]:
    """A bearer on a UNIX control socket in a temporary config dir (30 s media timeout)."""
    bp = start_bearer(tmp_path)
    yield bp
    code = bp.stop(signal.SIGTERM)
    assert code == 0, f"bearer exited {code}:\n{bp.log()}"
    assert "Traceback" not in bp.log(), bp.log()


@pytest.fixture
def phones() -> Iterator[list[Phone]]:
    """Four phones (UDP sockets on 127.0.0.1), closed afterwards."""
    ps = [Phone() for _ in range(4)]
    yield ps
    for p in ps:
        p.close()

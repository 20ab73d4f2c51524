"""softswitch-control says at start which optional packages it found (softswitch/daemon/main.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from softswitch.daemon import main as daemon


def test_features_text_names_each_package_and_what_it_brings() -> None:
    text = daemon.features_text({"uvloop": True, "aiortc": False})
    assert text == (
        "optional features: uvloop available (faster event loop); aiortc absent (no Opus)"
    )


def test_start_logs_one_line_on_optional_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue 5: absent features are reported in the log, never an ImportError."""
    (tmp_path / "softswitch.conf").write_text('[log]\nlevel = "info"\n')

    async def served(self: daemon.ControlDaemon) -> int:
        return 0

    monkeypatch.setattr(daemon, "_features", lambda: {"uvloop": False, "aiortc": False})
    monkeypatch.setattr(daemon.ControlDaemon, "run", served)
    assert daemon.main(["--config-dir", str(tmp_path)]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "optional features" in line]
    assert len(lines) == 1, err
    assert "uvloop absent (no faster event loop); aiortc absent (no Opus)" in lines[0]

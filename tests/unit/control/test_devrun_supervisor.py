"""`make run`'s supervisor (softswitch/cli/devrun.py): which deaths restart a
daemon, after how long, and what it says, without starting any process."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from softswitch.cli import devrun
from softswitch.cli.devrun import Backoff, Child, Supervisor, ended_cleanly, how_it_ended


class FakeProc:
    """A Popen that has not ended until a test sets ``returncode``."""

    pids = iter(range(100, 1000))

    def __init__(self, command: list[str], **kw: Any) -> None:
        self.args = command
        self.pid = next(self.pids)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    monkeypatch.setattr(devrun.subprocess, "Popen", FakeProc)
    sup = Supervisor([Child("bearer 0", ["b"]), Child("control", ["c"])], {})
    for child in sup.children:
        sup.start(child, 0.0)
    return sup


def _end(child: Child, returncode: int) -> int:
    assert child.proc is not None
    child.proc.returncode = returncode
    return child.proc.pid


def test_a_crash_doubles_the_wait_up_to_the_cap_then_gives_up() -> None:
    b = Backoff()
    delays = [b.after_death(uptime=1.0) for _ in range(devrun.START_LIMIT)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, None]
    b = Backoff()
    assert [b.after_death(1.0), b.after_death(1.0)] == [0.1, 0.2]
    assert b.after_death(uptime=devrun.STABLE) == 0.1  # it had stayed up: start over


def test_how_a_daemon_ended_and_whether_that_was_clean() -> None:
    assert how_it_ended(-signal.SIGKILL) == "was killed by SIGKILL"
    assert how_it_ended(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert how_it_ended(1) == "exited with status 1"
    assert ended_cleanly(0) and ended_cleanly(-signal.SIGTERM) and ended_cleanly(-signal.SIGINT)
    assert not ended_cleanly(1) and not ended_cleanly(-signal.SIGKILL)
    assert not ended_cleanly(-signal.SIGABRT)  # the watchdog's signal: a failure


def test_a_killed_bearer_is_restarted_after_the_back_off_with_a_line_each(
    supervisor: Supervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    bearer, control = supervisor.children
    capsys.readouterr()
    pid = _end(bearer, -signal.SIGKILL)
    assert supervisor.step(3.0) is None
    assert bearer.proc is None and bearer.restart_at == pytest.approx(3.1)
    assert control.proc is not None and control.proc.returncode is None  # left alone
    assert supervisor.step(3.05) is None and bearer.proc is None  # not yet
    assert supervisor.step(3.1) is None
    assert bearer.proc is not None and bearer.proc.pid != pid
    assert capsys.readouterr().err.splitlines() == [
        f"softswitch: bearer 0 (pid {pid}) was killed by SIGKILL after 3.0 s; "
        "restarting it in 0.1 s",
        f"softswitch: bearer 0 restarted (pid {bearer.proc.pid})",
    ]


def test_a_clean_exit_is_not_restarted_and_the_launcher_ends_when_none_is_left(
    supervisor: Supervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    bearer, control = supervisor.children
    _end(bearer, 0)
    assert supervisor.step(1.0) is None
    assert bearer.proc is None and bearer.restart_at is None
    assert "not restarting it (a clean stop" in capsys.readouterr().err
    _end(control, -signal.SIGTERM)
    assert supervisor.step(2.0) == 0


def test_a_configuration_error_stops_everything(
    supervisor: Supervisor, capsys: pytest.CaptureFixture[str]
) -> None:
    _end(supervisor.children[1], 2)
    assert supervisor.step(0.5) == 1
    assert "control" in (err := capsys.readouterr().err) and "stopping everything" in err


def test_a_daemon_that_keeps_dying_at_start_is_given_up(supervisor: Supervisor) -> None:
    control = supervisor.children[1]
    now = 0.0
    for _ in range(devrun.START_LIMIT - 1):
        _end(control, 1)
        assert supervisor.step(now + 0.5) is None
        assert control.restart_at is not None
        now = control.restart_at
        assert supervisor.step(now) is None  # restarted
    _end(control, 1)
    assert supervisor.step(now + 0.5) == 1

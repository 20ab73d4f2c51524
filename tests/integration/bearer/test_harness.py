"""The harness itself: a failing or killed test never leaves a bearer running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench.harness.bearer import ROOT


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _python(code: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, *args] if not code else [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
        env=env,
    )


def test_a_test_failing_before_stop_leaves_no_bearer_running(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    inner = tmp_path / "test_inner.py"
    inner.write_text(
        textwrap.dedent(
            f"""
            import os
            from pathlib import Path

            from bench.harness.bearer import start_bearer
            from tests.integration.conftest import _no_bearer_left_running  # noqa: F401

            PID = Path({str(pid_file)!r})

            def test_fails_before_stop(tmp_path):
                bp = start_bearer(tmp_path)
                PID.write_text(str(bp.proc.pid))
                assert False, "an assertion before bp.stop()"

            def test_the_bearer_is_gone():  # runs next, in the same process
                pid = int(PID.read_text())
                assert not os.path.exists(f"/proc/{{pid}}"), "the bearer still runs"
            """
        )
    )
    done = _python("", tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner))
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "an assertion before bp.stop()" in done.stdout
    assert _wait_dead(int(pid_file.read_text()))


def test_a_killed_test_process_takes_its_bearer_with_it(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from bench.harness.bearer import start_bearer

        bp = start_bearer(Path(sys.argv[1]))
        print(bp.proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # as a timeout kills a test run
        """
    )
    done = _python(code, tmp_path, str(tmp_path))
    pid = int(done.stdout.split()[0])
    assert _wait_dead(pid), f"bearer {pid} outlived its killed test process"


def test_a_switch_test_failing_before_stop_leaves_no_daemon_running(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    inner = tmp_path / "test_inner_switch.py"
    inner.write_text(
        textwrap.dedent(
            f"""
            import os
            from pathlib import Path

            from tests.integration.conftest import _no_bearer_left_running  # noqa: F401
            from bench.harness.control import start_switch

            PIDS = Path({str(pids)!r})

            def test_fails_before_stop(tmp_path):
                control, bearers = start_switch(tmp_path)
                PIDS.write_text(" ".join(str(p.proc.pid) for p in [control, *bearers]))
                assert False, "an assertion before control.stop()"

            def test_they_are_gone():  # runs next, in the same process
                for pid in PIDS.read_text().split():
                    assert not os.path.exists(f"/proc/{{pid}}"), f"{{pid}} still runs"
            """
        )
    )
    done = _python("", tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner))
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert len(pids.read_text().split()) == 3
    assert all(_wait_dead(int(pid)) for pid in pids.read_text().split())

"""Stopping a daemon the harness started, as systemd's stop does."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["terminate"]


def terminate(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int:
    """Send ``sig`` (if it still runs), wait ``timeout`` seconds for a clean exit,
    then SIGKILL; the exit status. Bounded: at most ``timeout`` + 5 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode

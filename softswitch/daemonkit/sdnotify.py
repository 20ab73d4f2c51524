"""sd_notify(3) for both daemons, with nothing but the standard library.

Why not libsystemd: the protocol is one datagram of ``KEY=value`` lines sent to
the UNIX datagram socket named by ``$NOTIFY_SOCKET`` (sd_notify(3), "Notes"),
so a dependency would buy nothing. A name starting with ``@`` is a socket in
the Linux abstract namespace (unix(7)): the ``@`` becomes a NUL byte.

Both daemons run under ``Type=notify`` units: READY=1 once they serve,
WATCHDOG=1 from their main loop (so a wedged loop gets the unit restarted),
STATUS= for ``systemctl status``, RELOADING=1/READY=1 around a reload and
STOPPING=1 at shutdown. Without ``$NOTIFY_SOCKET`` (a developer's terminal,
the tests) every call is a cheap no-op, and a failing send is never fatal:
notification is advisory, serving calls is not.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None if no watchdog is armed.

    systemd sets ``$WATCHDOG_USEC`` to the unit's WatchdogSec and, when it
    is meant for this process, ``$WATCHDOG_PID`` to our pid
    (sd_watchdog_enabled(3)). The recommended ping period is half the
    timeout, so a single late loop iteration does not get us killed.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000


class Notifier:
    """A connection to the service manager's notification socket.

    ``notify()`` sends raw assignments; the named helpers exist so call sites
    read as what they mean. ``watchdog(now)`` rate-limits itself to the
    interval above, so a main loop may call it every iteration.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if path.startswith("@"):
            # unix(7): an abstract address is a NUL byte followed by the name.
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.interval = watchdog_interval(env)
        self._next_ping = 0.0
        self.failures = 0

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens."""
        return self._sock is not None

    def notify(self, **assignments: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); False if not sent."""
        if self._sock is None or self._address is None:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in assignments.items())
        try:
            self._sock.sendto(text.encode(), self._address)
        except OSError:
            self.failures += 1
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup finished, the daemon serves (unblocks systemctl start)."""
        if status is None:
            return self.notify(ready=1)
        return self.notify(ready=1, status=status)

    def status(self, text: str) -> bool:
        """STATUS=: one free-form line shown by ``systemctl status``."""
        return self.notify(status=text)

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as systemd 253 expects for Type=notify-reload."""
        return self.notify(
            reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun (systemd stops waiting for READY)."""
        return self.notify(stopping=1)

    def watchdog(self, now: float) -> bool:
        """WATCHDOG=1 if the interval has elapsed since the last ping.

        Call it from the main loop only: the ping then proves the loop is
        alive, which is what the watchdog is for (a helper thread pinging
        would hide a wedged loop).
        """
        if self.interval is None or now < self._next_ping:
            return False
        self._next_ping = now + self.interval
        return self.notify(watchdog=1)

    def close(self) -> None:
        """Release the socket; later calls become no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""The machine a benchmark runs on: load, CPU pressure, pinning, memory, the
UNIX datagram queue length.

A figure means little without the state of the host it was measured on, so
every step records the load average (``LOADS``) and the run records CPU
pressure before and after; ``appliance_qlen`` sets the kernel setting the
.deb installs, so the daemons run as they would when installed.
"""

from __future__ import annotations

import os
from pathlib import Path

#: 1-minute load average after each step: above 2.5 on two cores, something else
#: competed with the daemons or SIPp (our own load is about 1.5).
LOADS: list[float] = []


BUSY_LOAD = 2.5


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_pressure() -> float | None:
    """avg60 of /proc/pressure/cpu "some" (share of time something waited for a CPU)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(line.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return None


def pin_self(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def affinity_of(pid: int) -> list[str]:
    """Cpus_allowed_list of every thread of a process (to show the pinning held)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out.add(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return sorted(out)


def mem_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


#: The kernel setting the .deb raises (systemd/sysctl.d/50-softswitch.conf).
QLEN_PATH = Path("/proc/sys/net/unix/max_dgram_qlen")


QLEN_SYSCTL = Path(__file__).resolve().parents[2] / "systemd/sysctl.d/50-softswitch.conf"


def appliance_qlen() -> int | None:
    """As root, the UNIX datagram queue length the installed appliance runs
    with (the host default, 10, makes control's and the bearers' sockets
    refuse bursts; a reply retried at the bearer's next 20 ms tick shows as
    20-250 ms set-up delays); returns the value to restore, or None."""
    wanted = next(
        (
            int(line.split("=")[1])
            for line in QLEN_SYSCTL.read_text().splitlines()
            if line.startswith("net.unix.max_dgram_qlen")
        ),
        None,
    )
    try:
        old = int(QLEN_PATH.read_text())
        if os.geteuid() != 0 or wanted is None or old >= wanted:
            return None
        QLEN_PATH.write_text(f"{wanted}\n")
    except (OSError, ValueError):
        return None
    return old

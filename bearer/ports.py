"""The RTP port pool of one bearer instance.

Each instance owns a slice of the port range (softswitch.daemonkit.bearerconf computes it), so
instances on one host never compete. Within the slice, RTP takes the even port
and RTCP the odd one above it (RFC 3550 §11: "RTP SHOULD use an even
destination port number and the corresponding RTCP stream SHOULD use the next
higher (odd) destination port number").

Released ports go to the back of the queue: a port is reused as late as
possible, so stray packets still arriving for a finished call are unlikely to
reach the next call that gets the same port. A port that another process
turned out to hold is parked (``busy()``) and retried only after every other
free port has been tried once.
"""

from __future__ import annotations

import resource
from collections import deque

__all__ = ["PortPool", "PortsExhausted", "raise_fd_limit"]


class PortsExhausted(Exception):
    """No free RTP/RTCP pair is left in this instance's slice."""


class PortPool:
    """Even RTP ports in [first, last] whose RTCP port (RTP+1) is also in range."""

    def __init__(self, first: int, last: int) -> None:
        start = first + (first & 1)  # first even port
        if start + 1 > last:
            raise ValueError(f"port range {first}-{last} holds no RTP/RTCP pair")
        self.first = first
        self.last = last
        self._free: deque[int] = deque(range(start, last, 2))
        self._used: set[int] = set()
        self.capacity = len(self._free)

    def __len__(self) -> int:
        """Number of free pairs."""
        return len(self._free)

    @property
    def in_use(self) -> int:
        """Number of pairs handed out and not yet released."""
        return len(self._used)

    def take(self) -> int:
        """The next free even RTP port (its RTCP port is the one above)."""
        if not self._free:
            raise PortsExhausted(
                f"all {self.capacity} RTP ports of {self.first}-{self.last} in use"
            )
        port = self._free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a pair back; it is handed out again only after all others."""
        if port not in self._used:
            raise ValueError(f"port {port} was not taken from this pool")
        self._used.remove(port)
        self._free.append(port)

    def busy(self, port: int) -> None:
        """A taken port could not be bound (held elsewhere): park it at the back."""
        self.release(port)


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (6 fds per call); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return target

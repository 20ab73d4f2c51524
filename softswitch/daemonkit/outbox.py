"""Datagrams a non-blocking socket could not take yet: a FIFO per destination.

A UNIX datagram socket's receive queue holds ``net.unix.max_dgram_qlen``
datagrams (10 by default on Linux): when control sends a burst to a bearer
that has not read yet (or a bearer answers a burst while control is busy),
``sendto()`` fails with EAGAIN.  Dropping the datagram would leave it to the
bearer protocol's retransmission timer, so a burst costs seconds and calls
(DESIGN.md principle 6).  The outbox keeps it instead, in order per
destination, and sends it when the peer has read: the owner calls
``flush()`` from its loop (on its next wake-up, on a short retry timer, or
when the socket polls writable).

Poll cannot tell when a *unconnected* UNIX datagram socket may send again:
Linux reports it writable while the receiver's queue is full (only a
connected socket waits on its peer's queue), so for those the owner retries
on a timer; for UDP, writable means the send buffer has room.

A destination that is gone (ECONNREFUSED, ENOENT ...) costs its datagram, as
before, counted in ``drops`` under ``<prefix><ERRNO>``; a queue over
``limit`` counts ``<prefix>queue_full`` and drops the newest datagram (the
protocol's retransmission recovers it once the peer reads again).
"""

from __future__ import annotations

import collections
import errno
import socket
from collections import Counter
from typing import Any

__all__ = ["MAX_QUEUED", "Outbox"]

#: Datagrams held per destination (each at most MAX_DATAGRAM bytes).
MAX_QUEUED = 4096

_BLOCKED = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR})


class Outbox:
    """Send through ``sock`` (non-blocking), or queue what would block."""

    def __init__(
        self, sock: socket.socket, drops: Counter[str], prefix: str, limit: int = MAX_QUEUED
    ) -> None:
        self.sock = sock
        self.drops = drops
        self.prefix = prefix
        self.limit = limit
        #: Datagrams that had to wait (sent later, not lost).
        self.deferred = 0
        self._queues: dict[Any, collections.deque[bytes]] = {}
        self._count = 0

    def __len__(self) -> int:
        """Datagrams waiting, every destination together."""
        return self._count

    def send(self, data: bytes, addr: Any) -> None:
        """Send now, or after what already waits for ``addr``."""
        q = self._queues.get(addr)
        if q is None:
            if self._try(data, addr):
                return
            q = self._queues[addr] = collections.deque()
        elif len(q) >= self.limit:
            self.drops[self.prefix + "queue_full"] += 1
            return
        q.append(data)
        self._count += 1
        self.deferred += 1

    def flush(self) -> int:
        """Send what waits, in order per destination; the number still waiting."""
        if not self._count:
            return 0
        for addr, q in list(self._queues.items()):
            while q:
                if not self._try(q[0], addr):
                    break
                q.popleft()
                self._count -= 1
            if not q:
                del self._queues[addr]
        return self._count

    def _try(self, data: bytes, addr: Any) -> bool:
        """True once ``data`` is sent or lost for good; False if it would block."""
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            if exc.errno in _BLOCKED:
                return False
            self.drops[self.prefix + errno.errorcode.get(exc.errno or 0, "error")] += 1
        return True

"""The bearer pool: which media bearers exist, which are up, which to use.

Theory of operation
-------------------
``softswitch.protocol.endpoint.ProtocolClient`` does the protocol (retransmission,
heartbeats, epochs); this module keeps the book on top of it, sans-I/O:

* one ``Bearer`` per configured endpoint, in config order (its ``id``);
* ``handle_event`` folds the client's events into that book: ``PeerUp`` /
  ``PeerDown`` (three missed heartbeats), ``PeerRestarted`` (a new epoch:
  the bearer lost every session it had), ``PeerLoad`` (sessions, capacity
  and CPU from each heartbeat), request timeouts and error replies;
* ``choose`` picks the least-loaded bearer that is up and has room, counting
  the ALLOCATEs sent since its last heartbeat so a burst of calls within one
  heartbeat interval is spread instead of piling onto one bearer;
* a load report never undoes our own count: the bearer updates the session
  count it reports at every ALLOCATE and DELETE before replying, and it
  sends everything from one socket in order, so a report received after a
  request's reply includes that request.  A report received while requests
  are still unanswered may have been made before the bearer saw them, so
  those (``Bearer.pending``: ALLOCATEs minus DELETEs in flight) are added to
  it;
* ``note_protocol_error`` is told about datagrams the client refused: when
  one from a bearer's address fails HMAC, that bearer holds another key, so
  it is marked down with that reason and the log says so once.  A bearer
  answers our datagrams that fail its HMAC with a refusal tagged with its
  own key (``EventSender``), so a wrong key is reported as such even though
  the bearer never takes us for its control (it would otherwise look exactly
  like a dead bearer).

Peers are what the daemon's control socket reports as the source: a path
for UNIX datagram sockets, ``(ip, port)`` for UDP; the daemon resolves host
names in the configuration before building the pool, because replies are
matched to requests by that address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from softswitch.protocol import Allocate, Delete, ErrorCode, ErrorReply, Message, Reason
from softswitch.protocol.endpoint import (
    Peer,
    PeerDown,
    PeerLoad,
    PeerRestarted,
    PeerUp,
    ProtocolClient,
    ReplyReceived,
    RequestTimeout,
)

__all__ = ["Bearer", "BearerPool", "endpoint_name", "endpoint_peer"]

log = logging.getLogger("softswitch.bearerpool")

#: ProtocolError reasons that mean "this datagram was made with another key".
AUTH_REASONS = frozenset({Reason.BAD_HMAC, Reason.UNAUTHENTICATED, Reason.UNEXPECTED_TAG})


def endpoint_peer(endpoint: tuple[str, str, int]) -> Peer:
    """The socket address for a config endpoint ``(kind, address, port)``."""
    kind, address, port = endpoint
    return address if kind == "unix" else (address, port)


def endpoint_name(endpoint: tuple[str, str, int]) -> str:
    """``unix:/path`` or ``udp:host:port`` (IPv6 in brackets), as configured."""
    kind, address, port = endpoint
    if kind == "unix":
        return f"unix:{address}"
    host = f"[{address}]" if ":" in address else address
    return f"udp:{host}:{port}"


@dataclass(slots=True)
class Bearer:
    """One configured bearer endpoint and what we know of it."""

    id: int
    name: str
    peer: Peer
    up: bool = False
    epoch: int | None = None
    sessions: int = 0
    capacity: int = 0
    cpu: float = 0.0
    auth_failed: bool = False
    reason: str | None = "not heard from yet"
    since: float = 0.0
    pps: int = 0
    restarts: int = 0
    timeouts: int = 0
    errors: int = 0
    pending: int = 0
    """ALLOCATEs minus DELETEs sent and not answered yet (not in any report)."""

    @property
    def room(self) -> int:
        """Sessions it can still take (by its last report and our ALLOCATEs since)."""
        return self.capacity - self.sessions

    @property
    def state(self) -> str:
        if self.auth_failed:
            return "auth-failed"
        return "up" if self.up else "down"


class BearerPool:
    """The configured bearers over one ProtocolClient (control's end)."""

    def __init__(self, client: ProtocolClient, endpoints: list, now: float) -> None:
        self.client = client
        self.bearers: list[Bearer] = []
        self._by_peer: dict[Peer, Bearer] = {}
        self._inflight: dict[int, tuple[Bearer, int]] = {}
        """Request id -> (bearer, +1 ALLOCATE / -1 DELETE) until its reply or timeout."""
        for i, endpoint in enumerate(endpoints):
            b = Bearer(i, endpoint_name(endpoint), endpoint_peer(endpoint), since=now)
            self.bearers.append(b)
            self._by_peer[b.peer] = b
            client.add_peer(b.peer, now)

    def __len__(self) -> int:
        return len(self.bearers)

    def by_peer(self, peer: Peer) -> Bearer | None:
        """The bearer at this socket address, or None."""
        return self._by_peer.get(peer)

    @property
    def up_count(self) -> int:
        return sum(1 for b in self.bearers if b.up)

    # ------------------------------------------------------------------ use

    def choose(self) -> Bearer | None:
        """The least-loaded bearer that is up with room, or None (→ 503)."""
        best: Bearer | None = None
        best_key: tuple[float, float, int] | None = None
        for b in self.bearers:
            if not b.up or b.auth_failed or b.room <= 0:
                continue
            key = (b.sessions / b.capacity, b.cpu, b.id)
            if best_key is None or key < best_key:
                best, best_key = b, key
        return best

    def request(self, bearer: Bearer, message: Message, now: float) -> int:
        """Send a request to ``bearer``; its reply (or timeout) comes back as a
        protoclient event carrying the returned request id."""
        rid = self.client.request(message, bearer.peer, now)
        kind = type(message)
        if kind is Allocate or kind is Delete:
            delta = 1 if kind is Allocate else -1
            bearer.sessions = max(bearer.sessions + delta, 0)  # until a report says how many
            bearer.pending += delta
            self._inflight[rid] = (bearer, delta)
        return rid

    # ------------------------------------------------------------------ events

    def handle_event(self, event: Any, now: float) -> None:
        """Bookkeeping for one protoclient event (every event may be passed)."""
        b = self._by_peer.get(event.peer) if hasattr(event, "peer") else None
        if b is None:
            return
        kind = type(event)
        if kind is PeerLoad:
            # Perhaps made before the bearer saw what is still in flight.
            b.sessions = max(event.active_sessions + b.pending, 0)
            b.capacity = event.capacity
            b.cpu = float(event.cpu_load)
            b.pps = event.packets_per_second
        elif kind is PeerUp:
            b.epoch = event.epoch
            if b.auth_failed:
                log.info("bearer %s: authentic datagrams again; key problem over", b.name)
                b.auth_failed = False
            self._set(b, True, None, now)
            log.info("bearer %s up (epoch %d)", b.name, event.epoch)
        elif kind is PeerDown:
            if b.auth_failed:
                reason = "refuses our requests: wrong key?"
            elif b.epoch is None:
                reason = "never answered (not running, unreachable, or a wrong key)"
            else:
                reason = "missed heartbeats"
            was_up = b.up
            self._set(b, False, reason, now)
            if (was_up or b.epoch is None) and not b.auth_failed:  # that one was said
                log.warning("bearer %s down: %s", b.name, reason)
        elif kind is PeerRestarted:
            b.epoch = event.new_epoch
            b.restarts += 1
            b.sessions = 0
            log.warning(
                "bearer %s restarted (new epoch %d): its sessions are gone", b.name, b.epoch
            )
        elif kind is RequestTimeout:
            b.timeouts += 1
            self._answered(event.request_id)
        elif kind is ReplyReceived:
            delta = self._answered(event.request_id)
            if type(event.message) is ErrorReply:
                b.errors += 1
                if event.message.code == ErrorCode.NO_CAPACITY:
                    b.sessions = max(b.sessions, b.capacity)  # full until it says otherwise
                elif delta > 0:
                    b.sessions = max(b.sessions - 1, 0)  # that session was not made

    def _answered(self, request_id: int) -> int:
        """Forget a request of ours that was answered (or timed out); its delta."""
        entry = self._inflight.pop(request_id, None)
        if entry is None:
            return 0
        b, delta = entry
        b.pending -= delta
        return delta

    def note_protocol_error(self, peer: Peer, reason: Reason, now: float) -> None:
        """A datagram from ``peer`` was refused by the client (counted by the core).

        A bad HMAC from a bearer means it holds another key: it cannot read
        our requests either, so it is down for us, and the operator is told
        once (not once per heartbeat).
        """
        b = self._by_peer.get(peer)
        if b is None or reason not in AUTH_REASONS:
            return
        if not b.auth_failed:
            b.auth_failed = True
            log.error("bearer %s refuses our requests: wrong key? (%s)", b.name, reason.value)
        self._set(b, False, "refuses our requests: wrong key?", now)

    # ------------------------------------------------------------------ admin

    def snapshot(self) -> list[dict[str, Any]]:
        """One flat row per bearer for ``softswitchctl bearers``."""
        return [
            {
                "id": b.id,
                "endpoint": b.name,
                "state": b.state,
                "reason": b.reason,
                "sessions": b.sessions,
                "capacity": b.capacity,
                "cpu": b.cpu,
                "pps": b.pps,
                "epoch": b.epoch,
                "restarts": b.restarts,
                "timeouts": b.timeouts,
                "errors": b.errors,
            }
            for b in self.bearers
        ]

    @staticmethod
    def _set(b: Bearer, up: bool, reason: str | None, now: float) -> None:
        if b.up != up:
            b.since = now
        b.up = up
        b.reason = reason

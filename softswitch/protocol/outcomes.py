"""What a protocol endpoint tells its owner: replies, timeouts, events, peers' health.

Frozen values returned by ``receive`` and ``handle_timer`` of the endpoints in
softswitch/protocol/endpoint.py. They live apart from the endpoint's
retransmission and heartbeat logic so that a reader of a daemon's dispatch
finds every outcome in one short module.
"""

from __future__ import annotations

from dataclasses import dataclass

from softswitch.protocol.codec import Packet
from softswitch.protocol.events import Event
from softswitch.protocol.messages import Message

Peer = tuple[str, int] | str
"""A peer's address as the daemon's socket reports it: (host, port) or a path."""


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    request_id: int
    peer: Peer
    message: Message
    """The reply: the request's reply type, or an ErrorReply."""


@dataclass(frozen=True, slots=True)
class RequestTimeout:
    """No reply within the request's timeout; the request is forgotten."""

    request_id: int
    peer: Peer
    message: Message


@dataclass(frozen=True, slots=True)
class EventReceived:
    """A bearer event, reported once however many copies arrive (already acked)."""

    peer: Peer
    request_id: int
    message: Event


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the application; answer it with ``reply(peer, packet, msg, now)``."""

    peer: Peer
    packet: Packet


@dataclass(frozen=True, slots=True)
class PeerUp:
    """First datagram from a peer, or the first after it was reported down."""

    peer: Peer
    epoch: int


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """The peer's boot epoch changed: it restarted and lost its state."""

    peer: Peer
    old_epoch: int
    new_epoch: int


@dataclass(frozen=True, slots=True)
class PeerDown:
    """``heartbeat_misses`` heartbeats in a row went unanswered."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """The load a peer reported in a heartbeat or a heartbeat reply."""

    peer: Peer
    active_sessions: int
    capacity: int
    cpu_load: int
    packets_per_second: int


ProtoEvent = (
    ReplyReceived
    | RequestTimeout
    | EventReceived
    | RequestReceived
    | PeerUp
    | PeerRestarted
    | PeerDown
    | PeerLoad
)

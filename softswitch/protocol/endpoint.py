"""Reliability for the private control protocol, sans-I/O, for both ends.

``softswitch.protocol`` says what a datagram means; this module decides when to
send one.  Nothing here touches a socket or reads a clock: the daemons feed in
datagrams and ``now`` (any monotonic seconds) and send what comes out, exactly
as aioquic's connection is driven.

Theory of operation
-------------------
* **Requests are retransmitted** with the same request id on a short timer,
  T1 = 20 ms doubling (20, 40, 80, 160 ... ms, each interval capped at
  ``rto_max``), until the reply arrives or ``request_timeout`` (2 s) has
  passed, when ``RequestTimeout`` is reported.  Loopback and a LAN answer in
  well under a millisecond, so 20 ms is long enough to mean "lost" and short
  enough that a lost datagram costs a caller's set-up delay only 20 ms.
* **Requests are idempotent.**  The serving side keeps the encoded reply of
  every request for ``reply_ttl`` (32 s, far longer than a client retries) in a
  ``ReplyCache`` keyed by (peer, sender epoch, request id) and sends the same
  bytes again for a retransmission; the handler runs once.
* **Heartbeats** go to every peer added with ``add_peer`` every
  ``heartbeat_interval`` (1 s) as fresh requests, never retransmitted.  Any
  authentic datagram from the peer counts as an answer; ``heartbeat_misses``
  (3) unanswered heartbeats in a row report ``PeerDown``, and the next datagram
  from it ``PeerUp``.  Heartbeats and their replies carry the sender's load,
  reported as ``PeerLoad`` (control picks the least-loaded bearer with it).
* **Epochs.**  Every datagram carries its sender's boot epoch; a change is
  reported once as ``PeerRestarted`` so the application resynchronises (the
  bearer lost its sessions; control lost its requests) instead of guessing.
* **Events** (bearer -> control) are requests whose reply is an ``EventAck``.
  The bearer retransmits them like any request, for longer
  (``event_timeout``); control acks every copy but reports each event once,
  remembering (peer, epoch, request id) of recent events.
* **A wrong key is said, not silent.**  The bearer answers a datagram whose
  tag does not verify (``bad_hmac``) with an ``ErrorReply`` tagged with its
  own key: control, holding another key, cannot verify that either and
  reports the bearer as "wrong key?" instead of "never answered".  The
  answer carries nothing (request id 0, no text, so it cannot complete any
  request of a control that does hold our key), is never sent for a
  datagram shorter than itself or flagged as a reply, and is rate-limited
  to one per second per source and ``REFUSALS_PER_SECOND`` in all, so a
  forger can neither learn anything from it nor use it to amplify.

``ProtocolClient`` is control's end: it sends requests and heartbeats, receives
events and answers the bearers' heartbeats.  ``EventSender`` is the bearer's
end: it sends events and heartbeats to control, answers control's heartbeats,
and hands control's other requests to the daemon as ``RequestReceived``, whose
answer goes back through ``reply()`` and the reply cache.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict

from softswitch.protocol import (
    ErrorCode,
    ErrorReply,
    Event,
    EventAck,
    Flags,
    Heartbeat,
    HeartbeatReply,
    Message,
    MsgType,
    Packet,
    ProtocolError,
    Reason,
    decode,
    encode,
)
from softswitch.protocol.outcomes import (
    EventReceived,
    Peer,
    PeerDown,
    PeerLoad,
    PeerRestarted,
    PeerUp,
    ProtoEvent,
    ReplyReceived,
    RequestReceived,
    RequestTimeout,
)
from softswitch.protocol.replycache import ReplyCache

__all__ = [
    "EventReceived",
    "EventSender",
    "PeerDown",
    "PeerLoad",
    "PeerRestarted",
    "PeerUp",
    "ProtocolClient",
    "ReplyCache",
    "ReplyReceived",
    "RequestReceived",
    "RequestTimeout",
]

# --------------------------------------------------------------------------- endpoint


class _Pending:
    """One outstanding request of ours."""

    __slots__ = ("data", "deadline", "interval", "message", "next_at", "peer", "request_id")

    def __init__(
        self,
        request_id: int,
        peer: Peer,
        message: Message,
        data: bytes,
        now: float,
        interval: float,
        timeout: float,
    ) -> None:
        self.request_id = request_id
        self.peer = peer
        self.message = message
        self.data = data
        self.interval = interval
        self.deadline = now + timeout
        self.next_at = min(now + interval, self.deadline)


class _PeerState:
    __slots__ = ("epoch", "heard", "heartbeating", "missed", "next_heartbeat", "up")

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.up: bool | None = None  # None: not heard from yet, not declared down
        self.heard = False  # anything authentic since the last heartbeat tick
        self.missed = 0
        self.heartbeating = False
        self.next_heartbeat = 0.0


class _Endpoint:
    """What both ends share: requests and retransmission, heartbeats, epochs,
    serving (or refusing) the peer's requests, acking the peer's events."""

    SERVES_REQUESTS = False
    ACCEPTS_EVENTS = False
    MAX_PEERS = 4096

    def __init__(
        self,
        key: bytes | None,
        epoch: int,
        now: float,
        *,
        heartbeat_interval: float = 1.0,
        heartbeat_misses: int = 3,
        rto_initial: float = 0.02,
        rto_max: float = 1.0,
        request_timeout: float = 2.0,
        reply_ttl: float = 32.0,
    ) -> None:
        self.key = key
        self.epoch = epoch
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_misses = heartbeat_misses
        self.rto_initial = rto_initial
        self.rto_max = rto_max
        self.request_timeout = request_timeout
        self.counters: Counter[str] = Counter()
        """Drops and retries by name, for the daemon's STATS and logs."""
        self.replies = ReplyCache(reply_ttl)
        self._load = Heartbeat()
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._heap: list[tuple[float, int]] = []
        self._heartbeats: dict[int, Peer] = {}  # our unanswered heartbeat ids
        self._peers: dict[Peer, _PeerState] = {}
        self._in_progress: set[tuple[Peer, int, int]] = set()
        self._outbox: list[tuple[bytes, Peer]] = []

    # ----- configuration

    def add_peer(self, peer: Peer, now: float) -> None:
        """Start heartbeating ``peer`` (the first heartbeat goes out at once)."""
        state = self._peer(peer)
        if state is not None and not state.heartbeating:
            state.heartbeating = True
            state.next_heartbeat = now

    def remove_peer(self, peer: Peer) -> None:
        """Stop heartbeating and tracking ``peer``."""
        self._peers.pop(peer, None)
        for rid in [r for r, p in self._heartbeats.items() if p == peer]:
            del self._heartbeats[rid]

    def set_load(
        self, active_sessions: int, capacity: int, cpu_load: int, packets_per_second: int
    ) -> None:
        """What our heartbeats and heartbeat replies report from now on."""
        self._load = Heartbeat(
            active_sessions, capacity, min(max(cpu_load, 0), 100), packets_per_second
        )

    def peer_epoch(self, peer: Peer) -> int | None:
        state = self._peers.get(peer)
        return None if state is None else state.epoch

    # ----- sending

    def request(
        self, message: Message, peer: Peer, now: float, timeout: float | None = None
    ) -> int:
        """Queue ``message`` for ``peer`` and retransmit it until answered; its request id."""
        rid = self._allocate_id()
        data = encode(message, rid, self.epoch, self.key)
        p = _Pending(
            rid,
            peer,
            message,
            data,
            now,
            self.rto_initial,
            self.request_timeout if timeout is None else timeout,
        )
        self._pending[rid] = p
        heapq.heappush(self._heap, (p.next_at, rid))
        self._outbox.append((data, peer))
        return rid

    def cancel(self, request_id: int) -> None:
        """Stop retransmitting; a late reply will be ignored."""
        self._pending.pop(request_id, None)

    def pending(self) -> int:
        return len(self._pending)

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        out, self._outbox = self._outbox, []
        return out

    def _allocate_id(self) -> int:
        rid = self._next_id
        for _ in range(len(self._pending) + len(self._heartbeats) + 1):  # bounded skip
            if rid not in self._pending and rid not in self._heartbeats:
                break
            rid = rid % 0xFFFFFFFF + 1
        self._next_id = rid % 0xFFFFFFFF + 1
        return rid

    # ----- timers

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called, or None."""
        heap, pending = self._heap, self._pending
        while heap:  # drop stale entries: answered, or rescheduled
            at, rid = heap[0]
            p = pending.get(rid)
            if p is not None and p.next_at == at:
                break
            heapq.heappop(heap)
        t = heap[0][0] if heap else None
        for state in self._peers.values():
            if state.heartbeating and (t is None or state.next_heartbeat < t):
                t = state.next_heartbeat
        return t

    def handle_timer(self, now: float) -> list[ProtoEvent]:
        events: list[ProtoEvent] = []
        heap, pending = self._heap, self._pending
        while heap and heap[0][0] <= now:  # bounded: each turn pops; pushes are > now
            at, rid = heapq.heappop(heap)
            p = pending.get(rid)
            if p is None or p.next_at != at:
                continue
            if now >= p.deadline:
                del pending[rid]
                self.counters["request_timeout"] += 1
                events.append(RequestTimeout(rid, p.peer, p.message))
                continue
            self.counters["retransmitted"] += 1
            self._outbox.append((p.data, p.peer))
            p.interval = min(p.interval * 2, self.rto_max)
            p.next_at = min(now + p.interval, p.deadline)
            heapq.heappush(heap, (p.next_at, rid))
        for peer, state in list(self._peers.items()):
            if state.heartbeating and state.next_heartbeat <= now:
                self._heartbeat_tick(peer, state, now, events)
        return events

    def _heartbeat_tick(
        self, peer: Peer, state: _PeerState, now: float, events: list[ProtoEvent]
    ) -> None:
        state.missed = 0 if state.heard else state.missed + 1
        state.heard = False
        if state.missed >= self.heartbeat_misses and state.up is not False:
            state.up = False
            events.append(PeerDown(peer))
        for rid in [r for r, p in self._heartbeats.items() if p == peer]:
            del self._heartbeats[rid]  # unanswered: forget it
        rid = self._allocate_id()
        self._heartbeats[rid] = peer
        self._outbox.append((encode(self._load, rid, self.epoch, self.key), peer))
        state.next_heartbeat += self.heartbeat_interval
        if state.next_heartbeat <= now:  # we were stalled: do not send a burst
            state.next_heartbeat = now + self.heartbeat_interval

    # ----- receiving

    def receive(self, datagram: bytes, peer: Peer, now: float) -> list[ProtoEvent]:
        """Feed one datagram; raises ProtocolError for a malformed one (count, drop).

        An authentic request whose body is not understood is answered
        ErrorReply(BAD_REQUEST) before the error is raised.
        """
        try:
            packet = decode(datagram, self.key)
        except ProtocolError as e:
            h = e.header
            if h is not None and not h.flags & Flags.REPLY:  # an authentic request: say why
                self.counters["bad_request"] += 1
                reply = ErrorReply(h.msg_type, ErrorCode.BAD_REQUEST, f"{e.reason}: {e.detail}")
                self._answer(peer, h.request_id, reply)
            raise
        return self.receive_packet(packet, peer, now)

    def receive_packet(self, packet: Packet, peer: Peer, now: float) -> list[ProtoEvent]:
        """Feed one already decoded (and authenticated) packet."""
        events: list[ProtoEvent] = []
        self._note_peer(peer, packet.epoch, events)
        msg = packet.message
        if msg.REPLY:
            self._on_reply(packet, peer, events)
        elif type(msg) is Heartbeat:
            events.append(
                PeerLoad(
                    peer, msg.active_sessions, msg.capacity, msg.cpu_load, msg.packets_per_second
                )
            )
            load = self._load
            self._answer(
                peer,
                packet.request_id,
                HeartbeatReply(
                    packet.epoch,
                    load.active_sessions,
                    load.capacity,
                    load.cpu_load,
                    load.packets_per_second,
                ),
            )
        elif isinstance(msg, Event):
            self._on_event(packet, peer, now, events)
        elif self.SERVES_REQUESTS:
            self._on_request(packet, peer, now, events)
        else:
            self.counters["refused_request"] += 1
            self._answer(
                peer,
                packet.request_id,
                ErrorReply(
                    packet.msg_type,
                    ErrorCode.BAD_REQUEST,
                    f"{type(msg).__name__} is not served here",
                ),
            )
        return events

    def _note_peer(self, peer: Peer, epoch: int, events: list[ProtoEvent]) -> None:
        state = self._peer(peer)
        if state is None:
            return
        state.heard = True
        state.missed = 0
        if state.epoch is None:
            state.epoch = epoch
        elif state.epoch != epoch:
            events.append(PeerRestarted(peer, state.epoch, epoch))
            state.epoch = epoch
        if not state.up:
            state.up = True
            events.append(PeerUp(peer, epoch))

    def _peer(self, peer: Peer) -> _PeerState | None:
        state = self._peers.get(peer)
        if state is None and len(self._peers) < self.MAX_PEERS:
            state = self._peers[peer] = _PeerState()
        return state

    def _on_reply(self, packet: Packet, peer: Peer, events: list[ProtoEvent]) -> None:
        rid = packet.request_id
        msg = packet.message
        if type(msg) is HeartbeatReply:
            if self._heartbeats.get(rid) == peer:
                del self._heartbeats[rid]
                events.append(
                    PeerLoad(
                        peer,
                        msg.active_sessions,
                        msg.capacity,
                        msg.cpu_load,
                        msg.packets_per_second,
                    )
                )
            return
        p = self._pending.get(rid)
        if p is None or p.peer != peer or packet.msg_type != p.message.TYPE:
            self.counters["late_reply"] += 1  # a duplicate, or for a cancelled request
            return
        del self._pending[rid]
        events.append(ReplyReceived(rid, peer, msg))

    def _on_event(self, packet: Packet, peer: Peer, now: float, events: list[ProtoEvent]) -> None:
        if not self.ACCEPTS_EVENTS:
            self.counters["refused_event"] += 1
            self._answer(
                peer,
                packet.request_id,
                ErrorReply(MsgType.EVENT, ErrorCode.BAD_REQUEST, "events are not accepted here"),
            )
            return
        cached = self.replies.get(peer, packet.epoch, packet.request_id, now)
        if cached is not None:
            self.counters["duplicate_event"] += 1
            self._outbox.append((cached, peer))
            return
        ack = encode(EventAck(), packet.request_id, self.epoch, self.key)
        self.replies.put(peer, packet.epoch, packet.request_id, ack, now)
        self._outbox.append((ack, peer))
        events.append(EventReceived(peer, packet.request_id, packet.message))  # type: ignore[arg-type]

    def _on_request(self, packet: Packet, peer: Peer, now: float, events: list[ProtoEvent]) -> None:
        key = (peer, packet.epoch, packet.request_id)
        cached = self.replies.get(peer, packet.epoch, packet.request_id, now)
        if cached is not None:
            self.counters["repeated_reply"] += 1
            self._outbox.append((cached, peer))
        elif key in self._in_progress:
            self.counters["request_in_progress"] += 1
        else:
            if len(self._in_progress) >= 65536:  # the application forgot to reply
                self._in_progress.clear()
            self._in_progress.add(key)
            events.append(RequestReceived(peer, packet))

    def reply(self, peer: Peer, packet: Packet, message: Message, now: float) -> bytes:
        """Answer a RequestReceived: encoded once, cached, queued; returns the bytes."""
        data = encode(message, packet.request_id, self.epoch, self.key)
        self._in_progress.discard((peer, packet.epoch, packet.request_id))
        self.replies.put(peer, packet.epoch, packet.request_id, data, now)
        self._outbox.append((data, peer))
        return data

    def _answer(self, peer: Peer, request_id: int, message: Message) -> None:
        self._outbox.append((encode(message, request_id, self.epoch, self.key), peer))


class ProtocolClient(_Endpoint):
    """Control's end: ALLOCATE/UPDATE/... to the bearers, heartbeats, events in."""

    ACCEPTS_EVENTS = True


class EventSender(_Endpoint):
    """The bearer's end: events and heartbeats to control, control's requests in.

    Events are retransmitted until acked, for ``event_timeout`` seconds (then
    RequestTimeout: control is gone, and will resynchronise when it is back).
    """

    SERVES_REQUESTS = True
    REFUSAL_INTERVAL = 1.0
    """Seconds between two answers to bad-HMAC datagrams from one source."""
    REFUSALS_PER_SECOND = 20
    """Answers to bad-HMAC datagrams per second from all sources together."""
    MAX_REFUSAL_SOURCES = 1024

    def __init__(
        self,
        key: bytes | None,
        epoch: int,
        now: float,
        *,
        event_timeout: float = 30.0,
        **kwargs: float,
    ) -> None:
        super().__init__(key, epoch, now, **kwargs)  # type: ignore[arg-type]
        self.event_timeout = event_timeout
        self._refused: OrderedDict[Peer, float] = OrderedDict()  # source -> last answer
        self._refusal_second = 0
        self._refusals_this_second = 0
        self._refusal = (
            b""
            if key is None
            else encode(ErrorReply(MsgType.HEARTBEAT, ErrorCode.BAD_REQUEST, ""), 0, epoch, key)
        )

    def send_event(self, event: Event, peer: Peer, now: float) -> int:
        return self.request(event, peer, now, timeout=self.event_timeout)

    def receive(self, datagram: bytes, peer: Peer, now: float) -> list[ProtoEvent]:
        """As for every endpoint, plus: a bad-HMAC datagram may get the (rate-limited,
        empty) refusal that tells a control with another key so."""
        try:
            return super().receive(datagram, peer, now)
        except ProtocolError as e:
            if e.reason is Reason.BAD_HMAC:
                self._refuse(datagram, peer, now)
            raise

    def _refuse(self, datagram: bytes, peer: Peer, now: float) -> None:
        refusal = self._refusal
        if not refusal or len(datagram) < len(refusal) or datagram[4] & Flags.REPLY:
            return  # never more bytes out than in; a reply is never answered
        refused = self._refused
        while refused:  # bounded by len(refused); oldest first
            oldest, at = next(iter(refused.items()))
            if now - at < self.REFUSAL_INTERVAL:
                break
            del refused[oldest]
        second = int(now)
        if second != self._refusal_second:
            self._refusal_second, self._refusals_this_second = second, 0
        if (
            peer in refused
            or len(refused) >= self.MAX_REFUSAL_SOURCES
            or self._refusals_this_second >= self.REFUSALS_PER_SECOND
        ):
            self.counters["auth_refusal_limited"] += 1
            return
        refused[peer] = now
        self._refusals_this_second += 1
        self.counters["auth_refused"] += 1
        self._outbox.append((refusal, peer))

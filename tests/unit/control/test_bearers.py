"""The bearer pool over a real ProtocolClient and in-memory fake bearers.

Each fake bearer is the bearer's own protocol end (``EventSender``) on a
fake wire, so heartbeats, epochs and HMAC are the real thing; only sockets
and the relay are missing.
"""

from __future__ import annotations

import logging

import pytest

from softswitch.bearerpool import BearerPool, endpoint_name
from softswitch.protocol import (
    Allocate,
    Allocated,
    Delete,
    ErrorCode,
    ErrorReply,
    MsgType,
    ProtocolError,
)
from softswitch.protocol.endpoint import EventSender, ProtocolClient, RequestReceived

KEY = b"k" * 32
CONTROL = ("127.0.0.1", 7000)
ENDPOINTS = [("udp", "10.99.0.2", 7700), ("udp", "10.99.0.3", 7701)]


class FakeBearer:
    """A bearer's protocol end that answers ALLOCATE and reports its load."""

    def __init__(self, peer, *, key: bytes = KEY, epoch: int = 1, capacity: int = 100) -> None:
        self.peer = peer
        self.proto = EventSender(key, epoch, 0.0)
        self.capacity = capacity
        self.sessions = 0
        self.alive = True
        self.proto.set_load(0, capacity, 10, 0)

    def receive(self, data: bytes, now: float) -> None:
        try:
            events = self.proto.receive(data, CONTROL, now)
        except ProtocolError:
            return
        for ev in events:
            if isinstance(ev, RequestReceived) and type(ev.packet.message) is Allocate:
                reply: ErrorReply | Allocated
                if self.sessions >= self.capacity:
                    reply = ErrorReply(MsgType.ALLOCATE, ErrorCode.NO_CAPACITY, "full")
                else:
                    self.sessions += 1
                    self.proto.set_load(self.sessions, self.capacity, 10, 0)
                    reply = Allocated(ev.packet.message.session_id, "10.99.0.2", (30000, 30002))
                self.proto.reply(ev.peer, ev.packet, reply, now)


class Wire:
    """Control's client, the pool and the fake bearers, on one fake clock."""

    def __init__(self, bearers: list[FakeBearer] | None = None) -> None:
        self.now = 1000.0
        self.client = ProtocolClient(KEY, 42, self.now, heartbeat_interval=1.0)
        self.pool = BearerPool(self.client, ENDPOINTS, self.now)
        self.bearers = bearers or [FakeBearer(("10.99.0.2", 7700)), FakeBearer(("10.99.0.3", 7701))]
        self.events: list = []

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        for _ in range(100_000):  # bounded
            self.flush()
            timers = [self.client.get_timer()] + [b.proto.get_timer() for b in self.bearers]
            t = min((t for t in timers if t is not None), default=None)
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            self.feed(self.client.handle_timer(self.now))
            for b in self.bearers:
                b.proto.handle_timer(self.now)
        self.now = end
        self.flush()

    def feed(self, events: list) -> None:
        for ev in events:
            self.pool.handle_event(ev, self.now)
            self.events.append(ev)

    def flush(self) -> None:
        for _ in range(100):  # bounded: a few round trips
            out = self.client.datagrams_to_send()
            if not out:
                return
            for data, peer in out:
                for b in self.bearers:
                    if b.peer == peer and b.alive:
                        b.receive(data, self.now)
            for b in self.bearers:
                for data, _ in b.proto.datagrams_to_send():
                    if not b.alive:
                        continue
                    try:
                        self.feed(self.client.receive(data, b.peer, self.now))
                    except ProtocolError as e:
                        self.pool.note_protocol_error(b.peer, e.reason, self.now)


def test_bearers_start_down_and_come_up_with_their_load() -> None:
    w = Wire()
    assert [b.up for b in w.pool.bearers] == [False, False]
    assert w.pool.choose() is None
    w.run(0.1)
    assert [b.up for b in w.pool.bearers] == [True, True]
    assert [b.capacity for b in w.pool.bearers] == [100, 100]
    assert w.pool.bearers[0].epoch == 1 and w.pool.bearers[0].cpu == 10.0


def test_choose_takes_the_least_loaded_and_spreads_a_burst() -> None:
    w = Wire()
    w.run(0.1)
    picks = []
    for i in range(6):
        b = w.pool.choose()
        assert b is not None
        picks.append(b.id)
        w.pool.request(b, Allocate(i + 1), w.now)
    assert picks == [0, 1, 0, 1, 0, 1]  # ALLOCATEs count before the next heartbeat
    w.run(0.1)
    assert [b.sessions for b in w.pool.bearers] == [3, 3]


def test_a_load_report_made_before_our_allocate_does_not_undo_it() -> None:
    """Control's heartbeat goes out just before an ALLOCATE: the bearer answers
    the heartbeat (0 sessions) before it sees the ALLOCATE, and that reply
    arrives after we counted the call.  The next call must still go elsewhere."""
    w = Wire()
    w.run(0.1)
    timer = w.client.get_timer()
    assert timer is not None
    w.now = timer
    w.feed(w.client.handle_timer(w.now))  # heartbeats queued, not sent yet
    first = w.pool.choose()
    assert first is not None
    w.pool.request(first, Allocate(1), w.now)
    w.flush()  # heartbeat replies (made before the ALLOCATE), then Allocated
    assert any(type(e).__name__ == "PeerLoad" for e in w.events)
    assert [b.sessions for b in w.pool.bearers] == [1, 0]
    assert [b.pending for b in w.pool.bearers] == [0, 0]
    second = w.pool.choose()
    assert second is not None and second.id != first.id
    w.run(1.5)  # later reports include it
    assert [b.sessions for b in w.pool.bearers] == [1, 0]


def test_a_lost_allocate_is_no_longer_in_flight() -> None:
    w = Wire()
    w.run(0.1)
    b = w.pool.bearers[0]
    w.bearers[0].alive = False
    w.pool.request(b, Allocate(1), w.now)
    assert b.pending == 1
    w.run(2.5)  # the request times out
    assert b.pending == 0 and b.timeouts == 1
    assert not w.pool._inflight


def test_full_bearers_are_not_chosen() -> None:
    w = Wire(
        [FakeBearer(("10.99.0.2", 7700), capacity=1), FakeBearer(("10.99.0.3", 7701), capacity=0)]
    )
    w.run(0.1)
    b = w.pool.choose()
    assert b is not None and b.id == 0
    w.pool.request(b, Allocate(1), w.now)
    assert w.pool.choose() is None  # 503 time for calls


def test_no_capacity_error_marks_the_bearer_full_until_it_reports_again() -> None:
    w = Wire([FakeBearer(("10.99.0.2", 7700), capacity=1), FakeBearer(("10.99.0.3", 7701))])
    w.run(0.1)
    w.bearers[1].alive = False
    w.bearers[0].sessions = 1  # someone else filled it
    w.pool.bearers[1].up = False
    w.pool.request(w.pool.bearers[0], Allocate(9), w.now)
    w.pool.bearers[0].sessions = 0
    w.flush()
    assert any(isinstance(e.message, ErrorReply) for e in w.events if hasattr(e, "message"))
    assert w.pool.bearers[0].errors == 1
    assert w.pool.choose() is None


def test_delete_frees_a_session_in_the_estimate() -> None:
    w = Wire()
    w.run(0.1)
    b = w.pool.bearers[0]
    w.pool.request(b, Allocate(1), w.now)
    w.pool.request(b, Delete(1), w.now)
    assert b.sessions == 0


def test_missed_heartbeats_mark_a_bearer_down_once(caplog: pytest.LogCaptureFixture) -> None:
    w = Wire()
    w.run(0.1)
    w.bearers[0].alive = False
    with caplog.at_level(logging.WARNING, "softswitch.bearerpool"):
        w.run(10)
    b = w.pool.bearers[0]
    assert not b.up and b.reason == "missed heartbeats" and b.state == "down"
    assert w.pool.bearers[1].up
    assert [r.getMessage() for r in caplog.records] == [
        "bearer udp:10.99.0.2:7700 down: missed heartbeats"
    ]
    chosen = w.pool.choose()
    assert chosen is not None and chosen.id == 1


def test_restart_is_noticed_and_its_sessions_forgotten() -> None:
    w = Wire()
    w.run(0.1)
    w.pool.request(w.pool.bearers[0], Allocate(1), w.now)
    w.run(0.1)
    assert w.pool.bearers[0].sessions == 1
    w.bearers[0] = FakeBearer(("10.99.0.2", 7700), epoch=2)
    w.run(1.5)
    b = w.pool.bearers[0]
    assert b.epoch == 2 and b.restarts == 1 and b.sessions == 0 and b.up


def test_a_bearer_with_another_key_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    w = Wire([FakeBearer(("10.99.0.2", 7700), key=b"x" * 32), FakeBearer(("10.99.0.3", 7701))])
    # The bearer believes we are its control (it heartbeats us with its key).
    w.bearers[0].proto.add_peer(CONTROL, w.now)
    with caplog.at_level(logging.WARNING, "softswitch.bearerpool"):
        w.run(5)
    b = w.pool.bearers[0]
    assert b.auth_failed and not b.up and b.state == "auth-failed"
    assert b.reason == "refuses our requests: wrong key?"
    assert [r.getMessage() for r in caplog.records] == [
        "bearer udp:10.99.0.2:7700 refuses our requests: wrong key? (bad_hmac)"
    ]
    chosen = w.pool.choose()
    assert chosen is not None and chosen.id == 1


def test_a_bearer_with_another_key_answers_and_is_told_from_a_dead_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bearer never takes us for its control (nothing of ours verifies), but
    it answers our heartbeats with a refusal under its key: wrong key, not dead."""
    w = Wire([FakeBearer(("10.99.0.2", 7700), key=b"x" * 32), FakeBearer(("10.99.0.3", 7701))])
    with caplog.at_level(logging.WARNING, "softswitch.bearerpool"):
        w.run(10)
    b = w.pool.bearers[0]
    assert b.state == "auth-failed" and b.reason == "refuses our requests: wrong key?"
    assert [r.getMessage() for r in caplog.records] == [
        "bearer udp:10.99.0.2:7700 refuses our requests: wrong key? (bad_hmac)"
    ]
    assert w.pool.snapshot()[0]["reason"] == "refuses our requests: wrong key?"


def test_a_bearer_that_never_answers_says_why() -> None:
    w = Wire()
    w.bearers[0].alive = False
    w.run(5)
    reason = w.pool.bearers[0].reason
    assert reason is not None and reason.startswith("never answered")


def test_snapshot_rows_for_softswitchctl() -> None:
    w = Wire()
    w.run(0.1)
    rows = w.pool.snapshot()
    assert [r["endpoint"] for r in rows] == ["udp:10.99.0.2:7700", "udp:10.99.0.3:7701"]
    assert rows[0]["state"] == "up" and rows[0]["capacity"] == 100
    assert set(rows[0]) >= {"sessions", "cpu", "epoch", "reason", "timeouts"}


def test_endpoint_names() -> None:
    assert endpoint_name(("unix", "/run/softswitch/bearer-0.sock", 0)) == (
        "unix:/run/softswitch/bearer-0.sock"
    )
    assert endpoint_name(("udp", "2001:db8::2", 7700)) == "udp:[2001:db8::2]:7700"

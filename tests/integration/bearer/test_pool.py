"""Control's bearer pool (a real ProtocolClient) over two real bearer processes."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.harness.bearer import BearerProcess, leg_spec, start_bearer
from softswitch.bearerpool import BearerPool
from softswitch.protocol import MAX_DATAGRAM, Allocate, Allocated, ProtocolError
from softswitch.protocol.endpoint import PeerLoad, ProtocolClient, ReplyReceived


class Control:
    """Control's end as the daemon drives it: one UNIX socket, the client, the pool."""

    def __init__(self, tmp: Path, bearers: list[BearerProcess], heartbeat: float) -> None:
        self.path = str(tmp / "control.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        now = time.monotonic()
        self.client = ProtocolClient(None, time.time_ns(), now, heartbeat_interval=heartbeat)
        self.pool = BearerPool(self.client, [("unix", bp.control, 0) for bp in bearers], now)
        self.events: list = []

    def close(self) -> None:
        self.sock.close()

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Send, receive and time out for ``seconds`` or until ``until()`` is true."""
        end = time.monotonic() + seconds
        while True:  # bounded by ``end``
            now = time.monotonic()
            t = self.client.get_timer()
            if t is not None and t <= now:
                self._feed(self.client.handle_timer(now), now)
            for data, peer in self.client.datagrams_to_send():
                self.sock.sendto(data, peer)
            if until is not None and until():
                return
            if now >= end:
                return
            wait = min(end, t if t is not None and t > now else end) - now
            r, _, _ = select.select([self.sock], [], [], max(wait, 0.0))
            if r:
                data, peer = self.sock.recvfrom(MAX_DATAGRAM + 1)
                now = time.monotonic()
                try:
                    self._feed(self.client.receive(data, peer, now), now)
                except ProtocolError as e:
                    self.pool.note_protocol_error(peer, e.reason, now)

    def wait_reply(self, rid: int) -> object:
        def replied() -> list:
            return [e for e in self.events if type(e) is ReplyReceived and e.request_id == rid]

        self.run(3, until=lambda: bool(replied()))
        got = replied()
        assert got, f"no reply to request {rid}"
        return got[0].message

    def wait_loads(self, n: int) -> None:
        def loads() -> int:
            return sum(type(e) is PeerLoad for e in self.events)

        target = loads() + n
        self.run(2, until=lambda: loads() >= target)
        assert loads() >= target

    def _feed(self, events: list, now: float) -> None:
        for ev in events:
            self.pool.handle_event(ev, now)
            self.events.append(ev)


@pytest.fixture
def two_bearers(tmp_path: Path) -> Iterator[list[BearerProcess]]:
    bps: list[BearerProcess] = []
    try:
        for name in ("a", "b"):
            bps.append(start_bearer(tmp_path / name))
        yield bps
    finally:
        for bp in bps:
            assert bp.stop() == 0, bp.log()


def test_calls_placed_within_a_heartbeat_go_to_different_bearers(
    tmp_path: Path, two_bearers: list[BearerProcess]
) -> None:
    """An ALLOCATE's session is counted by the pool until the bearer reports it,
    however many heartbeats come back in between (control heartbeats every
    10 ms here, so several arrive before the bearer's once-a-second load
    measurement)."""
    ctl = Control(tmp_path, two_bearers, heartbeat=0.01)
    try:
        ctl.run(5, until=lambda: ctl.pool.up_count == 2)
        assert ctl.pool.up_count == 2
        chosen = []
        for sid in (1, 2):
            b = ctl.pool.choose()
            assert b is not None
            chosen.append(b.id)
            msg = Allocate(sid, f"call-{sid}", (leg_spec(), leg_spec()))
            reply = ctl.wait_reply(ctl.pool.request(b, msg, time.monotonic()))
            assert type(reply) is Allocated
            ctl.wait_loads(6)  # heartbeat replies from both, after the ALLOCATE
        assert sorted(chosen) == [0, 1]
        assert [b.sessions for b in ctl.pool.bearers] == [1, 1]
    finally:
        ctl.close()

"""The relay engine in-process (real loopback sockets, no daemon): what control cannot reach."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from bearer import leg as S
from bearer.codecs import ULAW_TO_ALAW
from bearer.ports import PortPool, PortsExhausted
from bearer.relay import Relay, RelayError
from bearer.session import IDENTITY, Mode, remap_table
from bench.harness.bearer import PCMA, PCMU, TEL_EVENT, Phone, free_port_base, leg_spec
from softswitch.protocol import AllocFlags, Direction, Event, Latched, PayloadType


@pytest.fixture
def relay() -> Iterator[tuple[Relay, list[Event]]]:
    events: list[Event] = []
    base = free_port_base(100)
    r = Relay("127.0.0.1", base, base + 99, max_sessions=10, on_event=events.append)
    yield r, events
    r.close()


def _spin(relay: Relay, seconds: float) -> None:
    end = time.monotonic() + seconds
    relay.run(until=lambda: time.monotonic() >= end)


def _open(sock: socket.socket | None) -> socket.socket:
    """A leg's socket the test expects to be open."""
    assert sock is not None
    return sock


def test_port_pool_hands_out_even_pairs_and_reuses_released_ports_last() -> None:
    pool = PortPool(30001, 30010)  # odd start: the first RTP port is 30002
    ports = [pool.take() for _ in range(4)]
    assert ports == [30002, 30004, 30006, 30008]
    with pytest.raises(PortsExhausted):
        pool.take()
    pool.release(30004)
    pool.busy(30006)  # held by someone else: parked behind
    assert [pool.take(), pool.take()] == [30004, 30006]
    with pytest.raises(ValueError):
        pool.release(31000)
    with pytest.raises(ValueError):
        PortPool(30000, 30000)


def test_remap_table_maps_dynamic_types_and_transcodes_g711() -> None:
    a = leg_spec(("127.0.0.1", 1), codec=PCMU, dtmf=PayloadType(101, "telephone-event", 8000))
    b = leg_spec(("127.0.0.1", 2), codec=PCMA, dtmf=PayloadType(96, "telephone-event", 8000))
    table, xcode, audio_pt, dtmf_ok = remap_table(a, b)
    assert table[0] == 8 and table[0x80] == 0x88  # PCMU -> PCMA, marker kept
    assert table[101] == 96 and table[0x80 | 101] == 0x80 | 96
    assert table[13] == 13  # comfort noise, not negotiated: untouched
    assert xcode == ULAW_TO_ALAW and audio_pt == 0 and dtmf_ok
    same = remap_table(a, a)
    assert same[0] == IDENTITY and same[1] is None
    no_dtmf = leg_spec(("127.0.0.1", 3), dtmf=None)
    assert remap_table(a, no_dtmf)[3] is False  # DTMF cannot be delivered there
    assert TEL_EVENT.pt == 101


def test_plain_call_runs_on_the_fast_path_once_latched(relay: tuple[Relay, list[Event]]) -> None:
    r, events = relay
    a, b = Phone(), Phone()
    try:
        pa, pb = r.allocate(1, "c", (leg_spec(a.addr), leg_spec(b.addr)), AllocFlags.NONE)
        a.send(pa, b"\x01" * 160)
        b.send(pb, b"\x02" * 160)
        _spin(r, 0.1)
        kinds = {r._fdmap[_open(leg.rtp).fileno()][0] for leg in r.sessions[1].legs}
        assert kinds == {0}  # K_FAST: connected both ways, nothing to rewrite
        assert {(e.leg, e.port) for e in events if isinstance(e, Latched)} == {
            (0, a.addr[1]),
            (1, b.addr[1]),
        }
        assert b.recv(0.5) is not None and a.recv(0.5) is not None
    finally:
        a.close()
        b.close()


def test_mode_is_internal_and_only_user_space_exists_yet(relay: tuple[Relay, list[Event]]) -> None:
    r, _ = relay
    r.allocate(1, "c", (leg_spec(), leg_spec()), AllocFlags.NONE)
    with pytest.raises(RelayError):
        r.set_mode(1, Mode.KERNEL)
    r.set_mode(1, Mode.RELAY)
    assert r.sessions[1].mode is Mode.RELAY
    assert r.session_counters(1)["mode_kernel"] == 0


def test_inactive_phone_sends_nothing_through(relay: tuple[Relay, list[Event]]) -> None:
    r, _ = relay
    a, b = Phone(), Phone()
    try:
        pa, _ = r.allocate(
            1,
            "c",
            (leg_spec(a.addr, direction=Direction.INACTIVE), leg_spec(b.addr)),
            AllocFlags.NONE,
        )
        a.send(pa, b"\x01" * 160)
        _spin(r, 0.1)
        assert b.recv(0.2) is None
        assert r.session_counters(1)["leg0_drop_inactive"] == 1
    finally:
        a.close()
        b.close()


def test_delete_closes_every_socket_and_returns_ports(relay: tuple[Relay, list[Event]]) -> None:
    r, _ = relay
    a, b = Phone(), Phone()
    try:
        free = len(r.ports)
        pa, pb = r.allocate(1, "c", (leg_spec(a.addr), leg_spec(b.addr)), AllocFlags.NONE)
        a.send(pa, b"\x01" * 160)
        b.send(pb, b"\x01" * 160)
        _spin(r, 0.1)
        fds = {
            _open(s).fileno()
            for leg in r.sessions[1].legs
            for s in (leg.rtp, leg.rtcp, leg.catcher)
        }
        assert len(fds) == 6  # RTP, RTCP and catcher per leg
        stats = r.delete(1)
        assert stats[0].packets_in == 1 and stats[1].packets_out == 1
        assert len(r.ports) == free and not fds & set(r._fdmap)
    finally:
        a.close()
        b.close()


def test_packets_queued_before_the_latch_is_final_are_all_relayed(
    relay: tuple[Relay, list[Event]],
) -> None:
    """Regression: the drain at connect() time handed a fast-path entry to the
    generic path, which took its PT table for a destination address."""
    r, _ = relay
    a, b = Phone(), Phone()
    try:
        pa, pb = r.allocate(1, "c", (leg_spec(a.addr), leg_spec(b.addr)), AllocFlags.NONE)
        b.send(pb, b"\x00" * 160)
        _spin(r, 0.05)  # b's leg is final: a's packets can take the fast path
        for i in range(5):
            a.send(pa, bytes([i + 1]) * 160)  # queued before the loop reads any
        _spin(r, 0.1)
        assert [p[12] for p in b.recv_all(0.2)] == [1, 2, 3, 4, 5]
        assert r.internal_errors == 0
    finally:
        a.close()
        b.close()


def test_busy_polling_relays_the_same() -> None:
    base = free_port_base(20)
    r = Relay("127.0.0.1", base, base + 19, busy_poll=0.001)
    a, b = Phone(), Phone()
    try:
        pa, pb = r.allocate(1, "c", (leg_spec(a.addr), leg_spec(b.addr)), AllocFlags.NONE)
        b.send(pb, b"\x00" * 160)
        for i in range(20):
            a.send(pa, bytes([i]) * 160)
        _spin(r, 0.1)
        assert len(b.recv_all(0.2)) == 20 and a.recv(0.5) is not None
    finally:
        a.close()
        b.close()
        r.close()


def test_srtp_calls_run_on_the_in_place_fast_path_once_latched(
    relay: tuple[Relay, list[Event]],
) -> None:
    """SRTP on both legs (re-keyed) and SRTP to plain: once latched, each
    leg's entry is K_SFAST (decrypt and re-encrypt in the buffer), and what
    arrives is what the other phone sent, under the right key."""
    import pylibsrtp

    from bearer.delivery import K_FAST, K_SFAST
    from softswitch.protocol import SrtpKey, SrtpSuite

    s80, s32 = SrtpSuite.AES_CM_128_HMAC_SHA1_80, SrtpSuite.AES_CM_128_HMAC_SHA1_32
    key_a, key_b = SrtpKey(s80, bytes(range(30))), SrtpKey(s32, bytes(range(40, 70)))

    def session(key: SrtpKey, outbound: bool) -> pylibsrtp.Session:
        P = pylibsrtp.Policy
        kind = P.SSRC_ANY_OUTBOUND if outbound else P.SSRC_ANY_INBOUND
        return pylibsrtp.Session(P(key=key.key, ssrc_type=kind, srtp_profile=int(key.suite)))

    r, _ = relay
    a, b, c = Phone(), Phone(), Phone()
    try:
        both = (
            leg_spec(a.addr).with_srtp(key_a, s80),
            leg_spec(b.addr).with_srtp(key_b, s32),
        )
        pa, pb = r.allocate(1, "srtp", both, AllocFlags.NONE)
        pa2, pc = r.allocate(
            2, "mixed", (leg_spec(a.addr).with_srtp(key_a, s80), leg_spec(c.addr)), AllocFlags.NONE
        )
        legs = r.sessions[1].legs
        local_a, local_b = (leg.srtp.local for leg in legs if leg.srtp is not None)
        a_tx, b_tx = session(key_a, True), session(key_b, True)
        a2_tx = session(key_a, True)
        seq = 0

        def rtp(payload: bytes, ssrc: int) -> bytes:
            nonlocal seq
            seq += 1
            return (
                bytes([0x80, 0, seq >> 8, seq & 0xFF])
                + (seq * 160).to_bytes(4, "big")
                + ssrc.to_bytes(4, "big")
                + payload
            )

        a.send_raw(pa, a_tx.protect(rtp(b"\x01" * 160, 1)))
        b.send_raw(pb, b_tx.protect(rtp(b"\x02" * 160, 2)))
        a.send_raw(pa2, a2_tx.protect(rtp(b"\x03" * 160, 3)))
        c.send(pc, b"\x04" * 160)
        _spin(r, 0.1)
        for sid in (1, 2):
            kinds = {r._fdmap[_open(leg.rtp).fileno()][0] for leg in r.sessions[sid].legs}
            assert kinds == {K_SFAST}, (sid, kinds)
        assert K_FAST != K_SFAST
        b.recv_all(0.2), a.recv_all(0.2), c.recv_all(0.2)  # the latching packets
        for i in range(10):
            a.send_raw(pa, a_tx.protect(rtp(bytes([10 + i]) * 160, 1)))
            b.send_raw(pb, b_tx.protect(rtp(bytes([30 + i]) * 160, 2)))
            a.send_raw(pa2, a2_tx.protect(rtp(bytes([50 + i]) * 160, 3)))
        a.send_raw(pa, b"\x80" + b"\x00" * 180)  # forged: fails authentication
        _spin(r, 0.1)
        assert local_a is not None and local_b is not None
        b_rx, a_rx = session(local_b, False), session(local_a, False)
        got_b = [b_rx.unprotect(p)[12] for p in b.recv_all(0.2)]
        got_a = [a_rx.unprotect(p)[12] for p in a.recv_all(0.2)]
        assert got_b == list(range(10, 20)) and got_a == list(range(30, 40))
        assert [p[12] for p in c.recv_all(0.2)] == list(range(50, 60))  # plain towards c
        assert legs[0].c[S.SRTP] == 1 and r.internal_errors == 0
    finally:
        a.close()
        b.close()
        c.close()

"""Session life through a real bearer: stats, RTCP, hold, re-INVITE, capacity, ports."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from bearer.rtp import ReceiverReport, ReportBlock, SenderReport
from bench.harness.bearer import BearerProcess, Phone, leg_spec, start_bearer
from softswitch.protocol import Allocate, Delete, Deleted, Direction, ErrorCode, ErrorReply


def _rtcp_socket(rtp: Phone) -> socket.socket:
    """A phone's RTCP socket (on any port: the bearer latches RTCP too)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_sequence_gaps_count_as_loss_and_irregular_timing_as_jitter(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    pa, _ = ctl.allocate(1, (leg_spec(a.addr), leg_spec(b.addr))).ports
    for i in range(40):
        if i % 10 == 5:
            a.seq = (a.seq + 1) & 0xFFFF  # one packet "lost" in every ten
            a.ts = (a.ts + 160) & 0xFFFFFFFF
        a.send(pa, b"\xff" * 160)
        time.sleep(0.005 if i % 2 else 0.035)  # 20 ms on average, jittery
    time.sleep(0.6)  # a housekeeping pass (every 0.5 s) accounts the gaps so far
    a.seq = (a.seq + 20000) & 0xFFFF  # the phone restarts its sender: not loss (A.1)
    for _ in range(5):
        a.send(pa, b"\xff" * 160)
    time.sleep(0.6)  # a housekeeping pass between the two streams
    for _ in range(5):
        a.send(pa, b"\xff" * 160)
    assert len(b.recv_all()) == 50
    st = ctl.stats(1)
    assert st["leg0_lost"] == 4
    assert st["leg0_jitter_ms"] >= 3.0
    whole = ctl.stats(0)
    assert whole["lost"] == 4 and whole["jitter_ms_max"] >= 3.0
    reply = ctl.request(Delete(1))
    assert isinstance(reply, Deleted)
    assert reply.legs[0].packets_lost == 4 and reply.legs[0].jitter_us >= 3000
    assert reply.legs[1].packets_out == 50


def test_rtcp_is_relayed_and_gives_loss_and_round_trip_time(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b = phones[0], phones[1]
    a_rtcp, b_rtcp = _rtcp_socket(a), _rtcp_socket(b)
    try:
        ctl = bearer.client()
        pa, pb = ctl.allocate(1, (leg_spec(a.addr), leg_spec(b.addr))).ports
        a.send(pa, b"\xff" * 160)
        b.send(pb, b"\xff" * 160)
        # B's RTCP socket is not at RTP+1: the bearer learns it from B's first
        # datagram (symmetric RTCP); this one is not RTCP and is counted.
        b_rtcp.sendto(b"\x80", ("127.0.0.1", pb + 1))
        time.sleep(0.05)
        sr = SenderReport(a.ssrc, 0x12345678, 0x9ABC0000, 1000, 10, 1600)
        a_rtcp.sendto(bytes(sr), ("127.0.0.1", pa + 1))
        b_rtcp.settimeout(2)
        got, _ = b_rtcp.recvfrom(2048)
        assert got == bytes(sr)  # relayed untouched
        time.sleep(0.05)
        block = ReportBlock(a.ssrc, 64, 3, 10, 80, sr.lsr, 65536 // 100)  # held 10 ms
        b_rtcp.sendto(bytes(ReceiverReport(b.ssrc, (block,))), ("127.0.0.1", pb + 1))
        a_rtcp.settimeout(2)
        rr, _ = a_rtcp.recvfrom(2048)
        assert rr == bytes(ReceiverReport(b.ssrc, (block,)))
        st = ctl.stats(1)
        assert st["leg1_rtcp_fraction_lost"] == 0.25 and st["leg1_rtcp_cumulative_lost"] == 3
        assert st["leg1_rtcp_jitter"] == 80
        assert 0 <= st["leg1_rtcp_rtt_ms"] < 500
        assert st["leg1_drop_rtcp_invalid"] == 1
    finally:
        a_rtcp.close()
        b_rtcp.close()


def test_phone_on_hold_gets_no_media(bearer: BearerProcess, phones: list[Phone]) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    pa, pb = ctl.allocate(1, (leg_spec(a.addr), leg_spec(b.addr))).ports
    a.send(pa, b"\x01" * 160)
    assert b.recv() is not None
    # B puts A on hold: B's SDP says sendonly, so B receives nothing (RFC 3264 §8.4).
    ctl.update(1, 1, leg_spec(b.addr, direction=Direction.SENDONLY))
    a.send(pa, b"\x02" * 160)
    b.send(pb, b"\x03" * 160)  # B's music on hold still reaches A
    assert b.recv(0.3) is None
    assert a.recv() is not None
    assert ctl.stats(1)["leg0_drop_inactive"] == 1
    ctl.update(1, 1, leg_spec(b.addr))  # resumed
    a.send(pa, b"\x04" * 160)
    assert b.recv() is not None


def test_reinvite_to_a_new_address_relatches(bearer: BearerProcess, phones: list[Phone]) -> None:
    a, b, b2, _ = phones
    ctl = bearer.client()
    pa, pb = ctl.allocate(1, (leg_spec(a.addr), leg_spec(b.addr))).ports
    b.send(pb, b"\x01" * 160)
    assert a.recv() is not None
    ctl.update(1, 1, leg_spec(b2.addr))  # B moved (another network, a re-INVITE)
    b2.send(pb, b"\x02" * 160)
    got = a.recv()
    assert got is not None and got[12] == 2
    b.send(pb, b"\x03" * 160)  # the old address is a stranger now
    a.send(pa, b"\x04" * 160)
    assert b2.recv() is not None and b.recv(0.3) is None
    assert a.recv(0.3) is None
    assert ctl.stats(1)["leg1_lost"] == 0  # a new source, a new sequence space


def test_capacity_and_port_release(tmp_path: Path, phones: list[Phone]) -> None:
    bp = start_bearer(tmp_path, max_sessions=3, ports=12)  # 6 RTP/RTCP pairs
    try:
        ctl = bp.client()
        first = ctl.allocate(1, (leg_spec(), leg_spec())).ports
        ctl.allocate(2, (leg_spec(), leg_spec()))
        ctl.allocate(3, (leg_spec(),))
        full = ctl.request(Allocate(4, "x", (leg_spec(),)))
        assert isinstance(full, ErrorReply) and full.code == ErrorCode.NO_CAPACITY
        assert ctl.stats()["ports_free"] == 1
        ctl.request(Delete(1))
        assert ctl.stats()["ports_free"] == 3
        again = ctl.allocate(5, (leg_spec(), leg_spec())).ports
        # The never-used pair first, then the pair released longest ago.
        assert again[0] not in first and again[1] == first[0]
        assert all(p % 2 == 0 and bp.port_first <= p < bp.port_last for p in again)
    finally:
        assert bp.stop() == 0, bp.log()


def test_rtp_from_the_phone_before_the_answer_is_counted_not_sent(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a = phones[0]
    ctl = bearer.client()
    pa, _ = ctl.allocate(1, (leg_spec(a.addr), leg_spec())).ports  # callee unknown yet
    a.send(pa, b"\x01" * 160)
    time.sleep(0.1)
    st = ctl.stats(1)
    assert st["leg0_packets"] == 1 and st["leg0_drop_no_peer"] == 1
    assert struct.calcsize("!BBHII") == 12


def test_ipv6_media_latches_and_relays(tmp_path: Path) -> None:
    bp = start_bearer(tmp_path, media_address="::1")
    a, b = Phone(host="::1"), Phone(host="::1")
    try:
        ctl = bp.client()
        alloc = ctl.allocate(1, (leg_spec(a.addr), leg_spec(b.addr)))
        assert alloc.address == "::1"
        pa, pb = alloc.ports
        a.send(pa, b"\x01" * 160)
        b.send(pb, b"\x02" * 160)
        got_b, got_a = b.recv(), a.recv()
        assert got_b is not None and got_b[12] == 1 and got_a is not None and got_a[12] == 2
        st = ctl.stats(1)
        assert st["leg0_latched"] == 1 and st["leg1_latched"] == 1
        a.send(pa, b"\x03" * 160)  # the latch is final at once: the signalled source
        got_b = b.recv()
        assert got_b is not None and got_b[12] == 3
    finally:
        a.close()
        b.close()
        assert bp.stop() == 0, bp.log()

"""Plain calls through a real bearer: latching, strict source, relay, PT remapping, DTMF."""

from __future__ import annotations

import struct
import time

from bench.harness.bearer import (
    PCMA,
    PCMU,
    TEL_EVENT,
    BearerProcess,
    Phone,
    leg_spec,
)
from softswitch.protocol import Delete, Deleted, Dtmf, Latched, PayloadType


def _call(
    bearer: BearerProcess,
    a: Phone,
    b: Phone,
    sid: int = 1,
    spec_a: dict | None = None,
    spec_b: dict | None = None,
):
    """ALLOCATE with the caller's SDP, then UPDATE with the callee's answer, as control does."""
    spec_a, spec_b = spec_a or {}, spec_b or {}
    ctl = bearer.client()
    alloc = ctl.allocate(sid, (leg_spec(a.addr, **spec_a), leg_spec(**spec_b)))
    ctl.update(sid, 1, leg_spec(b.addr, **spec_b))
    return ctl, alloc.ports


def _rtp_fields(pkt: bytes) -> tuple[int, int, int, int]:
    _b0, b1, seq, ts = struct.unpack_from("!BBHI", pkt)
    return b1 & 0x7F, seq, ts, b1 & 0x80


def test_call_relays_both_ways_unchanged(bearer: BearerProcess, phones: list[Phone]) -> None:
    a, b = phones[0], phones[1]
    ctl, (pa, pb) = _call(bearer, a, b)
    for i in range(20):
        a.send(pa, bytes([i]) * 160)
        b.send(pb, bytes([100 + i]) * 160)
        time.sleep(0.002)
    got_b = b.recv_all()
    got_a = a.recv_all()
    assert len(got_b) == 20 and len(got_a) == 20
    assert [p[12] for p in got_b] == list(range(20))  # in order, payload untouched
    assert [p[12] for p in got_a] == [100 + i for i in range(20)]
    assert got_b[0][:12] == struct.pack(
        "!BBHII",
        0x80,
        0,
        (a.seq - 20) & 0xFFFF,
        got_b[0] and struct.unpack_from("!I", got_b[0], 4)[0],
        a.ssrc,
    )
    st = ctl.stats(1)
    assert st["leg0_packets"] == 20 and st["leg1_packets"] == 20
    assert st["leg0_latched"] == 1 and st["leg1_latched"] == 1
    latched = [e for e in ctl.events if isinstance(e, Latched)]
    ctl.wait_event(lambda e: isinstance(e, Latched) and e.leg == 1)
    assert {(e.leg, e.port) for e in ctl.events if isinstance(e, Latched)} >= {
        (0, a.addr[1]),
        (1, b.addr[1]),
    }
    del latched
    reply = ctl.request(Delete(1))
    assert isinstance(reply, Deleted)
    assert reply.legs[0].packets_in == 20 and reply.legs[0].packets_out == 20
    assert reply.legs[0].bytes_in == 20 * 172 and reply.legs[0].packets_lost == 0


def test_leg_latches_to_first_source_and_drops_bleed(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    """A phone behind NAT: control signalled one address, packets come from another."""
    a, b, intruder, signalled = phones
    ctl = bearer.client()
    ports = ctl.allocate(2, (leg_spec(signalled.addr), leg_spec(b.addr))).ports
    for i in range(5):
        a.send(ports[0], bytes([i]) * 160)  # the real source, not what the SDP said
        time.sleep(0.005)
    assert len(b.recv_all()) == 5
    for _ in range(5):
        intruder.send(ports[0], bytes([0xEE]) * 160)  # RTP bleed from a third address
    time.sleep(1.2)  # past the latch grace: the latch becomes final
    for _ in range(5):
        intruder.send(ports[0], bytes([0xEE]) * 160)
        a.send(ports[0], bytes([0x11]) * 160)
    got = b.recv_all()
    assert len(got) == 5 and all(p[12] == 0x11 for p in got)
    st = ctl.stats(2)
    assert st["leg0_drop_bleed"] == 10
    assert ctl.stats(0)["drop_bleed"] >= 10
    # Symmetric RTP: b's packets go to where a really sends from.
    b.send(ports[1], b"\x22" * 160)
    assert a.recv(1.0) is not None
    assert signalled.recv(0.2) is None


def test_signalled_source_wins_over_an_earlier_stranger(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b, stranger, _ = phones
    ctl = bearer.client()
    ports = ctl.allocate(3, (leg_spec(a.addr), leg_spec(b.addr))).ports
    stranger.send(ports[0], b"\xee" * 160)  # first, but not the signalled address
    time.sleep(0.05)
    a.send(ports[0], b"\x11" * 160)
    time.sleep(0.05)
    stranger.send(ports[0], b"\xee" * 160)
    a.send(ports[0], b"\x11" * 160)
    got = b.recv_all()
    assert [p[12] for p in got] == [0xEE, 0x11, 0x11]
    assert ctl.stats(3)["leg0_drop_bleed"] == 1


def test_payload_types_are_remapped_between_legs(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b = phones[0], phones[1]
    dyn_a = PayloadType(101, "telephone-event", 8000)
    dyn_b = PayloadType(96, "telephone-event", 8000)
    _ctl, (pa, pb) = _call(bearer, a, b, spec_a={"dtmf": dyn_a}, spec_b={"dtmf": dyn_b})
    a.send(pa, bytes([1, 0x0A, 0, 160]), pt=101, marker=True)  # digit 1, volume 10
    a.send(pa, b"\x55" * 160, pt=0)
    got = b.recv_all()
    assert [_rtp_fields(p)[0] for p in got] == [96, 0]
    assert _rtp_fields(got[0])[3] == 0x80  # marker kept
    b.send(pb, bytes([2, 0x8A, 0, 160]), pt=96)
    back = a.recv()
    assert back is not None and _rtp_fields(back)[0] == 101


def test_dtmf_digit_is_reported_once_and_passes_through(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b = phones[0], phones[1]
    ctl, (pa, _pb) = _call(bearer, a, b)
    ts = a.ts
    # RFC 4733 §2.5: same timestamp for the whole event, growing duration, E bit x3.
    for dur, end in (
        (160, False),
        (320, False),
        (480, False),
        (640, True),
        (640, True),
        (640, True),
    ):
        a.ts = ts
        a.send(
            pa,
            bytes([5, 0x80 | 10 if end else 10]) + dur.to_bytes(2, "big"),
            pt=101,
            marker=dur == 160,
        )
        time.sleep(0.005)
    got = b.recv_all()
    assert len(got) == 6 and all(_rtp_fields(p)[0] == 101 for p in got)
    ev = ctl.wait_event(lambda e: isinstance(e, Dtmf))
    assert (ev.session_id, ev.leg, ev.digit, ev.duration_ms) == (1, 0, "5", 80)
    time.sleep(0.3)
    ctl._receive(0.2)
    assert sum(isinstance(e, Dtmf) for e in ctl.events) == 1


def test_pcmu_leg_to_pcma_leg_is_transcoded(bearer: BearerProcess, phones: list[Phone]) -> None:
    from bearer.codecs import ULAW_TO_ALAW

    a, b = phones[0], phones[1]
    _ctl, (pa, _pb) = _call(bearer, a, b, spec_b={"codec": PCMA})
    payload = bytes(range(256))[:160]
    a.send(pa, payload, pt=0)
    got = b.recv()
    assert got is not None and _rtp_fields(got)[0] == 8
    assert got[12:] == payload.translate(ULAW_TO_ALAW)
    assert PCMU.pt == 0 and TEL_EVENT.pt == 101

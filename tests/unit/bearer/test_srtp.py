"""SRTP on the bearer without I/O: the protocol's key fields, a leg's keys,
and the packet path decrypting from one phone and re-encrypting for the other.

The "phones" are pylibsrtp sessions keyed the way a phone would be from the
SDP: the phone protects with the key it offered (control's EXT_SRTP_REMOTE)
and unprotects with the key the bearer made for its leg (ALLOCATED).
"""

from __future__ import annotations

import struct
from typing import Any, cast

import pylibsrtp
import pytest

from bearer import leg as S
from bearer.conference import ConferenceOut
from bearer.delivery import K_PATH, Delivery
from bearer.mixer import Mixer
from bearer.remap import remap_table
from bearer.session import Session
from bearer.srtp import protecting
from softswitch.protocol import (
    Allocated,
    AllocFlags,
    LegSpec,
    PayloadType,
    SrtpKey,
    SrtpSuite,
    Updated,
    decode,
    encode,
)
from tests.unit.bearer.test_session import PHONE_A, PHONE_B, T0, FakeHost

PCMU = PayloadType(0, "PCMU", 8000)
S80 = SrtpSuite.AES_CM_128_HMAC_SHA1_80
S32 = SrtpSuite.AES_CM_128_HMAC_SHA1_32
KEY_A = SrtpKey(S80, bytes(range(30)))
KEY_B = SrtpKey(S32, bytes(range(100, 130)))


def plain_spec(addr: tuple[str, int]) -> LegSpec:
    return LegSpec(addr[0], addr[1], (PCMU,), 0)


def srtp_spec(addr: tuple[str, int], remote: SrtpKey | None, local: SrtpSuite | None) -> LegSpec:
    return plain_spec(addr).with_srtp(remote, local)


def phone(key: SrtpKey, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key.key, ssrc_type=kind, srtp_profile=key.suite))


def rtp(seq: int, payload: bytes, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


# ---------------------------------------------------------------------- protocol


def test_srtp_tlvs_round_trip_and_never_show_in_a_repr() -> None:
    spec = srtp_spec(PHONE_A, KEY_A, S32)
    back = LegSpec.unpack(_reader(spec.pack()))
    assert back == spec
    assert back.srtp_remote == KEY_A and back.srtp_local is S32 and back.srtp
    assert not plain_spec(PHONE_A).srtp
    for text in (repr(spec), repr(KEY_A), str(spec)):
        assert KEY_A.key.hex() not in text and repr(KEY_A.key) not in text


def test_allocated_and_updated_carry_keys_and_are_unchanged_without() -> None:
    plain = Allocated(5, "127.0.0.1", (30000, 30002))
    old_body = plain.pack_body()
    assert Allocated(5, "127.0.0.1", (30000, 30002), (None, None)).pack_body() == old_body
    keyed = Allocated(5, "127.0.0.1", (30000, 30002), (None, KEY_B))
    got = decode(encode(keyed, 1, 1)).message
    assert got == keyed and got.keys == (None, KEY_B)
    assert KEY_B.key.hex() not in repr(got) and repr(KEY_B.key) not in repr(got)
    assert decode(encode(plain, 1, 1)).message == plain
    assert decode(encode(Updated(5, KEY_A), 2, 1)).message == Updated(5, KEY_A)
    assert decode(encode(Updated(5), 2, 1)).message == Updated(5)
    assert len(Updated(5).pack_body()) == 8


def test_a_malformed_key_tlv_is_refused() -> None:
    bad = plain_spec(PHONE_A).with_srtp(None, None)
    bad = LegSpec(bad.address, bad.port, bad.payload_types, 0, extensions=((1, b"\x01short"),))
    s = Session(1, "c", AllocFlags.NONE, T0, FakeHost())
    with pytest.raises(Exception, match="SRTP key TLV"):
        s.start((bad, plain_spec(PHONE_B)), T0)


# ---------------------------------------------------------------------- keys


def test_each_leg_gets_its_own_key_kept_across_updates_until_the_suite_changes() -> None:
    s = Session(1, "c", AllocFlags.NONE, T0, FakeHost())
    s.start((srtp_spec(PHONE_A, KEY_A, S80), srtp_spec(PHONE_B, None, S80)), T0)
    ka, kb = s.keys()
    assert ka is not None and kb is not None and ka.key != kb.key
    assert KEY_A.key not in (ka.key, kb.key)  # never the phone's own key back
    s.update(1, srtp_spec(PHONE_B, KEY_B, S80), T0)
    assert s.keys()[1] == kb  # the answer arrived: same local key
    s.update(1, srtp_spec(PHONE_B, KEY_B, S32), T0)
    k32 = s.keys()[1]
    assert k32 is not None and k32.suite is S32 and k32.key != kb.key
    s.update(1, plain_spec(PHONE_B), T0)
    assert s.keys() == (ka, None) and s.legs[1].srtp is None


# ---------------------------------------------------------------------- packet path


class Wire:
    """A leg's out: what would have gone on the wire."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: Any) -> None:
        self.sent.append(bytes(data))


def relay_path(a_spec: LegSpec, b_spec: LegSpec) -> tuple[Session, Delivery, Any, Wire]:
    """Session + Delivery with A's entry built as the relay would for a final latch."""
    s = Session(1, "c", AllocFlags.NONE, T0, FakeHost())
    s.start((a_spec, b_spec), T0)
    buf = bytearray(2048)
    delivery = Delivery(buf, {}, ConferenceOut(Mixer(capacity=2)), lambda e: None)
    wire = Wire()
    a, b = s.legs
    out: Any = wire.send
    if b.srtp is not None:
        assert b.srtp.tx is not None
        out = protecting(b.srtp.tx, out)
    entry = (K_PATH, None, out, a.c, None, -1, 8000.0, remap_table(a.spec, b.spec), a)
    return s, delivery, entry, wire


def feed(delivery: Delivery, entry: Any, packet: bytes) -> None:
    """What the relay's _slow does for a K_PATH packet of an SRTP or plain leg."""
    buf = delivery._buf
    buf[: len(packet)] = packet
    n = len(packet)
    leg = entry[8]
    if leg.srtp is not None:
        n = delivery.unprotect(leg, n)
        if n < 0:
            return
    delivery.deliver(entry, n, T0)


def test_srtp_both_legs_is_decrypted_and_re_encrypted_with_the_other_legs_key() -> None:
    s, delivery, entry, wire = relay_path(
        srtp_spec(PHONE_A, KEY_A, S80), srtp_spec(PHONE_B, KEY_B, S32)
    )
    a_tx = phone(KEY_A, outbound=True)
    kb = s.keys()[1]
    assert kb is not None
    b_rx = phone(kb, outbound=False)
    payloads = [bytes([i]) * 160 for i in range(5)]
    for i, p in enumerate(payloads):
        feed(delivery, entry, a_tx.protect(rtp(100 + i, p)))
    assert len(wire.sent) == 5
    for i, (p, sent) in enumerate(zip(payloads, wire.sent, strict=True)):
        assert p not in sent  # encrypted on the wire
        assert len(sent) == 12 + 160 + 4  # HMAC-SHA1-32 towards B
        assert b_rx.unprotect(sent) == rtp(100 + i, p)
    assert s.legs[0].c[S.PKTS] == 5 and s.legs[0].c[S.SRTP] == 0


def test_srtp_to_plain_rtp_and_bad_packets_are_counted_drops() -> None:
    s, delivery, entry, wire = relay_path(srtp_spec(PHONE_A, KEY_A, S80), plain_spec(PHONE_B))
    a_tx = phone(KEY_A, outbound=True)
    good = a_tx.protect(rtp(1, b"\x55" * 160))
    feed(delivery, entry, good)
    assert wire.sent == [rtp(1, b"\x55" * 160)]
    tampered = bytearray(a_tx.protect(rtp(2, b"\x55" * 160)))
    tampered[20] ^= 1
    feed(delivery, entry, bytes(tampered))
    feed(delivery, entry, good)  # a replay
    feed(delivery, entry, rtp(3, b"\x55" * 160))  # plain RTP on an SRTP leg
    assert len(wire.sent) == 1
    assert s.legs[0].c[S.SRTP] == 3


def test_plain_rtp_to_an_srtp_leg_is_encrypted() -> None:
    s, delivery, entry, wire = relay_path(plain_spec(PHONE_A), srtp_spec(PHONE_B, KEY_B, S80))
    kb = s.keys()[1]
    assert kb is not None and s.keys()[0] is None
    feed(delivery, entry, rtp(9, b"\x11" * 160))
    assert phone(kb, outbound=False).unprotect(wire.sent[0]) == rtp(9, b"\x11" * 160)
    assert len(wire.sent[0]) == 12 + 160 + 10  # HMAC-SHA1-80


def _reader(data: bytes) -> Any:
    from softswitch.protocol.primitives import _Reader

    return _Reader(data)


class RtcpSocket:
    """A leg's RTCP socket: hands out one datagram, records what is sent."""

    def __init__(self, incoming: bytes = b"") -> None:
        self.incoming = incoming
        self.sent: list[tuple[bytes, Any]] = []

    def recvfrom_into(self, buf: bytearray) -> tuple[int, tuple[str, int]]:
        buf[: len(self.incoming)] = self.incoming
        return len(self.incoming), (PHONE_A[0], PHONE_A[1] + 1)

    def sendto(self, data: bytes, dest: Any) -> None:
        self.sent.append((bytes(data), dest))

    def fileno(self) -> int:
        return id(self)

    def close(self) -> None:
        pass


def test_srtcp_is_decrypted_for_the_stats_and_reencrypted_for_the_other_phone() -> None:
    s, delivery, _entry, _wire = relay_path(
        srtp_spec(PHONE_A, KEY_A, S80), srtp_spec(PHONE_B, KEY_B, S32)
    )
    a, b = s.legs
    # An RTCP receiver report (RFC 3550 §6.4.2) with one block: 2% lost.
    block = struct.pack("!IB3sIIII", 0x99, 5, (7).to_bytes(3, "big"), 1000, 20, 0, 0)
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0x1234) + block
    a_rtcp, b_rtcp = RtcpSocket(phone(KEY_A, outbound=True).protect_rtcp(rr)), RtcpSocket()
    a.rtcp, b.rtcp = cast(Any, a_rtcp), cast(Any, b_rtcp)
    delivery.rtcp(a, T0)
    assert a.rtcp_stats["rtcp_cumulative_lost"] == 7  # read after decryption
    ((sent, dest),) = b_rtcp.sent
    assert dest == (PHONE_B[0], PHONE_B[1] + 1) and rr not in sent
    kb = s.keys()[1]
    assert kb is not None
    assert phone(kb, outbound=False).unprotect_rtcp(sent) == rr  # SRTCP keeps its 80-bit tag
    a_rtcp.incoming = rr
    delivery.rtcp(a, T0)  # plain RTCP on an SRTP leg: dropped and counted
    assert len(b_rtcp.sent) == 1 and a.c[S.SRTP] == 1

"""SRTP through a real bearer: one leg SRTP and the other plain, and both SRTP
with different keys; the phones are pylibsrtp sessions keyed as from SDES."""

from __future__ import annotations

import time

import pylibsrtp

from bench.harness.bearer import BearerProcess, Phone, build_rtp, leg_spec
from softswitch.protocol import Delete, SrtpKey, SrtpSuite, Updated

S80 = SrtpSuite.AES_CM_128_HMAC_SHA1_80
S32 = SrtpSuite.AES_CM_128_HMAC_SHA1_32
KEY_A = SrtpKey(S80, bytes(range(30)))
KEY_B = SrtpKey(S32, bytes(range(50, 80)))


def _session(key: SrtpKey, outbound: bool) -> pylibsrtp.Session:
    kind = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key=key.key, ssrc_type=kind, srtp_profile=key.suite))


def _send(phone: Phone, port: int, payload: bytes, tx: pylibsrtp.Session | None) -> bytes:
    pkt = build_rtp(0, phone.seq, phone.ts, phone.ssrc, payload, False)
    phone.seq = (phone.seq + 1) & 0xFFFF
    phone.ts = (phone.ts + len(payload)) & 0xFFFFFFFF
    wire = pkt if tx is None else tx.protect(pkt)
    phone.send_raw(port, wire)
    return wire


def _exchange(
    a: Phone,
    b: Phone,
    pa: int,
    pb: int,
    a_tx: pylibsrtp.Session | None,
    b_tx: pylibsrtp.Session | None,
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    sent_by_a = []
    for i in range(20):
        sent_by_a.append(_send(a, pa, bytes([i]) * 160, a_tx))
        _send(b, pb, bytes([100 + i]) * 160, b_tx)
        time.sleep(0.002)
    return sent_by_a, b.recv_all(), a.recv_all()


def test_srtp_leg_to_plain_leg(bearer: BearerProcess, phones: list[Phone]) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    alloc = ctl.allocate(1, (leg_spec(a.addr).with_srtp(KEY_A, S80), leg_spec()))
    ka = alloc.keys[0]
    assert ka is not None and ka.suite is S80 and ka.key != KEY_A.key and alloc.keys[1] is None
    reply = ctl.update(1, 1, leg_spec(b.addr))
    assert isinstance(reply, Updated) and reply.key is None
    pa, pb = alloc.ports
    _sent, got_b, got_a = _exchange(a, b, pa, pb, _session(KEY_A, True), None)
    assert [p[12:] for p in got_b] == [bytes([i]) * 160 for i in range(20)]  # plain for B
    a_rx = _session(ka, False)
    assert len(got_a) == 20
    assert all(bytes([100 + i]) * 160 not in p for i, p in enumerate(got_a))  # encrypted
    assert [a_rx.unprotect(p)[12:] for p in got_a] == [bytes([100 + i]) * 160 for i in range(20)]
    # A forged packet on the SRTP leg is dropped and counted, never relayed.
    a.send(pa, b"\x00" * 170)
    assert b.recv_all(timeout=0.2) == []
    st = ctl.stats(1)
    assert st["leg0_drop_srtp"] == 1 and st["leg0_packets"] == 20
    ctl.request(Delete(1))


def test_srtp_both_legs_with_different_keys(bearer: BearerProcess, phones: list[Phone]) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    specs = (leg_spec(a.addr).with_srtp(KEY_A, S80), leg_spec().with_srtp(None, S32))
    alloc = ctl.allocate(2, specs)
    ka, kb = alloc.keys
    assert ka is not None and kb is not None and ka.key != kb.key and kb.suite is S32
    reply = ctl.update(2, 1, leg_spec(b.addr).with_srtp(KEY_B, S32))
    assert isinstance(reply, Updated) and reply.key == kb  # the answer does not re-key
    pa, pb = alloc.ports
    sent_by_a, got_b, got_a = _exchange(a, b, pa, pb, _session(KEY_A, True), _session(KEY_B, True))
    assert len(got_b) == 20 and len(got_a) == 20
    assert not set(sent_by_a) & set(got_b)  # re-keyed, never relayed as it came
    b_rx, a_rx = _session(kb, False), _session(ka, False)
    assert [b_rx.unprotect(p)[12:] for p in got_b] == [bytes([i]) * 160 for i in range(20)]
    assert [a_rx.unprotect(p)[12:] for p in got_a] == [bytes([100 + i]) * 160 for i in range(20)]
    assert all(len(p) == 12 + 160 + 4 for p in got_b)  # _32 towards B, _80 towards A
    assert all(len(p) == 12 + 160 + 10 for p in got_a)
    ctl.request(Delete(2))
    assert KEY_A.key.hex() not in bearer.log() and ka.key.hex() not in bearer.log()

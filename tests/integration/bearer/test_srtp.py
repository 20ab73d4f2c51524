"""SRTP through a real bearer: one leg SRTP and the other plain, both SRTP
with different keys, and SRTP with transcoding, recording and a conference
(decrypt, then process); the phones are pylibsrtp sessions keyed as from SDES."""

from __future__ import annotations

import time
import wave

import numpy as np
import pylibsrtp

from bearer.codecs import alaw_decode
from bench.harness.bearer import PCMA, BearerProcess, Phone, build_rtp, leg_spec
from softswitch.protocol import (
    AllocFlags,
    Delete,
    Join,
    Joined,
    Record,
    RecordingDone,
    RecordReply,
    SrtpKey,
    SrtpSuite,
    Updated,
)
from tests.integration.bearer.pcm import band_energy, dominant_frequency, snr_db, tone
from tests.integration.bearer.test_media import _pcm, _stream

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


def _srtp_phone(phone: Phone, key: SrtpKey) -> Phone:
    """``phone`` sending SRTP with ``key`` from now on (what its a=crypto offered)."""
    tx = _session(key, True)
    plain_send = phone.send_raw

    def send(port: int, payload: bytes, pt: int = 0, marker: bool = False) -> None:
        pkt = build_rtp(pt, phone.seq, phone.ts, phone.ssrc, payload, marker)
        phone.seq = (phone.seq + 1) & 0xFFFF
        phone.ts = (phone.ts + len(payload)) & 0xFFFFFFFF
        plain_send(port, tx.protect(pkt))

    phone.send = send  # type: ignore[method-assign]
    return phone


def test_srtp_is_decrypted_before_transcoding_and_recording(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    """SRTP PCMU from A, transcoded to plain PCMA for B, and recorded: both hear A's tone."""
    a, b = _srtp_phone(phones[0], KEY_A), phones[1]
    ctl = bearer.client()
    pa, _pb = ctl.allocate(3, (leg_spec(a.addr).with_srtp(KEY_A, S80), leg_spec())).ports
    ctl.update(3, 1, leg_spec(b.addr, codec=PCMA))
    assert isinstance(ctl.request(Record(3, True, "srtp-3.wav")), RecordReply)
    got = _stream([(a, pa, tone(1000.0, 1.0))], [b], 1.0)[b]
    assert len(got) == 50 and all(p[1] & 0x7F == 8 for p in got)
    pcm = _pcm(got, alaw_decode)
    assert abs(dominant_frequency(pcm) - 1000.0) <= 10.0 and snr_db(pcm, 1000.0) >= 30.0
    ctl.request(Delete(3))
    done = ctl.wait_event(lambda e: isinstance(e, RecordingDone), timeout=5)
    assert isinstance(done, RecordingDone)
    with wave.open(done.path) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    assert abs(dominant_frequency(data[:, 0]) - 1000.0) < 10  # A's side, decrypted


def test_srtp_participant_in_a_conference_hears_and_is_heard(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    """One SRTP participant, one plain: each hears the other; the mix to the
    SRTP one is encrypted with the key the bearer made for it."""
    a, b = _srtp_phone(phones[0], KEY_A), phones[1]
    ctl = bearer.client()
    alloc_a = ctl.allocate(
        20, (leg_spec(a.addr).with_srtp(KEY_A, S80),), flags=AllocFlags.CONFERENCE
    )
    (ka,) = alloc_a.keys
    assert ka is not None
    pb = ctl.allocate(21, (leg_spec(b.addr),), flags=AllocFlags.CONFERENCE).ports[0]
    for sid in (20, 21):
        assert isinstance(ctl.request(Join("room-s", sid)), Joined)
    senders = [(a, alloc_a.ports[0], tone(500.0, 2.0)), (b, pb, tone(1300.0, 2.0))]
    got = _stream(senders, [a, b], 2.0)
    a_rx = _session(ka, False)
    heard_by_a = [a_rx.unprotect(p) for p in got[a]]  # authenticates every mix packet
    assert len(heard_by_a) >= 80 and len(got[b]) >= 80
    pcm_a, pcm_b = _pcm(heard_by_a)[20 * 160 :], _pcm(got[b])[20 * 160 :]
    assert band_energy(pcm_a, 1300.0) > 100 * band_energy(pcm_a, 500.0)
    assert band_energy(pcm_b, 500.0) > 100 * band_energy(pcm_b, 1300.0)

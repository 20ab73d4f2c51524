"""The control channel of a real bearer: idempotence, authentication, events, abuse."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
import wave
from pathlib import Path

import pytest

from bearer.codecs import ulaw_encode
from bench.harness.bearer import BearerProcess, Phone, leg_spec, start_bearer
from softswitch.protocol import (
    Allocate,
    Allocated,
    Delete,
    Deleted,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    MediaTimeout,
    MsgType,
    Record,
    Stats,
    encode,
)
from tests.integration.bearer.pcm import tone


def test_retransmitted_allocate_gets_identical_reply_and_allocates_once(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    ctl = bearer.client()
    msg = Allocate(7, "call-7", (leg_spec(phones[0].addr), leg_spec()))
    data = ctl.encode(msg, request_id=4242)
    raw1, reply1 = ctl.request_raw(data, 4242)
    raw2, _reply2 = ctl.request_raw(data, 4242)  # the same datagram again: a retransmission
    assert isinstance(reply1, Allocated)
    assert raw1 == raw2
    assert ctl.stats()["sessions"] == 1
    assert ctl.stats()["control_repeated_reply"] == 1
    # A new request (new id) for the same session is a control bug: refused, nothing leaks.
    again = ctl.request(msg)
    assert isinstance(again, ErrorReply) and again.code == ErrorCode.BAD_REQUEST
    assert ctl.stats()["sessions"] == 1
    assert isinstance(ctl.request(Delete(7)), Deleted)
    assert ctl.stats()["sessions"] == 0


def test_heartbeat_reply_counts_a_session_at_once(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    """The load a heartbeat reports follows ALLOCATE and DELETE immediately, not
    at the next once-a-second measurement: control would otherwise take the
    stale 0 and send the next call to the same bearer."""
    ctl = bearer.client()
    for sid in (1, 2):
        ctl.allocate(sid, (leg_spec(phones[0].addr), leg_spec()))
        hb = ctl.request(Heartbeat())
        assert isinstance(hb, HeartbeatReply) and hb.active_sessions == sid
    assert isinstance(ctl.request(Delete(1)), Deleted)
    hb = ctl.request(Heartbeat())
    assert isinstance(hb, HeartbeatReply) and hb.active_sessions == 1


def test_unknown_session_is_an_error_reply(bearer: BearerProcess) -> None:
    reply = bearer.client().request(Delete(999))
    assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.UNKNOWN_SESSION


def test_udp_control_drops_bad_hmac_and_untagged_datagrams(
    tmp_path: Path, phones: list[Phone]
) -> None:
    bp = start_bearer(tmp_path, udp=True)
    try:
        ctl = bp.client()
        good = ctl.encode(Allocate(1, "c", (leg_spec(phones[0].addr), leg_spec())), request_id=77)
        forged = good[:-1] + bytes([good[-1] ^ 1])
        for _ in range(5):
            ctl.send_raw(forged)
        ctl.send_raw(encode(Stats(0), 78, ctl.epoch))  # no tag at all
        # A bad tag gets one empty refusal under the bearer's key (a control
        # with another key learns "wrong key?", nothing more); the rest nothing.
        refusal = ctl._receive(0.5)
        assert refusal is not None and refusal.request_id == 0
        assert refusal.message == ErrorReply(MsgType.HEARTBEAT, ErrorCode.BAD_REQUEST, "")
        assert ctl._receive(0.3) is None
        st = ctl.stats()
        assert st["control_drop_bad_hmac"] == 5
        assert st["control_drop_unauthenticated"] == 1
        assert st["control_auth_refused"] == 1 and st["control_auth_refusal_limited"] == 4
        assert st["sessions"] == 0
        _, reply = ctl.request_raw(good, 77)  # the authentic one works
        assert isinstance(reply, Allocated)
        host, port = ctl.sock.getsockname()
        warnings = [line for line in bp.log().splitlines() if "failed HMAC" in line]
        assert len(warnings) == 1, bp.log()
        assert (
            f"control datagram from udp:{host}:{port} failed HMAC: different key?" in (warnings[0])
        )
    finally:
        assert bp.stop() == 0, bp.log()


def test_media_timeout_is_reported_once(tmp_path: Path, phones: list[Phone]) -> None:
    bp = start_bearer(tmp_path, media_timeout=1)
    try:
        a, b = phones[0], phones[1]
        ctl = bp.client()
        pa, pb = ctl.allocate(3, (leg_spec(a.addr), leg_spec(b.addr))).ports
        for _ in range(5):
            a.send(pa, b"\xff" * 160)
            b.send(pb, b"\xff" * 160)
            time.sleep(0.01)
        t0 = time.monotonic()
        ev = ctl.wait_event(lambda e: isinstance(e, MediaTimeout), timeout=4)
        assert isinstance(ev, MediaTimeout)
        assert ev.session_id == 3
        assert 0.8 <= time.monotonic() - t0 <= 2.5
        time.sleep(1.5)
        ctl._receive(0.3)
        assert sum(isinstance(e, MediaTimeout) for e in ctl.events) == 1
    finally:
        assert bp.stop() == 0, bp.log()


def test_sigterm_during_recording_leaves_a_valid_wav(tmp_path: Path, phones: list[Phone]) -> None:
    bp = start_bearer(tmp_path)
    try:
        a, b = phones[0], phones[1]
        ctl = bp.client()
        pa, pb = ctl.allocate(4, (leg_spec(a.addr), leg_spec(b.addr))).ports
        ctl.request(Record(4, True, "interrupted.wav"))
        sig = tone(600.0, 1.0)
        for i in range(50):
            a.send(pa, ulaw_encode(sig[i * 160 : (i + 1) * 160]).tobytes())
            b.send(pb, ulaw_encode(sig[i * 160 : (i + 1) * 160]).tobytes())
            time.sleep(0.01)
    finally:
        assert bp.stop(signal.SIGTERM) == 0, bp.log()
    path = bp.recordings / "interrupted.wav"
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        assert w.getnframes() >= 0.8 * 8000
        assert len(w.readframes(w.getnframes())) == 4 * w.getnframes()
    assert not os.path.exists(bp.control), "the socket file is removed at exit"


def test_survives_garbage_on_control_socket_and_rtp_port(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    rng = random.Random(1)
    a, b, noise, _ = phones
    ctl = bearer.client()
    pa, _pb = ctl.allocate(1, (leg_spec(a.addr), leg_spec(b.addr))).ports
    a.send(pa, b"\x01" * 160)
    assert b.recv() is not None
    junk = ctl.sock  # a bound socket: the bearer could answer it
    junk.setblocking(True)
    for i in range(10_000):
        n = rng.randrange(0, 300)
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if i % 3 == 0:
            data = b"\xc5\x53\x01" + data  # right magic and version, garbage after
        junk.sendto(data, bearer.control)
        noise.send_raw(pa, data)  # a stranger on the RTP port
        if i % 10 == 0:
            a.send_raw(pa, data[:11])  # the phone itself, too short for RTP
        if i % 100 == 99:
            # Paced, so the count measures the bearer, not the kernel's socket
            # buffer overflowing on a loaded machine (which the bearer never sees).
            time.sleep(0.01)
    time.sleep(0.5)
    while ctl._receive(0.2) is not None:  # error replies to authentic-but-bad requests
        pass
    st = ctl.stats()
    control_drops = sum(v for k, v in st.items() if k.startswith("control_drop_"))
    assert control_drops >= 6_000
    per_call = ctl.stats(1)
    assert per_call["leg0_drop_bleed"] + per_call["leg0_drop_invalid"] >= 9_000
    assert per_call["leg0_drop_invalid"] >= 1_000
    a.send(pa, b"\x02" * 160)  # still relaying
    got = b.recv_all()
    assert got and got[-1][12] == 2


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_sigint_stops_gracefully_too(tmp_path: Path, sig: int) -> None:
    bp = start_bearer(tmp_path)
    assert bp.stop(sig) == 0
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with pytest.raises(OSError):
        s.connect(bp.control)
    s.close()

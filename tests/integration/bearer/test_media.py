"""Audio through a real bearer: transcoding, a three-party conference, recording."""

from __future__ import annotations

import struct
import time
import wave
from pathlib import Path

import numpy as np

from bearer.codecs import alaw_decode, ulaw_decode, ulaw_encode
from bench.harness.bearer import PCMA, BearerProcess, Phone, leg_spec
from softswitch.protocol import (
    AllocFlags,
    Delete,
    ErrorCode,
    ErrorReply,
    Join,
    Joined,
    JoinFlags,
    Record,
    RecordingDone,
    RecordReply,
)
from tests.integration.bearer.pcm import band_energy, dominant_frequency, snr_db, tone


def _stream(
    senders: list[tuple[Phone, int, np.ndarray]], receivers: list[Phone], seconds: float
) -> dict[Phone, list[bytes]]:
    """Send 20 ms μ-law frames from each (phone, port, samples) in real time; collect replies."""
    got: dict[Phone, list[bytes]] = {p: [] for p in receivers}
    frames = int(seconds * 50)
    start = time.monotonic()
    for i in range(frames):
        for phone, port, samples in senders:
            chunk = samples[i * 160 : (i + 1) * 160]
            phone.send(port, ulaw_encode(chunk).tobytes())
        for p in receivers:
            got[p].extend(p.recv_all(0))
        delay = start + (i + 1) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for p in receivers:
        got[p].extend(p.recv_all(0.2, limit=0.2))  # a conference mix never goes quiet
    return got


def _pcm(packets: list[bytes], decode=ulaw_decode) -> np.ndarray:
    """Payloads in sequence-number order, decoded."""
    ordered = sorted(packets, key=lambda p: struct.unpack_from("!H", p, 2)[0])
    return np.concatenate([decode(p[12:]) for p in ordered]) if ordered else np.zeros(0, np.int16)


def test_pcmu_to_pcma_preserves_a_tone(bearer: BearerProcess, phones: list[Phone]) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    pa, _pb = ctl.allocate(1, (leg_spec(a.addr), leg_spec())).ports
    ctl.update(1, 1, leg_spec(b.addr, codec=PCMA))
    signal = tone(1000.0, 1.0)
    for i in range(50):
        a.send(pa, ulaw_encode(signal[i * 160 : (i + 1) * 160]).tobytes())
        time.sleep(0.001)
    packets = b.recv_all()
    assert len(packets) == 50
    assert all(p[1] & 0x7F == 8 for p in packets)  # PT 8 = PCMA (RFC 3551)
    pcm = _pcm(packets, alaw_decode)
    assert abs(dominant_frequency(pcm) - 1000.0) <= 10.0  # within 1 %
    assert snr_db(pcm, 1000.0) >= 30.0


def test_three_party_conference_each_hears_the_others_not_itself(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    ctl = bearer.client()
    freqs = [400.0, 700.0, 1100.0]
    members = phones[:3]
    ports = []
    for i, phone in enumerate(members):
        alloc = ctl.allocate(10 + i, (leg_spec(phone.addr),), flags=AllocFlags.CONFERENCE)
        ports.append(alloc.ports[0])
        reply = ctl.request(Join("room-1", 10 + i))
        assert isinstance(reply, Joined) and reply.participants == i + 1
    senders = [(p, port, tone(f, 2.0)) for p, port, f in zip(members, ports, freqs, strict=True)]
    got = _stream(senders, members, 2.0)
    for i, phone in enumerate(members):
        packets = got[phone]
        assert len(packets) >= 80, f"participant {i} got {len(packets)} packets"
        ssrcs = {struct.unpack_from("!I", p, 8)[0] for p in packets}
        assert len(ssrcs) == 1  # the bearer's own stream to this participant
        pcm = _pcm(packets)[20 * 160 :]  # past the jitter buffer's start
        energy = {f: band_energy(pcm, f) for f in freqs}
        own = energy[freqs[i]]
        others = [energy[f] for j, f in enumerate(freqs) if j != i]
        assert min(others) > 100 * own, (i, energy)
    st = ctl.stats(0)
    assert st["rooms"] == 1 and st["packets_generated"] >= 240


def test_recording_puts_caller_left_and_callee_right(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    pa, pb = ctl.allocate(5, (leg_spec(a.addr), leg_spec(b.addr))).ports
    reply = ctl.request(Record(5, True, "call-5.wav"))
    assert isinstance(reply, RecordReply) and reply.recording
    assert ctl.request(Record(5, True, "call-5.wav")) == reply  # the same again: a no-op
    _stream([(a, pa, tone(500.0, 1.5)), (b, pb, tone(900.0, 1.5))], [a, b], 1.5)
    ctl.request(Delete(5))
    done = ctl.wait_event(lambda e: isinstance(e, RecordingDone), timeout=5)
    assert isinstance(done, RecordingDone)
    path = Path(done.path)
    assert path == bearer.recordings / "call-5.wav" and done.seconds >= 1.2
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    left, right = data[:, 0], data[:, 1]
    assert abs(dominant_frequency(left) - 500.0) < 5
    assert abs(dominant_frequency(right) - 900.0) < 9
    assert band_energy(left, 900.0) < 0.01 * band_energy(left, 500.0)


def test_muted_participant_is_heard_by_nobody_but_hears_the_room(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    ctl = bearer.client()
    freqs = [500.0, 1300.0]
    members = phones[:2]
    ports = []
    for i, phone in enumerate(members):
        ports.append(
            ctl.allocate(20 + i, (leg_spec(phone.addr),), flags=AllocFlags.CONFERENCE).ports[0]
        )
        flags = JoinFlags.MUTED if i == 1 else JoinFlags.NONE
        assert isinstance(ctl.request(Join("room-2", 20 + i, 0, flags)), Joined)
    senders = [(p, port, tone(f, 1.5)) for p, port, f in zip(members, ports, freqs, strict=True)]
    got = _stream(senders, members, 1.5)
    heard_by_0 = _pcm(got[members[0]])[20 * 160 :]
    heard_by_1 = _pcm(got[members[1]])[20 * 160 :]
    assert band_energy(heard_by_0, 1300.0) < 1e-3 * max(band_energy(heard_by_1, 500.0), 1.0)
    assert abs(dominant_frequency(heard_by_1) - 500.0) < 5


def test_allocate_with_record_flag_records_from_the_start(
    bearer: BearerProcess, phones: list[Phone]
) -> None:
    a, b = phones[0], phones[1]
    ctl = bearer.client()
    pa, pb = ctl.allocate(6, (leg_spec(a.addr), leg_spec(b.addr)), flags=AllocFlags.RECORD).ports
    assert ctl.stats(6)["recording"] == 1
    # Already recording to a default name: a path now would be ignored, so it
    # is refused; no path (or stopping first) is fine.
    refused = ctl.request(Record(6, True, "late.wav"))
    assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.BAD_REQUEST
    assert "already recording" in refused.text
    again = ctl.request(Record(6, True, ""))
    assert isinstance(again, RecordReply) and again.recording
    _stream([(a, pa, tone(700.0, 0.6)), (b, pb, tone(300.0, 0.6))], [a, b], 0.6)
    ctl.request(Delete(6))
    done = ctl.wait_event(lambda e: isinstance(e, RecordingDone), timeout=5)
    assert isinstance(done, RecordingDone)
    assert done.session_id == 6 and "-6-call-6.wav" in done.path and done.seconds >= 0.4
    assert Path(done.path).parent == bearer.recordings

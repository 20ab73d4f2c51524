"""Recordings: stereo WAV, time alignment across loss, writer thread behaviour."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bearer.codecs import alaw_encode, ulaw_decode, ulaw_encode
from bearer.recorder import RecorderWriter, Recording

N = 160


def tone(freq: float, frames: int, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(frames * N) / 8000.0
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), dtype="<i2").reshape(-1, 2)
    return params, data


def dominant(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * 8000.0 / len(pcm))


def record_call(
    rec: Recording,
    frames: int,
    lost: dict[int, set[int]],
    left: bytes,
    right: bytes,
    right_codec: str = "PCMU",
) -> None:
    """Both legs send a packet per tick; random starting seq/ts per leg."""
    starts = ((1000, 123456), (50000, 2**32 - 40 * N))  # leg 1's timestamp wraps
    for i in range(frames):
        for leg, payload, codec in ((0, left, "PCMU"), (1, right, right_codec)):
            if i in lost[leg]:
                continue
            seq0, ts0 = starts[leg]
            chunk = payload[i * N : (i + 1) * N]
            assert rec.push(leg, (seq0 + i) & 0xFFFF, (ts0 + i * N) & 0xFFFFFFFF, chunk, codec)
        rec.tick()


@pytest.fixture
def writer() -> Iterator[RecorderWriter]:
    w = RecorderWriter()
    w.start()
    yield w
    w.stop()


LOST = {0: {10, 11, 57}, 1: {30, 99}}


def test_two_second_call_with_loss_is_stereo_aligned_and_full_length(
    tmp_path: Path, writer: RecorderWriter
) -> None:
    done: list[tuple[str, float]] = []
    path = tmp_path / "call.wav"
    rec = Recording(str(path), writer, done=lambda p, s: done.append((p, s)))
    left_pcm, right_pcm = tone(440.0, 100), tone(1000.0, 100)
    record_call(rec, 100, LOST, ulaw_encode(left_pcm).tobytes(), ulaw_encode(right_pcm).tobytes())
    rec.close()
    writer.stop(drain=True)

    params, data = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert abs(params.nframes / 8000 - 2.0) <= 0.040
    assert dominant(data[:, 0]) == pytest.approx(440.0, rel=0.01)
    assert dominant(data[:, 1]) == pytest.approx(1000.0, rel=0.01)
    # Lost packets became silence in place; every other frame is the sent audio
    # at exactly its original position (nothing shifted).
    for ch, pcm in ((0, left_pcm), (1, right_pcm)):
        expected = ulaw_decode(ulaw_encode(pcm)).reshape(100, N).copy()
        expected[sorted(LOST[ch])] = 0
        assert np.array_equal(data[: 100 * N, ch], expected.reshape(-1))
    assert done == [(str(path), params.nframes / 8000)]


def test_stop_with_chunks_still_queued_writes_a_complete_valid_file(tmp_path: Path) -> None:
    writer = RecorderWriter()  # not started: everything stays queued
    path = tmp_path / "queued.wav"
    rec = Recording(str(path), writer)
    sig = ulaw_encode(tone(440.0, 150)).tobytes()
    record_call(rec, 150, {0: set(), 1: set()}, sig, sig)
    rec.close()
    assert not path.exists() or path.stat().st_size == 0  # main thread wrote nothing
    writer.stop(drain=True)
    params, data = read_wav(path)
    assert params.nframes == 150 * N
    assert np.array_equal(data[:, 0], data[:, 1])


def test_recording_still_open_at_stop_is_closed_with_a_valid_header(tmp_path: Path) -> None:
    writer = RecorderWriter()
    done: list[tuple[str, float]] = []
    path = tmp_path / "open.wav"
    rec = Recording(str(path), writer, done=lambda p, s: done.append((p, s)), phase=0)
    sig = ulaw_encode(tone(440.0, 60)).tobytes()
    record_call(rec, 60, {0: set(), 1: set()}, sig, sig)  # two 500 ms chunks flushed
    writer.stop(drain=True)
    params, _ = read_wav(path)
    assert params.nframes == 50 * N
    assert done == [(str(path), 1.0)]


def test_file_is_valid_while_being_written(tmp_path: Path, writer: RecorderWriter) -> None:
    """Crash safety: the header is patched and flushed after every chunk."""
    path = tmp_path / "live.wav"
    rec = Recording(str(path), writer, phase=0)
    sig = ulaw_encode(tone(440.0, 40)).tobytes()
    record_call(rec, 40, {0: set(), 1: set()}, sig, sig)
    assert writer.wait_idle()
    params, data = read_wav(path)
    assert params.nframes == 25 * N
    assert dominant(data[:, 0]) == pytest.approx(440.0, rel=0.01)


def test_late_answer_and_codec_mix_keep_channels_in_time(
    tmp_path: Path, writer: RecorderWriter
) -> None:
    path = tmp_path / "late.wav"
    rec = Recording(str(path), writer)
    left = ulaw_encode(tone(440.0, 75)).tobytes()
    right_pcm = tone(1000.0, 50)
    right = alaw_encode(right_pcm).tobytes()
    for i in range(75):
        rec.push(0, i, i * N, left[i * N : (i + 1) * N], "PCMU")
        if i >= 25:  # callee answers after 500 ms, PCMA
            j = i - 25
            rec.push(1, j, 999 + j * N, right[j * N : (j + 1) * N], "PCMA")
        rec.tick()
    rec.close()
    writer.stop()
    params, data = read_wav(path)
    assert params.nframes == 75 * N
    assert not data[: 25 * N, 1].any()
    assert data[25 * N :, 1].any()
    assert dominant(data[25 * N :, 1]) == pytest.approx(1000.0, rel=0.01)


def test_reordered_packets_land_in_their_own_frames(tmp_path: Path, writer: RecorderWriter) -> None:
    path = tmp_path / "reorder.wav"
    rec = Recording(str(path), writer)
    levels = [ulaw_encode(np.full(N, 1000 * (k + 1), np.int16)).tobytes() for k in range(6)]
    for i in (0, 2, 1, 3, 5, 4):
        rec.push(0, i, i * N, levels[i], "PCMU")
        rec.tick()
    rec.close()
    writer.stop()
    _, data = read_wav(path)
    firsts = data[::N, 0].tolist()
    assert firsts == [int(ulaw_decode(levels[k][:1])[0]) for k in range(6)]


def test_many_recordings_at_once(tmp_path: Path, writer: RecorderWriter) -> None:
    done: list[tuple[str, float]] = []
    recs = [
        Recording(str(tmp_path / f"r{k}.wav"), writer, done=lambda p, s: done.append((p, s)))
        for k in range(40)
    ]
    sigs = [ulaw_encode(tone(300.0 + 50 * k, 50)).tobytes() for k in range(40)]
    for i in range(50):
        for k, rec in enumerate(recs):
            rec.push(0, i, i * N, sigs[k][i * N : (i + 1) * N], "PCMU")
            rec.tick()
        writer.pump()
    for rec in recs:
        rec.close()
    writer.stop()
    assert len(done) == 40 and all(s == 1.0 for _, s in done)
    for k in range(40):
        params, data = read_wav(tmp_path / f"r{k}.wav")
        assert params.nframes == 50 * N
        assert dominant(data[:, 0]) == pytest.approx(300.0 + 50 * k, rel=0.01)


def test_full_queue_drops_chunks_counted_and_keeps_duration(tmp_path: Path) -> None:
    writer = RecorderWriter(maxsize=3)  # not started: the queue fills up
    path = tmp_path / "full.wav"
    rec = Recording(str(path), writer, chunk_frames=10, phase=0)
    sig = ulaw_encode(tone(440.0, 60)).tobytes()
    record_call(rec, 60, {0: set(), 1: set()}, sig, sig)
    rec.close()
    # open + 2 chunks fit; the other 4 chunks were dropped; close waits in the backlog.
    assert writer.dropped == 4 == rec.dropped_chunks
    writer.stop(drain=True)
    params, data = read_wav(path)
    assert params.nframes == 60 * N  # dropped audio became silence, not missing time
    assert data[: 20 * N].any() and not data[20 * N :].any()


def test_unwritable_path_reports_zero_seconds(tmp_path: Path, writer: RecorderWriter) -> None:
    done: list[tuple[str, float]] = []
    path = str(tmp_path / "missing-dir" / "x.wav")
    rec = Recording(path, writer, done=lambda p, s: done.append((p, s)))
    rec.push(0, 0, 0, b"\xff" * N, "PCMU")
    rec.tick()
    rec.close()
    writer.stop()
    assert done == [(path, 0.0)]
    assert writer.errors == 1


def test_codec_names_are_case_insensitive(tmp_path: Path, writer: RecorderWriter) -> None:
    rec = Recording(str(tmp_path / "case.wav"), writer)
    assert rec.push(0, 0, 0, b"\xd5" * N, "pcma")
    rec.close()


def test_bad_packets_are_not_recorded(tmp_path: Path, writer: RecorderWriter) -> None:
    rec = Recording(str(tmp_path / "bad.wav"), writer)
    assert not rec.push(0, 0, 0, b"\xff" * 80, "PCMU")
    assert not rec.push(0, 0, 0, b"\xff" * N, "G729")
    rec.close()
    assert not rec.push(0, 1, N, b"\xff" * N, "PCMU")


def test_sender_restart_reanchors_instead_of_dropping(
    tmp_path: Path, writer: RecorderWriter
) -> None:
    path = tmp_path / "restart.wav"
    rec = Recording(str(path), writer)
    frame = ulaw_encode(np.full(N, 2000, np.int16)).tobytes()
    for i in range(20):
        ts = i * N if i < 10 else 7_000_000 + i * N  # timestamp base jumps at i = 10
        assert rec.push(0, i, ts, frame, "PCMU")
        rec.tick()
    rec.close()
    writer.stop()
    _, data = read_wav(path)
    assert len(data) == 20 * N
    assert np.all(data[:, 0] != 0)


def test_sender_clock_drifting_behind_is_reanchored_with_bounded_loss(
    tmp_path: Path, writer: RecorderWriter
) -> None:
    """Our tick runs 10 % faster than the sender's clock: its frames fall behind."""
    path = tmp_path / "drift.wav"
    rec = Recording(str(path), writer, chunk_frames=5, delay_frames=2)
    frame = ulaw_encode(np.full(N, 2000, np.int16)).tobytes()
    recorded = 0
    for i in range(300):
        recorded += rec.push(0, i, i * N, frame, "PCMU")
        rec.tick()
        if i % 10 == 9:
            rec.tick()  # an extra 20 ms passes on our side
    rec.close()
    writer.stop()
    # A packet newer than the leg's last one but already behind the written
    # audio re-anchors the leg: nothing is dropped, a 20 ms gap is left instead.
    assert recorded == 300
    assert rec.late == 0
    params, data = read_wav(path)
    assert abs(params.nframes - 330 * N) <= 2 * N
    assert np.count_nonzero(data[:, 0]) == 300 * N


def test_packet_reordered_beyond_the_delay_is_dropped_without_shifting(
    tmp_path: Path, writer: RecorderWriter
) -> None:
    path = tmp_path / "very-late.wav"
    rec = Recording(str(path), writer, chunk_frames=5, delay_frames=2)
    levels = [ulaw_encode(np.full(N, 500 * (k + 1), np.int16)).tobytes() for k in range(20)]
    for i in range(20):
        if i != 3:
            assert rec.push(0, i, 7 + i * N, levels[i], "PCMU")
        if i == 12:  # frame 3's chunk (0-4) was written at tick 7
            assert not rec.push(0, 3, 7 + 3 * N, levels[3], "PCMU")
        rec.tick()
    rec.close()
    writer.stop()
    assert rec.late == 1
    _, data = read_wav(path)
    firsts = data[::N, 0].tolist()
    want = [0 if k == 3 else int(ulaw_decode(levels[k][:1])[0]) for k in range(20)]
    assert firsts == want


def test_timestamp_restart_backwards_continues_after_previous_packet(
    tmp_path: Path, writer: RecorderWriter
) -> None:
    path = tmp_path / "back.wav"
    rec = Recording(str(path), writer)
    frame = ulaw_encode(np.full(N, 2000, np.int16)).tobytes()
    for i in range(20):
        ts = 9_000_000 + i * N if i < 10 else 5 + i * N  # base jumps back at i = 10
        assert rec.push(0, i, ts, frame, "PCMU")
        rec.tick()
    rec.close()
    writer.stop()
    _, data = read_wav(path)
    assert len(data) == 20 * N
    assert np.all(data[:, 0] != 0)


def test_recordings_started_together_flush_on_different_ticks(tmp_path: Path) -> None:
    writer = RecorderWriter()  # not started: count messages as they are queued
    recs = [Recording(str(tmp_path / f"s{k}.wav"), writer) for k in range(25)]
    frame = b"\xff" * N
    queued = writer._queue.qsize()
    per_tick: list[int] = []
    for i in range(60):
        for rec in recs:
            rec.push(0, i, i * N, frame, "PCMU")
            rec.tick()
        per_tick.append(writer._queue.qsize() - queued)
        queued = writer._queue.qsize()
    writer.stop(drain=False)
    assert sum(per_tick) >= 25  # every recording flushed at least once
    assert max(per_tick) <= 2

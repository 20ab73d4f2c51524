"""Conference mixer: tones in, everyone hears the others, jitter buffer behaviour."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bearer.codecs import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from bearer.mixer import UNDERRUN_RESET, Mixer

RATE = 8000
N = 160


def tone(freq: float, frames: int, amplitude: float = 6000.0, start: int = 0) -> np.ndarray:
    t = (np.arange(frames * N) + start * N) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def spectrum_db(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    mag = np.abs(np.fft.rfft(x)) + 1e-9
    return np.fft.rfftfreq(len(pcm), 1 / RATE), 20 * np.log10(mag)


def level_at(freqs: np.ndarray, db: np.ndarray, f: float) -> float:
    """Peak level within ±1 % of f."""
    band = (freqs >= f * 0.99) & (freqs <= f * 1.01)
    return float(db[band].max())


def peak_near(freqs: np.ndarray, db: np.ndarray, f: float) -> float:
    """Frequency of the strongest bin within ±10 % of f."""
    band = (freqs >= f * 0.9) & (freqs <= f * 1.1)
    return float(freqs[band][np.argmax(db[band])])


def frame_value(payload: bytes) -> np.ndarray:
    return ulaw_decode(payload).astype(np.int32)


class TestThreeParty:
    FREQS = {"a": 440.0, "b": 1000.0, "c": 1700.0}

    def run(self, seconds: float = 1.0) -> dict[str, np.ndarray]:
        frames = int(seconds * 1000 / 20)
        mixer = Mixer()
        signals = {pid: ulaw_encode(tone(f, frames)).tobytes() for pid, f in self.FREQS.items()}
        for pid in self.FREQS:
            mixer.join("room-1", pid, "PCMU")
        heard: dict[str, list[bytes]] = {pid: [] for pid in self.FREQS}
        for i in range(frames + 4):  # a few extra ticks drain the jitter buffer
            if i < frames:
                for seq_ts, (pid, sig) in enumerate(signals.items()):
                    payload = sig[i * N : (i + 1) * N]
                    assert mixer.push(pid, 1000 * seq_ts + i, 5000 + i * N, payload, "PCMU")
            for who, payload in mixer.tick().items():
                assert isinstance(who, str) and len(payload) == N
                heard[who].append(payload)
        return {pid: ulaw_decode(b"".join(chunks)) for pid, chunks in heard.items()}

    def test_each_participant_hears_the_other_two_tones_and_not_its_own(self) -> None:
        heard = self.run()
        for pid, pcm in heard.items():
            freqs, db = spectrum_db(pcm)
            others = [f for p, f in self.FREQS.items() if p != pid]
            own = self.FREQS[pid]
            noise = float(np.median(db))
            for f in others:
                assert peak_near(freqs, db, f) == pytest.approx(f, rel=0.01)
                assert level_at(freqs, db, f) > noise + 40.0
            weakest_other = min(level_at(freqs, db, f) for f in others)
            assert level_at(freqs, db, own) <= weakest_other - 30.0, pid

    def test_playout_starts_after_prefill(self) -> None:
        mixer = Mixer(prefill=2)
        mixer.join(1, "a")
        mixer.join(1, "b")
        loud = ulaw_encode(np.full(N, 8000, np.int16)).tobytes()
        mixer.push("a", 0, 0, loud)
        assert not frame_value(mixer.tick()["b"]).any()  # one frame buffered: wait
        mixer.push("a", 1, 160, loud)
        assert frame_value(mixer.tick()["b"]).min() > 7000  # two buffered: play


class TestSaturation:
    def test_loud_in_phase_signals_clip_instead_of_wrapping(self) -> None:
        mixer = Mixer(prefill=1)
        for pid in "abc":
            mixer.join("r", pid)
        loud = tone(100.0, 1, amplitude=30000.0)
        for pid in "ab":
            mixer.push(pid, 0, 0, ulaw_encode(loud).tobytes())
        out = frame_value(mixer.tick()["c"])
        assert out.max() == 32124 and out.min() == -32124  # μ-law's largest codes
        # Where the true sum exceeds int16, the output saturates with the right sign.
        big = np.abs(2 * ulaw_decode(ulaw_encode(loud)).astype(np.int32)) > 32767
        assert big.any()
        assert np.all(np.sign(out[big]) == np.sign(loud[big]))
        assert np.all(np.abs(out[big]) == 32124)

    def test_pcm_input_and_alaw_output(self) -> None:
        mixer = Mixer(prefill=1)
        mixer.join("r", "pcm")
        mixer.join("r", "alaw-phone", "PCMA")
        pcm = np.full(N, -32768, np.int16)
        assert mixer.push("pcm", 0, 0, pcm, "L16")
        out = mixer.tick()
        assert alaw_decode(out["alaw-phone"]).tolist() == alaw_decode(alaw_encode(pcm)).tolist()


def const_frame(value: int) -> bytes:
    return ulaw_encode(np.full(N, value, np.int16)).tobytes()


def levels(mixer: Mixer, listener: str, ticks: int) -> list[int]:
    """Decoded first-sample level the listener hears for the next ticks."""
    return [int(frame_value(mixer.tick()[listener])[0]) for _ in range(ticks)]


VALUES = [1000 * (i + 1) for i in range(8)]  # distinct μ-law-exact-ish levels per frame


def exact(v: int) -> int:
    return int(ulaw_decode(ulaw_encode(np.array([v], np.int16)))[0])


class TestJitterBuffer:
    def make(self, **kw: int) -> Mixer:
        mixer = Mixer(**kw)
        mixer.join("r", "talker")
        mixer.join("r", "listener")
        return mixer

    def test_two_swapped_packets_are_played_in_order(self) -> None:
        mixer = self.make(prefill=2)
        order = [0, 2, 1, 3, 4, 5]
        heard: list[int] = []
        for i in order:
            mixer.push("talker", i, 1000 + i * N, const_frame(VALUES[i]))
            heard += levels(mixer, "listener", 1)
        heard += levels(mixer, "listener", 3)
        played = [v for v in heard if v]
        # Then the underrun after frame 5 repeats it once.
        assert played == [exact(v) for v in VALUES[:6]] + [exact(VALUES[5])]

    def test_a_very_late_packet_is_dropped(self) -> None:
        mixer = self.make(prefill=2)
        heard: list[int] = []
        for i in (0, 1, 2, 4, 5):  # 3 is missing
            mixer.push("talker", i, i * N, const_frame(VALUES[i]))
            heard += levels(mixer, "listener", 1)
        heard += levels(mixer, "listener", 2)
        assert not mixer.push("talker", 3, 3 * N, const_frame(VALUES[3]))
        assert mixer.stats("talker") == (1, 0)
        heard += levels(mixer, "listener", 2)
        played = [v for v in heard if v]
        # Frame 3 was replaced by one repetition of frame 2, then 4 and 5 followed
        # (and one repetition of 5 when the talker stopped).
        assert played == [exact(VALUES[i]) for i in (0, 1, 2, 2, 4, 5, 5)]

    def test_underrun_repeats_last_frame_once_then_silence_then_rebuffers(self) -> None:
        mixer = self.make(prefill=1)
        mixer.push("talker", 0, 0, const_frame(VALUES[0]))
        heard = levels(mixer, "listener", 4)
        assert heard == [exact(VALUES[0]), exact(VALUES[0]), 0, 0]
        heard = levels(mixer, "listener", UNDERRUN_RESET)
        # After re-buffering, a packet with a far-off timestamp plays at once (prefill 1).
        mixer.push("talker", 7, 90000, const_frame(VALUES[3]))
        assert levels(mixer, "listener", 1) == [exact(VALUES[3])]

    def test_buffer_is_capped_when_the_sender_bursts(self) -> None:
        mixer = self.make(prefill=2, max_depth=4, depth=8)
        for i in range(3):
            mixer.push("talker", i, i * N, const_frame(VALUES[i]))
        levels(mixer, "listener", 1)
        for i in range(3, 8):  # a burst: now 7 frames queued
            mixer.push("talker", i, i * N, const_frame(VALUES[i]))
        heard = levels(mixer, "listener", 10)
        played = [v for v in heard if v]
        assert len(played) < 7  # some oldest frames were skipped to cut latency
        assert played[-1] == exact(VALUES[7])

    def test_timestamp_jump_restarts_playout(self) -> None:
        mixer = self.make(prefill=1)
        mixer.push("talker", 0, 0, const_frame(VALUES[0]))
        levels(mixer, "listener", 1)
        assert mixer.push("talker", 1, 160 * 1000, const_frame(VALUES[1]))
        assert mixer.stats("talker") == (0, 1)
        assert levels(mixer, "listener", 1) == [exact(VALUES[1])]

    def test_timestamp_wrap_is_seamless(self) -> None:
        mixer = self.make(prefill=1)
        heard: list[int] = []
        for i in range(6):
            ts = (2**32 - 3 * N + i * N) & 0xFFFFFFFF
            assert mixer.push("talker", 65533 + i, ts, const_frame(VALUES[i]))
            heard += levels(mixer, "listener", 1)
        assert heard == [exact(v) for v in VALUES[:6]]

    def test_40ms_packet_is_split_into_two_frames(self) -> None:
        mixer = self.make(prefill=1)
        mixer.push("talker", 0, 0, const_frame(VALUES[0]) + const_frame(VALUES[1]))
        assert levels(mixer, "listener", 2) == [exact(VALUES[0]), exact(VALUES[1])]

    def test_short_payload_and_unknown_participant_are_dropped(self) -> None:
        mixer = self.make()
        assert not mixer.push("talker", 0, 0, b"\xff" * 80)
        assert not mixer.push("nobody", 0, 0, const_frame(1))
        assert not mixer.push("talker", 0, 0, const_frame(1), "G729")


class TestMembership:
    def test_participant_joining_mid_call_hears_and_is_heard(self) -> None:
        mixer = Mixer(prefill=1)
        mixer.join("r", "a")
        mixer.join("r", "b")
        for i in range(10):
            mixer.push("a", i, i * N, const_frame(3000))
            out = mixer.tick()
        assert set(out) == {"a", "b"}
        mixer.join("r", "late")
        for i in range(10, 13):
            mixer.push("a", i, i * N, const_frame(3000))
            mixer.push("late", i - 10, 777 + (i - 10) * N, const_frame(-5000))
            out = mixer.tick()
        assert frame_value(out["late"])[0] == exact(3000)
        assert frame_value(out["b"])[0] == exact(exact(3000) + exact(-5000))
        assert frame_value(out["a"])[0] == exact(-5000)

    def test_rooms_are_isolated_and_disappear_when_empty(self) -> None:
        mixer = Mixer(prefill=1)
        for room, pid in (("x", "x1"), ("y", "y1"), ("x", "x2"), ("y", "y2")):
            mixer.join(room, pid)
        mixer.push("x1", 0, 0, const_frame(2000))
        mixer.push("y1", 0, 0, const_frame(-2000))
        out = mixer.tick()
        assert frame_value(out["x2"])[0] == exact(2000)
        assert frame_value(out["y2"])[0] == exact(-2000)
        assert mixer.rooms == {"x": 2, "y": 2}
        mixer.leave("x1")
        mixer.leave("x2")
        mixer.leave("x2")  # idempotent
        assert mixer.rooms == {"y": 2}
        assert set(mixer.tick()) == {"y1", "y2"}

    def test_slots_grow_beyond_initial_capacity_and_are_reused_fresh(self) -> None:
        mixer = Mixer(capacity=2, prefill=1)
        for i in range(9):
            mixer.join(i % 3, i)
        mixer.push(3, 0, 0, const_frame(4000))
        out = mixer.tick()
        assert frame_value(out[0])[0] == exact(4000)  # 0 and 3 share room 0
        assert not frame_value(out[1]).any()
        mixer.leave(3)
        mixer.join(0, "new")  # reuses slot 3: must not inherit its buffer or last frame
        out = mixer.tick()
        assert set(out) == {0, 1, 2, 4, 5, 6, 7, 8, "new"}
        assert not frame_value(out[0]).any()
        assert not frame_value(out["new"]).any()

    def test_join_twice_and_unmixable_codec_are_refused(self) -> None:
        mixer = Mixer()
        mixer.join("r", "a")
        with pytest.raises(ValueError, match="already in a room"):
            mixer.join("r", "a")
        with pytest.raises(ValueError, match="cannot be mixed"):
            mixer.join("r", "b", "L16")

    def test_codec_names_are_case_insensitive(self) -> None:
        mixer = Mixer(prefill=1)
        mixer.join("r", "a", "pcma")
        mixer.join("r", "b", "pcmu")
        payload = alaw_encode(np.full(N, 3000, np.int16)).tobytes()
        assert mixer.push("a", 0, 0, payload, "pcma")
        assert frame_value(mixer.tick()["b"])[0] == exact(int(alaw_decode(payload)[0]))

    def test_ids_list_is_stable_until_membership_changes(self) -> None:
        mixer = Mixer()
        mixer.join("r", "a")
        ids, _ = mixer.tick_array()
        assert mixer.tick_array()[0] is ids
        mixer.join("r", "b")
        assert mixer.tick_array()[0] is not ids

    def test_empty_mixer_ticks_to_nothing(self) -> None:
        assert Mixer().tick() == {}


def test_tick_time_for_50_rooms_of_10() -> None:
    """Bench budget: 50 ten-party rooms per core; one tick must be well under 5 ms.

    Measured in thread CPU time so that other processes on the machine do not
    make the figure (or the test) noisy.
    """
    mixer = Mixer(capacity=512)
    rng = np.random.default_rng(1)
    payloads = [rng.integers(0, 256, N, dtype=np.uint8).tobytes() for _ in range(16)]
    for r in range(50):
        for p in range(10):
            mixer.join(r, (r, p), "PCMA" if p % 4 == 0 else "PCMU")
    pids = [(r, p) for r in range(50) for p in range(10)]
    tick_times: list[float] = []
    push_times: list[float] = []
    for i in range(60):
        t0 = time.thread_time()
        for j, pid in enumerate(pids):
            mixer.push(pid, i, i * N, payloads[(i + j) % 16], "PCMU")
        push_times.append((time.thread_time() - t0) / len(pids))
        t0 = time.thread_time()
        out = mixer.tick()
        tick_times.append(time.thread_time() - t0)
    assert len(out) == 500
    tick = float(np.min(tick_times[10:]))
    tick_median = float(np.median(tick_times[10:]))
    push = float(np.median(push_times[10:]))
    print(
        f"\nmixer 50x10: tick best {tick * 1e3:.2f} ms, median {tick_median * 1e3:.2f} ms,"
        f" push median {push * 1e6:.2f} us"
    )
    assert tick < 5e-3
    assert push < 20e-6

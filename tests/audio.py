"""Tones in, verdicts out: the audio oracle shared by every test suite.

Tests decide "B heard A" from what B's phone recorded, so this module must be
independent of the code under test: it has its own G.711 encoder (for SIPp's
raw files) and analyses plain int16 numpy arrays.

Conventions: samples are mono int16 at ``rate`` Hz (8000 unless told);
levels are dBFS where a full-scale sine reads 0 dB; times are seconds on
``time.monotonic()``, the clock every process on the host shares (network
namespaces do not change it), which is what lets two phone processes agree
on when a sound left one and reached the other.

Delay measurement (``measure_delay``): a sender's signal carries a short
chirp *marker* every ``MARKER_PERIOD`` seconds on top of its tone.  The
sending phone logs the monotonic time each marker was handed to its encoder
(``sent_markers``); the receiving phone timestamps every 20 ms frame its
decoder hands over (``Recording.t0`` / ``frame_period``).  The delay of a
marker is "time it came out of B's decoder" minus "time it went into A's
encoder": network, relays, jitter buffer and the phase between the two
phones' 20 ms clocks, but no sound-card latency.  The phase term is fixed
for the life of two phone processes and is up to one frame, so compare a
path against a direct phone-to-phone *baseline* taken with the same phones,
not against zero.  The sum of the two directions (A->B plus B->A) does not
depend on that phase (it is one frame plus both jitter buffers), so "added
delay" = (sum through the switch - sum direct) / 2 works across phone pairs.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATE = 8000
FRAME = 160  # samples in a 20 ms frame at 8 kHz
FULL_SCALE = 32767.0
MARKER_PERIOD = 1.0  # seconds between delay markers
MARKER_SECONDS = 0.016
MARKER_BAND = (2400.0, 3600.0)  # chirp sweep; keep phone tones below 2200 Hz
SILENCE_DB = -45.0  # a 20 ms window quieter than this counts as silence


# --------------------------------------------------------------------------
# Signals


def tone(
    freq: float, seconds: float, rate: int = RATE, amplitude: float = 0.3, phase: float = 0.0
) -> np.ndarray:
    """A sine of ``amplitude`` (fraction of full scale) as int16 samples."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    return np.round(amplitude * FULL_SCALE * np.sin(2 * np.pi * freq * t + phase)).astype(np.int16)


def marker(rate: int = RATE, amplitude: float = 0.4) -> np.ndarray:
    """The delay marker: a Hann-windowed linear chirp over ``MARKER_BAND``.

    A chirp rather than a click because G.711 keeps it intact, its
    autocorrelation has one sharp peak (about 1 ms wide) and its energy sits
    in a band no phone tone uses, so it hardly disturbs tone analysis.
    """
    n = round(MARKER_SECONDS * rate)
    t = np.arange(n) / rate
    f0, f1 = MARKER_BAND
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * MARKER_SECONDS))
    return (amplitude * FULL_SCALE * np.hanning(n) * np.sin(phase)).astype(np.float64)


def marked_tone(
    freq: float,
    seconds: float = MARKER_PERIOD,
    rate: int = RATE,
    amplitude: float = 0.3,
    marker_offset: float = 0.1,
    markers: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """A tone with one marker per ``MARKER_PERIOD``, for looping playback.

    Returns the samples (a whole number of 20 ms frames, and a whole number
    of tone cycles, so the loop is seamless; the frequency is rounded to
    make it so, to 1 Hz for a 1 s loop) and the sample positions where
    markers start (none with ``markers=False``).
    """
    n = round(seconds * rate)
    n -= n % FRAME
    # A whole number of cycles per loop keeps the tone phase-continuous.
    cycles = max(1, round(freq * n / rate))
    base = amplitude * FULL_SCALE * np.sin(2 * np.pi * cycles * np.arange(n) / n)
    mk = marker(rate)
    starts = []
    pos = round(marker_offset * rate)
    step = round(MARKER_PERIOD * rate)
    while markers and pos + len(mk) <= n:
        base[pos : pos + len(mk)] += mk
        starts.append(pos)
        pos += step
    return np.clip(np.round(base), -32768, 32767).astype(np.int16), starts


# --------------------------------------------------------------------------
# Files


def write_wav(path: str | Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """Write mono 16-bit PCM with the stdlib ``wave`` module."""
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a mono 16-bit PCM WAV; returns (int16 samples, rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(
                f"{path}: want mono 16-bit PCM, got {w.getnchannels()} channels of "
                f"{8 * w.getsampwidth()} bits"
            )
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16), (
            w.getframerate()
        )


def ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 mu-law (ITU-T G.711 §2, the classic Sun/CCITT bias algorithm)."""
    x = np.asarray(samples, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """Inverse of ``ulaw_encode``."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exp = (u >> 4) & 0x07
    mag = (((u & 0x0F) << 3) + 0x84) << exp
    return np.where(u & 0x80, 0x84 - mag, mag - 0x84).astype(np.int16)


def alaw_encode(samples: np.ndarray) -> bytes:
    """G.711 A-law (ITU-T G.711 §3), even bits inverted (XOR 0x55)."""
    x = np.asarray(samples, dtype=np.int32) >> 3  # 13-bit
    sign = np.where(x >= 0, 0x80, 0)
    mag = np.minimum(np.where(x >= 0, x, -x - 1), 0xFFF)
    exp = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    mant = np.where(exp == 0, mag >> 1, mag >> np.maximum(exp, 1)) & 0x0F
    return ((sign | (exp << 4) | mant) ^ 0x55).astype(np.uint8).tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    """Inverse of ``alaw_encode``."""
    a = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    exp = (a >> 4) & 0x07
    mant = a & 0x0F
    mag = np.where(exp == 0, (mant << 4) + 8, ((mant << 4) + 0x108) << np.maximum(exp - 1, 0))
    return np.where(a & 0x80, mag, -mag).astype(np.int16)


# --------------------------------------------------------------------------
# Recordings


@dataclass
class Recording:
    """What a phone received during one call, with the clock to place it.

    ``t0`` is the monotonic time of sample 0 (a least-squares fit over the
    frame callbacks, so scheduler jitter averages out) and ``frame_period``
    the measured length of a 20 ms frame on that clock.  Gaps (no frame from
    the decoder) are filled with zeros, so sample index and time stay linked.
    """

    samples: np.ndarray
    rate: int = RATE
    t0: float = 0.0
    frame_period: float = FRAME / RATE
    answered_at: float | None = None
    ended_at: float | None = None
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def time_of(self, sample: float | np.ndarray) -> float | np.ndarray:
        """Monotonic time of a sample index (fractional indices allowed)."""
        return self.t0 + np.asarray(sample) / FRAME * self.frame_period

    def index_of(self, t: float) -> int:
        """Sample index at monotonic time ``t`` (clamped to the recording)."""
        i = round((t - self.t0) / self.frame_period * FRAME)
        return int(min(max(i, 0), len(self.samples)))

    def answered(self, settle: float = 0.2) -> np.ndarray:
        """Samples from ``settle`` s after the answer to the end of the call.

        The settle time skips the jitter buffer's first fill, which is silence
        on every phone and says nothing about the path under test.
        """
        start = self.index_of((self.answered_at or self.t0) + settle)
        end = len(self.samples) if self.ended_at is None else self.index_of(self.ended_at)
        return self.samples[start:end]

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def save(self, path: str | Path) -> Path:
        """WAV plus a ``.json`` sidecar holding the clock and call times."""
        path = write_wav(path, self.samples, self.rate)
        side = {
            "rate": self.rate,
            "t0": self.t0,
            "frame_period": self.frame_period,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            **self.meta,
        }
        path.with_suffix(".json").write_text(json.dumps(side))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        path = Path(path)
        samples, rate = read_wav(path)
        side_path = path.with_suffix(".json")
        side = json.loads(side_path.read_text()) if side_path.exists() else {}
        known = {"rate", "t0", "frame_period", "answered_at", "ended_at"}
        return cls(
            samples=samples,
            rate=rate,
            t0=side.get("t0", 0.0),
            frame_period=side.get("frame_period", FRAME / rate),
            answered_at=side.get("answered_at"),
            ended_at=side.get("ended_at"),
            path=path,
            meta={k: v for k, v in side.items() if k not in known},
        )


def fit_frame_clock(
    times: Sequence[float] | np.ndarray, period: float = FRAME / RATE
) -> tuple[float, float]:
    """(time of frame 0, frame period) from per-frame callback timestamps.

    Callbacks fire a little late and unevenly (thread wake-up), but the
    media clock behind them is regular, so a straight line through
    (frame index, time) recovers it to well under a millisecond.  Frame
    indices come from rounding, which tolerates skipped frames.
    """
    t = np.asarray(times, dtype=np.float64)
    if len(t) == 0:
        return 0.0, period
    if len(t) < 3:
        return float(t[0]), period
    k = np.round((t - t[0]) / period)
    slope, intercept = np.polyfit(k, t, 1)
    # Wake-up latency only ever delays a callback: move the line down to the
    # earliest callbacks rather than through their middle.
    resid = t - (intercept + slope * k)
    return float(intercept + np.percentile(resid, 5)), float(slope)


# --------------------------------------------------------------------------
# Analysis


def _as_samples(x: np.ndarray | Recording | str | Path) -> tuple[np.ndarray, int]:
    if isinstance(x, Recording):
        return x.samples, x.rate
    if isinstance(x, str | Path):
        return read_wav(x)
    return np.asarray(x), RATE


def _power_spectrum(samples: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """One-sided power per bin, scaled so a sine of amplitude A sums to A²/2."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 16:
        return np.zeros(1), np.zeros(1)
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) ** 2 * 2 / (len(x) * np.sum(w * w))
    return np.fft.rfftfreq(len(x), 1 / rate), spec


def _dbfs(power: float) -> float:
    return float(10 * np.log10(max(power, 1e-12) / (FULL_SCALE**2 / 2)))


def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    """Frequency of the strongest spectral peak (DC excluded), in Hz.

    Parabolic interpolation between bins makes it accurate to a fraction of
    a bin, so one second of audio resolves a tone to well under 1 Hz.
    """
    freqs, spec = _power_spectrum(samples, rate)
    if len(spec) < 4 or not spec[2:].any():
        return 0.0
    i = int(np.argmax(spec[2:])) + 2
    if 0 < i < len(spec) - 1:
        a, b, c = np.log(spec[i - 1 : i + 2] + 1e-30)
        den = a - 2 * b + c
        off = 0.5 * (a - c) / den if den else 0.0
        return float(freqs[i] + off * (freqs[1] - freqs[0]))
    return float(freqs[i])


def band_energy_db(
    samples: np.ndarray, rate: int = RATE, freq: float = 1000.0, width=40.0
) -> float:
    """Power within ±``width`` Hz of ``freq``, in dBFS (full-scale sine = 0)."""
    freqs, spec = _power_spectrum(samples, rate)
    band = (freqs >= freq - width) & (freqs <= freq + width)
    return _dbfs(float(spec[band].sum()))


def level_db(samples: np.ndarray) -> float:
    """RMS level in dBFS (full-scale sine = 0 dB)."""
    x = np.asarray(samples, dtype=np.float64)
    return _dbfs(float(np.mean(x * x)) if len(x) else 0.0)


def snr_db(samples: np.ndarray, rate: int = RATE, freq: float = 1000.0, width=40.0) -> float:
    """Tone power at ``freq`` over everything else (noise, distortion), in dB."""
    freqs, spec = _power_spectrum(samples, rate)
    band = (freqs >= freq - width) & (freqs <= freq + width)
    sig, rest = float(spec[band].sum()), float(spec[~band].sum())
    return float(10 * np.log10(max(sig, 1e-12) / max(rest, 1e-12)))


def spectrum_peaks(
    samples: np.ndarray, rate: int = RATE, count: int = 3, min_gap: float = 100.0
) -> list[tuple[float, float]]:
    """The ``count`` strongest peaks as (Hz, dBFS), at least ``min_gap`` Hz apart."""
    freqs, spec = _power_spectrum(samples, rate)
    if len(spec) < 4:
        return []
    order = np.argsort(spec[1:])[::-1] + 1
    peaks: list[tuple[float, float]] = []
    for i in order[:5000]:
        f = float(freqs[i])
        if all(abs(f - p) >= min_gap for p, _ in peaks):
            peaks.append((f, band_energy_db(samples, rate, f)))
            if len(peaks) == count:
                break
    return peaks


def sound_fraction(
    samples: np.ndarray, rate: int = RATE, window: float = 0.020, threshold_db: float = SILENCE_DB
) -> float:
    """Fraction of ``window``-long slices louder than ``threshold_db`` dBFS.

    "Sound for at least 90 % of the answered time" is this over the answered
    part of a recording: a relay that drops a packet in ten fails it.
    """
    n = max(1, round(window * rate))
    x = np.asarray(samples, dtype=np.float64)
    whole = len(x) // n
    if whole == 0:
        return 0.0
    rms2 = np.mean(x[: whole * n].reshape(whole, n) ** 2, axis=1)
    limit = FULL_SCALE**2 / 2 * 10 ** (threshold_db / 10)
    return float(np.mean(rms2 > limit))


def describe(samples: np.ndarray, rate: int = RATE) -> str:
    """One line saying what a recording sounds like, for assertion messages."""
    peaks = ", ".join(f"{f:.0f} Hz ({db:.1f} dBFS)" for f, db in spectrum_peaks(samples, rate))
    return (
        f"{len(samples) / rate:.2f} s, level {level_db(samples):.1f} dBFS, "
        f"sound in {100 * sound_fraction(samples, rate):.0f}% of 20 ms windows, "
        f"spectrum peaks: {peaks or 'none'}"
    )


def assert_hears(
    recording: Recording | np.ndarray | str | Path,
    expect_hz: float,
    not_hz: Iterable[float] = (),
    min_sound_fraction: float = 0.9,
    *,
    tolerance_hz: float = 15.0,
    margin_db: float = 20.0,
    settle: float = 0.2,
) -> None:
    """Assert the recording is ``expect_hz`` and none of ``not_hz``.

    For a ``Recording`` only the answered part counts (see
    ``Recording.answered``).  "None of not_hz" means each lies at least
    ``margin_db`` below the expected tone: G.711 noise and the markers sit
    far lower, a leaked or mixed-in tone does not.
    """
    name: str | Path | None  # what the failure message calls the recording
    if isinstance(recording, Recording):
        samples, rate, name = recording.answered(settle), recording.rate, recording.path
    else:
        (samples, rate), name = (
            _as_samples(recording),
            recording if isinstance(recording, str | Path) else "samples",
        )
    problems = []
    if len(samples) < rate // 10:
        problems.append(f"only {len(samples)} samples of answered audio")
    else:
        heard = dominant_frequency(samples, rate)
        if abs(heard - expect_hz) > tolerance_hz:
            problems.append(f"dominant frequency {heard:.1f} Hz, expected {expect_hz:g} Hz")
        want = band_energy_db(samples, rate, expect_hz)
        for f in not_hz:
            got = band_energy_db(samples, rate, f)
            if got > want - margin_db:
                problems.append(
                    f"{f:g} Hz present at {got:.1f} dBFS (expected {expect_hz:g} Hz at "
                    f"{want:.1f} dBFS; need {margin_db:g} dB below)"
                )
        frac = sound_fraction(samples, rate)
        if frac < min_sound_fraction:
            problems.append(
                f"sound in only {100 * frac:.1f}% of the answered time "
                f"(need {100 * min_sound_fraction:.0f}%)"
            )
    if problems:
        raise AssertionError(
            f"{name}: " + "; ".join(problems) + f". Heard: {describe(samples, rate)}"
        )


# --------------------------------------------------------------------------
# Delay


def find_markers(recording: Recording, threshold: float = 0.4) -> np.ndarray:
    """Monotonic times at which markers start in a recording.

    Matched filter: correlate with the marker, take the envelope (magnitude
    of the analytic signal, so the peak does not hop between carrier
    cycles) and keep peaks above ``threshold`` times the strongest, one per
    half marker period.
    """
    x = np.asarray(recording.samples, dtype=np.float64)
    mk = marker(recording.rate)
    if len(x) < len(mk):
        return np.zeros(0)
    n = len(x) + len(mk)
    nfft = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(x, nfft) * np.conj(np.fft.rfft(mk, nfft)), nfft)[
        : len(x) - len(mk) + 1
    ]
    spec = np.fft.fft(corr)
    h = np.zeros(len(corr))
    h[0] = 1
    h[1 : (len(corr) + 1) // 2] = 2
    if len(corr) % 2 == 0:
        h[len(corr) // 2] = 1
    env = np.abs(np.fft.ifft(spec * h))
    if env.max() <= 0:
        return np.zeros(0)
    limit = threshold * env.max()
    gap = round(MARKER_PERIOD * recording.rate / 2)
    starts = []
    i = 0
    while i < len(env):
        if env[i] > limit:
            j = i + int(np.argmax(env[i : i + gap]))
            # Refine to a fraction of a sample with a parabola through the peak.
            if 0 < j < len(env) - 1:
                a, b, c = env[j - 1 : j + 2]
                den = a - 2 * b + c
                starts.append(j + (0.5 * (a - c) / den if den else 0.0))
            else:
                starts.append(float(j))
            i = j + gap
        else:
            i += 1
    return np.asarray(recording.time_of(np.asarray(starts)), dtype=np.float64)


@dataclass(frozen=True)
class Delay:
    """One-way delays of the markers matched between a sender and a receiver."""

    delays_ms: np.ndarray
    unmatched: int

    @property
    def median_ms(self) -> float:
        return float(np.median(self.delays_ms)) if len(self.delays_ms) else float("nan")

    @property
    def spread_ms(self) -> float:
        """max - min: the jitter seen between markers of one call."""
        return float(np.ptp(self.delays_ms)) if len(self.delays_ms) else float("nan")

    def __str__(self) -> str:
        if not len(self.delays_ms):
            return f"no markers matched ({self.unmatched} unmatched)"
        return (
            f"median {self.median_ms:.2f} ms, min {self.delays_ms.min():.2f}, "
            f"max {self.delays_ms.max():.2f} over {len(self.delays_ms)} markers"
            + (f", {self.unmatched} unmatched" if self.unmatched else "")
        )


def measure_delay(
    sent: Sequence[float] | np.ndarray, received: Recording, max_delay: float = 0.5
) -> Delay:
    """One-way delay from a sender's marker log to a receiver's recording.

    ``sent`` is the sender's ``sent_markers()`` (monotonic times each marker
    entered its encoder); ``received`` the receiver's recording of the same
    call.  Each marker found in the recording is paired with the latest sent
    marker at most ``max_delay`` s before it (markers are a period apart, so
    that is unambiguous up to about half a period).  What the result
    includes and excludes is described in the module docstring: compare it
    against a direct-call baseline with the same phones.
    """
    tx = np.sort(np.asarray(sent, dtype=np.float64))
    rx = find_markers(received)
    delays = []
    unmatched = 0
    for t in rx:
        # Allow a couple of ms of timestamp error on the early side.
        i = int(np.searchsorted(tx, t + 0.002, side="right")) - 1
        if i >= 0 and t - tx[i] <= max_delay:
            delays.append((t - tx[i]) * 1000)
        else:
            unmatched += 1
    return Delay(np.asarray(delays), unmatched)

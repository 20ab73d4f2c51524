"""PCM analysis for the bearer tests: a test tone and what a
decoded signal contains (its dominant frequency, the energy in a band, its
signal-to-noise ratio), so a test can say "the mixer passed the 1 kHz tone"
in numbers."""

from __future__ import annotations

import numpy as np


def tone(freq: float, seconds: float, amplitude: float = 8000.0, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_frequency(samples: np.ndarray, rate: int = 8000) -> float:
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spec = np.abs(np.fft.rfft(x))
    spec[0] = 0
    k = int(np.argmax(spec))
    if 0 < k < len(spec) - 1:  # parabolic interpolation for sub-bin accuracy
        a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
        k += 0.5 * (a - c) / (a - 2 * b + c)
    return k * rate / len(samples)


def band_energy(samples: np.ndarray, freq: float, rate: int = 8000, width: float = 40.0) -> float:
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spec[(f > freq - width) & (f < freq + width)].sum())


def snr_db(samples: np.ndarray, freq: float, rate: int = 8000) -> float:
    """Signal (a fitted sine at ``freq``) to residual ratio in dB."""
    x = samples.astype(np.float64)
    t = np.arange(len(x)) / rate
    basis = np.column_stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)])
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    fit = basis @ coef
    noise = x - fit
    return float(10 * np.log10(np.sum(fit**2) / max(np.sum(noise**2), 1e-9)))

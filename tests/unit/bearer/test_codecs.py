"""G.711 tables, transcoding tables and the codec registry."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bearer import codecs
from bearer.codecs import (
    ALAW_TO_ULAW,
    ULAW_TO_ALAW,
    alaw_decode,
    alaw_encode,
    get_codec,
    transcode_table,
    ulaw_decode,
    ulaw_encode,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def tone(freq: float, seconds: float, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000.0
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_frequency(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * 8000.0 / len(pcm))


class TestBitExactAgainstAudioop:
    def test_ulaw_encode_matches_lin2ulaw_for_all_65536_samples(self) -> None:
        assert ulaw_encode(ALL_SAMPLES).tobytes() == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)

    def test_alaw_encode_matches_lin2alaw_for_all_65536_samples(self) -> None:
        assert alaw_encode(ALL_SAMPLES).tobytes() == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)

    def test_ulaw_decode_matches_ulaw2lin_for_all_256_codes(self) -> None:
        assert ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)

    def test_alaw_decode_matches_alaw2lin_for_all_256_codes(self) -> None:
        assert alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)

    def test_scalar_reference_functions_agree_with_tables(self) -> None:
        for code in range(256):
            assert codecs.ulaw_to_linear(code) == codecs.ULAW_DECODE[code]
            assert codecs.alaw_to_linear(code) == codecs.ALAW_DECODE[code]
        for sample in (-32768, -32767, -1, 0, 1, 100, 8158, 32767):
            u16 = sample & 0xFFFF
            assert codecs.ulaw_from_linear(sample) == codecs.ULAW_ENCODE[u16]
            assert codecs.alaw_from_linear(sample) == codecs.ALAW_ENCODE[u16]


class TestRoundTrip:
    def test_decode_then_encode_is_identity_for_every_alaw_code(self) -> None:
        assert alaw_encode(alaw_decode(ALL_CODES)).tobytes() == ALL_CODES

    def test_decode_then_encode_is_identity_except_ulaw_negative_zero(self) -> None:
        # 0x7F is μ-law "-0", decoding to 0 which encodes back as +0 (0xFF).
        again = ulaw_encode(ulaw_decode(ALL_CODES)).tobytes()
        diffs = [c for c in range(256) if again[c] != c]
        assert diffs == [0x7F]
        assert again[0x7F] == 0xFF

    def test_shape_is_preserved_for_batches(self) -> None:
        batch = np.arange(320, dtype=np.uint8).reshape(2, 160)
        assert ulaw_decode(batch).shape == (2, 160)
        assert alaw_encode(alaw_decode(batch)).shape == (2, 160)

    def test_wide_ints_saturate_instead_of_wrapping(self) -> None:
        wide = np.array([40000, -40000], dtype=np.int32)
        assert ulaw_encode(wide).tolist() == ulaw_encode(np.array([32767, -32768])).tolist()
        assert ulaw_decode(ulaw_encode(wide)).tolist() == [32124, -32124]


class TestTranscodeTables:
    def test_ulaw_to_alaw_equals_decode_then_encode(self) -> None:
        assert ALL_CODES.translate(ULAW_TO_ALAW) == alaw_encode(ulaw_decode(ALL_CODES)).tobytes()

    def test_alaw_to_ulaw_equals_decode_then_encode(self) -> None:
        assert ALL_CODES.translate(ALAW_TO_ULAW) == ulaw_encode(alaw_decode(ALL_CODES)).tobytes()

    def test_tables_are_256_bytes(self) -> None:
        assert len(ULAW_TO_ALAW) == 256 and len(ALAW_TO_ULAW) == 256

    def test_transcode_table_lookup_by_name(self) -> None:
        assert transcode_table("PCMU", "PCMA") is ULAW_TO_ALAW
        assert transcode_table("pcma", "pcmu") is ALAW_TO_ULAW
        assert transcode_table("PCMU", "PCMU") is None
        assert transcode_table("PCMU", "opus") is None

    def test_1khz_tone_through_pcmu_to_pcma_keeps_frequency_and_snr(self) -> None:
        original = tone(1000.0, 1.0)
        pcmu = ulaw_encode(original).tobytes()
        # Packet by packet, as the relay does it.
        pcma = b"".join(pcmu[i : i + 160].translate(ULAW_TO_ALAW) for i in range(0, len(pcmu), 160))
        decoded = alaw_decode(pcma).astype(np.float64)
        assert dominant_frequency(decoded) == pytest.approx(1000.0, rel=0.01)
        ref = original.astype(np.float64)
        snr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - decoded) ** 2))
        assert snr >= 30.0


class TestRegistry:
    def test_g711_entries_have_static_payload_types_and_20ms_frames(self) -> None:
        pcmu, pcma = get_codec("PCMU"), get_codec("pcma")
        assert (pcmu.payload_type, pcma.payload_type) == (0, 8)
        assert pcmu.clock_rate == pcma.clock_rate == 8000
        assert pcmu.channels == 1
        assert pcmu.frame_samples == pcma.frame_samples == 160
        assert codecs.CODECS_BY_PT[8] is pcma

    def test_codec_callables_round_trip_a_frame(self) -> None:
        frame = tone(440.0, 0.02)
        for name in ("PCMU", "PCMA"):
            codec = get_codec(name)
            out = codec.decode(codec.encode(frame).tobytes())
            assert out.dtype == np.int16 and out.shape == (160,)
            assert np.max(np.abs(out.astype(int) - frame)) < 300

    def test_unknown_codec_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="unknown codec 'G729'"):
            get_codec("G729")

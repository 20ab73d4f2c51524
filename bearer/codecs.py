"""G.711 codecs as lookup tables, and the codec registry of the bearer.

Theory of operation
-------------------
The bearer never runs a per-sample loop in Python.  G.711 (ITU-T G.711,
μ-law and A-law) is a fixed mapping between 8-bit codes and 16-bit linear
samples, so it is computed ONCE at import from the reference bit-level
algorithm (written below as plain functions, the same arithmetic as the
classic Sun/CCITT ``g711.c`` that ``audioop`` also uses) and stored as numpy
tables:

* decode tables: 256 entries, code -> int16;
* encode tables: 65536 entries, int16 sample viewed as uint16 -> code.

Decoding or encoding a whole tick of every call is then one fancy-indexing
operation (``TABLE[array]``), whatever the array's shape.

Transcoding PCMU <-> PCMA needs no PCM at all: the composition
``encode_b(decode_a(code))`` is itself a 256-entry table, so one packet is
transcoded with ``payload.translate(table)`` (C speed, no numpy call
overhead), which is what the relay does per packet.

The registry (``CODECS``) describes each codec by name, static payload type,
clock rate, channels and frame size, with batch ``decode``/``encode``
callables, so Opus or G.722 can be registered later without changing callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ALAW_TO_ULAW",
    "CODECS",
    "CODECS_BY_PT",
    "FRAME_MS",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "ULAW_TO_ALAW",
    "Codec",
    "alaw_decode",
    "alaw_encode",
    "alaw_from_linear",
    "alaw_to_linear",
    "get_codec",
    "transcode_table",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_from_linear",
    "ulaw_to_linear",
]

FRAME_MS = 20
"""Packetisation time used throughout the bearer (RFC 3551 §4.5: 20 ms default)."""

# ---------------------------------------------------------------------------
# Reference algorithm (ITU-T G.711), one sample at a time.  Used only to build
# the tables below and by the tests; never on the hot path.
# ---------------------------------------------------------------------------

_QUANT_MASK = 0x0F
_SEG_SHIFT = 4
_SEG_MASK = 0x70
_SIGN_BIT = 0x80

# μ-law: the 14-bit magnitude is biased by 33 (0x84 >> 2) so that segment
# boundaries fall on powers of two; magnitudes above 8159 clip (G.711 Table 2).
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159
_ULAW_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
# A-law works on a 13-bit magnitude (G.711 Table 1).
_ALAW_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    """Index of the first segment whose end is >= value, 8 when above all."""
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def ulaw_from_linear(sample: int) -> int:
    """Encode one 16-bit linear sample to a μ-law code (G.711 §3, Table 2a).

    The 16-bit sample is reduced to the 14-bit range G.711 defines μ-law on,
    biased, split into a 3-bit segment and 4-bit mantissa, and every bit of the
    result is inverted (μ-law transmits complemented codes).
    """
    pcm = sample >> 2
    if pcm < 0:
        pcm = -pcm
        mask = 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(pcm, _ULAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & _QUANT_MASK)) ^ mask


def ulaw_to_linear(code: int) -> int:
    """Decode one μ-law code to a 16-bit linear sample (G.711 §3, Table 2a)."""
    code = ~code & 0xFF
    t = ((code & _QUANT_MASK) << 3) + _ULAW_BIAS
    t <<= (code & _SEG_MASK) >> _SEG_SHIFT
    return _ULAW_BIAS - t if code & _SIGN_BIT else t - _ULAW_BIAS


def alaw_from_linear(sample: int) -> int:
    """Encode one 16-bit linear sample to an A-law code (G.711 §2, Table 1a).

    A-law works on 13 bits; negative values are folded as ``-x - 1`` so the
    scale is symmetric, and even bits are inverted (XOR 0x55) on the wire.
    """
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = _segment(pcm, _ALAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << _SEG_SHIFT
    aval |= (pcm >> (1 if seg < 2 else seg)) & _QUANT_MASK
    return aval ^ mask


def alaw_to_linear(code: int) -> int:
    """Decode one A-law code to a 16-bit linear sample (G.711 §2, Table 1a)."""
    code ^= 0x55
    t = (code & _QUANT_MASK) << 4
    seg = (code & _SEG_MASK) >> _SEG_SHIFT
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & _SIGN_BIT else -t


# ---------------------------------------------------------------------------
# Tables, built once at import (about 130k reference calls, ~0.1 s).
# ---------------------------------------------------------------------------


def _decode_table(fn: Callable[[int], int]) -> npt.NDArray[np.int16]:
    table = np.array([fn(code) for code in range(256)], dtype=np.int16)
    table.flags.writeable = False
    return table


def _encode_table(fn: Callable[[int], int]) -> npt.NDArray[np.uint8]:
    """Tabulate an encoder over all 65536 int16 values, indexed as uint16.

    Every sample goes through the reference encoder, so the table is exact by
    construction rather than by reasoning about decision levels.
    """
    samples = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
    table = np.fromiter((fn(int(s)) for s in samples), dtype=np.uint8, count=65536)
    table.flags.writeable = False
    return table


ULAW_DECODE: npt.NDArray[np.int16] = _decode_table(ulaw_to_linear)
ALAW_DECODE: npt.NDArray[np.int16] = _decode_table(alaw_to_linear)
ULAW_ENCODE: npt.NDArray[np.uint8] = _encode_table(ulaw_from_linear)
ALAW_ENCODE: npt.NDArray[np.uint8] = _encode_table(alaw_from_linear)

ULAW_TO_ALAW: bytes = ALAW_ENCODE[ULAW_DECODE.view(np.uint16)].tobytes()
"""bytes.translate table: a PCMU payload -> the PCMA payload of the same audio."""
ALAW_TO_ULAW: bytes = ULAW_ENCODE[ALAW_DECODE.view(np.uint16)].tobytes()
"""bytes.translate table: a PCMA payload -> the PCMU payload of the same audio."""


# ---------------------------------------------------------------------------
# Batch API: any shape in, same shape out.
# ---------------------------------------------------------------------------

Payload = bytes | bytearray | memoryview | npt.NDArray[np.uint8]


def _codes(payload: Payload) -> npt.NDArray[np.uint8]:
    if isinstance(payload, np.ndarray):
        return payload
    return np.frombuffer(payload, dtype=np.uint8)


def _samples_u16(pcm: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    """View int16 PCM as uint16 indices; wider ints saturate to int16 first."""
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        arr = np.clip(arr, -32768, 32767).astype(np.int16)
    return arr.view(np.uint16)


def ulaw_decode(payload: Payload) -> npt.NDArray[np.int16]:
    """μ-law codes (bytes or uint8 array of any shape) -> int16 PCM."""
    return ULAW_DECODE[_codes(payload)]


def ulaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """int16 PCM (any shape; wider ints are saturated) -> μ-law codes.

    Returns a uint8 array; ``.tobytes()`` gives the RTP payload.
    """
    return ULAW_ENCODE[_samples_u16(pcm)]


def alaw_decode(payload: Payload) -> npt.NDArray[np.int16]:
    """A-law codes (bytes or uint8 array of any shape) -> int16 PCM."""
    return ALAW_DECODE[_codes(payload)]


def alaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """int16 PCM (any shape; wider ints are saturated) -> A-law codes."""
    return ALAW_ENCODE[_samples_u16(pcm)]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """One audio codec as the bearer sees it.

    ``decode`` maps a batch of payload codes to int16 PCM and ``encode`` the
    reverse, both shape-preserving for sample-based codecs.  ``decode_table``
    and ``encode_table`` are set for table codecs (G.711) so the mixer can
    group all participants of one codec into a single indexing operation;
    frame-based codecs (Opus, G.722) will leave them None and supply
    callables.  ``payload_type`` is the static RTP PT (RFC 3551 Table 4) or
    None for dynamic ones negotiated in SDP.
    """

    name: str
    payload_type: int | None
    clock_rate: int
    channels: int
    decode: Callable[[Payload], npt.NDArray[np.int16]]
    encode: Callable[[npt.ArrayLike], npt.NDArray[np.uint8]]
    decode_table: npt.NDArray[np.int16] | None = None
    encode_table: npt.NDArray[np.uint8] | None = None

    @property
    def frame_samples(self) -> int:
        """Samples per channel in one 20 ms frame (160 for G.711)."""
        return self.clock_rate * FRAME_MS // 1000


PCMU = Codec("PCMU", 0, 8000, 1, ulaw_decode, ulaw_encode, ULAW_DECODE, ULAW_ENCODE)
PCMA = Codec("PCMA", 8, 8000, 1, alaw_decode, alaw_encode, ALAW_DECODE, ALAW_ENCODE)

CODECS: dict[str, Codec] = {"PCMU": PCMU, "PCMA": PCMA}
"""Codecs by upper-case encoding name (the SDP ``a=rtpmap`` name)."""
CODECS_BY_PT: dict[int, Codec] = {
    c.payload_type: c for c in CODECS.values() if c.payload_type is not None
}
"""Codecs by static payload type (RFC 3551 Table 4)."""

_TRANSLATE: dict[tuple[str, str], bytes] = {
    ("PCMU", "PCMA"): ULAW_TO_ALAW,
    ("PCMA", "PCMU"): ALAW_TO_ULAW,
}


def get_codec(name: str) -> Codec:
    """Look a codec up by SDP encoding name, case-insensitively (RFC 4566 §6)."""
    try:
        return CODECS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}") from None


def transcode_table(src_name: str, dst_name: str) -> bytes | None:
    """The ``bytes.translate`` table converting src payloads to dst, or None.

    None means no byte-wise table exists (same codec: nothing to do, or a pair
    that must go through PCM); callers relay unchanged when the names match.
    """
    return _TRANSLATE.get((src_name.upper(), dst_name.upper()))

"""How packets from one phone are rewritten for the other (payload types, G.711).

A call's two phones may number the same codec differently (RFC 3264 §6.1)
or have selected different ones; the relay applies the result of
``remap_table`` per packet as one table lookup (and, for PCMU<->PCMA, one
``bytes.translate`` of the payload).
"""

from __future__ import annotations

import functools

from bearer.codecs import transcode_table
from softswitch.protocol import LegSpec, PayloadType

__all__ = ["IDENTITY", "remap_table"]

IDENTITY = bytes(range(256))
"""The byte-1 table of a call that needs no rewriting."""


def _codec_key(name: str, clock: int, channels: int) -> tuple[str, int, int]:
    return (name.upper(), clock, channels)


def remap_table(src: LegSpec, dst: LegSpec) -> tuple[bytes, bytes | None, int, bool]:
    """How packets from ``src``'s phone are rewritten for ``dst``'s phone (cached).

    Returns (byte-1 table, payload transcode table or None, source audio PT,
    DTMF deliverable).  The byte-1 table maps the whole second header byte,
    marker bit included (RFC 3550 §5.1: M is the top bit, PT the lower 7), so
    remapping costs one index and one store per packet.  A payload type the
    destination also negotiated (same codec name, clock rate and channels;
    RFC 3264 §6.1 lets the two sides number it differently) gets the
    destination's number; the source's selected codec, when the destination
    selected another one, becomes the destination's selected payload type and
    is transcoded (G.711 only: PCMU<->PCMA by a 256-byte table); the
    telephone-event type (RFC 4733 §7.1.1) maps to the destination's.
    Anything else keeps its number.
    """
    return _remap(
        src.payload_types,
        src.selected_pt,
        src.dtmf_pt,
        dst.payload_types,
        dst.selected_pt,
        dst.dtmf_pt,
    )


@functools.lru_cache(maxsize=256)
def _remap(
    src_pts: tuple[PayloadType, ...],
    src_sel: int | None,
    src_dtmf: int | None,
    dst_pts: tuple[PayloadType, ...],
    dst_sel: int | None,
    dst_dtmf: int | None,
) -> tuple[bytes, bytes | None, int, bool]:
    """remap_table on the fields that matter: phones offer the same few codec
    lists over and over, and building the table costs ~1 ms of Python."""
    src = LegSpec(payload_types=src_pts, selected_pt=src_sel, dtmf_pt=src_dtmf)
    dst = LegSpec(payload_types=dst_pts, selected_pt=dst_sel, dtmf_pt=dst_dtmf)
    dst_by_codec = {_codec_key(p.name, p.clock_rate, p.channels): p.pt for p in dst.payload_types}
    mapping: dict[int, int] = {}
    for p in src.payload_types:
        target = dst_by_codec.get(_codec_key(p.name, p.clock_rate, p.channels))
        if target is not None:
            mapping[p.pt] = target
    xcode: bytes | None = None
    audio_pt = -1
    s_sel, d_sel = src.selected, dst.selected
    if s_sel is not None:
        audio_pt = s_sel.pt
        if d_sel is not None and _codec_key(s_sel.name, s_sel.clock_rate, s_sel.channels) != (
            _codec_key(d_sel.name, d_sel.clock_rate, d_sel.channels)
        ):
            xcode = transcode_table(s_sel.name, d_sel.name)
            if xcode is not None:
                mapping[s_sel.pt] = d_sel.pt
    dtmf_ok = src.dtmf_pt is None or dst.dtmf_pt is not None
    if src.dtmf_pt is not None and dst.dtmf_pt is not None:
        mapping[src.dtmf_pt] = dst.dtmf_pt
    table = bytes((b & 0x80) | mapping.get(b & 0x7F, b & 0x7F) for b in range(256))
    return table, xcode, audio_pt, dtmf_ok

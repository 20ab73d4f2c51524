"""What the bearer needs to know about one leg: its codecs (``PayloadType``),
its full description (``LegSpec``, with the TLV extension area) and its final
counters (``LegStats``).

A LegSpec is the most elaborate body structure of the protocol and is decoded
twice per ALLOCATE, so it lives apart from the messages that carry it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum

from softswitch.protocol.constants import Direction
from softswitch.protocol.primitives import (
    _DIRECTIONS,
    _U16,
    _pack_addr,
    _pt_byte,
    _pt_value,
    _Reader,
    _str8,
)


@dataclass(frozen=True, slots=True)
class PayloadType:
    """One rtpmap line of the SDP (RFC 4566 §6): payload type -> codec."""

    pt: int
    name: str
    clock_rate: int
    channels: int = 1


_PT_FIXED = struct.Struct("!BIB")
_LEG_FIXED = struct.Struct("!HBBBBH")


class SrtpSuite(IntEnum):
    """The SDES crypto suites the bearer implements (RFC 4568 §6.2).

    The numbers are libsrtp's srtp_profile_t values, so the bearer hands
    them to pylibsrtp as they are.  Both use a 128-bit AES-CM master key
    and a 112-bit master salt; _32 shortens the SRTP tag only (SRTCP keeps
    80 bits, RFC 4568 §6.2.2).
    """

    AES_CM_128_HMAC_SHA1_80 = 1
    AES_CM_128_HMAC_SHA1_32 = 2


SRTP_KEY_LEN = 30
"""Master key (16 bytes) followed by master salt (14 bytes): the SDES inline: value."""

EXT_SRTP_REMOTE = 1
"""LegSpec TLV: the phone's crypto (suite u8 + 30-byte key||salt) the bearer unprotects with."""
EXT_SRTP_LOCAL = 2
"""LegSpec TLV: suite u8; the bearer protects towards the phone with a key it makes itself."""


@dataclass(frozen=True, slots=True)
class SrtpKey:
    """One SRTP master key and salt with its suite.  The key is never in the repr."""

    suite: SrtpSuite
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != SRTP_KEY_LEN:
            raise ValueError(f"an SRTP key||salt is {SRTP_KEY_LEN} bytes, not {len(self.key)}")

    def pack(self) -> bytes:
        return bytes((self.suite,)) + self.key

    @classmethod
    def unpack(cls, raw: bytes) -> SrtpKey:
        if len(raw) != 1 + SRTP_KEY_LEN:
            raise ValueError(f"SRTP key TLV of {len(raw)} bytes")
        return cls(SrtpSuite(raw[0]), bytes(raw[1:]))


@dataclass(frozen=True, slots=True)
class LegSpec:
    """Everything the bearer needs to serve one leg, from control's state alone.

    The remote address is 0.0.0.0 (or ::) with port 0 while unknown, i.e. until
    the SDP answer arrives; the bearer latches to the real source anyway.
    Transcoding is implied when the two legs' selected codecs differ.

    Wire: addr (family u8 + 4|16 bytes), port u16, selected pt u8, dtmf pt u8
    (255 = none), direction u8, ptime u8, then the payload types as a length
    u16 + entries (pt u8, clock u32, channels u8, name str8), then the
    extension area as a length u16 + TLVs (type u8, length u16, value).
    """

    address: str = "0.0.0.0"
    port: int = 0
    payload_types: tuple[PayloadType, ...] = ()
    selected_pt: int | None = None
    dtmf_pt: int | None = None
    """The telephone-event payload type (RFC 4733), None when not negotiated."""
    direction: Direction = Direction.SENDRECV
    ptime: int = 20
    extensions: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)
    """Fields added later (SRTP keys ...) as (type u8, value) TLVs, kept verbatim.

    Not in the repr: the SRTP TLVs carry master keys, and a LegSpec is the
    kind of object that ends up in a debug log line."""

    @property
    def srtp_remote(self) -> SrtpKey | None:
        """The phone's SRTP key (what it protects with), from EXT_SRTP_REMOTE."""
        for t, v in self.extensions:
            if t == EXT_SRTP_REMOTE:
                return SrtpKey.unpack(v)
        return None

    @property
    def srtp_local(self) -> SrtpSuite | None:
        """The suite the bearer must protect towards the phone with (EXT_SRTP_LOCAL)."""
        for t, v in self.extensions:
            if t == EXT_SRTP_LOCAL:
                if len(v) != 1:
                    raise ValueError(f"SRTP local request of {len(v)} bytes")
                return SrtpSuite(v[0])
        return None

    @property
    def srtp(self) -> bool:
        """The leg is SRTP in either direction."""
        return any(t in (EXT_SRTP_REMOTE, EXT_SRTP_LOCAL) for t, _ in self.extensions)

    def with_srtp(self, remote: SrtpKey | None, local: SrtpSuite | None) -> LegSpec:
        """This spec with its SRTP TLVs replaced (other extensions kept)."""
        exts = [(t, v) for t, v in self.extensions if t not in (EXT_SRTP_REMOTE, EXT_SRTP_LOCAL)]
        if remote is not None:
            exts.append((EXT_SRTP_REMOTE, remote.pack()))
        if local is not None:
            exts.append((EXT_SRTP_LOCAL, bytes((local,))))
        return replace(self, extensions=tuple(exts))

    @property
    def selected(self) -> PayloadType | None:
        for p in self.payload_types:
            if p.pt == self.selected_pt:
                return p
        return None

    def pack(self) -> bytes:
        pts = self.payload_types
        if len(pts) > 32:
            raise ValueError(f"{len(pts)} payload types; the limit is 32")
        pts_raw = b"".join(
            [_PT_FIXED.pack(_pt_byte(p.pt), p.clock_rate, p.channels) + _str8(p.name) for p in pts]
        )
        ext = b"".join([bytes((t,)) + _U16.pack(len(v)) + v for t, v in self.extensions])
        fixed = _LEG_FIXED.pack(
            self.port,
            _pt_byte(self.selected_pt),
            _pt_byte(self.dtmf_pt),
            self.direction,
            self.ptime,
            len(pts_raw),
        )
        return b"".join((_pack_addr(self.address), fixed, pts_raw, _U16.pack(len(ext)), ext))

    @classmethod
    def unpack(cls, r: _Reader) -> LegSpec:
        # Hand-inlined (no _Reader calls per field): this runs twice per ALLOCATE.
        address = r.addr()
        data = r.data
        pos = r.pos
        port, sel, dtmf, direction, ptime, pts_len = _LEG_FIXED.unpack_from(data, pos)
        pos += _LEG_FIXED.size
        raw = data[pos : pos + pts_len]
        pts = _PT_CACHE.get(raw)
        if pts is None:
            if len(raw) != pts_len:
                raise ValueError(f"payload type list truncated at byte {pos}")
            pts = _unpack_payload_types(raw)
        pos += pts_len
        (ext_len,) = _U16.unpack_from(data, pos)
        pos += 2
        exts: tuple[tuple[int, bytes], ...] = ()
        if ext_len:
            x = _Reader(data[pos : pos + ext_len])
            if len(x.data) != ext_len:
                raise ValueError(f"extension area truncated at byte {pos}")
            items = []
            while x.pos < ext_len:  # bounded: every TLV consumes >= 3 bytes
                (t, n) = x.unpack(_TLV)
                items.append((t, x.take(n)))
            exts = tuple(items)
            pos += ext_len
        r.pos = pos
        return cls(
            address,
            port,
            pts,
            _pt_value(sel),
            _pt_value(dtmf),
            _DIRECTIONS[direction],
            ptime,
            exts,
        )


def _unpack_payload_types(raw: bytes) -> tuple[PayloadType, ...]:
    """Decode (and remember) one payload-type list.

    Phones offer the same few codec lists over and over, so the decoded tuple
    of immutable PayloadTypes is cached by its wire bytes; the cache is
    bounded by clearing it when full.
    """
    r = _Reader(raw)
    pts = []
    while r.pos < len(raw):  # bounded: every entry consumes >= 7 bytes
        pt, rate, channels = r.unpack(_PT_FIXED)
        if pt > 127:
            raise ValueError(f"payload type {pt} is not 7-bit (RFC 3550 §5.1)")
        pts.append(PayloadType(pt, r.str8(), rate, channels))
    result = tuple(pts)
    if len(_PT_CACHE) >= 1024:
        _PT_CACHE.clear()
    _PT_CACHE[raw] = result
    return result


_PT_CACHE: dict[bytes, tuple[PayloadType, ...]] = {}
_TLV = struct.Struct("!BH")


def needs_transcoding(a: LegSpec, b: LegSpec) -> bool:
    """True when the legs' selected codecs differ (name, clock rate or channels).

    Payload type numbers may differ between legs without transcoding: the relay
    only rewrites the PT byte.  False while either side has not chosen yet.
    """
    sa, sb = a.selected, b.selected
    if sa is None or sb is None:
        return False
    return (sa.name.upper(), sa.clock_rate, sa.channels) != (
        sb.name.upper(),
        sb.clock_rate,
        sb.channels,
    )


@dataclass(frozen=True, slots=True)
class LegStats:
    """Final counters of one leg for the CDR; jitter (RFC 3550 §6.4.1) is in
    microseconds so it stays an integer on the wire."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    packets_lost: int = 0
    jitter_us: int = 0


_LEG_STATS = struct.Struct("!QQQQII")

"""The private control protocol between softswitch-control and the bearers.

This module is the wire format, defined once: control imports it from
``bearer.protocol`` and the bearer daemon serves it.  It does no I/O (reading
the key file at start-up is the one exception, in ``load_key``); the
reliability machinery (retransmission, reply cache, heartbeats) lives in
``bearer.protoclient``.

Theory of operation
-------------------
One datagram carries one message.  Every datagram starts with an 18-byte
header, all integers big-endian::

    0      2    3    4     5     6          10                 18
    +------+----+----+-----+-----+----------+------------------+------//------+-----//-----+
    |magic |ver |type|flags|rsvd | req id   | sender epoch     | body         | tag (16)   |
    | C5 53| 1  | u8 | u8  |  0  | u32      | u64              |              | if TAGGED  |
    +------+----+----+-----+-----+----------+------------------+------//------+-----//-----+

* ``type`` names the request (ALLOCATE, UPDATE ...); a reply carries the type
  of the request it answers with the REPLY flag, plus ERROR when it is an
  ``ErrorReply``.  Bearer events share one type, EVENT, and start their body
  with an ``EventKind`` byte.
* ``request id`` is chosen by the sender of a request and echoed in the reply.
  A retransmission reuses it, which is what makes requests idempotent: the
  receiver repeats its cached reply instead of running the handler again.
* ``sender epoch`` is a 64-bit value the sender picks once per boot
  (``time.time_ns()`` at start).  A change means the peer restarted and lost
  its state, so the other side resynchronises instead of guessing.
* Over UDP the datagram ends with HMAC-SHA256(key, header + body) truncated
  to 16 bytes (128 bits, as RFC 4868 does for IPsec, ample against forgery of
  a datagram that is only accepted once) and the TAGGED flag is set.  The flag
  is inside the authenticated header, so stripping a tag cannot pass: a
  receiver holding a key refuses untagged datagrams ('unauthenticated').
  Over UNIX sockets on one host there is no key and no tag.
* The set-up path (ALLOCATE, UPDATE and their replies) is pure ``struct`` so it
  costs a few microseconds; STATS replies carry a small JSON object because
  they are rare and their counters change more often than this format should.
* ``LegSpec`` ends in a TLV extension area (type u8, length u16, value) so new
  per-leg fields, SRTP keys first, can be added without a version change;
  receivers keep unknown TLVs and ignore them.

``decode`` raises exactly one exception type, ``ProtocolError``, whatever the
bytes; its ``reason`` is a short string meant to be a counter name, because
daemons count malformed datagrams and drop them.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import json
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "DTMF_DIGITS",
    "HEADER",
    "MAGIC",
    "MAX_DATAGRAM",
    "TAG_LEN",
    "VERSION",
    "AllocFlags",
    "Allocate",
    "Allocated",
    "Delete",
    "Deleted",
    "Direction",
    "Dtmf",
    "ErrorCode",
    "ErrorReply",
    "Event",
    "EventAck",
    "EventKind",
    "Flags",
    "Header",
    "Heartbeat",
    "HeartbeatReply",
    "Join",
    "JoinFlags",
    "Joined",
    "KeyFileError",
    "Latched",
    "Leave",
    "Left",
    "LegSpec",
    "LegStats",
    "MediaTimeout",
    "Message",
    "MsgType",
    "Packet",
    "PayloadType",
    "ProtocolError",
    "Reason",
    "Record",
    "RecordReply",
    "RecordingDone",
    "Stats",
    "StatsReply",
    "Update",
    "Updated",
    "decode",
    "encode",
    "load_key",
    "needs_transcoding",
    "peek_header",
]

MAGIC = b"\xc5\x53"
"""First byte 0xC5 has its top bits 11, so no RTP (10), STUN (00), DTLS or SIP
datagram sent to the wrong port can be mistaken for a control message."""
VERSION = 1
HEADER = struct.Struct("!2sBBBBIQ")
TAG_LEN = 16
MAX_DATAGRAM = 8192
"""Upper bound on a datagram, tag included; larger ones are refused unread."""
MIN_KEY_LEN = 16

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_NONE_PT = 0xFF
"""Payload types are 7-bit (RFC 3550 §5.1), so 255 encodes 'none'."""


class MsgType(enum.IntEnum):
    """The header's type byte; a reply carries its request's type."""

    HEARTBEAT = 1
    ALLOCATE = 2
    UPDATE = 3
    DELETE = 4
    RECORD = 5
    JOIN = 6
    LEAVE = 7
    STATS = 8
    EVENT = 9


class Flags(enum.IntFlag):
    REPLY = 0x01
    ERROR = 0x02
    TAGGED = 0x04
    MORE = 0x08
    """Reserved for replies split over several datagrams; never set yet."""


class Reason(enum.StrEnum):
    """Why a datagram was refused; each value is a counter name."""

    SHORT = "short"
    TOO_LONG = "too_long"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_HMAC = "bad_hmac"
    UNAUTHENTICATED = "unauthenticated"
    UNEXPECTED_TAG = "unexpected_tag"
    UNKNOWN_TYPE = "unknown_type"
    BAD_BODY = "bad_body"


class ErrorCode(enum.IntEnum):
    UNKNOWN_SESSION = 1
    NO_CAPACITY = 2
    NO_PORTS = 3
    BAD_REQUEST = 4
    INTERNAL = 5


class Direction(enum.IntEnum):
    """SDP media direction (RFC 3264 §5.1) as seen from the phone of the leg."""

    SENDRECV = 0
    SENDONLY = 1
    RECVONLY = 2
    INACTIVE = 3


class AllocFlags(enum.IntFlag):
    NONE = 0
    RECORD = 0x01
    """Record from the start, to a default name in the bearer's recordings
    directory (``<time>-<session>-<call_ref>.wav``).  A later RECORD start
    cannot rename it: with another path it is refused (BAD_REQUEST).  To
    choose the path, allocate without this flag and send RECORD (start, path)
    once allocated, as control does."""
    CONFERENCE = 0x02
    """A conference participant: one leg, to be JOINed to a room."""
    IPV6 = 0x04
    """Give the phones an IPv6 media address."""
    REBUILD = 0x08
    """Re-creating a session that lived on a bearer that died (for logs)."""


class JoinFlags(enum.IntFlag):
    NONE = 0
    MUTED = 0x01
    """The participant is heard by nobody."""
    DEAF = 0x02
    """The participant hears nothing (e.g. while on hold music elsewhere)."""


class EventKind(enum.IntEnum):
    MEDIA_TIMEOUT = 1
    DTMF = 2
    RECORDING_DONE = 3
    LATCHED = 4


class ProtocolError(Exception):
    """A datagram that is not a valid message; the daemons count and drop it.

    ``header`` is set when the header was authentic but the body was not
    understood, so a server can still answer ``ErrorReply(BAD_REQUEST)``.
    """

    def __init__(self, reason: Reason, detail: str = "", header: Header | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
        self.header = header


class KeyFileError(Exception):
    """The shared key file is missing, too short or readable by everyone."""


class Header(NamedTuple):
    """The fixed header, authenticated.  A NamedTuple rather than a frozen
    dataclass because one is built per datagram and costs a tenth as much."""

    msg_type: int
    flags: int
    request_id: int
    epoch: int


# --------------------------------------------------------------------------- primitives


class _Reader:
    """Bounds-checked cursor over a body: every short read is a ValueError.

    Slicing alone would silently return fewer bytes, so every read checks.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        pos = self.pos
        end = pos + n
        if end > len(self.data):
            raise ValueError(f"body truncated at byte {pos} (needs {n} more)")
        self.pos = end
        return self.data[pos:end]

    def unpack(self, s: struct.Struct) -> tuple[Any, ...]:
        v = s.unpack_from(self.data, self.pos)  # struct.error when short
        self.pos += s.size
        return v

    def str8(self) -> str:
        n = self.data[self.pos]  # IndexError when short
        self.pos += 1
        return self.take(n).decode("utf-8")

    def str16(self) -> str:
        (n,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return self.take(n).decode("utf-8")

    def addr(self) -> str:
        data, pos = self.data, self.pos
        family = data[pos]
        if family == 4:
            self.pos = pos + 5
            a, b, c, d = _V4.unpack_from(data, pos + 1)
            return f"{a}.{b}.{c}.{d}"
        if family == 6:
            self.pos = pos + 17
            return _text_v6(_V6.unpack_from(data, pos + 1)[0])
        raise ValueError(f"address family {family} is neither 4 nor 6")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} trailing bytes")


_V4 = struct.Struct("!4B")
_V6 = struct.Struct("!16s")


def _str8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ValueError(f"{s[:40]!r}... is {len(b)} bytes of UTF-8; the limit is 255")
    return bytes((len(b),)) + b


def _str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > MAX_DATAGRAM:
        raise ValueError(f"{s[:40]!r}... is {len(b)} bytes of UTF-8; too long")
    return _U16.pack(len(b)) + b


@lru_cache(maxsize=4096)
def _pack_addr(text: str) -> bytes:
    """Address text -> family byte + packed address.

    Cached because a bearer has one or two media addresses, phones' addresses
    repeat, and ``ipaddress`` parsing is the slowest step of encoding a LegSpec.
    """
    a = ipaddress.ip_address(text)
    return bytes((a.version,)) + a.packed


@lru_cache(maxsize=1024)
def _text_v6(b: bytes) -> str:
    return str(ipaddress.IPv6Address(b))


def _pt_byte(pt: int | None) -> int:
    if pt is None:
        return _NONE_PT
    if not 0 <= pt <= 127:
        raise ValueError(f"payload type {pt} is not 7-bit (RFC 3550 §5.1)")
    return pt


def _pt_value(b: int) -> int | None:
    if b == _NONE_PT:
        return None
    if b > 127:
        raise ValueError(f"payload type {b} is not 7-bit (RFC 3550 §5.1)")
    return b


def _leg(leg: int) -> int:
    if leg != 0 and leg != 1:
        raise ValueError(f"leg {leg} is neither 0 nor 1")
    return leg


def _bool(b: int) -> bool:
    if b > 1:
        raise ValueError(f"boolean byte {b} is neither 0 nor 1")
    return b == 1


_ALLOC_FLAGS = {i: AllocFlags(i) for i in range(16)}
_JOIN_FLAGS = {i: JoinFlags(i) for i in range(4)}
_DIRECTIONS = tuple(Direction)


# --------------------------------------------------------------------------- leg description


@dataclass(frozen=True, slots=True)
class PayloadType:
    """One rtpmap line of the SDP (RFC 4566 §6): payload type -> codec."""

    pt: int
    name: str
    clock_rate: int
    channels: int = 1


_PT_FIXED = struct.Struct("!BIB")
_LEG_FIXED = struct.Struct("!HBBBBH")


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
    extensions: tuple[tuple[int, bytes], ...] = ()
    """Fields added later (SRTP keys ...) as (type u8, value) TLVs, kept verbatim."""

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


# --------------------------------------------------------------------------- messages


class Message:
    """Base of every message: the class knows its type byte and body format.

    Most bodies are a fixed ``struct`` of some fields (``_NAMES``, in wire
    order) followed by at most one string field (``_STR``: its name and a
    1- or 2-byte length); ``_CHECK`` maps a field to the function that
    validates/converts it on decode.  The set-up messages override
    ``pack_body``/``unpack_body`` with hand-written code for speed.
    """

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    REPLY: ClassVar[bool] = False
    _FIXED: ClassVar[struct.Struct] = struct.Struct("!")
    _NAMES: ClassVar[tuple[str, ...]] = ()
    _STR: ClassVar[tuple[str, int] | None] = None
    _CHECK: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    _POSITIONAL: ClassVar[bool] = False
    """Set below for bodies that are exactly the leading fields, in order."""

    def pack_body(self) -> bytes:
        body = self._FIXED.pack(*[getattr(self, n) for n in self._NAMES])
        if self._STR is not None:
            name, width = self._STR
            s = getattr(self, name)
            body += _str8(s) if width == 1 else _str16(s)
        return body

    @classmethod
    def unpack_body(cls, r: _Reader) -> Message:
        if cls._POSITIONAL:
            return cls(*r.unpack(cls._FIXED))
        kw = dict(zip(cls._NAMES, r.unpack(cls._FIXED), strict=True))
        if cls._STR is not None:
            name, width = cls._STR
            kw[name] = r.str8() if width == 1 else r.str16()
        for name, check in cls._CHECK.items():
            kw[name] = check(kw[name])
        return cls(**kw)


_Q = struct.Struct("!Q")
_QB = struct.Struct("!QB")
_SESSION = ("session_id",)
_SESSION_LEG = ("session_id", "leg")


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Sent every second in both directions; the header carries the epoch."""

    TYPE = MsgType.HEARTBEAT
    _FIXED = struct.Struct("!IIBI")
    _NAMES = ("active_sessions", "capacity", "cpu_load", "packets_per_second")
    active_sessions: int = 0
    capacity: int = 0
    """Sessions the sender accepts before answering NO_CAPACITY."""
    cpu_load: int = 0
    """Percent of one core, 0..100."""
    packets_per_second: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatReply(Message):
    """The replier's own load, and the epoch it saw in the heartbeat, so the
    heartbeat's sender learns whether the peer has noticed its restart."""

    TYPE = MsgType.HEARTBEAT
    REPLY = True
    _FIXED = struct.Struct("!QIIBI")
    _NAMES = ("seen_epoch", "active_sessions", "capacity", "cpu_load", "packets_per_second")
    seen_epoch: int = 0
    active_sessions: int = 0
    capacity: int = 0
    cpu_load: int = 0
    packets_per_second: int = 0


_ALLOC = struct.Struct("!QH")


@dataclass(frozen=True, slots=True)
class Allocate(Message):
    """Create a session with one leg (a conference participant) or two (a call).

    Carries full LegSpecs when known, so control can rebuild a session on
    another bearer from its own state after a bearer crash.
    Wire: session u64, flags u16, call_ref str8, n u8 (1|2), n x LegSpec.
    """

    TYPE = MsgType.ALLOCATE
    session_id: int
    call_ref: str = ""
    """The SIP Call-ID, for the bearer's logs only."""
    legs: tuple[LegSpec, ...] = (LegSpec(), LegSpec())
    flags: AllocFlags = AllocFlags.NONE

    def pack_body(self) -> bytes:
        n = len(self.legs)
        if n != 1 and n != 2:
            raise ValueError(f"an ALLOCATE has 1 or 2 legs, not {n}")
        return b"".join(
            (
                _ALLOC.pack(self.session_id, self.flags),
                _str8(self.call_ref),
                bytes((n,)),
                *[leg.pack() for leg in self.legs],
            )
        )

    @classmethod
    def unpack_body(cls, r: _Reader) -> Allocate:
        session_id, flags = r.unpack(_ALLOC)
        call_ref = r.str8()
        n = r.unpack(_U8)[0]
        if n == 1:
            legs: tuple[LegSpec, ...] = (LegSpec.unpack(r),)
        elif n == 2:
            legs = (LegSpec.unpack(r), LegSpec.unpack(r))
        else:
            raise ValueError(f"an ALLOCATE has 1 or 2 legs, not {n}")
        f = _ALLOC_FLAGS.get(flags)
        return cls(session_id, call_ref, legs, AllocFlags(flags) if f is None else f)


@dataclass(frozen=True, slots=True)
class Allocated(Message):
    """The bearer's media address and the RTP port of each leg (RTCP = RTP+1).
    Wire: session u64, addr, n u8 (1|2), n x port u16."""

    TYPE = MsgType.ALLOCATE
    REPLY = True
    session_id: int
    address: str
    ports: tuple[int, ...]

    def pack_body(self) -> bytes:
        n = len(self.ports)
        if n != 1 and n != 2:
            raise ValueError(f"an ALLOCATED has 1 or 2 ports, not {n}")
        return b"".join(
            (
                _Q.pack(self.session_id),
                _pack_addr(self.address),
                bytes((n,)),
                *[_U16.pack(p) for p in self.ports],
            )
        )

    @classmethod
    def unpack_body(cls, r: _Reader) -> Allocated:
        (session_id,) = r.unpack(_Q)
        address = r.addr()
        (n,) = r.unpack(_U8)
        if n != 1 and n != 2:
            raise ValueError(f"an ALLOCATED has 1 or 2 ports, not {n}")
        return cls(session_id, address, r.unpack(_PORTS[n]))


_PORTS = (None, struct.Struct("!H"), struct.Struct("!HH"))


@dataclass(frozen=True, slots=True)
class Update(Message):
    """Replace one leg's description (typically when the SDP answer arrives).
    Wire: session u64, leg u8, LegSpec."""

    TYPE = MsgType.UPDATE
    session_id: int
    leg: int
    spec: LegSpec

    def pack_body(self) -> bytes:
        return _QB.pack(self.session_id, _leg(self.leg)) + self.spec.pack()

    @classmethod
    def unpack_body(cls, r: _Reader) -> Update:
        session_id, leg = r.unpack(_QB)
        return cls(session_id, _leg(leg), LegSpec.unpack(r))


@dataclass(frozen=True, slots=True)
class Updated(Message):
    TYPE = MsgType.UPDATE
    REPLY = True
    _FIXED, _NAMES = _Q, _SESSION
    session_id: int


@dataclass(frozen=True, slots=True)
class Delete(Message):
    """End a session; the reply carries its final counters."""

    TYPE = MsgType.DELETE
    _FIXED, _NAMES = _Q, _SESSION
    session_id: int


@dataclass(frozen=True, slots=True)
class Deleted(Message):
    """Final per-leg counters: the CDR's packets, bytes, loss and jitter.
    Wire: session u64, n u8 (0..2), n x LegStats."""

    TYPE = MsgType.DELETE
    REPLY = True
    session_id: int
    legs: tuple[LegStats, ...] = ()

    def pack_body(self) -> bytes:
        if len(self.legs) > 2:
            raise ValueError(f"a session has at most 2 legs, not {len(self.legs)}")
        return b"".join(
            (
                _Q.pack(self.session_id),
                bytes((len(self.legs),)),
                *[
                    _LEG_STATS.pack(
                        s.packets_in,
                        s.bytes_in,
                        s.packets_out,
                        s.bytes_out,
                        s.packets_lost,
                        s.jitter_us,
                    )
                    for s in self.legs
                ],
            )
        )

    @classmethod
    def unpack_body(cls, r: _Reader) -> Deleted:
        session_id, n = r.unpack(_QB)
        if n > 2:
            raise ValueError(f"a session has at most 2 legs, not {n}")
        return cls(session_id, tuple(LegStats(*r.unpack(_LEG_STATS)) for _ in range(n)))


@dataclass(frozen=True, slots=True)
class Record(Message):
    """Start or stop recording a session to ``path`` on the bearer's host.

    A relative ``path`` is under the bearer's recordings directory; "" is a
    default name.  Starting a session that is already recorded is a no-op
    with no path or the same path, and refused (BAD_REQUEST) with another.
    """

    TYPE = MsgType.RECORD
    _FIXED, _NAMES, _STR = _QB, ("session_id", "start"), ("path", 2)
    _CHECK = {"start": _bool}
    session_id: int
    start: bool
    path: str = ""


@dataclass(frozen=True, slots=True)
class RecordReply(Message):
    TYPE = MsgType.RECORD
    REPLY = True
    _FIXED, _NAMES, _CHECK = _QB, ("session_id", "recording"), {"recording": _bool}
    session_id: int
    recording: bool


@dataclass(frozen=True, slots=True)
class Join(Message):
    """Connect one leg of a session to a conference room (created on first join).

    A conference participant is a one-leg session (ALLOCATE with one LegSpec
    and AllocFlags.CONFERENCE) whose leg is then joined to the room.
    """

    TYPE = MsgType.JOIN
    _FIXED, _NAMES, _STR = struct.Struct("!QBB"), ("session_id", "leg", "flags"), ("room_id", 1)
    _CHECK = {"leg": _leg, "flags": lambda f: _JOIN_FLAGS.get(f) or JoinFlags(f)}
    room_id: str
    session_id: int
    leg: int = 0
    flags: JoinFlags = JoinFlags.NONE


_ROOM_COUNT = struct.Struct("!QH")


@dataclass(frozen=True, slots=True)
class Joined(Message):
    """Joined, with the room's participant count after the join."""

    TYPE = MsgType.JOIN
    REPLY = True
    _FIXED, _NAMES, _STR = _ROOM_COUNT, ("session_id", "participants"), ("room_id", 1)
    room_id: str
    session_id: int
    participants: int


@dataclass(frozen=True, slots=True)
class Leave(Message):
    """Disconnect a leg from its room; the room goes away with its last leg."""

    TYPE = MsgType.LEAVE
    _FIXED, _NAMES, _STR = _QB, _SESSION_LEG, ("room_id", 1)
    _CHECK = {"leg": _leg}
    room_id: str
    session_id: int
    leg: int = 0


@dataclass(frozen=True, slots=True)
class Left(Message):
    TYPE = MsgType.LEAVE
    REPLY = True
    _FIXED, _NAMES, _STR = _ROOM_COUNT, ("session_id", "participants"), ("room_id", 1)
    room_id: str
    session_id: int
    participants: int


@dataclass(frozen=True, slots=True)
class Stats(Message):
    """Counters of one session, or of the whole bearer when session_id is 0."""

    TYPE = MsgType.STATS
    _FIXED, _NAMES = _Q, _SESSION
    session_id: int = 0


@dataclass(frozen=True, slots=True)
class StatsReply(Message):
    """Counters as a JSON object of name -> number: STATS is not on the hot
    path, and its set of counters grows faster than a binary format should."""

    TYPE = MsgType.STATS
    REPLY = True
    session_id: int
    counters: dict[str, int | float] = field(default_factory=dict, hash=False)

    def pack_body(self) -> bytes:
        blob = json.dumps(self.counters, separators=(",", ":"), sort_keys=True)
        return _Q.pack(self.session_id) + blob.encode()

    @classmethod
    def unpack_body(cls, r: _Reader) -> StatsReply:
        (session_id,) = r.unpack(_Q)
        counters = json.loads(r.take(len(r.data) - r.pos))
        if not isinstance(counters, dict) or not all(
            type(v) is int or type(v) is float for v in counters.values()
        ):
            raise ValueError("STATS counters are not a JSON object of numbers")
        return cls(session_id, counters)


# ----- events: bearer -> control, acknowledged by EventAck, retransmitted until then


class Event(Message):
    """Base of the bearer's events; the body starts with the EventKind byte."""

    __slots__ = ()
    TYPE = MsgType.EVENT
    KIND: ClassVar[EventKind]

    def pack_body(self) -> bytes:
        return bytes((self.KIND,)) + Message.pack_body(self)


@dataclass(frozen=True, slots=True)
class MediaTimeout(Event):
    """No RTP on a leg for the media timeout: control hangs the call up."""

    KIND = EventKind.MEDIA_TIMEOUT
    _FIXED, _NAMES, _CHECK = _QB, _SESSION_LEG, {"leg": _leg}
    session_id: int
    leg: int


def _digit(b: bytes) -> str:
    d = b.decode("ascii")
    if d not in DTMF_DIGITS:
        raise ValueError(f"DTMF digit {d!r} is not one of {DTMF_DIGITS}")
    return d


DTMF_DIGITS = "0123456789*#ABCD"


@dataclass(frozen=True, slots=True)
class Dtmf(Event):
    """A telephone-event (RFC 4733) seen on a leg, once per key press."""

    KIND = EventKind.DTMF
    _FIXED, _NAMES = struct.Struct("!QBcI"), ("session_id", "leg", "digit", "duration_ms")
    _CHECK = {"leg": _leg, "digit": _digit}
    session_id: int
    leg: int
    digit: str
    duration_ms: int

    def pack_body(self) -> bytes:
        if len(self.digit) != 1 or self.digit not in DTMF_DIGITS:
            raise ValueError(f"DTMF digit {self.digit!r} is not one of {DTMF_DIGITS}")
        fixed = self._FIXED.pack(self.session_id, self.leg, self.digit.encode(), self.duration_ms)
        return bytes((self.KIND,)) + fixed


@dataclass(frozen=True, slots=True)
class RecordingDone(Event):
    """A recording file is complete and closed: the CDR can point at it."""

    KIND = EventKind.RECORDING_DONE
    _FIXED, _NAMES, _STR = struct.Struct("!Qd"), ("session_id", "seconds"), ("path", 2)
    session_id: int
    path: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Latched(Event):
    """A leg latched to its phone's real source (symmetric RTP, behind NAT)."""

    KIND = EventKind.LATCHED
    session_id: int
    leg: int
    address: str
    port: int

    def pack_body(self) -> bytes:
        head = bytes((self.KIND,)) + _QB.pack(self.session_id, _leg(self.leg))
        return head + _pack_addr(self.address) + _U16.pack(self.port)

    @classmethod
    def unpack_body(cls, r: _Reader) -> Latched:
        session_id, leg = r.unpack(_QB)
        return cls(session_id, _leg(leg), r.addr(), r.unpack(_U16)[0])


@dataclass(frozen=True, slots=True)
class EventAck(Message):
    """Control's acknowledgement of an event; the request id says which."""

    TYPE = MsgType.EVENT
    REPLY = True


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """A refusal, sent with the refused request's type and REPLY|ERROR.
    Wire: code u8, text str8 (cut to 255 bytes)."""

    REPLY = True
    request_type: int
    """The refused request's type: a MsgType, or the raw byte of an unknown one."""
    code: ErrorCode
    text: str = ""

    def pack_body(self) -> bytes:
        # Cut at 255 bytes without splitting a UTF-8 sequence, so it still decodes.
        b = self.text.encode("utf-8")[:255].decode("utf-8", "ignore").encode("utf-8")
        return bytes((self.code, len(b))) + b


_REQUESTS: dict[int, type[Message]] = {
    c.TYPE: c for c in (Heartbeat, Allocate, Update, Delete, Record, Join, Leave, Stats)
}
_REPLIES: dict[int, type[Message]] = {
    c.TYPE: c
    for c in (
        HeartbeatReply,
        Allocated,
        Updated,
        Deleted,
        RecordReply,
        Joined,
        Left,
        StatsReply,
        EventAck,
    )
}
_EVENTS: dict[int, type[Event]] = {c.KIND: c for c in (MediaTimeout, Dtmf, RecordingDone, Latched)}
for _c in (*_REQUESTS.values(), *_REPLIES.values(), *_EVENTS.values()):
    _c._POSITIONAL = (
        not _c._STR
        and not _c._CHECK
        and bool(_c._NAMES)
        and tuple(f.name for f in fields(_c)) == _c._NAMES
    )


# --------------------------------------------------------------------------- datagrams


class Packet(NamedTuple):
    """A decoded datagram: the header fields a session layer needs, and the
    message.  A NamedTuple (immutable, typed) because one is built per datagram
    and a frozen dataclass costs ten times as much to construct."""

    msg_type: int
    request_id: int
    epoch: int
    message: Message

    @property
    def is_reply(self) -> bool:
        return self.message.REPLY


class _Mac:
    """HMAC-SHA256 (RFC 2104) with the padded key hashed once.

    ``hmac.digest`` re-derives the inner and outer pads on every call; copying
    two prepared SHA-256 states halves the cost of tagging a datagram.
    """

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def tag(self, data: bytes) -> bytes:
        i = self.inner.copy()
        i.update(data)
        o = self.outer.copy()
        o.update(i.digest())
        return o.digest()[:TAG_LEN]


_MACS: dict[bytes, _Mac] = {}


def _mac(key: bytes) -> _Mac:
    m = _MACS.get(key)
    if m is None:
        if len(_MACS) >= 16:  # a process uses one key; bound it anyway
            _MACS.clear()
        m = _MACS[key] = _Mac(key)
    return m


_MSG_TYPES: dict[int, MsgType] = {int(t): t for t in MsgType}
_F_REPLY, _F_ERROR, _F_TAGGED = int(Flags.REPLY), int(Flags.ERROR), int(Flags.TAGGED)


def encode(message: Message, request_id: int, epoch: int, key: bytes | None = None) -> bytes:
    """One datagram for ``message``; tagged with HMAC-SHA256/128 when ``key`` is given.

    Raises ValueError for a message that cannot be represented (a field out of
    range, a call_ref over 255 bytes): that is a bug in the caller, not input.
    """
    if type(message) is ErrorReply:
        msg_type = int(message.request_type)
        flags = _F_REPLY | _F_ERROR
    else:
        msg_type = message.TYPE
        flags = _F_REPLY if message.REPLY else 0
    if key is not None:
        flags |= _F_TAGGED
    try:
        data = HEADER.pack(MAGIC, VERSION, msg_type, flags, 0, request_id, epoch)
        data += message.pack_body()
    except struct.error as e:
        raise ValueError(f"cannot encode {type(message).__name__}: {e}") from None
    if key is not None:
        data += _mac(key).tag(data)
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"{type(message).__name__} is {len(data)} bytes (> {MAX_DATAGRAM})")
    return data


def peek_header(datagram: bytes, key: bytes | None = None) -> Header:
    """Check the framing and the tag, and return the header; the body is not read."""
    n = len(datagram)
    if n < HEADER.size:
        raise ProtocolError(Reason.SHORT, f"{n} bytes")
    if n > MAX_DATAGRAM:
        raise ProtocolError(Reason.TOO_LONG, f"{n} bytes")
    magic, version, msg_type, flags, _rsvd, request_id, epoch = HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise ProtocolError(Reason.BAD_MAGIC)
    if version != VERSION:
        raise ProtocolError(Reason.BAD_VERSION, f"version {version}")
    if flags & _F_TAGGED:
        if key is None:
            raise ProtocolError(Reason.UNEXPECTED_TAG, "tagged datagram but no key configured")
        if n < HEADER.size + TAG_LEN:
            raise ProtocolError(Reason.SHORT, f"{n} bytes with a tag")
        expected = _mac(key).tag(datagram[:-TAG_LEN])
        if not hmac.compare_digest(expected, datagram[-TAG_LEN:]):
            raise ProtocolError(Reason.BAD_HMAC)
    elif key is not None:
        raise ProtocolError(Reason.UNAUTHENTICATED)
    return Header(msg_type, flags, request_id, epoch)


_BODY_ERRORS = (
    ValueError,  # includes UnicodeDecodeError and json.JSONDecodeError
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    RecursionError,  # json nesting
)


def decode(datagram: bytes, key: bytes | None = None) -> Packet:
    """Parse and authenticate one datagram; raises ProtocolError and nothing else.

    With ``key`` set (UDP), only datagrams tagged under that key are accepted;
    with no key (UNIX socket) tagged datagrams are refused as a
    misconfiguration rather than accepted unchecked.
    """
    h = peek_header(datagram, key)
    flags = h.flags
    end = len(datagram) - TAG_LEN if flags & _F_TAGGED else len(datagram)
    r = _Reader(bytes(datagram[HEADER.size : end]))
    try:
        if flags & _F_ERROR:
            if not flags & _F_REPLY:
                raise ValueError("ERROR flag without REPLY")
            code = ErrorCode(r.unpack(_U8)[0])
            t = h.msg_type
            msg: Message = ErrorReply(_MSG_TYPES.get(t, t), code, r.str8())
        else:
            if flags & _F_REPLY:
                cls = _REPLIES.get(h.msg_type)
            elif h.msg_type == MsgType.EVENT:
                cls = _EVENTS.get(r.unpack(_U8)[0])
            else:
                cls = _REQUESTS.get(h.msg_type)
            if cls is None:
                raise ProtocolError(Reason.UNKNOWN_TYPE, f"type {h.msg_type}", h)
            msg = cls.unpack_body(r)
        r.end()
    except _BODY_ERRORS as e:
        raise ProtocolError(Reason.BAD_BODY, str(e), h) from None
    return Packet(h.msg_type, h.request_id, h.epoch, msg)


# --------------------------------------------------------------------------- key file


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The shared HMAC key: 64 hex digits as written at install
    (``openssl rand -hex 32``), or at least 16 raw bytes.

    Refuses a world-readable or world-writable file: whoever can read the key
    can order the bearers around, so a lax mode is an error, not a warning.
    """
    p = Path(path)
    try:
        st = p.stat()
        raw = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read the control key: {e.strerror}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyFileError(
            f"{p}: the control key is accessible to every user "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 0640 it"
        )
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except ValueError:  # not ASCII hex: a raw binary key
        key = raw
    if len(key) < MIN_KEY_LEN:
        raise KeyFileError(
            f"{p}: the control key is {len(key)} bytes; at least {MIN_KEY_LEN} are needed "
            "(generate one with: openssl rand -hex 32)"
        )
    return key

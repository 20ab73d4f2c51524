"""The ``Message`` base class and the requests control sends with their replies
(heartbeat, allocate, update, delete, record, join, leave, stats, errors).

Each message is a frozen, slotted dataclass that knows its type byte and how to
pack and unpack its body; the header and the tag are ``softswitch.protocol.codec``'s
business, the bearer's events are in ``softswitch.protocol.events``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from softswitch.protocol.constants import AllocFlags, ErrorCode, JoinFlags, MsgType
from softswitch.protocol.legs import _LEG_STATS, SRTP_KEY_LEN, LegSpec, LegStats, SrtpKey
from softswitch.protocol.primitives import (
    _ALLOC_FLAGS,
    _JOIN_FLAGS,
    _U8,
    _U16,
    _bool,
    _leg,
    _pack_addr,
    _Reader,
    _str8,
    _str16,
)


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
    """Set by ``codec`` for bodies that are exactly the leading fields, in order."""

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
    """The bearer's media address and the RTP port of each leg (RTCP = RTP+1),
    and the SRTP key the bearer made for each leg that asked for one.

    Wire: session u64, addr, n u8 (1|2), n x port u16, then only when some
    leg has a key: n x (suite u8, 0 = none, then 30 bytes key||salt if not
    0).  A reply without SRTP is byte for byte what it was before keys existed.
    """

    TYPE = MsgType.ALLOCATE
    REPLY = True
    session_id: int
    address: str
    ports: tuple[int, ...]
    keys: tuple[SrtpKey | None, ...] = field(default=(), repr=False)
    """Per leg, the bearer's own key (what it protects towards that phone with)."""

    def pack_body(self) -> bytes:
        n = len(self.ports)
        if n != 1 and n != 2:
            raise ValueError(f"an ALLOCATED has 1 or 2 ports, not {n}")
        if self.keys and len(self.keys) != n:
            raise ValueError(f"{len(self.keys)} keys for {n} legs")
        return b"".join(
            (
                _Q.pack(self.session_id),
                _pack_addr(self.address),
                bytes((n,)),
                *[_U16.pack(p) for p in self.ports],
                *([_pack_key(k) for k in self.keys] if any(self.keys) else []),
            )
        )

    @classmethod
    def unpack_body(cls, r: _Reader) -> Allocated:
        (session_id,) = r.unpack(_Q)
        address = r.addr()
        (n,) = r.unpack(_U8)
        if n != 1 and n != 2:
            raise ValueError(f"an ALLOCATED has 1 or 2 ports, not {n}")
        ports = r.unpack(_PORTS[n])
        keys: tuple[SrtpKey | None, ...] = ()
        if r.pos < len(r.data):
            keys = tuple(_unpack_key(r) for _ in range(n))
        return cls(session_id, address, ports, keys)


def _pack_key(key: SrtpKey | None) -> bytes:
    return b"\0" if key is None else key.pack()


def _unpack_key(r: _Reader) -> SrtpKey | None:
    (suite,) = r.unpack(_U8)
    if suite == 0:
        return None
    return SrtpKey.unpack(bytes((suite,)) + r.take(SRTP_KEY_LEN))


_PORTS = (struct.Struct("!"), struct.Struct("!H"), struct.Struct("!HH"))
"""The struct of n ports, by n (0 is never used: an ALLOCATED has 1 or 2)."""


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
    """Done; with the leg's SRTP key when it has one (it is new when the
    UPDATE asked for SRTP the first time, or for another suite).
    Wire: session u64, then only with a key: suite u8 + 30 bytes."""

    TYPE = MsgType.UPDATE
    REPLY = True
    session_id: int
    key: SrtpKey | None = field(default=None, repr=False)

    def pack_body(self) -> bytes:
        body = _Q.pack(self.session_id)
        return body if self.key is None else body + self.key.pack()

    @classmethod
    def unpack_body(cls, r: _Reader) -> Updated:
        (session_id,) = r.unpack(_Q)
        key = _unpack_key(r) if r.pos < len(r.data) else None
        return cls(session_id, key)


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

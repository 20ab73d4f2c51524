"""The bearer's events (bearer -> control) and control's acknowledgement.

Events share one header type, EVENT, and start their body with an
``EventKind`` byte; the bearer retransmits each until an ``EventAck`` with the
same request id arrives (``softswitch.protocol.endpoint.EventSender``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from softswitch.protocol.constants import EventKind, MsgType
from softswitch.protocol.messages import _QB, _SESSION_LEG, Message
from softswitch.protocol.primitives import _U16, _leg, _pack_addr, _Reader


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

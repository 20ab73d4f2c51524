"""Datagrams: ``encode`` a message behind its header (and tag), and
``peek_header``/``decode`` one back, raising ``ProtocolError`` and nothing else.

The type tables that map a header's type byte (and an event's kind byte) to a
message class are built here, once every message class exists.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import fields, is_dataclass
from typing import NamedTuple

from softswitch.protocol.auth import _mac
from softswitch.protocol.constants import (
    HEADER,
    MAGIC,
    MAX_DATAGRAM,
    TAG_LEN,
    VERSION,
    ErrorCode,
    Flags,
    Header,
    MsgType,
    ProtocolError,
    Reason,
)
from softswitch.protocol.events import Dtmf, Event, EventAck, Latched, MediaTimeout, RecordingDone
from softswitch.protocol.messages import (
    Allocate,
    Allocated,
    Delete,
    Deleted,
    ErrorReply,
    Heartbeat,
    HeartbeatReply,
    Join,
    Joined,
    Leave,
    Left,
    Message,
    Record,
    RecordReply,
    Stats,
    StatsReply,
    Update,
    Updated,
)
from softswitch.protocol.primitives import _U8, _Reader

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
    assert is_dataclass(_c)  # every concrete message is; the Message base is not
    _c._POSITIONAL = (
        not _c._STR
        and not _c._CHECK
        and bool(_c._NAMES)
        and tuple(f.name for f in fields(_c)) == _c._NAMES
    )


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

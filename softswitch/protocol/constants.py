"""The numbers of the wire format: header constants, every enum, the header
tuple and the one decoding exception.

They sit apart from the message classes because both ends and every layer
(the codec, the reliability layer in ``softswitch.protocol.endpoint``, the daemons'
counters) name them, and a reader checking a byte against the header diagram
in the package docstring finds them all on one page.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

MAGIC = b"\xc5\x53"
"""First byte 0xC5 has its top bits 11, so no RTP (10), STUN (00), DTLS or SIP
datagram sent to the wrong port can be mistaken for a control message."""
VERSION = 1
HEADER = struct.Struct("!2sBBBBIQ")
TAG_LEN = 16
MAX_DATAGRAM = 8192
"""Upper bound on a datagram, tag included; larger ones are refused unread."""


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


class Header(NamedTuple):
    """The fixed header, authenticated.  A NamedTuple rather than a frozen
    dataclass because one is built per datagram and costs a tenth as much."""

    msg_type: int
    flags: int
    request_id: int
    epoch: int

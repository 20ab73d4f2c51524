"""The private control protocol between softswitch-control and the bearers.

This package is the wire format, defined once: control imports it from
``softswitch.protocol`` and the bearer daemon serves it.  It does no I/O (reading
the key file at start-up is the one exception, in ``load_key``); the
reliability machinery (retransmission, reply cache, heartbeats) lives in
``softswitch.protocol.endpoint``.

Import every name from ``softswitch.protocol``; the modules are its seams, not
separate interfaces:

* ``constants`` -- header constants, the enums, ``Header``, ``ProtocolError``;
* ``primitives`` -- field encodings every body shares (strings, addresses, PTs);
* ``legs`` -- ``PayloadType``, ``LegSpec`` (with its SRTP TLVs: ``SrtpKey``,
  ``SrtpSuite``) and ``LegStats``;
* ``messages`` -- the ``Message`` base, control's requests and their replies;
* ``events`` -- the bearer's events and their acknowledgement;
* ``auth`` -- the key file and the HMAC tag;
* ``codec`` -- ``encode``, ``peek_header`` and ``decode`` of whole datagrams.

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

from softswitch.protocol.auth import MIN_KEY_LEN as MIN_KEY_LEN  # public, not in __all__
from softswitch.protocol.auth import KeyFileError, load_key
from softswitch.protocol.codec import Packet, decode, encode, peek_header
from softswitch.protocol.constants import (
    HEADER,
    MAGIC,
    MAX_DATAGRAM,
    TAG_LEN,
    VERSION,
    AllocFlags,
    Direction,
    ErrorCode,
    EventKind,
    Flags,
    Header,
    JoinFlags,
    MsgType,
    ProtocolError,
    Reason,
)
from softswitch.protocol.events import (
    DTMF_DIGITS,
    Dtmf,
    Event,
    EventAck,
    Latched,
    MediaTimeout,
    RecordingDone,
)
from softswitch.protocol.legs import (
    EXT_SRTP_LOCAL,
    EXT_SRTP_REMOTE,
    SRTP_KEY_LEN,
    LegSpec,
    LegStats,
    PayloadType,
    SrtpKey,
    SrtpSuite,
    needs_transcoding,
)
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

__all__ = [
    "DTMF_DIGITS",
    "EXT_SRTP_LOCAL",
    "EXT_SRTP_REMOTE",
    "HEADER",
    "MAGIC",
    "MAX_DATAGRAM",
    "SRTP_KEY_LEN",
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
    "SrtpKey",
    "SrtpSuite",
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

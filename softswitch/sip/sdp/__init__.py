"""SDP session descriptions (RFC 4566): parse, inspect, serialise.

Theory of operation
-------------------
``SessionDescription.parse(body)`` turns an ``application/sdp`` body into
mutable, slotted dataclasses; ``bytes(sd)`` turns them back into wire form.
Offer/answer and the B2BUA's rewriting live in ``offeranswer.py``; this package
only knows the grammar.  Import every name from ``softswitch.sip.sdp``; its
modules are the seams: ``fields`` (limits, ``SdpError``, the one-line value
types and their parsers, codecs), ``media`` (one m= section and what it
inherits) and ``session`` (the whole description and its parser).

* **Round trip.**  Every line is kept: the typed ones (v o s c b t r m) as
  fields, the rest (i u e p z k and unknown letters) as ``extra_lines``, and
  every ``a=`` line in order as ``(name, value | None)``.  Output follows the
  RFC 4566 §5 field order with CRLF line ends, so a well-ordered CRLF body
  comes back byte for byte; a body with bare LF or fields out of order comes
  back canonical.  Values are never re-encoded: the body is decoded as UTF-8
  with ``surrogateescape`` (RFC 4566 §5 lets ``a=charset`` pick another
  charset, and a relay must not mangle what it does not understand), and
  ``bytes(sd)`` restores the original bytes.  ``str(sd)`` is for logs and
  tests; ``bytes(sd)`` is the wire form.
* **Liberal where it is harmless, strict where we act on it.**  The lines the
  softswitch uses (v o c m t b) must be well formed; free-text lines are kept as
  they came.  A missing ``s=`` or ``t=`` and a media section with no ``c=``
  anywhere (RFC 4566 §5.7) are tolerated: the bearer latches onto the source
  of the RTP it receives, so an absent address costs nothing.  Unknown type
  letters are kept rather than making the whole description ignored as
  RFC 4566 §5 asks, because dropping a call over a line nobody reads helps no
  one.
* **Bounded.**  At most ``MAX_SDP_BYTES`` bytes, ``MAX_LINES`` lines of
  ``MAX_LINE_LENGTH`` characters, ``MAX_MEDIA`` media sections and
  ``MAX_FORMATS`` formats per section; numbers have at most a few dozen digits
  and are checked to be ASCII digits before ``int()`` sees them (``int()``
  alone would accept ``"1_0"``, ``" 5"`` and Arabic-Indic digits).

Errors
------
Whatever the bytes, the only exception ``parse`` raises is ``SdpError``, a
``SipError``.  A body that breaks the grammar is **400 Bad Request** (RFC 3261
§21.4.1, "malformed syntax"), reason ``"Bad SDP: line N: <what>: '<line>'"``;
the offending line is quoted with ``repr`` and cut short, so the reason phrase
stays one printable ASCII line.  **488 Not Acceptable Here** (RFC 3261
§21.4.26) is kept for descriptions that parse but cannot be accepted -- no
common codec, no acceptable stream -- and is raised by ``offeranswer.py``.  A
broken SDP in a *response* cannot be answered with a status at all; the caller
ACKs and hangs up, and the status is then only a label.
"""

from __future__ import annotations

from softswitch.sip.sdp.fields import (
    DIRECTIONS,
    MAX_FORMATS,
    MAX_LINE_LENGTH,
    MAX_LINES,
    MAX_MEDIA,
    MAX_SDP_BYTES,
    NULL_ADDRESSES,
    STATIC_PAYLOAD_TYPES,
    Bandwidth,
    Codec,
    Connection,
    Origin,
    SdpError,
    Timing,
    parse_rtpmap,
    payload_type_of,
)
from softswitch.sip.sdp.media import MediaDescription, SessionLevel
from softswitch.sip.sdp.session import SessionDescription

__all__ = [
    "DIRECTIONS",
    "MAX_FORMATS",
    "MAX_LINES",
    "MAX_LINE_LENGTH",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
    "NULL_ADDRESSES",
    "STATIC_PAYLOAD_TYPES",
    "Bandwidth",
    "Codec",
    "Connection",
    "MediaDescription",
    "Origin",
    "SdpError",
    "SessionDescription",
    "SessionLevel",
    "Timing",
    "parse_rtpmap",
    "payload_type_of",
]

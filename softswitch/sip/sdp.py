"""SDP session descriptions (RFC 4566): parse, inspect, serialise.

Theory of operation
-------------------
``SessionDescription.parse(body)`` turns an ``application/sdp`` body into
mutable, slotted dataclasses; ``bytes(sd)`` turns them back into wire form.
Offer/answer and the B2BUA's rewriting live in ``offeranswer.py``; this module
only knows the grammar.

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

import functools
from dataclasses import dataclass, field

from softswitch.sip.errors import SipError

__all__ = [
    "DIRECTIONS",
    "MAX_FORMATS",
    "MAX_LINES",
    "MAX_LINE_LENGTH",
    "MAX_MEDIA",
    "MAX_SDP_BYTES",
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

MAX_SDP_BYTES = 65_535
MAX_LINES = 2_000
MAX_LINE_LENGTH = 4_096
MAX_MEDIA = 64
MAX_FORMATS = 128
_MAX_DIGITS = 40  # sess-id / sess-version in the wild: NTP times, ms epochs

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")  # RFC 4566 §6
NULL_ADDRESSES = frozenset(("0.0.0.0", "::"))  # RFC 3264 §8.4 (legacy hold)

# RFC 3551 §6, tables 4 and 5: payload types usable without an rtpmap.  G722's
# clock rate is 8000 by historical error although it samples at 16 kHz
# (RFC 3551 §4.5.2).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("nv", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}


class SdpError(SipError):
    """An SDP body we cannot parse (400) or cannot accept (488); see the module doc."""


def _show(line: str) -> str:
    """Quote part of an offending line so it fits in a one-line ASCII reason phrase."""
    text = repr(line if len(line) <= 40 else line[:40] + "...")
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _bad(lineno: int, what: str, line: str) -> SdpError:
    return SdpError(400, f"Bad SDP: line {lineno}: {what}: {_show(line)}")


def _digits(text: str, limit: int = _MAX_DIGITS) -> int | None:
    """The value of 1*DIGIT (RFC 4566 §9), or None; ASCII digits only."""
    if 0 < len(text) <= limit and text.isascii() and text.isdigit():
        return int(text)
    return None


def _token_ok(text: str) -> bool:
    """Printable ASCII without spaces: what RFC 4566 §9 allows in o/c/m fields."""
    return text.isascii() and text.isprintable()


# ---------------------------------------------------------------------------
# Value types.  Frozen: descriptions share them freely when copied.


@dataclass(frozen=True, slots=True)
class Origin:
    """o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address> (RFC 4566 §5.2).

    ``sess_id`` stays a string: it is an identifier, compared, never counted.
    ``sess_version`` is an int because RFC 3264 §8 makes us increment it.
    """

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """c=<nettype> <addrtype> <connection-address> (RFC 4566 §5.7).

    ``address`` is kept whole, multicast ``/ttl/count`` suffix included; ``host``
    is the address alone.  IPv6 addresses carry no brackets (RFC 4566 §9).
    """

    nettype: str
    addrtype: str
    address: str

    @property
    def host(self) -> str:
        return self.address.partition("/")[0]

    @property
    def is_null(self) -> bool:
        """0.0.0.0 (or ::): the RFC 2543 way to say "do not send to me" (RFC 3264 §8.4)."""
        return self.host in NULL_ADDRESSES

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """b=<bwtype>:<bandwidth> (RFC 4566 §5.8), e.g. AS:64 or TIAS:64000."""

    bwtype: str
    bandwidth: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(frozen=True, slots=True)
class Timing:
    """t=<start> <stop> and the r= lines that follow it (RFC 4566 §5.9, §5.10)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format: an rtpmap (RFC 4566 §6) or a static type (RFC 3551 §6).

    ``pt`` is the number on the m= line; ``name`` keeps the sender's case (names
    compare case-insensitively, RFC 4855 §3); ``fmtp`` is the a=fmtp value
    after the payload type.
    """

    pt: int
    name: str
    rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def encoding(self) -> str:
        """``name/rate[/channels]``, the rtpmap encoding (channels only if not 1)."""
        if self.channels != 1:
            return f"{self.name}/{self.rate}/{self.channels}"
        return f"{self.name}/{self.rate}"

    def same_format(self, other: Codec) -> bool:
        """Same codec whatever the payload type number and fmtp."""
        return (
            self.name.casefold() == other.name.casefold()
            and self.rate == other.rate
            and self.channels == other.channels
        )


_PT_NUMBER = {str(pt): pt for pt in range(128)}  # RTP payload type text -> number


@functools.lru_cache(maxsize=1024)  # the same few rtpmap lines recur in every call
def parse_rtpmap(value: str) -> tuple[int, str, int, int] | None:
    """``<pt> <name>/<rate>[/<channels>]`` -> (pt, name, rate, channels), or None if malformed."""
    pt_text, _, encoding = value.partition(" ")
    pt = _PT_NUMBER.get(pt_text)
    parts = encoding.strip().split("/")
    if pt is None or len(parts) not in (2, 3) or not parts[0]:
        return None
    rate = _digits(parts[1], 10)
    channels = _digits(parts[2], 3) if len(parts) == 3 else 1
    if rate is None or channels is None or not _token_ok(parts[0]):
        return None
    return pt, parts[0], rate, channels


@functools.lru_cache(maxsize=1024)  # Codecs are immutable: share the common ones
def _codec(pt: int, name: str, rate: int, channels: int, fmtp: str | None) -> Codec:
    return Codec(pt, name, rate, channels, fmtp)


def payload_type_of(value: str | None) -> int | None:
    """The payload type an rtpmap/fmtp/rtcp-fb value starts with, or None ('*', junk)."""
    if value is None:
        return None
    return _PT_NUMBER.get(value.partition(" ")[0])


# ---------------------------------------------------------------------------
# Media and session descriptions.


def _is_rtp(proto: str) -> bool:
    """RTP/AVP, RTP/SAVP, RTP/AVPF, UDP/TLS/RTP/SAVPF...: formats are payload types."""
    return "RTP/" in proto.upper()


class SessionLevel:
    """The session-level c= and a= lines, shared by a description and its
    media sections (which inherit the address and the direction from them).

    A ``SessionDescription`` keeps its ``connection`` and ``attributes`` here,
    so assigning either is seen at once by every section.
    """

    __slots__ = ("attributes", "connection")

    def __init__(
        self, connection: Connection | None, attributes: list[tuple[str, str | None]]
    ) -> None:
        self.connection = connection
        self.attributes = attributes

    @property
    def direction(self) -> str:
        """Session-level direction attribute, sendrecv if none (RFC 4566 §6)."""
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return "sendrecv"


@dataclass(slots=True, kw_only=True)
class MediaDescription:
    """One m= section (RFC 4566 §5.14) and the lines under it.

    ``session_level`` is what the section inherits from its description: the
    session-level c= and a= lines (for the address and the direction).  It is
    an object the description shares with its sections, not a reference back
    to the description, so parsed SDP holds no reference cycle: the control
    daemon freezes its heap (softswitch/daemonkit/gctune.py), and a frozen cycle that
    dies is never reclaimed.  ``SessionDescription`` sets it; it is not
    compared or printed.
    """

    media: str
    port: int
    proto: str
    formats: list[str] = field(default_factory=list)
    port_count: int | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    extra_lines: list[tuple[str, str]] = field(default_factory=list)
    session_level: SessionLevel | None = field(default=None, repr=False, compare=False)

    # -- attributes -------------------------------------------------------

    def attribute(self, name: str) -> str | None:
        """Value of the first a=<name>[:value]; None if absent or valueless."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def has_attribute(self, name: str) -> bool:
        return any(key == name for key, _ in self.attributes)

    @property
    def connection(self) -> Connection | None:
        """The media-level c= (the first, if several: RFC 4566 §5.7 multicast layers)."""
        return self.connections[0] if self.connections else None

    @property
    def effective_connection(self) -> Connection | None:
        """Media-level c= wins over the session's (RFC 4566 §5.7, RFC 5118 §4.6)."""
        if self.connections:
            return self.connections[0]
        return self.session_level.connection if self.session_level is not None else None

    @property
    def effective_address(self) -> str | None:
        conn = self.effective_connection
        return conn.host if conn is not None else None

    @property
    def effective_port(self) -> int:
        return self.port

    @property
    def direction(self) -> str:
        """sendrecv/sendonly/recvonly/inactive: media level, else session level (RFC 4566 §6)."""
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        if self.session_level is not None:
            return self.session_level.direction
        return "sendrecv"

    @property
    def is_hold(self) -> bool:
        """Offerer stops listening: sendonly/inactive, or legacy c=0.0.0.0 (RFC 3264 §8.4)."""
        if self.direction in ("sendonly", "inactive"):
            return True
        conn = self.effective_connection
        return conn is not None and conn.is_null

    @property
    def ptime(self) -> int | None:
        """a=ptime in ms (RFC 4566 §6); a fractional value is rounded down."""
        value = self.attribute("ptime")
        if value is None:
            return None
        whole = value.strip().partition(".")[0]
        return _digits(whole, 6)

    @property
    def rtcp(self) -> tuple[int, str | None] | None:
        """a=rtcp:<port> [IN IP4|IP6 <address>] (RFC 3605 §2.1) as (port, address)."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        port = _digits(parts[0], 5) if parts else None
        if port is None or port > 65535:
            return None
        return port, (parts[3] if len(parts) == 4 else None)

    @property
    def codecs(self) -> list[Codec]:
        """The RTP payload formats in m= order: rtpmap first, else RFC 3551 static table.

        A dynamic type without an rtpmap cannot be identified and is left out;
        so is everything on a non-RTP m= line.
        """
        if not _is_rtp(self.proto):
            return []
        rtpmap: dict[int, tuple[str, int, int]] = {}
        fmtp: dict[int, str] = {}
        for key, value in self.attributes:
            if key == "rtpmap" and value is not None:
                parsed = parse_rtpmap(value)
                if parsed is not None and parsed[0] not in rtpmap:
                    rtpmap[parsed[0]] = parsed[1:]
            elif key == "fmtp" and value is not None:
                pt = payload_type_of(value)
                if pt is not None and pt not in fmtp:
                    fmtp[pt] = value.partition(" ")[2].strip()
        result = []
        for text in self.formats:
            pt = _PT_NUMBER.get(text)
            if pt is None:
                continue
            known = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if known is not None:
                result.append(_codec(pt, known[0], known[1], known[2], fmtp.get(pt)))
        return result

    @property
    def telephone_event(self) -> Codec | None:
        """The RFC 4733 telephone-event format (8000 Hz preferred), fmtp e.g. '0-16'."""
        events = [c for c in self.codecs if c.name.casefold() == "telephone-event"]
        for codec in events:
            if codec.rate == 8000:
                return codec
        return events[0] if events else None

    def set_direction(self, direction: str) -> None:
        """Replace the media-level direction attribute (in place, else append)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        attrs = [(k, v) for k, v in self.attributes if k not in DIRECTIONS]
        first = next((i for i, (k, _) in enumerate(self.attributes) if k in DIRECTIONS), None)
        attrs.insert(len(attrs) if first is None else first, (direction, None))
        self.attributes = attrs

    # -- copy / serialise ---------------------------------------------------

    def copy(self) -> MediaDescription:
        """A copy whose lists can be changed without touching this one."""
        return MediaDescription(
            media=self.media,
            port=self.port,
            proto=self.proto,
            formats=list(self.formats),
            port_count=self.port_count,
            connections=list(self.connections),
            bandwidths=list(self.bandwidths),
            attributes=list(self.attributes),
            extra_lines=list(self.extra_lines),
            session_level=self.session_level,
        )

    def lines(self) -> list[str]:
        """The section's lines in RFC 4566 §5 order: m i c* b* k a*."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [" ".join([f"m={self.media} {port} {self.proto}", *self.formats])]
        out += [f"i={v}" for k, v in self.extra_lines if k == "i"]
        out += [f"c={c}" for c in self.connections]
        out += [f"b={b}" for b in self.bandwidths]
        out += [f"{k}={v}" for k, v in self.extra_lines if k != "i"]
        out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"


_SESSION_BEFORE_C = "iuep"  # RFC 4566 §5: v o s i u e p c b t r z k a


class SessionDescription:
    """A whole SDP body (RFC 4566 §5).

    A plain class rather than a dataclass only because ``connection`` and
    ``attributes`` live in the ``SessionLevel`` it shares with its media
    sections (see ``MediaDescription``); it compares and prints like one.
    """

    __slots__ = (
        "bandwidths",
        "extra_lines",
        "media",
        "name",
        "origin",
        "session_level",
        "timing",
        "version",
    )

    def __init__(
        self,
        *,
        origin: Origin,
        version: int = 0,
        name: str | None = "-",
        connection: Connection | None = None,
        bandwidths: list[Bandwidth] | None = None,
        timing: list[Timing] | None = None,
        attributes: list[tuple[str, str | None]] | None = None,
        media: list[MediaDescription] | None = None,
        extra_lines: list[tuple[str, str]] | None = None,
    ) -> None:
        self.origin = origin
        self.version = version
        self.name = name
        self.bandwidths = bandwidths if bandwidths is not None else []
        self.timing = timing if timing is not None else [Timing()]
        self.media = media if media is not None else []
        self.extra_lines = extra_lines if extra_lines is not None else []
        self.session_level = SessionLevel(connection, attributes if attributes is not None else [])
        for md in self.media:
            md.session_level = self.session_level

    @property
    def connection(self) -> Connection | None:
        """The session-level c= line, inherited by sections without their own."""
        return self.session_level.connection

    @connection.setter
    def connection(self, value: Connection | None) -> None:
        self.session_level.connection = value

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        """The session-level a= lines in order, as ``(name, value | None)``."""
        return self.session_level.attributes

    @attributes.setter
    def attributes(self, value: list[tuple[str, str | None]]) -> None:
        self.session_level.attributes = value

    @property
    def direction(self) -> str:
        """Session-level direction attribute, sendrecv if none (RFC 4566 §6)."""
        return self.session_level.direction

    def adopt(self, md: MediaDescription) -> MediaDescription:
        """Make ``md`` inherit this description's session level; returns it
        (for a section put into ``media`` after construction)."""
        md.session_level = self.session_level
        return md

    def _key(self) -> tuple[object, ...]:
        return (
            self.origin,
            self.version,
            self.name,
            self.connection,
            self.bandwidths,
            self.timing,
            self.attributes,
            self.media,
            self.extra_lines,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, SessionDescription)
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        names = (
            *("origin", "version", "name", "connection", "bandwidths", "timing"),
            *("attributes", "media", "extra_lines"),
        )
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(names, self._key(), strict=True))
        return f"SessionDescription({inner})"

    def copy(self) -> SessionDescription:
        """A copy whose media and lists can be changed without touching this one."""
        return SessionDescription(
            origin=self.origin,
            version=self.version,
            name=self.name,
            connection=self.connection,
            bandwidths=list(self.bandwidths),
            timing=list(self.timing),
            attributes=list(self.attributes),
            media=[md.copy() for md in self.media],
            extra_lines=list(self.extra_lines),
        )

    def __str__(self) -> str:
        out = [f"v={self.version}", f"o={self.origin}"]
        if self.name is not None:
            out.append(f"s={self.name}")
        out += [f"{k}={v}" for k, v in self.extra_lines if k in _SESSION_BEFORE_C]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        for t in self.timing:
            out.append(f"t={t.start} {t.stop}")
            out += [f"r={r}" for r in t.repeats]
        out += [f"{k}={v}" for k, v in self.extra_lines if k not in _SESSION_BEFORE_C]
        out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        for md in self.media:
            out += md.lines()
        return "\r\n".join(out) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview | str) -> SessionDescription:
        """Parse an SDP body; raise SdpError (400) for anything malformed."""
        if isinstance(data, str):
            try:
                data = data.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise SdpError(400, "Bad SDP: text is not encodable as UTF-8") from None
        elif isinstance(data, bytearray | memoryview):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(f"SDP must be bytes or str, not {type(data).__name__}")
        if len(data) > MAX_SDP_BYTES:
            raise SdpError(400, f"Bad SDP: body longer than {MAX_SDP_BYTES} bytes")
        return _parse(data.decode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------------------
# The parser.  Hot enough (two descriptions per call attempt) to check whole
# lines with C-level string methods before splitting them.


def _split_lines(text: str) -> list[str]:
    """Lines without their CRLF or bare LF; 400 for NUL or a CR that ends no line."""
    if "\x00" in text:  # RFC 4566 §9: text excludes NUL, CR and LF
        lineno = text.count("\n", 0, text.index("\x00")) + 1
        raise _bad(lineno, "CR or NUL inside a line", text.split("\n")[lineno - 1].rstrip("\r"))
    crlf = text.count("\r\n")
    if text.count("\r") != crlf:
        lines = text.split("\n", MAX_LINES + 1)
        for lineno, line in enumerate(lines, 1):
            if "\r" in line[:-1]:
                raise _bad(lineno, "CR or NUL inside a line", line[:-1])
        raise _bad(len(lines), "CR or NUL inside a line", lines[-1])  # CR at the very end
    if crlf:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n", MAX_LINES + 1)
    if len(lines) > MAX_LINES + 1:  # + 1: the empty string after the last line end
        raise SdpError(400, f"Bad SDP: more than {MAX_LINES} lines")
    while lines and not lines[-1]:  # trailing blank lines: harmless
        lines.pop()
    return lines


def _parse(text: str) -> SessionDescription:
    """One pass over the lines; the current m= section, if any, collects what follows."""
    lines = _split_lines(text)
    if not lines or lines[0] != "v=0":  # RFC 4566 §5.1: the body starts with v=0
        raise _bad(1, "expected v=0", lines[0] if lines else "")
    if max(map(len, lines)) > MAX_LINE_LENGTH:
        lineno = next(n for n, line in enumerate(lines, 1) if len(line) > MAX_LINE_LENGTH)
        raise _bad(lineno, "line too long", lines[lineno - 1])
    origin: Origin | None = None
    name: str | None = None
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = []
    timing: list[Timing] = []
    attributes: list[tuple[str, str | None]] = []
    extra: list[tuple[str, str]] = []
    media: list[MediaDescription] = []
    md: MediaDescription | None = None
    target = attributes  # where a= lines go: the session's, then each m= section's
    for lineno in range(2, len(lines) + 1):
        line = lines[lineno - 1]
        if not line:
            continue  # stray blank line: skip rather than refuse
        kind = line[:2]
        if kind == "a=":
            key, colon, rest = line[2:].partition(":")
            target.append((key, rest if colon else None))
            continue
        if len(kind) < 2 or kind[1] != "=" or not ("a" <= kind[0] <= "z"):
            raise _bad(lineno, "not <type>=<value>", line)
        kind = kind[0]
        value = line[2:]
        if kind == "m":
            if len(media) >= MAX_MEDIA:
                raise _bad(lineno, f"more than {MAX_MEDIA} m= lines", line)
            md = _parse_media(lineno, line, value)
            media.append(md)
            target = md.attributes
        elif kind == "c":
            conn = _parse_connection(lineno, line, value)
            if md is not None:
                md.connections.append(conn)
            elif connection is not None:
                raise _bad(lineno, "second session-level c= line", line)
            else:
                connection = conn
        elif kind == "b":
            bw = _parse_bandwidth(lineno, line, value)
            (md.bandwidths if md is not None else bandwidths).append(bw)
        elif md is not None:
            if kind in "vosuepztr":
                raise _bad(lineno, f"{kind}= line inside a media section", line)
            md.extra_lines.append((kind, value))
        elif kind == "o":
            if origin is not None:
                raise _bad(lineno, "second o= line", line)
            origin = _parse_origin(lineno, line, value)
        elif kind == "s":
            if name is not None:
                raise _bad(lineno, "second s= line", line)
            name = value
        elif kind == "t":
            timing.append(_parse_timing(lineno, line, value))
        elif kind == "r":
            if not timing:
                raise _bad(lineno, "r= line without t=", line)
            last = timing[-1]
            timing[-1] = Timing(last.start, last.stop, (*last.repeats, value))
        elif kind == "v":
            raise _bad(lineno, "second v= line", line)
        else:
            extra.append((kind, value))
    if origin is None:
        raise SdpError(400, "Bad SDP: no o= line")  # RFC 4566 §5.2, RFC 3264 §5
    return SessionDescription(
        origin=origin,
        name=name,
        connection=connection,
        bandwidths=bandwidths,
        timing=timing,
        attributes=attributes,
        media=media,
        extra_lines=extra,
    )


def _fields(value: str) -> list[str]:
    """Space-separated fields of an o/c/m/t line; [] unless printable ASCII (RFC 4566 §9)."""
    return value.split() if value.isascii() and value.isprintable() else []


def _parse_origin(lineno: int, line: str, value: str) -> Origin:
    parts = _fields(value)
    if len(parts) != 6:
        raise _bad(lineno, "o= needs 6 fields", line)
    version = _digits(parts[2])
    if _digits(parts[1]) is None or version is None:
        raise _bad(lineno, "o= sess-id and sess-version must be digits", line)
    return Origin(parts[0], parts[1], version, parts[3], parts[4], parts[5])


def _parse_connection(lineno: int, line: str, value: str) -> Connection:
    parts = _fields(value)
    if len(parts) != 3:
        raise _bad(lineno, "c= needs <nettype> <addrtype> <address>", line)
    return Connection(parts[0], parts[1], parts[2])


def _parse_bandwidth(lineno: int, line: str, value: str) -> Bandwidth:
    bwtype, colon, amount = value.partition(":")
    number = _digits(amount, 20)
    if not colon or len(_fields(bwtype)) != 1 or " " in bwtype or number is None:
        raise _bad(lineno, "b= needs <bwtype>:<bandwidth>", line)
    return Bandwidth(bwtype, number)


def _parse_timing(lineno: int, line: str, value: str) -> Timing:
    numbers = [_digits(p, 20) for p in _fields(value)]
    if len(numbers) != 2 or numbers[0] is None or numbers[1] is None:
        raise _bad(lineno, "t= needs <start> <stop>", line)
    return Timing(numbers[0], numbers[1])


def _parse_media(lineno: int, line: str, value: str) -> MediaDescription:
    """m=<media> <port>[/<count>] <proto> <fmt> ... (RFC 4566 §5.14)."""
    parts = _fields(value)
    if len(parts) < 3:
        raise _bad(lineno, "m= needs <media> <port> <proto> <fmt>...", line)
    if len(parts) - 3 > MAX_FORMATS:
        raise _bad(lineno, f"more than {MAX_FORMATS} formats", line)
    port_text, slash, count_text = parts[1].partition("/")
    port = _digits(port_text, 5)
    count = _digits(count_text, 5) if slash else None
    if port is None or port > 65535 or (slash and (count is None or not 0 < count <= 65535)):
        raise _bad(lineno, "bad m= port", line)
    formats = parts[3:]
    # RTP payload types are 7 bits (RFC 3550 §5.1), written without leading zeros.
    if _is_rtp(parts[2]) and not _PT_NUMBER.keys() >= set(formats):
        raise _bad(lineno, "RTP format is not a payload type 0-127", line)
    return MediaDescription(
        media=parts[0], port=port, proto=parts[2], formats=formats, port_count=count
    )

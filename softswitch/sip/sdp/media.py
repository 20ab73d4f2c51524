"""One media section (m= and the lines under it) and the session-level lines
it inherits from.

Separate from session.py because the B2BUA reads and rewrites sections one
by one (codecs, direction, hold, ports); the whole description only
carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from softswitch.sip.sdp.fields import (
    _PT_NUMBER,
    DIRECTIONS,
    MAX_FORMATS,
    STATIC_PAYLOAD_TYPES,
    Bandwidth,
    Codec,
    Connection,
    _bad,
    _codec,
    _digits,
    _fields,
    parse_rtpmap,
    payload_type_of,
)


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

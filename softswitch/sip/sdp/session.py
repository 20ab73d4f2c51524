"""A whole SDP body: ``SessionDescription``, its serialisation and the
one-pass parser that builds it.

The parser lives beside the class it builds (``SessionDescription.parse``
calls it); the line-level parsers it dispatches to are in fields.py and
media.py, next to the types they make.
"""

from __future__ import annotations

from softswitch.sip.sdp.fields import (
    MAX_LINE_LENGTH,
    MAX_LINES,
    MAX_MEDIA,
    MAX_SDP_BYTES,
    Bandwidth,
    Connection,
    Origin,
    SdpError,
    Timing,
    _bad,
    _parse_bandwidth,
    _parse_connection,
    _parse_origin,
    _parse_timing,
)
from softswitch.sip.sdp.media import MediaDescription, SessionLevel, _parse_media

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

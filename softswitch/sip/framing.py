"""Size limits, and splitting a TCP byte stream into SIP messages.

RFC 3261 §18.3: on a stream transport, Content-Length is the only way to know
where a message ends, so it is mandatory there, and a message whose length
cannot be trusted (missing, negative, non-numeric, two different values —
RFC 4475 §3.1.2.3, §3.3.9) leaves the stream unrecoverable: the framer raises
and the caller closes the connection.

Keep-alives (RFC 5626 §3.5.1): a client pings with a double CRLF and expects
a single CRLF pong.  ``StreamFramer.feed`` returns each ping as the item
``KEEPALIVE`` (``b"\\r\\n\\r\\n"``) in its output list, in stream order; the
caller answers it with ``b"\\r\\n"``.  A lone CRLF between messages (a pong,
or the §7.5 "CRLF before the start-line") is skipped silently.
"""

from __future__ import annotations

import re

from .errors import SipError
from .grammar import TOKEN, parse_uint, words
from .headers import canonical_name, exact_names

__all__ = [
    "KEEPALIVE",
    "MAX_HEADERS",
    "MAX_LINE_LENGTH",
    "MAX_MESSAGE_SIZE",
    "SINGLE_HEADERS",
    "StreamFramer",
    "cut_body",
    "index_headers",
    "read_head",
    "read_headers",
]

# The largest message accepted, start line to end of body.  65,535 is the
# largest UDP payload, so no datagram is refused for size; a stream message
# above it is refused with 513 Message Too Large (RFC 3261 §21.5.14: "the
# message length exceeded its capabilities").  413 is *not* used: it is about
# the body of a request the server would otherwise process (§21.4.11).
MAX_MESSAGE_SIZE = 65535
# At most this many header fields (after line unfolding).  RFC 4475's longest
# message has 45; a real INVITE about 15.
MAX_HEADERS = 256
# At most this many characters in one header field, unfolded (and in the
# start line).  RFC 4475 §3.1.1.7's long values are ~700 characters.
MAX_LINE_LENGTH = 16384

KEEPALIVE = b"\r\n\r\n"

# Headers that must not appear twice (§7.3.1: only a header whose value is a
# comma-separated list may be repeated; RFC 4475 §3.3.8).
SINGLE_HEADERS = frozenset(words("From To Call-ID CSeq Max-Forwards Content-Length Content-Type"))

# Line folding (§7.3.1): "a CRLF followed by whitespace is one SP".
# LWS = [*WSP CRLF] 1*WSP
_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")


def read_head(data: bytes, stream: bool = False) -> tuple[list[str], int]:
    """Split off the header section: its unfolded lines and where the body starts.

    generic-message = start-line *message-header CRLF [ message-body ]

    CRLFs before the start line are skipped (§7.5).  Lines end in CRLF; a
    bare CR or LF inside the header section is refused, because it would
    survive into a header value and break (or inject into) what we send.
    Exception, for robustness: a header section written entirely with bare
    LF, as in the RFC 5118 archive, is accepted; so is a datagram (not a
    stream message) whose header section runs to its end without the empty
    line, as in RFC 4475's baddn archive copy, so that it can still be
    answered.  The text is decoded as UTF-8 with surrogate escapes, so any
    octets survive a round trip.
    """
    start = 0
    if data.startswith((b"\r", b"\n")):
        start = len(data) - len(data.lstrip(b"\r\n"))
    end = data.find(b"\r\n\r\n", start)
    body_start = end + 4
    if end < 0 and not stream and start < len(data) and data.endswith(b"\r\n"):
        end = len(data) - 2  # no empty line: the headers end with the datagram
        body_start = len(data)
    lf_end = data.find(b"\n\n", start, len(data) if end < 0 else end)
    if lf_end >= 0:
        head = data[start:lf_end]
        if b"\r" in head:
            raise SipError(400, "Bad line terminator")
        text = head.decode("utf-8", "surrogateescape").replace("\n", "\r\n")
        body_start = lf_end + 2
    elif end >= 0:
        head = data[start:end]
        n = head.count(b"\n")
        if head.count(b"\r") != n:
            raise SipError(400, "Bad line terminator")
        text = head.decode("utf-8", "surrogateescape")
        if "\r\n " not in text and "\r\n\t" not in text:  # no folding: the common case
            lines = text.split("\r\n")
            if len(lines) != n + 1:  # a bare CR and a bare LF made up the count
                raise SipError(400, "Bad line terminator")
            if len(lines) > MAX_HEADERS + 1:
                raise SipError(400, "Too many headers")
            if len(text) > MAX_LINE_LENGTH and max(map(len, lines)) > MAX_LINE_LENGTH:
                raise SipError(400, "Header line too long")
            return lines, body_start
        if head.count(b"\r\n") != n:
            raise SipError(400, "Bad line terminator")
    elif start == len(data):
        raise SipError(400, "Empty message", drop=True)
    else:
        raise SipError(400, "Missing end of header section")
    if "\r\n " in text or "\r\n\t" in text:
        text = _FOLD_RE.sub(" ", text)
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADERS + 1:
        raise SipError(400, "Too many headers")
    if len(text) > MAX_LINE_LENGTH and max(map(len, lines)) > MAX_LINE_LENGTH:
        raise SipError(400, "Header line too long")
    return lines, body_start


def read_headers(lines: list[str]) -> list[list[str]]:
    """``[name, value]`` pairs from header lines (every line but the first).

    message-header = field-name HCOLON field-value CRLF
    HCOLON = *( SP / HTAB ) ":" SWS

    Known names become canonical (compact forms expanded, §7.3.3); unknown
    names must be tokens and are kept as written.  Values are stripped of the
    surrounding whitespace and otherwise untouched.
    """
    headers: list[list[str]] = []
    append = headers.append
    exact = exact_names().get
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        canon = exact(name)
        if canon is None or not sep:
            if not sep:
                raise SipError(400, "Bad header line")
            name = name.rstrip(" \t")
            canon = canonical_name(name)
            if canon is None:
                if not TOKEN.fullmatch(name):
                    raise SipError(400, "Bad header name")
                canon = name
        append([canon, value.strip(" \t")])
    return headers


# Content-Length = ( "Content-Length" / "l" ) HCOLON 1*DIGIT
_CONTENT_LENGTH_RE = re.compile(rb"\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I)


def index_headers(
    headers: list[list[str]],
) -> tuple[dict[str, str], list[str], list[str]]:
    """The value of each single-valued header, and the Via and Contact values.

    A single-valued header present twice is refused ("Multiple To headers"),
    except Content-Length repeated with the same value, which is harmless.
    """
    last = dict(headers)  # each name's last value
    if len(last) == len(headers):  # no name repeats: the common case
        via = last.get("Via")
        contact = last.get("Contact")
        return last, [] if via is None else [via], [] if contact is None else [contact]
    first: dict[str, str] = {}
    vias: list[str] = []
    contacts: list[str] = []
    for n, v in headers:
        if n == "Via":
            vias.append(v)
        elif n == "Contact":
            contacts.append(v)
        elif n in SINGLE_HEADERS:
            if n in first and (n != "Content-Length" or first[n] != v):
                raise SipError(400, f"Multiple {n} headers")
            first[n] = v
    return first, vias, contacts


def cut_body(data: bytes, body_start: int, length: str | None, stream: bool) -> bytes:
    """The body, framed by Content-Length (§18.3, §20.14).

    A datagram may omit Content-Length (the body is the rest) and may carry
    octets after the body, which are ignored (RFC 4475 §3.1.1.8); a length
    beyond the data is 400 (§3.1.2.2).  A stream message must have an exact
    Content-Length.
    """
    available = len(data) - body_start
    if length is None:
        if stream:
            raise SipError(400, "Missing Content-Length header")
        return data[body_start:]
    n = parse_uint(length, MAX_MESSAGE_SIZE)
    if n is None or n > available or (stream and n != available):
        raise SipError(400, "Bad Content-Length header")
    return data[body_start : body_start + n]


def content_length_of(head: bytes) -> int:
    """The Content-Length of a header section, for framing; SipError if unusable.

    All Content-Length fields must be present, numeric and equal: anything
    else makes the stream unrecoverable (RFC 4475 §3.1.2.3, §3.3.9).
    """
    values = {m.group(1).strip(b" \t") for m in _CONTENT_LENGTH_RE.finditer(head)}
    if not values:
        raise SipError(400, "Missing Content-Length header")
    if len(values) > 1:
        raise SipError(400, "Multiple Content-Length headers")
    (value,) = values
    if not value.isdigit() or len(value.lstrip(b"0")) > 5:
        raise SipError(400, "Bad Content-Length header")
    return int(value)


class StreamFramer:
    """Cut a stream transport's bytes into whole SIP messages.

    Feed it whatever ``recv`` returned; it returns the complete messages (and
    ``KEEPALIVE`` pings) found so far and keeps the remainder.  The buffer
    never holds more than ``MAX_MESSAGE_SIZE`` bytes of one message plus the
    last chunk fed: a peer that sends more without completing a message gets
    ``SipError(513)``.  After a ``SipError`` the framer is unusable (every
    later ``feed`` raises it again): close the connection.  If good messages
    preceded the bad bytes in the same chunk they are returned first and the
    error is raised by the next ``feed`` call.
    """

    __slots__ = ("_buf", "_error", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0  # where to resume searching for the end of the headers
        self._error: SipError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the messages and keep-alives now complete."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[bytes] = []
        try:
            while buf:  # every round consumes bytes or returns
                if buf[0] == 0x0D or buf[0] == 0x0A:
                    if buf.startswith(KEEPALIVE):
                        out.append(KEEPALIVE)
                        del buf[:4]
                    elif KEEPALIVE.startswith(bytes(buf[:4])) and len(buf) < 4:
                        break  # maybe the start of a ping: wait for more
                    elif buf.startswith(b"\r\n"):
                        del buf[:2]
                    else:
                        del buf[:1]  # stray CR or LF before a start line
                    self._scan = 0
                    continue
                end = buf.find(b"\r\n\r\n", self._scan)
                if end < 0:
                    if len(buf) > MAX_MESSAGE_SIZE:
                        raise SipError(513, "Message Too Large")
                    self._scan = max(0, len(buf) - 3)
                    break
                length = content_length_of(bytes(buf[:end]))
                total = end + 4 + length
                if total > MAX_MESSAGE_SIZE:
                    raise SipError(513, "Message Too Large")
                if len(buf) < total:
                    self._scan = end  # headers known; wait for the body
                    break
                out.append(bytes(buf[:total]))
                del buf[:total]
                self._scan = 0
        except SipError as e:
            # Messages cut before the bad one are still delivered; the error
            # is raised now if there are none, else by the next feed().
            self._error = e
            buf.clear()
            if not out:
                raise
        return out

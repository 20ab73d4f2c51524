"""SDP's limits, its error, and the value types of single lines with their
parsers: o= (Origin), c= (Connection), b= (Bandwidth), t= (Timing) and the
rtpmap codecs (Codec).

The bottom of the package: media.py and session.py build on these, and
offeranswer.py uses the codec helpers without needing whole descriptions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from softswitch.sip.errors import SipError

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
# Parsers of single lines (session.py's ``_parse`` calls them).


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

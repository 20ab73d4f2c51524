"""RFC 3261 §25 grammar: the regexes and small scanners the parser is built on.

Every regex quotes the ABNF it implements.  Where the code is more liberal
than the ABNF it says so and why (usually RFC 4475 or RFC 5118 asking for
robustness).  Nothing here raises anything but ``SipError``; the helpers
return ``None`` when their caller should decide the status and reason.

The character classes are spelled out once and composed, so that a change to,
say, ``unreserved`` reaches every rule that uses it.
"""

from __future__ import annotations

import re

from .errors import SipError

__all__ = [
    "TOKEN",
    "parse_params",
    "parse_uint",
    "quote_display",
    "split_commas",
    "unescape",
    "unquote_pairs",
    "words",
]

# alphanum = ALPHA / DIGIT
# mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
# unreserved = alphanum / mark
# escaped = "%" HEXDIG HEXDIG
UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
ESCAPED = r"%[0-9A-Fa-f]{2}"

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = re.compile(rf"[{TOKEN_CHARS}]+")

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# (Liberal: any character but CR/LF may follow the backslash.  Written as an
# unrolled loop, which Python's regex engine runs much faster than an
# alternation per character.)
QUOTED = r'"[^"\\\r\n]*(?:\\[^\r\n][^"\\\r\n]*)*"'
QUOTED_RE = re.compile(QUOTED)

# generic-param = token [ EQUAL gen-value ]
# gen-value = token / host / quoted-string
# SEMI = SWS ";" SWS ; EQUAL = SWS "=" SWS
# (host adds "[", "]" and ":" to the token characters: IPv6 references, and
# RFC 5118 §4.5 asks that Via received= be accepted with or without brackets.)
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*([{TOKEN_CHARS}]+)"
    rf"(?:[ \t]*=[ \t]*([{TOKEN_CHARS}\[\]:]+|{QUOTED}))?"
)

_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_PAIR_RE = re.compile(r"\\(.)", re.S)
_NEEDS_PAIR_RE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')
_CRLF_RE = re.compile(r"[\r\n]")


def words(text: str) -> list[str]:
    """Split a whitespace-separated word list (for tables of names)."""
    return text.split()


def parse_params(text: str, what: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` into an ordered dict, names lower-cased.

    Parameter names are case-insensitive (RFC 3261 §7.3.1, §20); values are
    kept verbatim, quoted ones with their quotes, so that serialising gives
    back what was received.  ``what`` names the header for the error reason.
    """
    params: dict[str, str | None] = {}
    if not text:
        return params
    pos = 0
    end = len(text)
    match = _PARAM_RE.match
    while pos < end:  # each round consumes at least the ";"
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(" \t"):
                raise SipError(400, f"Bad {what} header")
            break
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


def split_commas(value: str) -> list[str]:
    """Split a header value at the commas that separate list elements.

    RFC 3261 §7.3.1: a list header may be written as one comma-separated
    value.  Commas inside quoted strings and inside ``<...>`` (URIs may
    contain them) do not separate.  Elements are stripped; empty elements
    are kept so that callers validating a list can reject ``a,,b``.
    """
    if "," not in value:
        return [value]
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:  # one pass over the value
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            parts.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    parts.append(value[start:].strip(" \t"))
    return parts


def parse_uint(text: str, maximum: int) -> int | None:
    """ASCII digits to int if ``<= maximum``, else None (never raises).

    Guards against the traps in ``int()``: non-ASCII digits such as "²" that
    ``str.isdigit`` accepts, and strings long enough to hit Python's
    int-conversion digit limit.  Leading zeros are legal ("0068").
    """
    if text.isdigit() and text.isascii():  # "".isdigit() is False
        if len(text) > 18:
            text = text.lstrip("0")
            if len(text) > 18:
                return None
            if not text:
                return 0
        value = int(text)
        return value if value <= maximum else None
    return None


def unescape(text: str) -> str:
    """Decode ``%HH`` escapes once (RFC 3261 §19.1.4), never recursively.

    ``%2541`` gives ``%41``, not ``A`` (RFC 4475 §3.1.1.3), and ``%00`` gives
    a real NUL character: nothing downstream truncates at it (§3.1.1.4).
    Octets are mapped to the code points U+0000..U+00FF, which is enough for
    comparison, the only use of unescaped text.
    """
    if "%" not in text:
        return text
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


def unquote_pairs(text: str) -> str:
    """Remove the backslashes of quoted-pairs inside a quoted string's content."""
    if "\\" not in text:
        return text
    return _PAIR_RE.sub(r"\1", text)


def quote_display(text: str) -> str:
    """Quote a display name: ``"`` ``\\`` and control characters become pairs.

    CR and LF cannot be quoted-pairs (RFC 3261 §25.1), so they become spaces
    rather than open the door to header injection.
    """
    if _CRLF_RE.search(text):
        text = _CRLF_RE.sub(" ", text)
    if _NEEDS_PAIR_RE.search(text):
        text = _NEEDS_PAIR_RE.sub(lambda m: "\\" + m.group(0), text)
    return f'"{text}"'

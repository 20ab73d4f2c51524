"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966; RFC 5118).

``parse_uri`` gives a ``SipUri`` for sip:/sips:, a ``TelUri`` for tel: and an
``AbsoluteUri`` for any other syntactically valid scheme (RFC 4475 §3.3.4: a
parser must not fail on them; refusing them is the application's call).
Components are kept *escaped*, exactly as received, so that serialising gives
the same text back (RFC 4475 §3.3.14: a registrar must return a contact's
escaped headers verbatim).  Unescaping happens only where §19.1.4 says
equality is decided, in ``uri_equal``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import SipError
from .grammar import UNRESERVED, unescape

__all__ = ["AbsoluteUri", "SipUri", "TelUri", "Uri", "parse_uri", "uri_equal"]

# Speed: each character class below also admits "%", and the escapes are
# checked afterwards with ``_BAD_ESCAPE_RE``; an alternation per character
# ("[...]|%HH") costs several times more in Python's regex engine.
#
# user = 1*( unreserved / escaped / user-unreserved )
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
_USER = rf"[{UNRESERVED}%&=+$,;?/]+"
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD = rf"[{UNRESERVED}%&=+$,]*"
# host = hostname / IPv4address / IPv6reference
# hostname = *( domainlabel "." ) toplabel [ "." ]
# domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum
# toplabel = ALPHA / ALPHA *( alphanum / "-" ) alphanum
# IPv6reference = "[" IPv6address "]"
# (Liberal: labels may hold "_" and start with a digit, as real hosts do;
# IPv6 references are checked by ``ipaddress`` after the regex.)
HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9\-_.]*"
# paramchar = param-unreserved / unreserved / escaped
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
_PARAMCHARS = rf"[{UNRESERVED}%\[\]/:&+$]+"
# uri-parameters = *( ";" uri-parameter)
# other-param = pname [ "=" pvalue ]; pname = 1*paramchar; pvalue = 1*paramchar
_PARAMS = rf"(?:;{_PARAMCHARS}(?:={_PARAMCHARS})?)*"
# headers = "?" header *( "&" header ); header = hname "=" hvalue
# hname = 1*( hnv-unreserved / unreserved / escaped )
# hvalue = *( hnv-unreserved / unreserved / escaped )
# hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_HCHARS = rf"[{UNRESERVED}%\[\]/?:+$]"
_HEADERS = rf"{_HCHARS}+={_HCHARS}*(?:&{_HCHARS}+={_HCHARS}*)*"
# escaped = "%" HEXDIG HEXDIG
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# SIPS-URI = "sips:" [ userinfo ] hostport uri-parameters [ headers ]
# userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
# hostport = host [ ":" port ]
# The six groups: user, password, host, port, params, headers.
SIP_URI_BODY = (
    rf"(?:({_USER})(?::({_PASSWORD}))?@)?({HOST})(?::([0-9]+))?({_PARAMS})(?:\?({_HEADERS}))?"
)
_SIP_URI_RE = re.compile(SIP_URI_BODY)
# Fast path: the shape nearly every URI on the wire has (no escapes, no IPv6,
# no URI headers) as one restricted regex whose groups build the SipUri
# directly.  It accepts a subset of ``SIP_URI_BODY`` and yields the same
# value, so anything it rejects simply takes the general path.
# Groups: scheme, user, password, host, port, params.
FAST_SIP_URI = (
    rf"([Ss][Ii][Pp][Ss]?):(?:([{UNRESERVED}&=+$,;?/]+)(?::([{UNRESERVED}&=+$,]*))?@)?"
    rf"([A-Za-z0-9][A-Za-z0-9\-_.]*)(?::([0-9]{{1,5}}))?"
    rf"((?:;[{UNRESERVED}\[\]/:&+$]+(?:=[{UNRESERVED}\[\]/:&+$]+)?)*)"
)
_FAST_SIP_URI_RE = re.compile(FAST_SIP_URI)
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# absoluteURI = scheme ":" ( hier-part / opaque-part ), uric = reserved /
# unreserved / escaped (RFC 2396).  Liberal: "[", "]" and "#" tolerated.
_ABSOLUTE_REST_RE = re.compile(rf"[{UNRESERVED}%;/?:@&=+$,\[\]#]+")
# telephone-subscriber (RFC 3966 §3): global-number / local-number, then
# *par.  Liberal: the digits and visual separators in any order.
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")
_TEL_PARAM_RE = re.compile(_PARAMCHARS)
_IPV4_TAIL_RE = re.compile(r":::(\d+\.\d+\.\d+\.\d+\])$")

# §19.1.4: these parameters must match when either URI has them.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


@dataclass(slots=True)
class SipUri:
    """A sip: or sips: URI; components escaped as on the wire.

    ``host`` is lower-cased and keeps the brackets of an IPv6 reference;
    ``params`` keys are lower-cased (§19.1.4 compares them case-insensitively)
    and hold None for a parameter without a value (``;lr``).
    """

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        """The transport= parameter, lower-cased, or 'udp' (§19.1.1 default)."""
        t = self.params.get("transport")
        return t.lower() if t else "udp"

    @property
    def host_port(self) -> str:
        """``host[:port]`` as written in a Via sent-by or a URI."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        s = self.scheme + ":"
        if self.user is not None:
            s += self.user
            if self.password is not None:
                s += ":" + self.password
            s += "@"
        s += self.host
        if self.port is not None:
            s += ":" + str(self.port)
        if self.params:
            for k, v in self.params.items():
                s += ";" + k if v is None else f";{k}={v}"
        if self.headers:
            s += "?" + "&".join(f"{k}={v}" for k, v in self.headers.items())
        return s


@dataclass(slots=True)
class TelUri:
    """A tel: URI (RFC 3966): the number as written and its parameters."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)

    scheme = "tel"

    def __str__(self) -> str:
        s = "tel:" + self.number
        for k, v in self.params.items():
            s += ";" + k if v is None else f";{k}={v}"
        return s


@dataclass(slots=True)
class AbsoluteUri:
    """Any other scheme, kept opaque: ``text`` is the whole URI as received."""

    scheme: str
    text: str

    def __str__(self) -> str:
        return self.text


Uri = SipUri | TelUri | AbsoluteUri


def _bad(what: str) -> SipError:
    return SipError(400, f"Bad {what}")


def _ipv6(host: str, what: str) -> str:
    """Validate and lower-case an IPv6 reference, keeping its brackets.

    RFC 5118 §4.10: RFC 3261's ABNF lets ``2001:db8::`` be followed by
    ``:192.0.2.1``, giving three colons; implementations must tolerate it,
    so that form is rewritten to the correct two-colon one.
    """
    host = _IPV4_TAIL_RE.sub(r"::\1", host)
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        raise _bad(what) from None
    return host.lower()


def fast_sip_uri(
    scheme: str, user: str | None, password: str | None, host: str, port: str | None, params: str
) -> SipUri | None:
    """Build a SipUri from the ``FAST_SIP_URI`` groups; None if the port is out of range."""
    port_num = None
    if port is not None:
        port_num = int(port)
        if port_num > 65535:
            return None
    pdict: dict[str, str | None] = {}
    if params:
        for p in params[1:].split(";"):
            k, eq, v = p.partition("=")
            pdict[k.lower()] = v if eq else None
    return SipUri(scheme.lower(), user, password, host.lower(), port_num, pdict, {})


def parse_sip_uri(text: str, what: str = "URI") -> SipUri:
    """Parse a sip:/sips: URI; ``what`` names the element for error reasons."""
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or (scheme != "sip" and scheme != "sips"):
        raise _bad(what)
    m = _SIP_URI_RE.fullmatch(rest)
    if m is None:
        raise _bad(what)
    return sip_uri_from_groups(scheme, m.groups(), rest, what)


def sip_uri_from_groups(scheme: str, groups: tuple[Any, ...], text: str, what: str) -> SipUri:
    """Build a SipUri from the six groups of ``SIP_URI_BODY`` matched in ``text``.

    Shared with the name-addr fast path in ``headers``, which embeds the same
    regex; checks what the regex cannot (escapes, port range, IPv6).
    """
    if "%" in text and _BAD_ESCAPE_RE.search(text):
        raise _bad(what)
    user, password, host_text, port, params, headers = groups
    host: str = _ipv6(host_text, what) if host_text[0] == "[" else host_text.lower()
    port_num = None
    if port is not None:
        if len(port) > 5 or int(port) > 65535:
            raise _bad(what)
        port_num = int(port)
    pdict: dict[str, str | None] = {}
    if params:
        for p in params[1:].split(";"):
            k, eq, v = p.partition("=")
            pdict[k.lower()] = v if eq else None
    hdict: dict[str, str] = {}
    if headers:
        for h in headers.split("&"):
            k, _, v = h.partition("=")
            hdict[k] = v
    return SipUri(scheme, user, password, host, port_num, pdict, hdict)


def parse_uri(text: str, what: str = "URI") -> Uri:
    """Parse any URI: sip/sips → SipUri, tel → TelUri, else AbsoluteUri.

    Raises ``SipError(400, "Bad <what>")`` when the text is not a URI at all.
    """
    if "%" not in text:
        m = _FAST_SIP_URI_RE.fullmatch(text)
        if m is not None:
            uri = fast_sip_uri(*m.groups())
            if uri is not None:
                return uri
    scheme, sep, rest = text.partition(":")
    if not sep or not SCHEME_RE.fullmatch(scheme):
        raise _bad(what)
    low = scheme.lower()
    if low == "sip" or low == "sips":
        m = _SIP_URI_RE.fullmatch(rest)
        if m is None:
            raise _bad(what)
        return sip_uri_from_groups(low, m.groups(), rest, what)
    if low == "tel":
        number, _, ptext = rest.partition(";")
        if not _TEL_NUMBER_RE.fullmatch(number) or ("%" in rest and _BAD_ESCAPE_RE.search(rest)):
            raise _bad(what)
        params: dict[str, str | None] = {}
        if ptext:
            for p in ptext.split(";"):
                k, eq, v = p.partition("=")
                if not _TEL_PARAM_RE.fullmatch(k) or (eq and not _TEL_PARAM_RE.fullmatch(v)):
                    raise _bad(what)
                params[k.lower()] = v if eq else None
        return TelUri(number, params)
    if not _ABSOLUTE_REST_RE.fullmatch(rest) or ("%" in rest and _BAD_ESCAPE_RE.search(rest)):
        raise _bad(what)
    return AbsoluteUri(low, text)


def _norm_params(params: dict[str, str | None]) -> dict[str, str | None]:
    return {
        unescape(k).lower(): (None if v is None else unescape(v).lower()) for k, v in params.items()
    }


def uri_equal(a: Uri, b: Uri) -> bool:
    """URI equality per RFC 3261 §19.1.4 (tel: per RFC 3966 §4).

    - sip and sips never match; user and password compare case-sensitively,
      everything else case-insensitively, all after one round of %HH
      decoding (never recursive, NUL kept);
    - a missing port does not match an explicit default port;
    - user, ttl, method, maddr and transport must match if either URI has
      them; other parameters only if both have them;
    - URI headers must all be present in both and match.
    """
    if isinstance(a, SipUri) and isinstance(b, SipUri):
        if a.scheme != b.scheme or a.port != b.port or a.host != b.host:
            return False
        if (a.user is None) != (b.user is None) or (a.password is None) != (b.password is None):
            return False
        if a.user is not None and unescape(a.user) != unescape(b.user or ""):
            return False
        if a.password is not None and unescape(a.password) != unescape(b.password or ""):
            return False
        pa = _norm_params(a.params)
        pb = _norm_params(b.params)
        for k in _STRICT_PARAMS:
            if pa.get(k, "\0absent") != pb.get(k, "\0absent"):
                return False
        for k, v in pa.items():
            if k in pb and pb[k] != v:
                return False
        ha = {unescape(k).lower(): unescape(v) for k, v in a.headers.items()}
        hb = {unescape(k).lower(): unescape(v) for k, v in b.headers.items()}
        return ha == hb
    if isinstance(a, TelUri) and isinstance(b, TelUri):
        strip = str.maketrans("", "", "-.()")
        return a.number.translate(strip).lower() == b.number.translate(strip).lower() and (
            _norm_params(a.params) == _norm_params(b.params)
        )
    if isinstance(a, AbsoluteUri) and isinstance(b, AbsoluteUri):
        return a.scheme == b.scheme and a.text.partition(":")[2] == b.text.partition(":")[2]
    return False

"""Header names and the structured headers: Via and name-addr/addr-spec.

Header names are case-insensitive and several have a compact form (RFC 3261
§7.3.3, §20); ``canonical_name`` maps every spelling of a header this stack
knows to one canonical long name, so the rest of the code compares plain
strings.  Unknown headers keep the name as received and stay opaque.

``Via`` and ``Address`` are small mutable classes: the transaction layer sets
``received``/``rport`` on the top Via (RFC 3581 §4) and the UAS adds a To tag.
Each remembers the text it was parsed from, so the message can tell whether
it was changed and must be written back (see ``Message``).
"""

from __future__ import annotations

import re

from .errors import SipError
from .grammar import (
    QUOTED_RE,
    TOKEN_CHARS,
    parse_params,
    parse_uint,
    quote_display,
    split_commas,
    unquote_pairs,
    words,
)
from .uri import (
    FAST_SIP_URI,
    SIP_URI_BODY,
    SipUri,
    Uri,
    fast_sip_uri,
    parse_uri,
    sip_uri_from_groups,
)

__all__ = [
    "COMPACT_FORMS",
    "Address",
    "Via",
    "canonical_name",
    "parse_address",
    "parse_call_id",
    "parse_contacts",
    "parse_cseq",
    "parse_max_forwards",
    "parse_via",
    "parse_vias",
]

# RFC 3261 §7.3.3 and the IANA "Header Fields" registry's compact forms.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",  # RFC 3841
    "b": "Referred-By",  # RFC 3892
    "c": "Content-Type",
    "d": "Request-Disposition",  # RFC 3841
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",  # RFC 3841
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",  # RFC 4474
    "o": "Event",  # RFC 6665
    "r": "Refer-To",  # RFC 3515
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",  # RFC 6665
    "v": "Via",
    "x": "Session-Expires",  # RFC 4028
    "y": "Identity",  # RFC 4474
}

_KNOWN = words(
    "Accept Accept-Encoding Accept-Language Alert-Info Allow Authentication-Info "
    "Authorization Call-ID Call-Info Contact Content-Disposition Content-Encoding "
    "Content-Language Content-Length Content-Type CSeq Date Error-Info Expires From "
    "In-Reply-To Max-Forwards MIME-Version Min-Expires Organization Priority "
    "Proxy-Authenticate Proxy-Authorization Proxy-Require Record-Route Reply-To Require "
    "Retry-After Route Server Subject Supported Timestamp To Unsupported User-Agent Via "
    "Warning WWW-Authenticate RAck RSeq Event Allow-Events Subscription-State Refer-To "
    "Referred-By Replaces Session-Expires Min-SE Path Service-Route Reason Privacy "
    "P-Asserted-Identity P-Preferred-Identity Identity Identity-Info Accept-Contact "
    "Reject-Contact Request-Disposition Security-Client Security-Server Security-Verify "
    "SIP-ETag SIP-If-Match Flow-Timer History-Info"
)

# Every spelling lower-cased → canonical name; the exact canonical and compact
# spellings are also keys so that the common case is one dict lookup.
_CANON: dict[str, str] = {}
for _name in _KNOWN:
    _CANON[_name.lower()] = _name
for _short, _long in COMPACT_FORMS.items():
    _CANON[_short] = _long
_CANON_EXACT: dict[str, str] = dict(_CANON)
for _name in _KNOWN:
    _CANON_EXACT[_name] = _name
for _short, _long in COMPACT_FORMS.items():
    _CANON_EXACT[_short.upper()] = _long

_TOKEN_RE = re.compile(rf"[{TOKEN_CHARS}]+")


def exact_names() -> dict[str, str]:
    """The exact-spelling table: canonical and compact names → canonical (hot path)."""
    return _CANON_EXACT


def canonical_name(name: str) -> str | None:
    """The canonical name for a header spelling, or None if not a known header."""
    c = _CANON_EXACT.get(name)
    if c is None:
        c = _CANON.get(name.lower())
    return c


# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport
# protocol-name = "SIP" / token ; protocol-version = token
# transport = "UDP" / "TCP" / "TLS" / "SCTP" / other-transport
# sent-by = host [ COLON port ]
# SLASH = SWS "/" SWS ; COLON = SWS ":" SWS
# (Only SIP/2.0 is accepted: any other protocol in a Via is not ours.)
_VIA_RE = re.compile(
    r"[Ss][Ii][Pp][ \t]*/[ \t]*2\.0[ \t]*/[ \t]*"
    rf"([{TOKEN_CHARS}]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9\-_.]*)"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
)


# Fast path for the usual shape, "SIP/2.0/UDP host[:port];k=v;k", exactly
# spelled: one regex, then plain string splits.  Anything else takes _VIA_RE.
_FAST_VIA_RE = re.compile(
    r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9][A-Za-z0-9\-_.]*)(?::([0-9]{1,5}))?"
    rf"((?:;[{TOKEN_CHARS}]+(?:=[{TOKEN_CHARS}]+)?)*)"
)


class Via:
    """One via-parm (RFC 3261 §20.42).

    ``transport`` is upper-case, ``host`` lower-case (IPv6 in brackets),
    ``params`` keys lower-case with None for valueless ones (``;rport``).
    """

    __slots__ = ("host", "params", "port", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = {} if params is None else params

    @property
    def branch(self) -> str | None:
        """The branch parameter (§8.1.1.7), the transaction key when it has the cookie."""
        return self.params.get("branch")

    @branch.setter
    def branch(self, value: str | None) -> None:
        self._set("branch", value)

    @property
    def received(self) -> str | None:
        """The received parameter (§18.2.1), the source address seen by the next hop."""
        return self.params.get("received")

    @received.setter
    def received(self, value: str | None) -> None:
        self._set("received", value)

    @property
    def rport(self) -> bool | int | None:
        """RFC 3581: None if absent, True if present without value, else the port."""
        if "rport" not in self.params:
            return None
        v = self.params["rport"]
        if v is None:
            return True
        port = parse_uint(v, 65535)
        if port is None:
            raise SipError(400, "Bad Via header")
        return port

    @rport.setter
    def rport(self, value: bool | int | None) -> None:
        if value is None or value is False:
            self.params.pop("rport", None)
        elif value is True:
            self.params["rport"] = None
        else:
            self.params["rport"] = str(int(value))

    @property
    def sent_by(self) -> str:
        """``host[:port]`` as sent."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def _set(self, key: str, value: str | None) -> None:
        if value is None:
            self.params.pop(key, None)
        else:
            self.params[key] = value

    def __str__(self) -> str:
        s = f"SIP/2.0/{self.transport} {self.host}"
        if self.port is not None:
            s += ":" + str(self.port)
        for k, v in self.params.items():
            s += ";" + k if v is None else f";{k}={v}"
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (self.transport, self.host, self.port, self.params) == (
            other.transport,
            other.host,
            other.port,
            other.params,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"


def parse_via(text: str) -> Via:
    """Parse one via-parm; ``SipError(400, 'Bad Via header')`` if malformed."""
    m = _FAST_VIA_RE.fullmatch(text)
    if m is not None:
        transport, host, port, ptext = m.groups()
        port_num = None if port is None else int(port)
        if port_num is None or port_num <= 65535:
            params: dict[str, str | None] = {}
            if ptext:
                for p in ptext[1:].split(";"):
                    k, eq, v = p.partition("=")
                    params[k.lower()] = v if eq else None
            return Via(transport, host.lower(), port_num, params)
    m = _VIA_RE.match(text)
    if m is None:
        raise SipError(400, "Bad Via header")
    transport, host, port = m.groups()
    if host[0] == "[":
        try:
            host = parse_uri("sip:" + host, "Via header").host  # type: ignore[union-attr]
        except SipError:
            raise SipError(400, "Bad Via header") from None
    else:
        host = host.lower()
    port_num = None
    if port is not None:
        port_num = int(port)
        if port_num > 65535:
            raise SipError(400, "Bad Via header")
    return Via(transport.upper(), host, port_num, parse_params(text[m.end() :], "Via"))


class Address:
    """A name-addr or addr-spec with its header parameters (From, To, Contact, Route ...).

    ``display`` is the display name with quotes and quoted-pairs removed
    (None when absent).  RFC 3261 §20.10: in addr-spec form (no ``<>``), the
    parameters after the URI belong to the *header*, not to the URI, so
    ``sip:a@b;tag=1`` gives ``uri=sip:a@b`` and ``params={'tag': '1'}``.
    ``str()`` always writes the name-addr form, which is never ambiguous.
    """

    __slots__ = ("display", "params", "uri")

    def __init__(
        self,
        uri: Uri,
        display: str | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        self.uri = uri
        self.display = display
        self.params = {} if params is None else params

    @property
    def tag(self) -> str | None:
        """The tag parameter (§19.3): one half of a dialog identifier."""
        return self.params.get("tag")

    @tag.setter
    def tag(self, value: str | None) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    @property
    def expires(self) -> int | None:
        """The Contact expires parameter (§10.2.1.1), clamped to 2**32-1.

        RFC 4475 §3.1.2.4: an overlarge value must not wrap; clamping lets
        the registrar's own maximum apply.  Non-numeric → 400.
        """
        v = self.params.get("expires")
        if v is None:
            return None
        return delta_seconds(v, "Contact")

    def __str__(self) -> str:
        s = f"<{self.uri}>"
        if self.display is not None:
            s = quote_display(self.display) + " " + s
        for k, v in self.params.items():
            s += ";" + k if v is None else f";{k}={v}"
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return (self.display, self.uri, self.params) == (other.display, other.uri, other.params)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"


# The common name-addr shapes in one regex, SIP-URI groups included:
# [ "quoted display" / token display ] "<" SIP-URI ">" (then parameters).
# Anything else (escapes in the display name, other schemes, addr-spec)
# takes the general path below.
_FASTEST_NAME_ADDR_RE = re.compile(
    rf'(?:"([^"\\\r\n]*)"[ \t]*|([{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*)[ \t]*)?'
    rf"<{FAST_SIP_URI}>(?:;[Tt][Aa][Gg]=([{TOKEN_CHARS}]+))?"
)
_FAST_NAME_ADDR_RE = re.compile(
    rf'(?:"([^"\\\r\n]*)"[ \t]*|([{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*)[ \t]*)?'
    rf"<([Ss][Ii][Pp][Ss]?):{SIP_URI_BODY}>"
)
_DISPLAY_TOKENS_RE = re.compile(rf"[{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*")


def delta_seconds(text: str, what: str) -> int:
    """delta-seconds = 1*DIGIT, clamped to 2**32-1 (RFC 4475 §3.1.2.4)."""
    if not text.isascii() or not text.isdigit():
        raise SipError(400, f"Bad {what} header")
    value = parse_uint(text, 2**32 - 1)
    return 2**32 - 1 if value is None else value


def parse_address(text: str, what: str) -> Address:
    """Parse ``( name-addr / addr-spec ) *( SEMI generic-param )`` (§20.10, §20.20).

    name-addr = [ display-name ] LAQUOT addr-spec RAQUOT
    display-name = *(token LWS)/ quoted-string
    (Liberal: no LWS needed between a token display name and "<",
    RFC 4475 §3.1.1.6.)  ``what`` names the header for error reasons.
    """
    if "%" not in text:
        # The commonest shapes: no escapes, a plain SIP URI, at most a tag.
        m = _FASTEST_NAME_ADDR_RE.fullmatch(text)
        if m is not None:
            quoted, tokens, scheme, user, password, host, port, params, tag = m.groups()
            fast = fast_sip_uri(scheme, user, password, host, port, params)
            if fast is not None:
                return Address(
                    fast,
                    tokens if quoted is None else quoted,
                    {} if tag is None else {"tag": tag},
                )
    m = _FAST_NAME_ADDR_RE.match(text)
    if m is not None:
        g = m.groups()
        end = m.end()
        sip = sip_uri_from_groups(g[2].lower(), g[3:], text[m.start(3) : end], f"{what} header")
        return Address(
            sip,
            g[1] if g[0] is None else g[0],
            parse_params(text[end:], what) if end < len(text) else {},
        )
    display: str | None = None
    if text.startswith("<"):
        lt = 0
    elif text.startswith('"'):
        m = QUOTED_RE.match(text)
        if m is None:
            raise SipError(400, f"Bad {what} header")
        display = unquote_pairs(text[1 : m.end() - 1])
        lt = m.end()
        while lt < len(text) and text[lt] in " \t":
            lt += 1
        if lt >= len(text) or text[lt] != "<":
            raise SipError(400, f"Bad {what} header")
    else:
        lt = text.find("<")
        if lt > 0:
            name = text[:lt].rstrip(" \t")
            if not _DISPLAY_TOKENS_RE.fullmatch(name):
                raise SipError(400, f"Bad {what} header")
            display = name
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipError(400, f"Bad {what} header")
        uri = parse_uri(text[lt + 1 : gt], f"{what} header")
        rest = text[gt + 1 :]
    else:
        # addr-spec: "the URI cannot contain commas, semicolons, or question
        # marks" (§20.10, RFC 4475 §3.1.2.13); what follows ";" is params.
        semi = text.find(";")
        if semi >= 0:
            uri_text = text[:semi].rstrip(" \t")
            rest = text[semi:]
        else:
            uri_text = text
            rest = ""
        if "?" in uri_text or "," in uri_text:
            raise SipError(400, f"Bad {what} header")
        uri = parse_uri(uri_text, f"{what} header")
    return Address(uri, display, parse_params(rest, what) if rest else {})


def is_sip(uri: Uri) -> bool:
    """True for sip: and sips: URIs."""
    return isinstance(uri, SipUri)


# callid = word [ "@" word ]
# word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" /
#        "~" / "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" /
#        "?" / "{" / "}" )
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALLID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?")
# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method
# (§8.1.1.5: the number "MUST be expressible as a 32-bit unsigned integer".)
_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+([{TOKEN_CHARS}]+)")
_CSEQ_MAX = 2**32 - 1


def parse_call_id(raw: str) -> str:
    """Validate a Call-ID (§20.8); it is compared as an opaque string."""
    if _CALLID_RE.fullmatch(raw) is None:
        raise SipError(400, "Bad Call-ID header")
    return raw


def parse_cseq(raw: str) -> tuple[int, str]:
    """CSeq (§20.16) as (number, method); the number must fit 32 bits (RFC 4475 §3.1.2.4)."""
    m = _CSEQ_RE.fullmatch(raw)
    if m is None:
        raise SipError(400, "Bad CSeq header")
    digits, method = m.groups()
    number = int(digits) if len(digits) < 10 else parse_uint(digits, _CSEQ_MAX)
    if number is None:
        raise SipError(400, "Bad CSeq header")
    return number, method


def parse_max_forwards(raw: str) -> int:
    """Max-Forwards = "Max-Forwards" HCOLON 1*DIGIT, 0..255 (§20.22, RFC 4475 §3.1.2.4)."""
    value = parse_uint(raw, 255)
    if value is None:
        raise SipError(400, "Bad Max-Forwards header")
    return value


def parse_vias(raws: list[str]) -> list[Via]:
    """Every via-parm of the Via header values, in order."""
    if len(raws) == 1 and "," not in raws[0]:
        return [parse_via(raws[0])]
    return [parse_via(e) for raw in raws for e in split_commas(raw)]


def parse_contacts(raws: list[str]) -> list[Address]:
    """Contact values (§20.10): addresses, or [] for a lone ``*`` (§10.2.2).

    ``*`` mixed with addresses is malformed (§10.3 step 6 also answers 400).
    """
    if len(raws) == 1 and "," not in raws[0] and raws[0] != "*":
        return [parse_address(raws[0], "Contact")]
    elements = [e for v in raws for e in split_commas(v)]
    if elements == ["*"]:
        return []
    if "*" in elements:
        raise SipError(400, "Bad Contact header")
    return [parse_address(e, "Contact") for e in elements]

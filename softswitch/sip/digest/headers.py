"""The digest header values and their grammar: ``Challenge`` (WWW-Authenticate,
Proxy-Authenticate) and ``Credentials`` (Authorization, Proxy-Authorization),
each parsed from and serialised to text (RFC 3261 §25.1, RFC 7616 §3.3-§3.4).

The parser meets untrusted input first, so its bounds and its regexes, which
cannot backtrack, are kept together here with the grammar quoted beside them.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from softswitch.sip.errors import SipError

# --- grammar (RFC 3261 §25.1, §25 "Authorization"; RFC 7235 §2.1) ---------------

_MAX_VALUE = 4096  # a header value longer than this is refused outright
_MAX_PARAMS = 32

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9.!%*_+`'~-]++"
_TOKEN_RE = re.compile(_TOKEN)
# auth-param = auth-param-name EQUAL ( token / quoted-string ); EQUAL = SWS "=" SWS
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)  -- here: tab and printable ASCII only
# Every repetition is possessive (*+, Python 3.11) and each run of whitespace has
# exactly one owner, so a hostile value cannot make the engine backtrack.


def _auth_param(group: str) -> str:
    """auth-param with name, quoted value and token value each opened by ``group``."""
    qdtext = r'[^"\\\x00-\x08\x0a-\x1f\x7f]*+'
    quoted = rf'"{group}{qdtext}(?:\\[\t\x20-\x7e]{qdtext})*+)"'
    return rf"{group}{_TOKEN})[ \t]*+=[ \t]*+(?:{quoted}|{group}{_TOKEN}))[ \t]*+"


_PARAM_RE = re.compile(_auth_param("("))
# credentials = ("Digest" LWS digest-response) / other-response
# digest-response = dig-resp *(COMMA dig-resp); COMMA = SWS "," SWS
# One fullmatch checks the whole list, then findall picks the same params out of
# it: two calls into the regex engine instead of a Python loop per directive.
# Empty list elements (",,", a trailing ",") are accepted, as RFC 7230 §7 asks.
_P = _auth_param("(?:")
_DIGEST_RE = re.compile(rf"[ \t]*+(?i:digest)[ \t]++[ \t,]*+({_P}(?:,[ \t,]*+{_P})*+)[ \t,]*+")
_ESCAPE_RE = re.compile(r"\\(.)")
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")  # nc-value = 8LHEX


def _params(value: str, reason: str) -> dict[str, str]:
    """Split 'Digest a=b, c="d"' into lower-cased names and unquoted values."""
    if len(value) > _MAX_VALUE:
        raise SipError(400, reason)
    if "\r" in value or "\n" in value:  # unfold LWS = [*WSP CRLF] 1*WSP
        value = re.sub(r"\r?\n(?=[ \t])", "", value)
    m = _DIGEST_RE.fullmatch(value)
    if m is None:
        raise SipError(400, reason)
    found = _PARAM_RE.findall(value, m.start(1), m.end(1))
    if len(found) > _MAX_PARAMS:
        raise SipError(400, reason)
    params = {
        name.lower(): (_ESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted) or token
        for name, quoted, token in found
    }
    if len(params) != len(found):  # each directive at most once (RFC 7616 §3.3, §3.4)
        raise SipError(400, reason)
    return params


def _quote(value: str) -> str:
    """quoted-string for a parameter value; control characters are refused."""
    if _CTL_RE.search(value):
        raise ValueError(f"control character in digest parameter {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token(value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"not a token: {value!r}")
    return value


def _extras(params: dict[str, str], known: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """Directives this module does not interpret, kept so that str() repeats them."""
    if params.keys() <= known:
        return ()
    return tuple([(k, v) for k, v in params.items() if k not in known])


def _extras_str(extras: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"{_token(k)}={_quote(v)}" for k, v in extras]


@dataclass(frozen=True, slots=True)
class Challenge:
    """One WWW-Authenticate / Proxy-Authenticate digest challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str | None = None  # as sent; None means MD5
    qop: tuple[str, ...] = ()  # empty: an RFC 2069 challenge
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False
    params: tuple[tuple[str, str], ...] = ()  # unknown directives, kept in order

    def __str__(self) -> str:
        # §3.3: realm, nonce, opaque, qop, domain are quoted; algorithm, stale are tokens.
        out = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            out.append(f"opaque={_quote(self.opaque)}")
        if self.algorithm is not None:
            out.append(f"algorithm={_token(self.algorithm)}")
        if self.qop:
            out.append(f"qop={_quote(', '.join(_token(q) for q in self.qop))}")
        if self.stale:
            out.append("stale=true")
        if self.userhash:
            out.append("userhash=true")
        return "Digest " + ", ".join(out + _extras_str(self.params))


_CHALLENGE_KNOWN = frozenset({"realm", "nonce", "algorithm", "qop", "opaque", "stale", "userhash"})


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value; SipError if malformed."""
    reason = "Bad authentication challenge"
    p = _params(value, reason)
    if "realm" not in p or "nonce" not in p:
        raise SipError(400, reason)
    qop = tuple(q.strip() for q in p.get("qop", "").split(",") if q.strip())
    if not all(_TOKEN_RE.fullmatch(q) for q in qop):
        raise SipError(400, reason)
    algorithm = p.get("algorithm")
    if algorithm is not None and not _TOKEN_RE.fullmatch(algorithm):
        raise SipError(400, reason)
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        algorithm=algorithm,
        qop=qop,
        opaque=p.get("opaque"),
        # RFC 7616 §3.3: stale is "true" case-insensitively; anything else is false.
        stale=p.get("stale", "").lower() == "true",
        userhash=p.get("userhash", "").lower() == "true",
        params=_extras(p, _CHALLENGE_KNOWN),
    )


@dataclass(frozen=True, slots=True)
class Credentials:
    """One Authorization / Proxy-Authorization digest-response (RFC 7616 §3.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None  # as sent; None means MD5
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None  # None: RFC 2069 credentials
    nc: int | None = None
    userhash: bool = False
    params: tuple[tuple[str, str], ...] = ()  # unknown directives, kept in order

    def __str__(self) -> str:
        # RFC 7616 §3.4: username, realm, nonce, uri, response, cnonce, opaque are
        # quoted strings; algorithm, qop and nc MUST NOT be quoted.
        out = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
        ]
        if self.algorithm is not None:
            out.append(f"algorithm={_token(self.algorithm)}")
        if self.cnonce is not None:
            out.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            out.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            out.append(f"qop={_token(self.qop)}")
        if self.nc is not None:
            out.append(f"nc={self.nc:08x}")
        if self.userhash:
            out.append("userhash=true")
        return "Digest " + ", ".join(out + _extras_str(self.params))


_CREDENTIALS_KNOWN = frozenset(
    {"username", "username*", "realm", "nonce", "uri", "response", "algorithm"}
    | {"cnonce", "opaque", "qop", "nc", "userhash"}
)


def _ext_value(value: str) -> str:
    """RFC 8187 ext-value of username* (RFC 7616 §3.4): UTF-8'lang'percent-encoded."""
    charset, _, rest = value.partition("'")
    _, sep, encoded = rest.partition("'")
    if charset.upper() != "UTF-8" or not sep:
        raise ValueError("username* must be UTF-8")
    return urllib.parse.unquote(encoded, errors="strict")


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization / Proxy-Authorization value.

    Raises SipError(400, "Bad Authorization header") for anything that does not
    follow the grammar or lacks a directive the digest needs; never another
    exception, whatever the input.
    """
    reason = "Bad Authorization header"
    p = _params(value, reason)
    try:
        if "username*" in p:  # RFC 7616 §3.4: username and username* MUST NOT both appear
            if "username" in p:
                raise ValueError("username and username*")
            p["username"] = _ext_value(p["username*"])
            if _CTL_RE.search(p["username"]):
                raise ValueError("control character in username*")
        qop, nc, cnonce = p.get("qop"), p.get("nc"), p.get("cnonce")
        if nc is not None and not _NC_RE.fullmatch(nc):
            raise ValueError("nc")
        if qop is not None and (nc is None or cnonce is None or not _TOKEN_RE.fullmatch(qop)):
            raise ValueError("qop needs nc and cnonce")  # RFC 7616 §3.4 cnonce, nc
        algorithm = p.get("algorithm")
        if algorithm is not None and not _TOKEN_RE.fullmatch(algorithm):
            raise ValueError("algorithm")
        return Credentials(
            username=p["username"],
            realm=p["realm"],
            nonce=p["nonce"],
            uri=p["uri"],
            response=p["response"],
            algorithm=algorithm,
            cnonce=cnonce,
            opaque=p.get("opaque"),
            qop=qop,
            nc=int(nc, 16) if nc is not None else None,
            userhash=p.get("userhash", "").lower() == "true",
            params=_extras(p, _CREDENTIALS_KNOWN),
        )
    except (KeyError, ValueError):
        raise SipError(400, reason) from None

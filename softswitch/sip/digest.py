"""SIP digest authentication, server and client side (RFC 3261 §22, RFC 7616, RFC 8760).

Theory of operation
-------------------
Users are stored as HA1 = H(username ":" realm ":" password) only, one per
algorithm, so the server never sees or keeps a password (RFC 7616 §3.4.1).

The server's nonce is *stateless*: base64url(issued_ms || salt || MAC) where
MAC = HMAC-SHA256(secret, issued_ms || salt || realm)[:16]. Any process that
holds the secret can check that a nonce is its own and how old it is without a
shared table, so the nonce survives a control restart and can be checked by a
second control process. The 8 random salt bytes make two nonces issued in the
same millisecond different, which matters because replay detection is per nonce.

The only state is the nonce-count table (RFC 7616 §3.4: the server MUST check
that nc increases): nonce -> highest nc accepted. It is bounded (100,000
nonces by default, about 14 MB at the bound); entries leave when their nonce
expires or, when full, oldest first. An evicted nonce that is still live
cannot be checked any more, so every nonce issued no later than the newest
evicted one and not in the table is answered STALE_NONCE: the phone retries at
once with a fresh nonce and no replay ever passes. The table is per process;
replays across two control processes sharing a secret are not detected.

Retransmissions are not replays: the transaction layer answers a retransmitted
request from its cached response and must not call ``verify`` for it again,
or the same nc comes back as REPLAY.

Policy choices, documented here because phones in the field differ:

- RFC 2069 credentials (no qop, hence no nc/cnonce) are accepted when
  ``allow_rfc2069`` is true (the default), because some old phones omit qop.
  They cannot be checked for replay; a captured request can be replayed until
  its nonce expires (``nonce_ttl``).
- qop=auth-int is accepted (``body`` is hashed) but not offered.
- ``userhash=true`` (RFC 7616 §3.4.4) is parsed but refused as
  USERHASH_UNSUPPORTED: the server never offers it, and answering it would need
  a table from H(username ":" realm) to users.
- ``-sess`` algorithms are computed (RFC 7616 §3.4.2, derivable from the
  stored HA1) but not offered. SHA-512-256 is available when hashlib has it.
- The ``opaque`` value is fixed per realm and not checked: the nonce carries
  everything the server needs.
- Backslash escapes in quoted strings are limited to printable ASCII and tab,
  stricter than RFC 3261 §25.1 quoted-pair, so that every parsed value
  serialises back unchanged and no control character ever reaches a header.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import struct
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from softswitch.sip.errors import SipError

__all__ = [
    "AuthFailure",
    "AuthResult",
    "Challenge",
    "Credentials",
    "DigestClient",
    "DigestServer",
    "authorize",
    "compute_response",
    "ha1",
    "parse_challenge",
    "parse_credentials",
]

# --- algorithms (RFC 7616 §3.2, RFC 8760 §2.1) --------------------------------

_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
if "sha512_256" in hashlib.algorithms_available:  # depends on the OpenSSL build
    _HASHES["SHA-512-256"] = lambda data: hashlib.new("sha512_256", data)

# Upper-cased token -> (canonical name, base algorithm, is -sess).
_ALGORITHMS: dict[str, tuple[str, str, bool]] = {}
for _base in _HASHES:
    _ALGORITHMS[_base.upper()] = (_base, _base, False)
    _ALGORITHMS[(_base + "-sess").upper()] = (_base + "-sess", _base, True)

# Client preference when several challenges are offered: strongest first. RFC 8760
# §2.4 says "topmost supported unless local policy dictates otherwise"; choosing
# by strength is that local policy, so a reordered 401 cannot downgrade us to MD5.
_STRENGTH = {"SHA-512-256": 3, "SHA-256": 2, "MD5": 1}


def _h(algorithm: str, data: str | bytes) -> str:
    """H(data) as lowercase hex, for a base algorithm name (RFC 7616 §3.4)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _HASHES[algorithm](data).hexdigest()


def _algorithm(name: str | None) -> tuple[str, str, bool]:
    """Canonical (name, base, sess) for an algorithm token; absent means MD5 (§3.3)."""
    if name is None:
        return ("MD5", "MD5", False)
    found = _ALGORITHMS.get(name.upper())
    if found is None:
        raise ValueError(f"unsupported digest algorithm {name!r}")
    return found


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """HA1 = H(username ":" realm ":" password), hex (RFC 7616 §3.4.2).

    This is what the user database stores, one per algorithm, instead of the
    password. Strings are hashed as UTF-8, the charset of SIP.
    """
    _, base, sess = _algorithm(algorithm)
    if sess:
        raise ValueError("store the HA1 of the base algorithm, not of -sess")
    return _h(base, f"{username}:{realm}:{password}")


_make_ha1 = ha1  # authorize() has a parameter named ha1


def compute_response(
    ha1_hex: str,
    *,
    algorithm: str | None,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest both sides compute (RFC 7616 §3.4.1-§3.4.3, RFC 2069 §2.1.2)."""
    _, base, sess = _algorithm(algorithm)
    if sess:  # RFC 7616 §3.4.2: A1 gains the nonce and cnonce
        ha1_hex = _h(base, f"{ha1_hex}:{nonce}:{cnonce}")
    if qop == "auth-int":  # §3.4.3
        ha2 = _h(base, f"{method}:{uri}:{_h(base, body)}")
    else:
        ha2 = _h(base, f"{method}:{uri}")
    if qop is None:  # RFC 2069: no nc, no cnonce
        return _h(base, f"{ha1_hex}:{nonce}:{ha2}")
    return _h(base, f"{ha1_hex}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


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


# --- server --------------------------------------------------------------------


class AuthFailure(Enum):
    """Why verify refused; the registrar maps each to one answer in one table.

    Suggested: STALE_NONCE -> 401 with a stale=true challenge; MALFORMED -> 400;
    WRONG_REALM, BAD_NONCE, UNSUPPORTED_ALGORITHM -> 401 with a fresh challenge;
    UNKNOWN_USER, BAD_RESPONSE -> 401 (403 after repeated failures), both
    answered alike so that usernames cannot be probed; REPLAY, URI_MISMATCH,
    USERHASH_UNSUPPORTED -> 403 or a fresh 401.
    """

    MALFORMED = "malformed"
    WRONG_REALM = "wrong-realm"
    UNKNOWN_USER = "unknown-user"
    BAD_NONCE = "bad-nonce"
    STALE_NONCE = "stale-nonce"
    BAD_RESPONSE = "bad-response"
    REPLAY = "replay"
    UNSUPPORTED_ALGORITHM = "unsupported-algorithm"
    URI_MISMATCH = "uri-mismatch"
    USERHASH_UNSUPPORTED = "userhash-unsupported"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of DigestServer.verify; username is set whenever it could be parsed."""

    ok: bool
    username: str | None
    reason: AuthFailure | None = None
    algorithm: str | None = None  # canonical name, when known


_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of 32 bytes, unpadded
_NONCE_HEAD = struct.Struct(">Q")  # issue time, integer milliseconds


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(raw: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5); binascii directly, base64's wrappers cost µs."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Inverse of _b64 for text already matched by _NONCE_RE (43 characters)."""
    return binascii.a2b_base64((text + "=").encode().translate(_FROM_URLSAFE))


def _issued(nonce: str) -> float:
    """Issue time (seconds) of a nonce already known to be well formed."""
    raw = binascii.a2b_base64(nonce[:12].encode().translate(_FROM_URLSAFE))
    return _NONCE_HEAD.unpack_from(raw)[0] / 1000.0


class DigestServer:
    """Challenges and verifies digest credentials for one realm; sans-I/O.

    ``now`` is wall-clock seconds (time.time() at the daemon edge): nonces carry
    it, so processes that verify each other's nonces must share a clock.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_nonces: int = 100_000,
        clock_skew: float = 5.0,
        allow_rfc2069: bool = True,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("digest secret must be at least 16 bytes")
        names = []
        for a in algorithms:
            name, _, sess = _algorithm(a)
            if sess:
                raise ValueError("offer base algorithms; -sess is accepted, not offered")
            names.append(name)
        if not names or max_nonces < 1 or nonce_ttl <= 0:
            raise ValueError("need an algorithm, max_nonces >= 1 and nonce_ttl > 0")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = tuple(names)  # RFC 8760 §2.3: most preferred first
        self.max_nonces = max_nonces
        self.clock_skew = clock_skew
        self.allow_rfc2069 = allow_rfc2069
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)
        self._realm_bytes = realm.encode("utf-8")
        self._rand = rand
        self._opaque = _b64(hmac.digest(secret, b"opaque\x00" + self._realm_bytes, "sha256")[:12])
        self._templates = [self._template(a, False) for a in self.algorithms]
        self._stale_templates = [self._template(a, True) for a in self.algorithms]
        # nonce -> highest nc accepted (the only state; see the module docstring).
        self._nc: dict[str, int] = {}
        self._order: deque[str] = deque()  # the same keys, in first-use order
        self._evicted_upto = -1.0  # issue time of the newest live nonce evicted

    def _mac(self, head: bytes) -> bytes:
        """HMAC-SHA256(secret, issued_ms || salt || realm)[:16]; copying a keyed
        HMAC object saves a third of hmac.digest's cost."""
        mac = self._keyed.copy()
        mac.update(head + self._realm_bytes)
        return mac.digest()[:16]

    @property
    def tracked_nonces(self) -> int:
        """Size of the nonce-count table (bounded by max_nonces)."""
        return len(self._nc)

    def make_nonce(self, now: float) -> str:
        """A fresh stateless nonce issued at ``now`` (wall-clock seconds, >= 0)."""
        if not 0 <= now < 2**53 / 1000:
            raise ValueError(f"now must be wall-clock seconds, got {now!r}")
        head = _NONCE_HEAD.pack(int(now * 1000)) + self._rand(8)
        return _b64(head + self._mac(head))

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """One challenge value per algorithm, most preferred first (RFC 8760 §2.3).

        The same nonce serves every algorithm: the client answers only one.
        Only the nonce changes between calls, so the values are spliced from
        templates made once by Challenge.__str__ (a 401 per REGISTER makes this hot).
        """
        nonce = self.make_nonce(now)
        templates = self._stale_templates if stale else self._templates
        return [head + nonce + tail for head, tail in templates]

    def _template(self, algorithm: str, stale: bool) -> tuple[str, str]:
        # The realm before it is quoted with every '"' escaped, so the first
        # 'nonce="marker"' in the text is the nonce directive itself.
        marker = "nonce-goes-here"
        text = str(
            Challenge(
                realm=self.realm,
                nonce=marker,
                algorithm=algorithm,
                qop=("auth",),
                opaque=self._opaque,
                stale=stale,
            )
        )
        head, _, tail = text.partition(f'nonce="{marker}"')
        return head + 'nonce="', '"' + tail

    def _nonce_time(self, nonce: str) -> float | None:
        """Issue time if the nonce is ours (MAC matches, canonical encoding), else None."""
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = _unb64(nonce)
        if not hmac.compare_digest(self._mac(raw[:16]), raw[16:]) or _b64(raw) != nonce:
            return None
        return _NONCE_HEAD.unpack(raw[:8])[0] / 1000.0

    def verify(
        self,
        credentials: str,
        method: str,
        now: float,
        lookup: Callable[[str], Mapping[str, str] | None],
        *,
        body: bytes = b"",
        request_uri: str | None = None,
    ) -> AuthResult:
        """Check one Authorization / Proxy-Authorization value (RFC 3261 §22.4, RFC 7616 §3.4).

        ``lookup(username)`` returns the user's HA1 per algorithm ({'MD5': ..,
        'SHA-256': ..}) or None. ``request_uri``, when given, must equal the
        digest uri exactly (pass it only where no proxy rewrites the Request-URI).
        The order of checks makes STALE_NONCE mean "right password, old nonce"
        (RFC 7616 §3.3) and keeps failed attempts out of the nc table, so a forged
        request cannot burn a phone's nonce counts.
        """
        try:
            c = parse_credentials(credentials)
        except SipError:
            return AuthResult(False, None, AuthFailure.MALFORMED)
        user = c.username
        if c.userhash:
            return AuthResult(False, user, AuthFailure.USERHASH_UNSUPPORTED)
        if c.realm != self.realm:
            return AuthResult(False, user, AuthFailure.WRONG_REALM)
        try:
            name, base, _ = _algorithm(c.algorithm)
        except ValueError:
            return AuthResult(False, user, AuthFailure.UNSUPPORTED_ALGORITHM)
        if base not in self.algorithms:
            return AuthResult(False, user, AuthFailure.UNSUPPORTED_ALGORITHM, name)
        if (c.qop is None and not self.allow_rfc2069) or c.qop not in (None, "auth", "auth-int"):
            return AuthResult(False, user, AuthFailure.MALFORMED, name)
        issued = self._nonce_time(c.nonce)
        if issued is None or issued > now + self.clock_skew:
            return AuthResult(False, user, AuthFailure.BAD_NONCE, name)
        stored = lookup(user)
        if stored is None:
            return AuthResult(False, user, AuthFailure.UNKNOWN_USER, name)
        user_ha1 = stored.get(base)
        if user_ha1 is None:
            return AuthResult(False, user, AuthFailure.UNSUPPORTED_ALGORITHM, name)
        if request_uri is not None and request_uri != c.uri:
            return AuthResult(False, user, AuthFailure.URI_MISMATCH, name)
        expected = compute_response(
            user_ha1,
            algorithm=name,
            nonce=c.nonce,
            method=method,
            uri=c.uri,
            qop=c.qop,
            nc=c.nc,
            cnonce=c.cnonce,
            body=body,
        )
        # compare_digest wants ASCII on both sides; a non-ASCII response is wrong anyway.
        if not c.response.isascii() or not hmac.compare_digest(expected, c.response.lower()):
            return AuthResult(False, user, AuthFailure.BAD_RESPONSE, name)
        if now - issued > self.nonce_ttl:
            return AuthResult(False, user, AuthFailure.STALE_NONCE, name)
        if c.qop is not None:
            failure = self._count(c.nonce, c.nc or 0, issued, now)
            if failure is not None:
                return AuthResult(False, user, failure, name)
        return AuthResult(True, user, None, name)

    def _count(self, nonce: str, nc: int, issued: float, now: float) -> AuthFailure | None:
        """Record nc for nonce; REPLAY unless it is higher than any seen (RFC 7616 §3.4)."""
        table = self._nc
        last = table.get(nonce)
        if last is None:
            if issued <= self._evicted_upto:  # its count may have been evicted
                return AuthFailure.STALE_NONCE
            self._expire(now)
            self._order.append(nonce)
        elif nc <= last:
            return AuthFailure.REPLAY
        table[nonce] = nc
        return None

    def _expire(self, now: float) -> None:
        """Drop expired nonces from the front, then the oldest while over the bound.

        A deque keeps first-use order (popping the front of a dict is O(n) once
        deletions pile up). Each call drops at most four expired entries beyond
        what the bound forces, so the cost per request stays constant.
        """
        table, order = self._nc, self._order
        horizon = now - self.nonce_ttl
        for _ in range(4):
            if not order or _issued(order[0]) >= horizon:
                break
            del table[order.popleft()]
        while len(table) >= self.max_nonces:  # bounded: the table shrinks every round
            oldest = order.popleft()
            del table[oldest]
            issued = _issued(oldest)
            if issued >= horizon:
                self._evicted_upto = max(self._evicted_upto, issued)


# --- client --------------------------------------------------------------------


def _choose(challenges: Sequence[Challenge], usable: Callable[[str], bool]) -> Challenge:
    """Strongest supported challenge; among equals, the topmost (RFC 8760 §2.4)."""
    best: Challenge | None = None
    best_rank = 0
    for ch in challenges:
        try:
            _, base, _ = _algorithm(ch.algorithm)
        except ValueError:
            continue  # RFC 8760 §2.4: ignore challenges not understood
        if not usable(base) or (ch.qop and not {"auth", "auth-int"} & set(ch.qop)):
            continue
        rank = _STRENGTH.get(base, 0)
        if rank > best_rank:
            best, best_rank = ch, rank
    if best is None:
        raise ValueError("no digest challenge with a supported algorithm and qop")
    return best


def _answer(
    chosen: Challenge,
    key: str,
    *,
    method: str,
    uri: str,
    username: str,
    cnonce: str,
    nc: int,
    body: bytes,
) -> str:
    """The Authorization value for a chosen challenge, given the HA1 of its algorithm."""
    name, _, _ = _algorithm(chosen.algorithm)
    qop = None
    if chosen.qop:
        qop = "auth" if "auth" in chosen.qop else "auth-int"
    if not 0 < nc <= 0xFFFFFFFF:
        raise ValueError("nc must fit in 8 hex digits")
    response = compute_response(
        key,
        algorithm=name,
        nonce=chosen.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        body=body,
    )
    return str(
        Credentials(
            username=username,
            realm=chosen.realm,
            nonce=chosen.nonce,
            uri=uri,
            response=response,
            algorithm=name,
            cnonce=cnonce if qop else None,
            opaque=chosen.opaque,
            qop=qop,
            nc=nc if qop else None,
        )
    )


def _select(
    challenge: str | Challenge | Sequence[str | Challenge],
    username: str,
    password: str | None,
    ha1s: Mapping[str, str] | None,
) -> tuple[Challenge, str]:
    """The challenge to answer and the HA1 to answer it with."""
    if (password is None) == (ha1s is None):
        raise ValueError("give exactly one of password and ha1")
    items = [challenge] if isinstance(challenge, str | Challenge) else list(challenge)
    parsed = [parse_challenge(c) if isinstance(c, str) else c for c in items]
    if ha1s is None:
        chosen = _choose(parsed, lambda base: True)
        _, base, _ = _algorithm(chosen.algorithm)
        return chosen, _make_ha1(username, chosen.realm, password or "", base)
    chosen = _choose(parsed, lambda base: base in ha1s)
    _, base, _ = _algorithm(chosen.algorithm)
    return chosen, ha1s[base]


def authorize(
    challenge: str | Challenge | Sequence[str | Challenge],
    *,
    method: str,
    uri: str,
    username: str,
    password: str | None = None,
    ha1: Mapping[str, str] | None = None,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> str:
    """Authorization value answering a challenge (or the best of several).

    Give ``password``, or ``ha1`` as {algorithm: HA1} like the server's user
    store. qop=auth is used when offered, else auth-int, else the RFC 2069 form
    without qop. Raises ValueError when nothing offered can be answered and
    SipError when a challenge string is malformed.
    """
    chosen, key = _select(challenge, username, password, ha1)
    return _answer(
        chosen, key, method=method, uri=uri, username=username, cnonce=cnonce, nc=nc, body=body
    )


class DigestClient:
    """Answers challenges for one account, reusing the nonce with a rising nc.

    Reusing a nonce (RFC 7616 §3.4 nc) spares the phones and load generators a
    401 round trip per request until the server answers stale=true; call
    ``challenged`` with each new 401/407's challenge values.
    """

    def __init__(
        self,
        username: str,
        *,
        password: str | None = None,
        ha1: Mapping[str, str] | None = None,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if (password is None) == (ha1 is None):
            raise ValueError("give exactly one of password and ha1")
        self.username = username
        self._password = password
        self._ha1 = ha1
        self._rand = rand
        self._chosen: tuple[Challenge, str] | None = None
        self.nc = 0

    def challenged(self, challenges: str | Challenge | Sequence[str | Challenge]) -> None:
        """Adopt the best of a 401/407's challenges; the nonce count restarts."""
        self._chosen = _select(challenges, self.username, self._password, self._ha1)
        self.nc = 0

    def authorization(self, method: str, uri: str, body: bytes = b"") -> str | None:
        """Authorization value for the next request, or None before any challenge."""
        if self._chosen is None:
            return None
        self.nc += 1
        chosen, key = self._chosen
        return _answer(
            chosen,
            key,
            method=method,
            uri=uri,
            username=self.username,
            cnonce=self._rand(8).hex(),
            nc=self.nc,
            body=body,
        )

"""The server side: stateless nonces, the nonce-count table and ``verify``,
with the reasons a credential is refused (``AuthFailure``).

The package docstring explains the nonce format and the table's bounds.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
import struct
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from softswitch.sip.digest.algorithms import _algorithm, compute_response
from softswitch.sip.digest.headers import Challenge, parse_credentials
from softswitch.sip.errors import SipError


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
        # nonce -> highest nc accepted (the only state; see the package docstring).
        self._nc: dict[str, int] = {}
        self._order: deque[str] = deque()  # the same keys, in first-use order
        self._evicted_upto = -1.0  # issue time of the newest live nonce evicted
        # Log lines for attempts that cannot work; the callers know the source.
        from softswitch.sip.digest.trouble import DigestTrouble  # it imports this module

        self.trouble = DigestTrouble(self.algorithms, realm)

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

"""The client side: choosing among a 401/407's challenges and answering one,
either once (``authorize``) or for an account that reuses the nonce with a
rising nc (``DigestClient``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from softswitch.sip.digest.algorithms import _algorithm, compute_response, ha1
from softswitch.sip.digest.headers import Challenge, Credentials, parse_challenge

_make_ha1 = ha1  # authorize() has a parameter named ha1

# Client preference when several challenges are offered: strongest first. RFC 8760
# §2.4 says "topmost supported unless local policy dictates otherwise"; choosing
# by strength is that local policy, so a reordered 401 cannot downgrade us to MD5.
_STRENGTH = {"SHA-512-256": 3, "SHA-256": 2, "MD5": 1}


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

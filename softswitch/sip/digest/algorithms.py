"""The digest algorithms (RFC 7616 §3.2, RFC 8760 §2.1) and the two values
both sides compute with them: HA1 and the request-digest.

The user database stores what ``ha1`` returns, and the server and the client
both build on ``compute_response``, so these sit below both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

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

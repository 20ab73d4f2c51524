"""SIP digest authentication, server and client side (RFC 3261 §22, RFC 7616, RFC 8760).

Import every name from ``softswitch.sip.digest``; its modules are the seams:
``algorithms`` (hashes, HA1, the request-digest), ``headers`` (the challenge and
credentials values and their grammar), ``server`` (nonces, ``verify``) and
``client`` (answering challenges).

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

from softswitch.sip.digest.algorithms import compute_response, ha1
from softswitch.sip.digest.client import DigestClient, authorize
from softswitch.sip.digest.headers import (
    Challenge,
    Credentials,
    parse_challenge,
    parse_credentials,
)
from softswitch.sip.digest.server import AuthFailure, AuthResult, DigestServer

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

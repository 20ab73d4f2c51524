"""SDP security descriptions for SRTP (SDES, RFC 4568): ``a=crypto`` lines.

    a=crypto:<tag> <crypto-suite> inline:<base64 key||salt>[|lifetime][|MKI:length] [params]

Only what the bearer implements is *usable*: the suites AES_CM_128_HMAC_SHA1_80
and _32 (RFC 4568 §6.2), exactly one key, no MKI (the bearer does not do key
switching by MKI), no session parameters (UNENCRYPTED_SRTP and the like) and
a lifetime, if any, of at least 2^31 packets (libsrtp's default limit, longer
than any call).  Anything else is skipped, so an offer whose crypto lines are
all unusable gets 488 from the caller of ``usable_crypto`` rather than an
answer the phone cannot use.

The key material never leaves this module in printable form except through
``format_crypto`` (for the SDP we send): ``Crypto``'s repr leaves it out, and
``redact`` removes it from any SIP text (the SIP trace).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "KEY_LEN",
    "SUITES",
    "Crypto",
    "format_crypto",
    "is_secure_proto",
    "parse_crypto",
    "redact",
    "usable_crypto",
]

SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
"""The suites the bearer implements, in the order the switch prefers them."""
KEY_LEN = 30
"""AES-CM-128: a 16-byte master key and a 14-byte master salt (RFC 4568 §6.2.1)."""
_MIN_LIFETIME = 1 << 31


@dataclass(frozen=True, slots=True)
class Crypto:
    """One usable a=crypto line: its tag, suite, and key||salt (never printed)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)


def is_secure_proto(proto: str) -> bool:
    """RTP/SAVP, RTP/SAVPF (and UDP/TLS/... DTLS-SRTP, which we do not do): SRTP required."""
    return "SAVP" in proto.upper()


def _lifetime(text: str) -> int | None:
    try:
        if text.startswith("2^"):
            return 1 << int(text[2:])
        return int(text)
    except ValueError:
        return None


def parse_crypto(value: str) -> Crypto | None:
    """One ``a=crypto`` value, or None when it is malformed or unusable (see the module)."""
    parts = value.split()
    if len(parts) != 3:  # fewer: malformed; more: session parameters we do not honour
        return None
    tag_text, suite, params = parts
    if not tag_text.isdigit() or len(tag_text) > 9 or suite not in SUITES:
        return None
    if not params.startswith("inline:") or ";" in params:  # one key only (§9.2)
        return None
    fields = params[len("inline:") :].split("|")
    for extra in fields[1:]:
        if extra.upper().startswith("MKI") or ":" in extra:
            return None
        life = _lifetime(extra)
        if life is None or life < _MIN_LIFETIME:
            return None
    b64 = fields[0]
    try:
        key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != KEY_LEN:
        return None
    return Crypto(int(tag_text), suite, key)


def usable_crypto(values: Iterable[str | None]) -> Crypto | None:
    """The first usable of a media section's ``a=crypto`` values (the offerer's preference)."""
    for value in values:
        if value is not None:
            crypto = parse_crypto(value)
            if crypto is not None:
                return crypto
    return None


def format_crypto(tag: int, suite: str, key: bytes) -> str:
    """An ``a=crypto`` value for the SDP we send."""
    return f"{tag} {suite} inline:{base64.b64encode(key).decode('ascii')}"


_INLINE = re.compile(rb"(inline:)[A-Za-z0-9+/=]+")


def redact(data: bytes) -> bytes:
    """SIP text with every SDES key replaced by ``inline:<redacted>`` (for logs)."""
    if b"inline:" not in data:
        return data
    return _INLINE.sub(rb"\1<redacted>", data)

"""The shared key: reading it from its file, and the HMAC-SHA256/128 tag it
puts on every UDP datagram.

This is the only part of the protocol that touches the file system
(``load_key``, at start-up) and the only part that handles secrets, so it is
kept small and apart from the codec that calls it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from softswitch.protocol.constants import TAG_LEN

MIN_KEY_LEN = 16


class KeyFileError(Exception):
    """The shared key file is missing, too short or readable by everyone."""


class _Mac:
    """HMAC-SHA256 (RFC 2104) with the padded key hashed once.

    ``hmac.digest`` re-derives the inner and outer pads on every call; copying
    two prepared SHA-256 states halves the cost of tagging a datagram.
    """

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def tag(self, data: bytes) -> bytes:
        i = self.inner.copy()
        i.update(data)
        o = self.outer.copy()
        o.update(i.digest())
        return o.digest()[:TAG_LEN]


_MACS: dict[bytes, _Mac] = {}


def _mac(key: bytes) -> _Mac:
    m = _MACS.get(key)
    if m is None:
        if len(_MACS) >= 16:  # a process uses one key; bound it anyway
            _MACS.clear()
        m = _MACS[key] = _Mac(key)
    return m


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The shared HMAC key: 64 hex digits as written at install
    (``openssl rand -hex 32``), or at least 16 raw bytes.

    Refuses a world-readable or world-writable file: whoever can read the key
    can order the bearers around, so a lax mode is an error, not a warning.
    """
    p = Path(path)
    try:
        st = p.stat()
        raw = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read the control key: {e.strerror}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise KeyFileError(
            f"{p}: the control key is accessible to every user "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 0640 it"
        )
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except ValueError:  # not ASCII hex: a raw binary key
        key = raw
    if len(key) < MIN_KEY_LEN:
        raise KeyFileError(
            f"{p}: the control key is {len(key)} bytes; at least {MIN_KEY_LEN} are needed "
            "(generate one with: openssl rand -hex 32)"
        )
    return key

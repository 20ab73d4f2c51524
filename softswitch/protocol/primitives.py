"""Field-level encoding shared by every body: the bounds-checked reader,
length-prefixed strings, addresses, payload-type bytes and small validators.

One place for the rules a single field obeys (7-bit payload types, leg 0 or 1,
255-byte strings), so the message classes only say which fields they carry.
"""

from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache
from typing import Any

from softswitch.protocol.constants import MAX_DATAGRAM, AllocFlags, Direction, JoinFlags

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_NONE_PT = 0xFF
"""Payload types are 7-bit (RFC 3550 §5.1), so 255 encodes 'none'."""


class _Reader:
    """Bounds-checked cursor over a body: every short read is a ValueError.

    Slicing alone would silently return fewer bytes, so every read checks.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        pos = self.pos
        end = pos + n
        if end > len(self.data):
            raise ValueError(f"body truncated at byte {pos} (needs {n} more)")
        self.pos = end
        return self.data[pos:end]

    def unpack(self, s: struct.Struct) -> tuple[Any, ...]:
        v = s.unpack_from(self.data, self.pos)  # struct.error when short
        self.pos += s.size
        return v

    def str8(self) -> str:
        n = self.data[self.pos]  # IndexError when short
        self.pos += 1
        return self.take(n).decode("utf-8")

    def str16(self) -> str:
        (n,) = _U16.unpack_from(self.data, self.pos)
        self.pos += 2
        return self.take(n).decode("utf-8")

    def addr(self) -> str:
        data, pos = self.data, self.pos
        family = data[pos]
        if family == 4:
            self.pos = pos + 5
            a, b, c, d = _V4.unpack_from(data, pos + 1)
            return f"{a}.{b}.{c}.{d}"
        if family == 6:
            self.pos = pos + 17
            return _text_v6(_V6.unpack_from(data, pos + 1)[0])
        raise ValueError(f"address family {family} is neither 4 nor 6")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} trailing bytes")


_V4 = struct.Struct("!4B")
_V6 = struct.Struct("!16s")


def _str8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 255:
        raise ValueError(f"{s[:40]!r}... is {len(b)} bytes of UTF-8; the limit is 255")
    return bytes((len(b),)) + b


def _str16(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > MAX_DATAGRAM:
        raise ValueError(f"{s[:40]!r}... is {len(b)} bytes of UTF-8; too long")
    return _U16.pack(len(b)) + b


@lru_cache(maxsize=4096)
def _pack_addr(text: str) -> bytes:
    """Address text -> family byte + packed address.

    Cached because a bearer has one or two media addresses, phones' addresses
    repeat, and ``ipaddress`` parsing is the slowest step of encoding a LegSpec.
    """
    a = ipaddress.ip_address(text)
    return bytes((a.version,)) + a.packed


@lru_cache(maxsize=1024)
def _text_v6(b: bytes) -> str:
    return str(ipaddress.IPv6Address(b))


def _pt_byte(pt: int | None) -> int:
    if pt is None:
        return _NONE_PT
    if not 0 <= pt <= 127:
        raise ValueError(f"payload type {pt} is not 7-bit (RFC 3550 §5.1)")
    return pt


def _pt_value(b: int) -> int | None:
    if b == _NONE_PT:
        return None
    if b > 127:
        raise ValueError(f"payload type {b} is not 7-bit (RFC 3550 §5.1)")
    return b


def _leg(leg: int) -> int:
    if leg != 0 and leg != 1:
        raise ValueError(f"leg {leg} is neither 0 nor 1")
    return leg


def _bool(b: int) -> bool:
    if b > 1:
        raise ValueError(f"boolean byte {b} is neither 0 nor 1")
    return b == 1


_ALLOC_FLAGS = {i: AllocFlags(i) for i in range(16)}
_JOIN_FLAGS = {i: JoinFlags(i) for i in range(4)}
_DIRECTIONS = tuple(Direction)

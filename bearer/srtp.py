"""SRTP (RFC 3711) on one leg, keyed by SDES (RFC 4568), with pylibsrtp.

Theory of operation
-------------------
A leg is SRTP when control's LegSpec carries the SRTP TLVs: the phone's own
key (``EXT_SRTP_REMOTE``, from its ``a=crypto``) and/or a request for a key
of the bearer's (``EXT_SRTP_LOCAL``, a suite).  ``LegCrypto`` then holds two
libsrtp sessions for the leg:

* ``rx``, inbound, keyed with the phone's key: every RTP and RTCP packet
  from the phone is authenticated and decrypted (``unprotect``) before
  anything else looks at it -- latching, accounting, DTMF, recording, the
  mixer, transcoding all see plain RTP;
* ``tx``, outbound, keyed with the bearer's key for this leg (30 random
  bytes from ``secrets``, made here and returned to control in
  ALLOCATED/UPDATED for its SDP): every packet the bearer sends to the
  phone, relayed or generated, is protected last.

Each leg has its own keys, so a call that is SRTP on both legs is always
re-keyed in the bearer (decrypted with A's key, encrypted with B's): the
same crypto is never relayed end to end, and a leg may be SRTP while the
other is plain RTP.  The local key is kept across UPDATEs with the same
suite (a re-INVITE does not re-key) and replaced when the suite changes.

libsrtp's sessions accept any SSRC (SSRC_ANY_INBOUND/OUTBOUND templates),
so a phone that changes SSRC, or the conference mix's own SSRC, needs no
signalling.  The outbound policy allows repeated sequence numbers
(``allow_repeat_tx``): the bearer relays the phone's sequence numbers, and
a duplicated packet must be relayed, not turned into an error.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pylibsrtp

from softswitch.protocol import SRTP_KEY_LEN, LegSpec, SrtpKey, SrtpSuite

__all__ = ["InPlace", "LegCrypto", "SrtpSendError", "in_place", "new_key", "protecting"]

SrtpError = pylibsrtp.Error

try:  # libsrtp itself, through pylibsrtp's cffi module (same in the wheel and Debian's)
    from pylibsrtp._binding import (  # type: ignore[import-not-found]
        ffi as _ffi,
    )
    from pylibsrtp._binding import (
        lib as _lib,
    )
except ImportError:  # another layout: the copying public API only (the slow path)
    _ffi = _lib = None

#: Room a packet needs after it in the buffer for libsrtp's trailer (pylibsrtp's bound).
TRAILER_ROOM = pylibsrtp.SRTP_MAX_TRAILER_LEN


class InPlace:
    """libsrtp on the relay's own packet buffer, in place: no copy, no allocation.

    pylibsrtp's ``protect``/``unprotect`` take and return ``bytes``, copying
    each packet three times; on the relay's fast path for SRTP calls the
    packet is decrypted and re-encrypted where ``recv_into`` put it, with
    libsrtp's own functions (``ctx`` of a session: ``InPlace.ctx``).
    """

    __slots__ = ("len_p", "protect", "ptr", "unprotect")

    def __init__(self, buf: bytearray) -> None:
        assert _ffi is not None and _lib is not None
        self.ptr = _ffi.from_buffer(buf)
        self.len_p = _ffi.new("int *")
        self.protect = _lib.srtp_protect
        self.unprotect = _lib.srtp_unprotect

    @staticmethod
    def ctx(session: pylibsrtp.Session | None) -> Any:
        """libsrtp's ``srtp_t`` of a session (None for None); valid while the session lives."""
        return None if session is None else session._srtp[0]


def in_place(buf: bytearray) -> InPlace | None:
    """An InPlace on ``buf``, or None when libsrtp's binding is not reachable."""
    if _lib is None:
        return None
    try:
        InPlace.ctx(pylibsrtp.Session())  # the private attribute this relies on
    except (AttributeError, TypeError, IndexError, pylibsrtp.Error):
        return None
    return InPlace(buf)


class SrtpSendError(OSError):
    """libsrtp refused to protect a packet: counted as a send error where it is sent."""


def new_key(suite: SrtpSuite) -> SrtpKey:
    """A fresh master key and salt (RFC 3711 §8.1: random, never reused across sessions)."""
    return SrtpKey(suite, secrets.token_bytes(SRTP_KEY_LEN))


def session(key: SrtpKey, outbound: bool) -> pylibsrtp.Session:
    """A libsrtp session for one direction of one leg."""
    P = pylibsrtp.Policy
    ssrc_type = P.SSRC_ANY_OUTBOUND if outbound else P.SSRC_ANY_INBOUND
    policy = pylibsrtp.Policy(key=key.key, ssrc_type=ssrc_type, srtp_profile=int(key.suite))
    if outbound:
        policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


class LegCrypto:
    """One leg's SRTP keys and libsrtp sessions (see the module docstring)."""

    __slots__ = ("local", "remote", "rx", "tx")

    def __init__(self) -> None:
        self.local: SrtpKey | None = None
        self.remote: SrtpKey | None = None
        self.rx: pylibsrtp.Session | None = None
        self.tx: pylibsrtp.Session | None = None

    def __repr__(self) -> str:  # never the keys
        local = self.local.suite.name if self.local else None
        remote = self.remote.suite.name if self.remote else None
        return f"LegCrypto(local={local}, remote={remote})"

    def apply(self, spec: LegSpec) -> None:
        """Take the SRTP part of a LegSpec; raises ValueError for a malformed TLV."""
        remote = spec.srtp_remote
        suite = spec.srtp_local  # both parsed before anything changes
        if remote != self.remote:
            self.rx = None if remote is None else session(remote, outbound=False)
            self.remote = remote
        if suite is None:
            self.local, self.tx = None, None
        elif self.local is None or self.local.suite != suite:
            self.local = new_key(suite)
            self.tx = session(self.local, outbound=True)


def protecting(tx: pylibsrtp.Session, send: Callable[..., Any]) -> Callable[..., Any]:
    """``send`` (a socket's send or sendto) that protects each packet first.

    With libsrtp's binding reachable the packet is copied once into a
    buffer of this sender's and protected there (pylibsrtp's ``protect``
    copies three times and allocates); the session is kept alive by the
    closure, so its context stays valid while the sender exists.
    """
    if _lib is not None and _ffi is not None:
        scratch = bytearray(2048)
        view = memoryview(scratch)
        ptr = _ffi.from_buffer(scratch)
        len_p = _ffi.new("int *")
        ctx = InPlace.ctx(tx)
        srtp_protect = _lib.srtp_protect
        room = len(scratch) - TRAILER_ROOM

        def in_place_out(data: Any, *dest: Any) -> Any:
            n = len(data)
            if n > room:
                raise SrtpSendError(f"a {n}-byte packet leaves no room for the SRTP trailer")
            scratch[:n] = data
            len_p[0] = n
            if srtp_protect(ctx, ptr, len_p):
                raise SrtpSendError("srtp_protect failed")
            _keep = tx  # the context belongs to this session
            return send(view[: len_p[0]], *dest)

        return in_place_out

    protect = tx.protect

    def out(data: Any, *dest: Any) -> Any:
        try:
            packet = protect(bytes(data))
        except (SrtpError, ValueError) as e:
            raise SrtpSendError(str(e)) from None
        return send(packet, *dest)

    return out


def protecting_rtcp(tx: pylibsrtp.Session, data: bytes) -> bytes:
    """One RTCP compound packet protected (SRTCP, RFC 3711 §3.4); raises SrtpSendError."""
    try:
        return tx.protect_rtcp(data)
    except (SrtpError, ValueError) as e:
        raise SrtpSendError(str(e)) from None

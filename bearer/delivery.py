"""The packet paths the relay's hot loop does not inline.

Theory of operation
-------------------
``bearer.relay`` inlines the two common cases (a plain latched call, a
conference participant) in its epoll loop; every other packet comes here,
with the fd's *entry* (the tuple of locals described in bearer.relay) and
the byte count already read into the relay's one preallocated buffer:

* a packet read with its source address (a leg not yet final, or the drain
  after ``connect()``): the leg's latching policy (``Leg.judge_source``)
  decides, the session does the socket work, then the packet is delivered;
* ``deliver``: the RFC 3550 accounting, then whatever the packet needs:
  DTMF detection (RFC 4733), recording, the mixer, G.711 transcoding, the
  payload-type rewrite, the send;
* RTCP (parsed for statistics, relayed) and the catcher (bleed);
* SRTP legs (bearer.srtp): ``unprotect`` decrypts in the buffer before any
  of the above, SRTCP both ways in ``rtcp``.

Still per packet: no objects beyond what parsing needs, the shared buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from bearer import leg as S
from bearer.conference import ConferenceOut
from bearer.leg import SRC_BLEED, SRC_FINAL, SRC_OK, Leg
from bearer.rtp import parse_header, parse_rtcp, payload_end
from bearer.srtp import InPlace, SrtpError, in_place, protecting_rtcp
from softswitch.protocol import Dtmf, Event, JoinFlags

__all__ = ["Delivery"]

# Entry kinds (the entry layout is described in bearer.relay).  K_FAST is tested
# first in the hot loop.
K_FAST = 0  # final latch, connected out, at most a PT remap: inlined
K_PATH = 1  # final latch, anything else: Delivery.deliver
K_LATCH = 2  # not yet final: recvfrom + source policy
K_CATCH = 3  # the catcher socket of a final leg: bleed counting
K_RTCP = 4
K_READER = 5  # a callback (control socket, signal fd)
K_CONF = 6  # final latch, in a room (not recorded): inlined, frames go to the mixer
K_SCONF = 7  # K_CONF for an SRTP leg: decrypted, then Delivery.deliver_conf
K_SFAST = 8  # K_FAST with SRTP on either leg: decrypted and re-encrypted in place, inlined

_MUTED = int(JoinFlags.MUTED)

_SEQ_TS = struct.Struct("!2xHI")


class Delivery:
    """The non-inlined packet paths, over the relay's buffer and fd table."""

    def __init__(
        self,
        buf: bytearray,
        fdmap: dict[int, tuple[Any, ...]],
        conference: ConferenceOut,
        on_event: Callable[[Event], None],
    ) -> None:
        self._buf = buf
        self._mv = memoryview(buf)
        self._in_place = in_place(buf)  # libsrtp on the buffer (None: pylibsrtp's API)
        self._fdmap = fdmap
        self.conference = conference
        self.on_event = on_event

    def drain(self, leg: Leg, now: float) -> None:
        """Packets queued before connect() may come from anywhere: sort them now."""
        assert leg.rtp is not None
        entry = self._fdmap[leg.rtp.fileno()]
        for _ in range(64):
            try:
                n, src = leg.rtp.recvfrom_into(self._buf)
            except OSError:
                break
            self.sourced(entry, leg, n, src, now)

    # ------------------------------------------------------------------ latching

    def sourced(
        self, e: tuple[Any, ...], leg: Leg, n: int, src: tuple[str, int], now: float
    ) -> None:
        """A packet read with its source address: apply the latching policy, then deliver."""
        buf = self._buf
        if n < 12 or buf[0] & 0xC0 != 0x80:
            leg.c[S.INVALID] += 1
            return
        if leg.srtp is not None:  # authenticated before it may latch anything
            n = self.unprotect(leg, n)
            if n < 0:
                return
        verdict = leg.judge_source(src[:2], now)  # IPv6 sources come with flow info, scope
        if verdict == SRC_BLEED:
            return
        if verdict != SRC_OK:
            leg.session.latched(leg, now)
            e = self._fdmap[leg.rtp.fileno()]  # type: ignore[union-attr]
        self.deliver(e, n, now)
        if verdict == SRC_FINAL:
            leg.session.finalize(leg, now)

    # ------------------------------------------------------------------ delivery

    def unprotect(self, leg: Leg, n: int) -> int:
        """Decrypt an SRTP packet of ``leg`` in the buffer; its new length, or -1 (counted).

        Called before anything reads the packet (bearer.srtp); failed
        authentication, a replay, or no key from the phone yet is a drop.
        """
        crypto = leg.srtp
        rx = crypto.rx if crypto is not None else None
        if rx is None or n < 12:
            leg.c[S.SRTP] += 1
            return -1
        ip = self._in_place
        if ip is not None:  # in the buffer, as the relay's K_SFAST does
            ip.len_p[0] = n
            if ip.unprotect(InPlace.ctx(rx), ip.ptr, ip.len_p):
                leg.c[S.SRTP] += 1
                return -1
            return int(ip.len_p[0])
        try:
            plain = rx.unprotect(bytes(self._mv[:n]))
        except (SrtpError, ValueError):
            leg.c[S.SRTP] += 1
            return -1
        m = len(plain)
        self._buf[:m] = plain
        return m

    def deliver(self, e: tuple[Any, ...], n: int, now: float) -> None:
        """Everything a packet from a phone may need besides the plain relay."""
        kind, _recv, out, c, dest, tev, _clk, remap, leg = e
        buf = self._buf
        if kind in (K_CONF, K_SCONF):
            self.deliver_conf(e, n, now)
            return
        if kind in (K_FAST, K_SFAST):
            dest = None  # that slot holds the PT table (and SRTP contexts); out is connected
        if n < 12 or buf[0] & 0xC0 != 0x80:
            c[S.INVALID] += 1
            return
        seq, ts = _SEQ_TS.unpack_from(buf)
        leg.account_rtp(n, seq, ts, now)
        b1 = buf[1]
        pt = b1 & 0x7F
        xl, xcode, audio_pt, dtmf_ok = remap
        s = leg.session
        if pt == tev:
            self.dtmf(leg, n, ts)
            if s.room is not None:
                return  # digits are for control; the mix carries audio only
            if not dtmf_ok:
                c[S.UNSUPPORTED] += 1
                c[S.DROP_BYTES] += n
                return
        elif pt == audio_pt and (
            s.recording is not None or s.room is not None or xcode is not None
        ):
            if buf[0] == 0x80:  # no CSRC, extension or padding: what phones send
                hlen, end = 12, n
            else:
                try:
                    _pt, _seq, _ts, _ssrc, _m, hlen = parse_header(buf, n)
                    end = payload_end(buf, n)
                except ValueError:
                    c[S.INVALID] += 1
                    return
            if s.recording is not None:
                sel = leg.spec.selected
                s.recording.push(
                    leg.index, seq, ts, self._mv[hlen:end], sel.name if sel else "PCMU"
                )
            if s.room is not None:
                if not s.room_flags & _MUTED:
                    self.conference.push(s, leg, seq, ts, self._mv[hlen:end])
                return
            if xcode is not None:
                buf[hlen:end] = buf[hlen:end].translate(xcode)
        elif s.room is not None:
            return  # comfort noise and the like: the mixer makes its own
        if out is None:
            c[dest] += 1
            c[S.DROP_BYTES] += n
            return
        buf[1] = xl[b1]
        try:
            if dest is None:
                out(self._mv[:n])
            else:
                out(self._mv[:n], dest)
        except OSError:
            c[S.SEND_ERROR] += 1
            c[S.DROP_BYTES] += n

    def deliver_conf(self, e: tuple[Any, ...], n: int, now: float) -> None:
        """What the loop's inlined K_CONF branch does, for packets read elsewhere."""
        _kind, _recv, push, c, pid, tev, _clk, (audio_pt, codec), leg = e
        buf = self._buf
        if n < 12 or buf[0] & 0xC0 != 0x80:
            c[S.INVALID] += 1
            return
        seq, ts = _SEQ_TS.unpack_from(buf)
        leg.account_rtp(n, seq, ts, now)
        pt = buf[1] & 0x7F
        if pt == audio_pt and buf[0] == 0x80:
            if push is not None:
                push(pid, seq, ts, self._mv[12:n], codec)
        elif pt == tev:
            self.dtmf(leg, n, ts)
        elif pt == audio_pt:
            self.conf_frame(leg, n, seq, ts)

    def conf_frame(self, leg: Leg, n: int, seq: int, ts: int) -> None:
        """A participant's frame with CSRCs, an extension or padding (rare)."""
        try:
            _pt, _seq, _ts, _ssrc, _m, hlen = parse_header(self._buf, n)
            end = payload_end(self._buf, n)
        except ValueError:
            leg.c[S.INVALID] += 1
            return
        s = leg.session
        if not s.room_flags & _MUTED:
            self.conference.push(s, leg, seq, ts, self._mv[hlen:end])

    def dtmf(self, leg: Leg, n: int, ts: int) -> None:
        """Feed an RFC 4733 telephone-event to the leg's detector; report digits once."""
        buf = self._buf
        try:
            _pt, _seq, _ts, _ssrc, _m, hlen = parse_header(buf, n)
            digits = leg.dtmf.feed(ts, bytes(buf[hlen:n]))
        except ValueError:
            return
        for digit, ms in digits:
            self.on_event(Dtmf(leg.session.id, leg.index, digit, int(ms)))

    def rtcp(self, leg: Leg, now: float) -> None:
        """RTCP (RFC 3550 §6): parsed for stats, relayed to the other phone's RTCP port."""
        assert leg.rtcp is not None
        n, src = leg.rtcp.recvfrom_into(self._buf)
        if not leg.rtcp_source_ok(src[:2]):
            return
        data = bytes(self._buf[:n])
        crypto = leg.srtp
        if crypto is not None:  # SRTCP (RFC 3711 §3.4): authenticated, decrypted
            if crypto.rx is None:
                leg.c[S.SRTP] += 1
                return
            try:
                data = crypto.rx.unprotect_rtcp(data)
            except (SrtpError, ValueError):
                leg.c[S.SRTP] += 1
                return
        try:
            packets = parse_rtcp(data)
        except ValueError:
            leg.c[S.RTCP_INVALID] += 1
            return
        other = leg.session.other(leg)
        leg.account_rtcp(packets, other, now)
        if other is not None and other.rtcp is not None and other.receives:
            dest = other.rtcp_destination
            if dest is not None:
                try:
                    if other.srtp is not None:
                        if other.srtp.tx is None:
                            return  # SRTP towards that phone, no key yet: nothing to send
                        data = protecting_rtcp(other.srtp.tx, data)
                    other.rtcp.sendto(data, dest)
                except OSError:
                    leg.c[S.SEND_ERROR] += 1

    def catch(self, leg: Leg, now: float) -> None:
        """A datagram on the catcher: from the phone (in the connect window) or bleed."""
        assert leg.catcher is not None and leg.rtp is not None
        n, src = leg.catcher.recvfrom_into(self._buf)
        src = src[:2]
        if n < 12 or self._buf[0] & 0xC0 != 0x80:
            leg.c[S.INVALID] += 1
        elif src == leg.latched:
            if leg.srtp is not None:
                n = self.unprotect(leg, n)
                if n < 0:
                    return
            self.deliver(self._fdmap[leg.rtp.fileno()], n, now)
        else:
            leg.c[S.BLEED] += 1

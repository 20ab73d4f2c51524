"""The bearer's media engine: one epoll loop for every socket and the 20 ms tick.

Theory of operation
-------------------
One ``select.epoll`` serves every RTP and RTCP socket, the control socket and
the signal wake-up fd; the 20 ms tick (conference mixing, recordings,
housekeeping, timers) is the epoll timeout computed from the next tick
deadline on ``time.monotonic`` (there is no timerfd in the stdlib).

Each registered fd maps to ONE tuple of locals (its *entry*)::

    (kind, recv, out, counters, dest, tev_pt, clock, remap, leg)

rebuilt whenever something about the leg changes (latching, UPDATE, RECORD,
JOIN), never per packet.  The hot loop does one dict lookup per event and
unpacks the tuple.  Three kinds are inlined in the loop:

* ``K_FAST``, a latched call needing no transcoding, recording or mixing:
  ``recv_into`` a preallocated buffer, rewrite the marker/PT byte through a
  256-byte table (identity for most calls; ``dest`` holds it), send a
  memoryview slice out of the *other* leg's socket, bump list counters and
  the RFC 3550 A.8 jitter estimate;
* ``K_CONF``, a conference participant: the same accounting, then the
  payload goes straight to the mixer's jitter buffer (``out`` is the
  mixer's push, ``dest`` the participant id).

* ``K_SFAST``, the same call with SRTP on either leg or both: the packet
  is decrypted with the phone's key and re-encrypted with the other leg's
  where ``recv_into`` put it, by libsrtp's own functions on the buffer
  (``bearer.srtp.InPlace``: pylibsrtp's API copies every packet three
  times), then accounted as K_FAST.  ``dest`` holds the PT table, both
  libsrtp contexts, the unwrapped send and the sessions that own the
  contexts.

Everything else (latching, transcoding, DTMF, recording, RTCP, bleed on the
catcher) goes through ``_slow`` to bearer.delivery.  There an SRTP leg's
packets are decrypted on arrival (``Delivery.unprotect``) and the other
leg's ``out`` is wrapped to encrypt (``bearer.srtp.protecting``), so the
paths between see plain RTP.

Measured on the 2-vCPU development VM, per relayed packet in a batch: about
5.3 us for the two syscalls alone (recv 1.4, send 4: a loopback send also
runs the receiver's network stack), 6.4 us with all of the above.

Everything a call's media *is* lives in its session (bearer.session, the
user-space ``bearer.media.MediaSession``): legs, sockets, latching policy,
statistics, timeout, room and recording.  Control operations go to the
session; the relay is the session's ``SessionHost``: it registers the
sockets the session opens and rebuilds their entries when the session says
so (``wire``).  A session latched to its phones is *final*: its RTP sockets
are ``connect()``ed, which is what lets K_FAST use ``recv_into``/``send``.

Per-leg counters are list slots (see bearer.leg); loss (RFC 3550 A.3) and
media timeouts are computed by each session's housekeeping, which the relay
runs for every session twice a second, spread over the ticks so no tick does
all of them.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from bearer import leg as S
from bearer.conference import ConferenceOut
from bearer.delivery import (
    K_CATCH,
    K_CONF,
    K_FAST,
    K_LATCH,
    K_PATH,
    K_READER,
    K_RTCP,
    K_SCONF,
    K_SFAST,
    Delivery,
)
from bearer.leg import LATCH_GRACE, Leg
from bearer.media import Mode, RelayError
from bearer.mixer import Mixer
from bearer.ports import PortPool, PortsExhausted
from bearer.remap import IDENTITY, remap_table
from bearer.session import Session
from bearer.srtp import TRAILER_ROOM, InPlace, in_place, protecting
from softswitch.protocol import (
    AllocFlags,
    ErrorCode,
    Event,
    JoinFlags,
    LegSpec,
    LegStats,
    SrtpKey,
)

__all__ = ["LATCH_GRACE", "TICK", "Relay", "RelayError"]

log = logging.getLogger("bearer.relay")

TICK = 0.020
"""The mixing/recording tick: one 20 ms G.711 frame (RFC 3551 §4.5)."""
HOUSEKEEP_PERIOD = 0.5
"""Every session's loss/timeout accounting runs this often."""
MAX_EVENTS = 1024
"""epoll events per wake-up; more simply wait for the next poll."""
_BIND_ATTEMPTS = 16
BUSY_POLL_MIN_EVENTS = 8
"""With busy polling on, a batch at least this big keeps the loop polling without sleeping."""

_MUTED = int(JoinFlags.MUTED)
_SEQ_TS = struct.Struct("!2xHI")


class Relay:
    """Every session of one bearer process and the loop that moves their packets.

    ``on_event`` receives the bearer's events (protocol Event messages) for
    control; the daemon retransmits them until acknowledged.
    ``recorder`` (optional) is a callable ``(session, path) -> Recording``
    (bearer.recorder: ``push(leg, seq, ts, payload, codec)``, ``tick()``,
    ``close()``); recordings are ticked from the loop.  ``busy_poll`` (seconds,
    0 = off) keeps polling without sleeping that long after a big batch, to
    spare the wake-up latency of an idle vCPU; measured on the development VM
    it cost 15-25 points of CPU at 750 calls for an inconclusive gain in the
    latency tail, so it is off by default.
    """

    def __init__(
        self,
        media_address: str,
        port_first: int,
        port_last: int,
        *,
        max_sessions: int = 1000,
        media_timeout: float = 30.0,
        on_event: Callable[[Event], None] = lambda event: None,
        recorder: Callable[[Session, str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        busy_poll: float = 0.0,
    ) -> None:
        self.media_address = media_address
        self.family = socket.AF_INET6 if ":" in media_address else socket.AF_INET
        self.ports = PortPool(port_first, port_last)
        self.max_sessions = max_sessions
        self.media_timeout = media_timeout
        self.on_event = on_event
        self.recorder = recorder
        self.clock = clock
        self.busy_poll = busy_poll
        self.sessions: dict[int, Session] = {}
        self.mixer = Mixer(capacity=64)
        self.rooms: dict[str, int] = {}  # room -> participants (the mixer's view costs O(rooms))
        self._ep = select.epoll()
        self._fdmap: dict[int, tuple[Any, ...]] = {}
        self._buf = bytearray(2048)
        self._mv = memoryview(self._buf)
        self._srtp = in_place(self._buf)  # None: SRTP calls take the slow path
        self._running = False
        self._next_tick = 0.0
        self._timers: list[list[Any]] = []  # [due, interval, fn]
        self.provisional: set[Leg] = set()  # legs latched, not yet final
        self._hk: list[Session] = []
        self._hk_pos = 0
        self._hk_due = 0.0
        self.totals: list[Any] = [0] * S.NCOUNTERS  # like Leg.c: int slots, two float ones
        self.totals[S.JITTER] = 0.0
        self.totals[S.TRANSIT] = 0.0
        self.recordings: set[Session] = set()
        self.conference = ConferenceOut(self.mixer)
        self.delivery = Delivery(self._buf, self._fdmap, self.conference, on_event)
        self.lost_total = 0  # RFC 3550 A.3 loss of deleted legs
        self.internal_errors = 0
        self._bug_logged = -1e9
        self.ticks = 0
        self.late_ticks = 0

    # ------------------------------------------------------------------ registration

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (control socket, signal fd)."""
        self._fdmap[fd] = (K_READER, callback, None, None, None, -1, 0.0, None, None)
        self._ep.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        self._fdmap.pop(fd, None)
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def call_every(self, interval: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now)`` every ``interval`` seconds from the tick (20 ms resolution)."""
        self._timers.append([self.clock() + interval, interval, fn])

    # ------------------------------------------------------------------ sessions

    def allocate(
        self, session_id: int, call_ref: str, specs: tuple[LegSpec, ...], flags: AllocFlags
    ) -> list[int]:
        """Create a session with one port pair per leg; returns the RTP ports.

        Idempotence is the reply cache's job (a retransmitted request never
        reaches here); an ALLOCATE for an existing id is a control bug and
        is refused rather than silently leaking the old session's ports.
        """
        if session_id in self.sessions:
            raise RelayError(ErrorCode.BAD_REQUEST, f"session {session_id} exists")
        if len(self.sessions) >= self.max_sessions:
            raise RelayError(ErrorCode.NO_CAPACITY, f"{self.max_sessions} sessions in use")
        if not 1 <= len(specs) <= 2:
            raise RelayError(ErrorCode.BAD_REQUEST, f"{len(specs)} legs")
        now = self.clock()
        s = Session(session_id, call_ref, flags, now, self, self.media_timeout)
        ports = s.start(specs, now)
        self.sessions[session_id] = s
        self._hk.append(s)
        return ports

    # Control operations: each is the session's own (bearer.media.MediaSession).

    def update(self, session_id: int, leg_index: int, spec: LegSpec) -> None:
        """Replace one leg's description (the SDP answer, a re-INVITE)."""
        self._session(session_id).update(leg_index, spec, self.clock())

    def keys(self, session_id: int) -> tuple[SrtpKey | None, ...]:
        """Per leg, the bearer's own SRTP key, for control's SDP (ALLOCATED, UPDATED)."""
        return self._session(session_id).keys()

    def delete(self, session_id: int) -> tuple[LegStats, ...]:
        """End a session, release its ports; returns its final per-leg counters."""
        s = self._session(session_id)
        stats = s.stop(self.clock())
        del self.sessions[session_id]
        totals = self.totals
        for leg in s.legs:
            for i in range(S.NCOUNTERS):
                totals[i] += leg.c[i]  # SEQ/TRANSIT/JITTER sums are meaningless, never read
            self.lost_total += max(leg.lost, 0)
        return stats

    def record(self, session_id: int, start: bool, path: str) -> bool:
        """Start/stop recording; returns whether the session is now recorded."""
        return self._session(session_id).record(start, path)

    def join(self, room: str, session_id: int, leg_index: int, flags: JoinFlags) -> int:
        """Put a one-leg session into a room; returns the room's participant count."""
        return self._session(session_id).join(room, leg_index, flags)

    def leave(self, room: str, session_id: int, leg_index: int) -> int:
        """Take a session out of its room; returns the room's remaining participants."""
        return self._session(session_id).leave(room, leg_index)

    def set_mode(self, session_id: int, mode: Mode) -> None:
        """Move a session between user-space relaying and kernel forwarding."""
        self._session(session_id).set_mode(mode, self.clock())

    def session_counters(self, session_id: int) -> dict[str, int | float]:
        """STATS for one session."""
        return self._session(session_id).counters(self.clock())

    def counters(self) -> dict[str, int | float]:
        """STATS for the whole bearer: live sessions plus everything deleted."""
        legs = [leg for s in self.sessions.values() for leg in s.legs]
        # Column sums in C (zip/sum): a STATS poll must not stall the loop at 1000 calls.
        sums = list(self.totals)
        if legs:
            columns = zip(*(leg.c for leg in legs), strict=True)
            sums = [t + sum(col) for t, col in zip(sums, columns, strict=True)]
        lost = self.lost_total + sum(max(leg.lost, 0) for leg in legs)
        jitters = [leg.c[S.JITTER] * 1000.0 / leg.clock for leg in legs if leg.c[S.PKTS]]
        out: dict[str, int | float] = {
            "sessions": len(self.sessions),
            "capacity": self.max_sessions,
            "ports_free": len(self.ports),
            "rooms": len(self.rooms),
            "recordings": len(self.recordings),
            "packets": sums[S.PKTS],
            "bytes": sums[S.BYTES],
            "packets_generated": sums[S.OUT_PKTS],
            "lost": lost,
            "jitter_ms_mean": round(sum(jitters) / len(jitters), 3) if jitters else 0.0,
            "jitter_ms_max": round(max(jitters), 3) if jitters else 0.0,
            "ticks": self.ticks,
            "late_ticks": self.late_ticks,
            "internal_errors": self.internal_errors,
        }
        for name, slot in S.DROP_REASONS.items():
            out[f"drop_{name}"] = sums[slot]
        return out

    def packet_total(self) -> int:
        """Packets received plus generated so far (cheap: two slots per leg, for pps)."""
        total = self.totals[S.PKTS] + self.totals[S.OUT_PKTS]
        for s in self.sessions.values():
            for leg in s.legs:
                c = leg.c
                total += c[S.PKTS] + c[S.OUT_PKTS]
        return total

    def _session(self, session_id: int) -> Session:
        s = self.sessions.get(session_id)
        if s is None:
            raise RelayError(ErrorCode.UNKNOWN_SESSION, f"no session {session_id}")
        return s

    # ------------------------------------------------------------------ sockets

    def _socket(self, port: int, reuse: bool) -> socket.socket:
        sock = socket.socket(
            self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.media_address, port))
        except OSError:
            sock.close()
            raise
        return sock

    # SessionHost (bearer.media): what the sessions ask of the bearer.

    def open_pair(self) -> tuple[int, socket.socket, socket.socket]:
        """Bind an RTP/RTCP pair from the pool (skipping ports held by others)."""
        for _ in range(_BIND_ATTEMPTS):
            port = self.ports.take()
            try:
                rtp = self._socket(port, True)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    self.ports.release(port)
                    raise RelayError(ErrorCode.INTERNAL, f"bind {port}: {e.strerror}") from None
                self.ports.busy(port)
                continue
            try:
                rtcp = self._socket(port + 1, False)
            except OSError:
                rtp.close()
                self.ports.busy(port)
                continue
            self._ep.register(rtp.fileno(), select.EPOLLIN)
            self._ep.register(rtcp.fileno(), select.EPOLLIN)
            return port, rtp, rtcp
        raise PortsExhausted(f"{_BIND_ATTEMPTS} ports in a row were held by other processes")

    def bind(self, port: int) -> socket.socket:
        """Another socket on a leg's port (SO_REUSEPORT): catcher, or a fresh RTP socket."""
        return self._socket(port, True)

    def register(self, sock: socket.socket) -> None:
        self._ep.register(sock.fileno(), select.EPOLLIN)

    def discard(self, sock: socket.socket) -> None:
        self._fdmap.pop(sock.fileno(), None)
        try:
            self._ep.unregister(sock.fileno())
        except OSError:
            pass
        sock.close()

    def release_port(self, port: int) -> None:
        self.ports.release(port)

    def emit(self, event: Event) -> None:
        self.on_event(event)

    def start_recording(self, session: Session, path: str) -> Any:
        if self.recorder is None:
            raise RelayError(ErrorCode.INTERNAL, "recording is not available")
        try:
            return self.recorder(session, path)
        except (OSError, ValueError) as e:
            raise RelayError(ErrorCode.BAD_REQUEST, f"cannot record: {e}") from None

    def drain(self, leg: Leg, now: float) -> None:
        self.delivery.drain(leg, now)

    # ------------------------------------------------------------------ wiring

    def wire(self, s: Session) -> None:
        """Rebuild the hot-path entries of a session's sockets after any change."""
        fdmap = self._fdmap
        for leg in s.legs:
            if leg.rtp is None:
                continue
            assert leg.rtcp is not None, "a leg's RTP and RTCP sockets come and go together"
            fdmap[leg.rtp.fileno()] = self._entry(s, leg)
            fdmap[leg.rtcp.fileno()] = (K_RTCP, None, None, leg.c, None, -1, 0.0, None, leg)
            if leg.catcher is not None:
                fdmap[leg.catcher.fileno()] = (K_CATCH, None, None, leg.c, None, -1, 0.0, None, leg)

    def _entry(self, s: Session, leg: Leg) -> tuple[Any, ...]:
        other = s.other(leg)
        out: Any = None
        dest: Any = S.NO_PEER
        if not leg.sends or s.mode is not Mode.RELAY:
            dest = S.INACTIVE
        elif other is not None and other.rtp is not None:
            if not other.receives:
                dest = S.INACTIVE
            elif other.final:
                out, dest = other.rtp.send, None
            elif other.destination is not None:
                out, dest = other.rtp.sendto, other.destination
            crypto = other.srtp
            raw_out = out
            if crypto is not None and out is not None:
                if crypto.tx is None:  # SRTP towards that phone, but no key yet
                    out, dest = None, S.SRTP
                else:
                    out = protecting(crypto.tx, out)
        remap: tuple[Any, ...]  # remap_table's, or (audio PT, codec name) for K_CONF
        recv: Callable[..., Any]  # recvfrom_into (K_LATCH) or recv_into
        if other is not None:
            remap = remap_table(leg.spec, other.spec)
        else:
            remap = (
                IDENTITY,
                None,
                leg.spec.selected_pt if leg.spec.selected_pt is not None else -1,
                True,
            )
        tev = leg.spec.dtmf_pt if leg.spec.dtmf_pt is not None else -1
        assert leg.rtp is not None
        if not leg.final:
            kind, recv = K_LATCH, leg.rtp.recvfrom_into
        else:
            recv = leg.rtp.recv_into
            plain = (
                out is not None
                and dest is None
                and remap[1] is None
                and remap[3]
                and s.recording is None
                and s.room is None
            )
            rx = leg.srtp.rx if leg.srtp is not None else None
            tx = other.srtp.tx if other is not None and other.srtp is not None else None
            kind = K_PATH
            if plain and leg.srtp is None and tx is None:
                kind = K_FAST
                dest = remap[0]  # K_FAST keeps its byte-1 (marker + PT) table in dest's slot
            elif plain and self._srtp is not None and (leg.srtp is None or rx is not None):
                # K_SFAST: the table, both libsrtp contexts (None: that side is
                # plain), the unwrapped send, and the sessions (kept alive with
                # the entry: the contexts are theirs).
                kind = K_SFAST
                dest = (remap[0], InPlace.ctx(rx), InPlace.ctx(tx), raw_out, rx, tx)
            if s.room is not None and s.recording is None and s.mode is Mode.RELAY:
                # A participant's entry: out is the mixer's push (None when muted),
                # dest its participant id, remap (audio PT, codec name).
                kind = K_CONF
                out = None if s.room_flags & _MUTED else self.mixer.push
                dest = (s.id, leg.index)
                sel = leg.spec.selected
                remap = (sel.pt if sel else -1, sel.name.upper() if sel else "PCMU")
                if leg.srtp is not None:
                    kind = K_SCONF  # decrypted first, so not the loop's inlined K_CONF
        return (kind, recv, out, leg.c, dest, tev, float(leg.clock), remap, leg)

    # ------------------------------------------------------------------ loop

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Serve until ``stop()`` (or ``until()`` turns true, checked every tick)."""
        self._running = True
        clock = self.clock
        poll = self._ep.poll
        fdmap = self._fdmap
        buf = self._buf
        mv = self._mv
        unpack = _SEQ_TS.unpack_from
        FAST, CONF, SFAST = K_FAST, K_CONF, K_SFAST
        srtp = self._srtp
        if srtp is not None:
            sptr, slen, sprotect, sunprotect = srtp.ptr, srtp.len_p, srtp.protect, srtp.unprotect
        SRTP_DROP = S.SRTP
        srtp_max = len(buf) - TRAILER_ROOM
        PKTS, BYTES, SEQ, TRANSIT, JITTER = S.PKTS, S.BYTES, S.SEQ, S.TRANSIT, S.JITTER
        SEND_ERROR, DROP_BYTES, INVALID = S.SEND_ERROR, S.DROP_BYTES, S.INVALID
        busy_poll = self.busy_poll
        dtmf, conf_frame = self.delivery.dtmf, self.delivery.conf_frame
        spin_until = 0.0
        self._next_tick = clock() + TICK
        while self._running:
            now = clock()
            if now >= self._next_tick:
                self._tick(now)
                if until is not None and until():
                    break
                continue
            events = poll(0 if now < spin_until else self._next_tick - now, MAX_EVENTS)
            now = clock()
            if busy_poll and len(events) >= BUSY_POLL_MIN_EVENTS:
                spin_until = now + busy_poll
            for fd, _ev in events:
                try:
                    kind, recv, out, c, dest, tev, clk, remap, leg = fdmap[fd]
                    if kind == FAST:
                        n = recv(buf)
                        if n < 12 or buf[0] & 0xC0 != 0x80:
                            c[INVALID] += 1
                            continue
                        b1 = buf[1]
                        if b1 & 0x7F == tev:
                            seq, ts = unpack(buf)
                            dtmf(leg, n, ts)
                        buf[1] = dest[b1]  # payload type remap (identity for most calls)
                        try:
                            out(mv[:n])
                        except OSError:
                            c[SEND_ERROR] += 1
                            c[DROP_BYTES] += n
                        c[PKTS] += 1
                        c[BYTES] += n
                        seq, ts = unpack(buf)
                        c[SEQ] = seq
                        tr = now * clk - ts
                        d = tr - c[TRANSIT]
                        c[TRANSIT] = tr
                        if d < 0:
                            d = -d
                        if d < 1e6:
                            c[JITTER] += (d - c[JITTER]) * 0.0625
                    elif kind == CONF:
                        n = recv(buf)
                        if n < 12 or buf[0] & 0xC0 != 0x80:
                            c[INVALID] += 1
                            continue
                        c[PKTS] += 1
                        c[BYTES] += n
                        seq, ts = unpack(buf)
                        c[SEQ] = seq
                        tr = now * clk - ts
                        d = tr - c[TRANSIT]
                        c[TRANSIT] = tr
                        if d < 0:
                            d = -d
                        if d < 1e6:
                            c[JITTER] += (d - c[JITTER]) * 0.0625
                        pt = buf[1] & 0x7F
                        if pt == remap[0] and buf[0] == 0x80:
                            if out is not None:
                                out(dest, seq, ts, mv[12:n], remap[1])
                        elif pt == tev:
                            dtmf(leg, n, ts)
                        elif pt == remap[0]:
                            conf_frame(leg, n, seq, ts)
                    elif kind == SFAST:
                        n = recv(buf)
                        if n < 12 or n > srtp_max or buf[0] & 0xC0 != 0x80:
                            c[INVALID] += 1
                            continue
                        table, rx, tx, send = dest[0], dest[1], dest[2], dest[3]
                        if rx is not None:
                            slen[0] = n
                            if sunprotect(rx, sptr, slen):
                                c[SRTP_DROP] += 1  # failed authentication or a replay
                                continue
                            n = slen[0]
                        b1 = buf[1]
                        seq, ts = unpack(buf)
                        if b1 & 0x7F == tev:
                            dtmf(leg, n, ts)
                        buf[1] = table[b1]
                        m = n
                        if tx is not None:
                            slen[0] = n
                            if sprotect(tx, sptr, slen):
                                c[SEND_ERROR] += 1
                                c[DROP_BYTES] += n
                                continue
                            m = slen[0]
                        try:
                            send(mv[:m])
                        except OSError:
                            c[SEND_ERROR] += 1
                            c[DROP_BYTES] += n
                        c[PKTS] += 1
                        c[BYTES] += n
                        c[SEQ] = seq
                        tr = now * clk - ts
                        d = tr - c[TRANSIT]
                        c[TRANSIT] = tr
                        if d < 0:
                            d = -d
                        if d < 1e6:
                            c[JITTER] += (d - c[JITTER]) * 0.0625
                    else:
                        self._slow(kind, fd, now)
                except KeyError:
                    pass  # closed earlier in this batch
                except OSError as e:
                    self._socket_error(fd, e)

    def _slow(self, kind: int, fd: int, now: float) -> None:
        """Every entry kind but K_FAST.  A bug here costs one packet, not the bearer."""
        try:
            e = self._fdmap[fd]
            leg = e[8]
            if kind == K_PATH:
                n = e[1](self._buf)
                if leg.srtp is not None:
                    n = self.delivery.unprotect(leg, n)
                    if n < 0:
                        return
                self.delivery.deliver(e, n, now)
            elif kind == K_SCONF:
                n = self.delivery.unprotect(leg, e[1](self._buf))
                if n >= 0:
                    self.delivery.deliver_conf(e, n, now)
            elif kind == K_LATCH:
                n, src = e[1](self._buf)
                self.delivery.sourced(e, leg, n, src, now)
            elif kind == K_CATCH:
                self.delivery.catch(leg, now)
            elif kind == K_RTCP:
                self.delivery.rtcp(leg, now)
            elif kind == K_READER:
                e[1]()
        except (OSError, KeyError):
            raise  # the loop counts these
        except Exception:
            self._bug("packet path")

    def _bug(self, where: str) -> None:
        """Count an unexpected exception; log its traceback at most every 10 s."""
        self.internal_errors += 1
        now = self.clock()
        if now >= self._bug_logged + 10.0:
            self._bug_logged = now
            log.exception("internal error in the %s (%d so far)", where, self.internal_errors)

    def _socket_error(self, fd: int, exc: OSError) -> None:
        """recv failed: ICMP port unreachable reported on a connected socket, usually."""
        if isinstance(exc, BlockingIOError):
            return
        e = self._fdmap.get(fd)
        if e is not None and e[3] is not None:
            e[3][S.RECV_ERROR] += 1

    def stop(self) -> None:
        """Leave run() after the current batch of events."""
        self._running = False

    def close(self) -> None:
        """Close every session's sockets and the epoll object."""
        for s in list(self.sessions.values()):
            s.close()
        self.sessions.clear()
        self._ep.close()

    # ------------------------------------------------------------------ tick

    def _tick(self, now: float) -> None:
        self.ticks += 1
        self._next_tick += TICK
        if now - self._next_tick > TICK:  # fell behind by more than a tick: resync
            self.late_ticks += 1
            self._next_tick = now + TICK
        try:
            if len(self.mixer):
                self.conference.tick()
            for s in list(self.recordings):
                if s.recording is not None:
                    s.recording.tick()
            for leg in list(self.provisional):
                if leg.grace_over(now):
                    leg.session.finalize(leg, now)
            self._housekeep(now)
        except Exception:
            self._bug("tick")
        for t in self._timers:
            if now >= t[0]:
                t[0] = max(t[0] + t[1], now)
                try:
                    t[2](now)
                except Exception:
                    self._bug(f"timer {getattr(t[2], '__name__', t[2])}")

    def _housekeep(self, now: float) -> None:
        """Loss accounting and media timeouts, a slice of the sessions per tick."""
        hk = self._hk
        if self._hk_pos >= len(hk):
            if now < self._hk_due:
                return
            self._hk_due = now + HOUSEKEEP_PERIOD
            hk[:] = [s for s in self.sessions.values()]
            self._hk_pos = 0
        step = max(1, int(len(hk) * TICK / HOUSEKEEP_PERIOD) + 1)
        end = min(self._hk_pos + step, len(hk))
        sessions, emit = self.sessions, self.on_event
        for s in hk[self._hk_pos : end]:
            if s.id in sessions:
                event = s.housekeep(now)
                if event is not None:
                    emit(event)
        self._hk_pos = end

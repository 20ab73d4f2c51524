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
unpacks the tuple.  Two kinds are inlined in the loop:

* ``K_FAST``, a latched call needing no transcoding, recording or mixing:
  ``recv_into`` a preallocated buffer, rewrite the marker/PT byte through a
  256-byte table (identity for most calls; ``dest`` holds it), send a
  memoryview slice out of the *other* leg's socket, bump list counters and
  the RFC 3550 A.8 jitter estimate;
* ``K_CONF``, a conference participant: the same accounting, then the
  payload goes straight to the mixer's jitter buffer (``out`` is the
  mixer's push, ``dest`` the participant id).

Everything else (latching, transcoding, DTMF, recording, RTCP, bleed on the
catcher) goes through ``_slow``/``_deliver``.

Measured on the 2-vCPU development VM, per relayed packet in a batch: about
5.3 us for the two syscalls alone (recv 1.4, send 4: a loopback send also
runs the receiver's network stack), 6.4 us with all of the above.

Symmetric RTP (DESIGN.md "Media"): a leg latches to the source of its first
valid RTP packet (version 2, at least a header).  While a leg is latched
*provisionally* (to an address control did not signal), a packet from the
signalled address wins; after ``LATCH_GRACE`` seconds, or at once when the
source is the signalled one, the latch is final: the RTP socket is
``connect()``ed to the phone.  The kernel then delivers only that phone's
packets to it, ``recv_into`` needs no address object and ``send`` no route
lookup (measured: 6.4-6.9 us per packet against 7.8-8.2 us for
recvfrom_into/sendto with a source check, same work otherwise).
So that RTP bleed is still *counted*, a second socket ("catcher") is bound to
the same port with SO_REUSEPORT: the connected socket wins the kernel's
lookup for the phone's address and port, the catcher gets everything else,
which is counted and dropped (drop_bleed).  SO_REUSEPORT is used rather than
SO_REUSEADDR because the kernel only lets sockets of the same user share a
port that way.

Per-leg counters are list slots (see bearer.session); loss (RFC 3550 A.3) and
media timeouts are computed by a housekeeping pass that visits every session
twice a second, spread over the ticks so no tick does all of them.
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

from bearer import session as S
from bearer.mixer import Mixer
from bearer.ports import PortPool, PortsExhausted
from bearer.rtp import parse_header, parse_rtcp, payload_end
from bearer.session import IDENTITY, ConferenceOut, Leg, Mode, Session, remap_table
from softswitch.protocol import (
    AllocFlags,
    Dtmf,
    ErrorCode,
    Event,
    JoinFlags,
    Latched,
    LegSpec,
    LegStats,
    MediaTimeout,
)

__all__ = ["LATCH_GRACE", "TICK", "Relay", "RelayError"]

log = logging.getLogger("bearer.relay")

TICK = 0.020
"""The mixing/recording tick: one 20 ms G.711 frame (RFC 3551 §4.5)."""
LATCH_GRACE = 1.0
"""Seconds a provisional latch waits for packets from the signalled address."""
HOUSEKEEP_PERIOD = 0.5
"""Every session's loss/timeout accounting runs this often."""
MAX_EVENTS = 1024
"""epoll events per wake-up; more simply wait for the next poll."""
_BIND_ATTEMPTS = 16
BUSY_POLL_MIN_EVENTS = 8
"""With busy polling on, a batch at least this big keeps the loop polling without sleeping."""

# Entry kinds.  K_FAST is tested first in the hot loop.
K_FAST = 0  # final latch, connected out, at most a PT remap: inlined
K_PATH = 1  # final latch, anything else: _deliver
K_LATCH = 2  # not yet final: recvfrom + source policy
K_CATCH = 3  # the catcher socket of a final leg: bleed counting
K_RTCP = 4
K_READER = 5  # a callback (control socket, signal fd)
K_CONF = 6  # final latch, in a room (not recorded): inlined, frames go to the mixer

_MUTED = int(JoinFlags.MUTED)

_SEQ_TS = struct.Struct("!2xHI")


class RelayError(Exception):
    """A refused request, with the protocol error code control gets."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


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
        self._running = False
        self._next_tick = 0.0
        self._timers: list[list[Any]] = []  # [due, interval, fn]
        self._provisional: set[Leg] = set()
        self._hk: list[Session] = []
        self._hk_pos = 0
        self._hk_due = 0.0
        self.totals: list[Any] = [0] * S.NCOUNTERS  # like Leg.c: int slots, two float ones
        self.totals[S.JITTER] = 0.0
        self.totals[S.TRANSIT] = 0.0
        self.recordings: set[Session] = set()
        self._conf = ConferenceOut(self.mixer)
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
        s = Session(session_id, call_ref, flags, now)
        try:
            for i, spec in enumerate(specs):
                s.legs.append(self._open_leg(s, i, spec))
        except PortsExhausted as e:
            self._close_legs(s)
            raise RelayError(ErrorCode.NO_PORTS, str(e)) from None
        self.sessions[session_id] = s
        self._hk.append(s)
        s.update_answered(now)
        self._wire(s)
        return [leg.port for leg in s.legs]

    def update(self, session_id: int, leg_index: int, spec: LegSpec) -> None:
        """Replace one leg's description (the SDP answer, a re-INVITE)."""
        s = self._session(session_id)
        if leg_index >= len(s.legs):
            raise RelayError(ErrorCode.BAD_REQUEST, f"session {session_id} has no leg {leg_index}")
        leg = s.legs[leg_index]
        old = leg.remote
        leg.set_spec(spec)
        moved = leg.remote is not None and leg.remote != old and leg.remote != leg.latched
        if leg.latched is not None and moved:
            # The phone moved (re-INVITE to a new address): latch afresh.
            self._unlatch(leg)
        now = self.clock()
        s.update_answered(now)
        if leg.latched is not None and not leg.final and leg.latched == leg.remote:
            self._finalize(leg, now)
        self._wire(s)
        if s.room is not None:
            self._conf.update(s)

    def delete(self, session_id: int) -> tuple[LegStats, ...]:
        """End a session, release its ports; returns its final per-leg counters."""
        s = self._session(session_id)
        if s.room is not None:
            self.leave(s.room, session_id, 0)
        if s.recording is not None:
            self.record(session_id, False, "")
        for leg in s.legs:
            leg.housekeep(self.clock())
        stats = s.leg_stats()
        self._close_legs(s)
        del self.sessions[session_id]
        totals = self.totals
        for leg in s.legs:
            for i in range(S.NCOUNTERS):
                totals[i] += leg.c[i]  # SEQ/TRANSIT/JITTER sums are meaningless, never read
            self.lost_total += max(leg.lost, 0)
        return stats

    def record(self, session_id: int, start: bool, path: str) -> bool:
        """Start/stop recording; returns whether the session is now recorded.

        Starting a recorded session again is a no-op with no path or the
        path it was started with; another path is refused (BAD_REQUEST):
        one session writes one file, and a path must never be quietly ignored.
        """
        s = self._session(session_id)
        if start and s.recording is not None:
            if path and path != s.record_path:
                where = s.record_path or "a default name (AllocFlags.RECORD)"
                raise RelayError(
                    ErrorCode.BAD_REQUEST,
                    f"session {session_id} is already recording to {where}; stop it first",
                )
        elif start:
            if self.recorder is None:
                raise RelayError(ErrorCode.INTERNAL, "recording is not available")
            try:
                s.recording = self.recorder(s, path)
            except (OSError, ValueError) as e:
                raise RelayError(ErrorCode.BAD_REQUEST, f"cannot record: {e}") from None
            s.record_path = path
            self.recordings.add(s)
        elif not start and s.recording is not None:
            rec, s.recording = s.recording, None
            self.recordings.discard(s)
            rec.close()
        self._wire(s)
        return s.recording is not None

    def join(self, room: str, session_id: int, leg_index: int, flags: JoinFlags) -> int:
        """Put a one-leg session into a room; returns the room's participant count."""
        s = self._session(session_id)
        if leg_index >= len(s.legs):
            raise RelayError(ErrorCode.BAD_REQUEST, f"session {session_id} has no leg {leg_index}")
        if s.room is not None and s.room != room:
            raise RelayError(ErrorCode.BAD_REQUEST, f"session {session_id} is in room {s.room}")
        leg = s.legs[leg_index]
        sel = leg.spec.selected
        if s.room is None:
            try:
                self.mixer.join(room, (session_id, leg_index), sel.name if sel else "PCMU")
            except ValueError as e:
                raise RelayError(ErrorCode.BAD_REQUEST, str(e)) from None
            s.room = room
            self.rooms[room] = self.rooms.get(room, 0) + 1
        s.room_flags = int(flags)
        self._wire(s)
        self._conf.update(s)
        return self.rooms[room]

    def leave(self, room: str, session_id: int, leg_index: int) -> int:
        """Take a session out of its room; returns the room's remaining participants."""
        s = self._session(session_id)
        if s.room != room:
            raise RelayError(ErrorCode.BAD_REQUEST, f"session {session_id} is not in {room!r}")
        self.mixer.leave((session_id, leg_index))
        s.room = None
        left = self.rooms[room] - 1
        if left:
            self.rooms[room] = left
        else:
            del self.rooms[room]
        self._conf.update(s)
        self._wire(s)
        return left

    def set_mode(self, session_id: int, mode: Mode) -> None:
        """Move a session between user-space relaying and kernel forwarding.

        Only RELAY exists today; the hook is here so that the move stays a
        bearer-internal matter (DESIGN.md, "In-kernel forwarding").
        """
        s = self._session(session_id)
        if mode is not Mode.RELAY:
            raise RelayError(ErrorCode.BAD_REQUEST, f"mode {mode.value} is not available")
        s.mode = mode
        self._wire(s)

    def session_counters(self, session_id: int) -> dict[str, int | float]:
        """STATS for one session."""
        s = self._session(session_id)
        now = self.clock()
        for leg in s.legs:
            leg.housekeep(now)
        return s.counters()

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

    def _open_leg(self, s: Session, index: int, spec: LegSpec) -> Leg:
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
            leg = Leg(s, index, port, spec)
            leg.rtp, leg.rtcp = rtp, rtcp
            self._ep.register(rtp.fileno(), select.EPOLLIN)
            self._ep.register(rtcp.fileno(), select.EPOLLIN)
            return leg
        raise PortsExhausted(f"{_BIND_ATTEMPTS} ports in a row were held by other processes")

    def _close_legs(self, s: Session) -> None:
        for leg in s.legs:
            self._provisional.discard(leg)
            for sock in (leg.rtp, leg.rtcp, leg.catcher):
                if sock is not None:
                    self._fdmap.pop(sock.fileno(), None)
                    try:
                        self._ep.unregister(sock.fileno())
                    except OSError:
                        pass
                    sock.close()
            leg.rtp = leg.rtcp = leg.catcher = None
            if leg.port:
                self.ports.release(leg.port)
                leg.port = 0

    # ------------------------------------------------------------------ wiring

    def _wire(self, s: Session) -> None:
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
            kind = K_FAST if plain else K_PATH
            if plain:
                dest = remap[0]  # K_FAST keeps its byte-1 (marker + PT) table in dest's slot
            if s.room is not None and s.recording is None and s.mode is Mode.RELAY:
                # A participant's entry: out is the mixer's push (None when muted),
                # dest its participant id, remap (audio PT, codec name).
                kind = K_CONF
                out = None if s.room_flags & _MUTED else self.mixer.push
                dest = (s.id, leg.index)
                sel = leg.spec.selected
                remap = (sel.pt if sel else -1, sel.name.upper() if sel else "PCMU")
        return (kind, recv, out, leg.c, dest, tev, float(leg.clock), remap, leg)

    # ------------------------------------------------------------------ latching

    def _latch(self, leg: Leg, addr: tuple[str, int], now: float) -> None:
        """Latch provisionally to ``addr`` (symmetric RTP)."""
        leg.latched = addr
        leg.latched_at = now
        self._provisional.add(leg)
        s = leg.session
        s.update_answered(now)
        self._wire(s)

    def _finalize(self, leg: Leg, now: float) -> None:
        """Make a latch final: catcher bound, RTP socket connected to the phone."""
        self._provisional.discard(leg)
        if leg.final or leg.latched is None or leg.rtp is None:
            return
        try:
            catcher = self._socket(leg.port, True)
        except OSError as e:
            log.warning(
                "leg %s/%d: no catcher socket (%s); staying unconnected",
                leg.session.id,
                leg.index,
                e,
            )
            return
        try:
            leg.rtp.connect(leg.latched)
        except OSError as e:
            catcher.close()
            log.warning(
                "leg %s/%d: connect %s failed: %s", leg.session.id, leg.index, leg.latched, e
            )
            return
        leg.catcher = catcher
        self._ep.register(catcher.fileno(), select.EPOLLIN)
        leg.final = True
        s = leg.session
        self._wire(s)
        if s.room is not None:
            self._conf.update(s)
        # Packets queued before connect() may come from anywhere: sort them now.
        entry = self._fdmap[leg.rtp.fileno()]
        for _ in range(64):
            try:
                n, src = leg.rtp.recvfrom_into(self._buf)
            except OSError:
                break
            self._sourced(entry, leg, n, src, now)
        self.on_event(Latched(s.id, leg.index, leg.latched[0], leg.latched[1]))

    def _unlatch(self, leg: Leg) -> None:
        """Forget the latch: a fresh unconnected socket on the same port."""
        self._provisional.discard(leg)
        leg.housekeep(self.clock())  # loss up to here; the new source starts afresh
        leg.h_seq = -1
        if leg.final and leg.rtp is not None:
            fresh = self._socket(leg.port, True)
            for sock in (leg.rtp, leg.catcher):
                if sock is not None:
                    self._fdmap.pop(sock.fileno(), None)
                    self._ep.unregister(sock.fileno())
                    sock.close()
            leg.rtp, leg.catcher = fresh, None
            self._ep.register(fresh.fileno(), select.EPOLLIN)
        leg.final = False
        leg.latched = None

    def _sourced(
        self, e: tuple[Any, ...], leg: Leg, n: int, src: tuple[str, int], now: float
    ) -> None:
        """A packet read with its source address: apply the latching policy, then deliver."""
        buf = self._buf
        if n < 12 or buf[0] & 0xC0 != 0x80:
            leg.c[S.INVALID] += 1
            return
        src = src[:2]  # IPv6 sources come with flow info and scope id
        latched = leg.latched
        finalize = False
        if latched is None or (src != latched and not leg.final and src == leg.remote):
            self._latch(leg, src, now)
            e = self._fdmap[leg.rtp.fileno()]  # type: ignore[union-attr]
            finalize = src == leg.remote
        elif src != latched:
            leg.c[S.BLEED] += 1
            return
        self._deliver(e, n, now)
        if finalize:
            self._finalize(leg, now)

    # ------------------------------------------------------------------ delivery

    def _deliver(self, e: tuple[Any, ...], n: int, now: float) -> None:
        """Everything a packet from a phone may need besides the plain relay."""
        kind, _recv, out, c, dest, tev, clk, remap, leg = e
        buf = self._buf
        if kind == K_CONF:
            self._deliver_conf(e, n, now)
            return
        if kind == K_FAST:
            dest = None  # that slot holds the PT table (remap[0]); out is connected
        if n < 12 or buf[0] & 0xC0 != 0x80:
            c[S.INVALID] += 1
            return
        seq, ts = _SEQ_TS.unpack_from(buf)
        if leg.h_seq < 0:  # first packet (of this latch): loss is counted from here
            leg.h_seq = (seq - 1) & 0xFFFF
            leg.h_pkts = c[S.PKTS]
        c[S.PKTS] += 1
        c[S.BYTES] += n
        c[S.SEQ] = seq
        tr = now * clk - ts
        d = tr - c[S.TRANSIT]
        c[S.TRANSIT] = tr
        if d < 0:
            d = -d
        if d < 1e6:  # not the first packet, a timestamp jump or a wrap (RFC 3550 A.8)
            c[S.JITTER] += (d - c[S.JITTER]) * 0.0625
        b1 = buf[1]
        pt = b1 & 0x7F
        xl, xcode, audio_pt, dtmf_ok = remap
        s = leg.session
        if pt == tev:
            self._dtmf(leg, n, ts)
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
                    self._conf.push(s, leg, seq, ts, self._mv[hlen:end])
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

    def _deliver_conf(self, e: tuple[Any, ...], n: int, now: float) -> None:
        """What the loop's inlined K_CONF branch does, for packets read elsewhere."""
        _kind, _recv, push, c, pid, tev, _clk, (audio_pt, codec), leg = e
        buf = self._buf
        if n < 12 or buf[0] & 0xC0 != 0x80:
            c[S.INVALID] += 1
            return
        seq, ts = _SEQ_TS.unpack_from(buf)
        if leg.h_seq < 0:
            leg.h_seq = (seq - 1) & 0xFFFF
            leg.h_pkts = c[S.PKTS]
        c[S.PKTS] += 1
        c[S.BYTES] += n
        c[S.SEQ] = seq
        pt = buf[1] & 0x7F
        if pt == audio_pt and buf[0] == 0x80:
            if push is not None:
                push(pid, seq, ts, self._mv[12:n], codec)
        elif pt == tev:
            self._dtmf(leg, n, ts)
        elif pt == audio_pt:
            self._conf_frame(leg, n, seq, ts)

    def _conf_frame(self, leg: Leg, n: int, seq: int, ts: int) -> None:
        """A participant's frame with CSRCs, an extension or padding (rare)."""
        try:
            _pt, _seq, _ts, _ssrc, _m, hlen = parse_header(self._buf, n)
            end = payload_end(self._buf, n)
        except ValueError:
            leg.c[S.INVALID] += 1
            return
        s = leg.session
        if not s.room_flags & _MUTED:
            self._conf.push(s, leg, seq, ts, self._mv[hlen:end])

    def _dtmf(self, leg: Leg, n: int, ts: int) -> None:
        """Feed an RFC 4733 telephone-event to the leg's detector; report digits once."""
        buf = self._buf
        try:
            _pt, _seq, _ts, _ssrc, _m, hlen = parse_header(buf, n)
            digits = leg.dtmf.feed(ts, bytes(buf[hlen:n]))
        except ValueError:
            return
        for digit, ms in digits:
            self.on_event(Dtmf(leg.session.id, leg.index, digit, int(ms)))

    def _rtcp(self, leg: Leg, now: float) -> None:
        """RTCP (RFC 3550 §6): parsed for stats, relayed to the other phone's RTCP port."""
        assert leg.rtcp is not None
        n, src = leg.rtcp.recvfrom_into(self._buf)
        src = src[:2]
        if leg.rtcp_remote is None:
            if leg.latched is not None and src[0] != leg.latched[0]:
                leg.c[S.BLEED] += 1
                return
            leg.rtcp_remote = src
        elif src != leg.rtcp_remote:
            leg.c[S.BLEED] += 1
            return
        data = bytes(self._buf[:n])
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
                    other.rtcp.sendto(data, dest)
                except OSError:
                    leg.c[S.SEND_ERROR] += 1

    def _catch(self, leg: Leg, now: float) -> None:
        """A datagram on the catcher: from the phone (in the connect window) or bleed."""
        assert leg.catcher is not None and leg.rtp is not None
        n, src = leg.catcher.recvfrom_into(self._buf)
        src = src[:2]
        if n < 12 or self._buf[0] & 0xC0 != 0x80:
            leg.c[S.INVALID] += 1
        elif src == leg.latched:
            self._deliver(self._fdmap[leg.rtp.fileno()], n, now)
        else:
            leg.c[S.BLEED] += 1

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
        FAST, CONF = K_FAST, K_CONF
        PKTS, BYTES, SEQ, TRANSIT, JITTER = S.PKTS, S.BYTES, S.SEQ, S.TRANSIT, S.JITTER
        SEND_ERROR, DROP_BYTES, INVALID = S.SEND_ERROR, S.DROP_BYTES, S.INVALID
        busy_poll = self.busy_poll
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
                            self._dtmf(leg, n, ts)
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
                            self._dtmf(leg, n, ts)
                        elif pt == remap[0]:
                            self._conf_frame(leg, n, seq, ts)
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
                self._deliver(e, n, now)
            elif kind == K_LATCH:
                n, src = e[1](self._buf)
                self._sourced(e, leg, n, src, now)
            elif kind == K_CATCH:
                self._catch(leg, now)
            elif kind == K_RTCP:
                self._rtcp(leg, now)
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
            if s.recording is not None:
                rec, s.recording = s.recording, None
                rec.close()
            self._close_legs(s)
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
                self._conf.tick()
            for s in list(self.recordings):
                if s.recording is not None:
                    s.recording.tick()
            for leg in list(self._provisional):
                if now - leg.latched_at >= LATCH_GRACE:
                    self._finalize(leg, now)
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
        timeout = self.media_timeout
        for s in hk[self._hk_pos : end]:
            if s.id not in self.sessions:
                continue
            for leg in s.legs:
                leg.housekeep(now)
            if s.answered and not s.timed_out:
                quiet = [leg for leg in s.legs if now - max(leg.last_rx, s.answered) >= timeout]
                if len(quiet) == len(s.legs):
                    s.timed_out = True
                    first = min(quiet, key=lambda leg: leg.last_rx)
                    log.info("session %d (%s): no RTP for %.0f s", s.id, s.call_ref, timeout)
                    self.on_event(MediaTimeout(s.id, first.index))
        self._hk_pos = end

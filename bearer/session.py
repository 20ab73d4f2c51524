"""Per-call state of the bearer: one Session object per call, one Leg per phone.

Theory of operation
-------------------
A ``Session`` is everything the bearer knows about one call (or one
conference participant): its legs, whether it is recorded or in a room, and
its *mode*.  The mode says who moves the packets: ``Mode.RELAY`` is the
user-space epoll relay (bearer.relay); ``Mode.KERNEL`` is reserved for
in-kernel forwarding of plain calls (DESIGN.md, "In-kernel forwarding").
Control addresses sessions by id and never sees the mode, so a session can
move between the two without control noticing; the counters below are the
one place statistics live whatever the mode (a kernel forwarder would add its
conntrack/nft counters to them when it hands a call back).

A ``Leg`` is one phone's side: its RTP/RTCP sockets on the bearer, what
control signalled (the SDP of that phone, a ``LegSpec``) and what the bearer
saw (the latched source address, symmetric RTP).  Its counters are a plain
list, indexed by the constants below, because the relay's hot loop updates
them once per packet and a list item is the cheapest mutable slot Python
has (STYLE.md §8).

Nothing here touches epoll; the relay wires legs into its loop.
"""

from __future__ import annotations

import enum
import functools
import random
import socket
from typing import Any

import numpy as np

from bearer.codecs import transcode_table
from bearer.mixer import FRAME_SAMPLES, Mixer
from bearer.rtp import DtmfDetector
from softswitch.protocol import AllocFlags, Direction, JoinFlags, LegSpec, LegStats, PayloadType

__all__ = [
    "COUNTER_NAMES",
    "DROP_REASONS",
    "ConferenceOut",
    "Leg",
    "Mode",
    "Session",
    "remap_table",
]

# Counter slots of Leg.c.  The first five are updated per packet by the relay.
PKTS = 0  # valid RTP packets received from the phone (after source check)
BYTES = 1  # their bytes (UDP payload)
SEQ = 2  # sequence number of the last packet (loss is computed per housekeeping pass)
TRANSIT = 3  # RFC 3550 A.8: relative transit time of the last packet, timestamp units
JITTER = 4  # RFC 3550 A.8: interarrival jitter estimate J, timestamp units (float)
OUT_PKTS = 5  # packets the bearer itself generated for this phone (conference mix)
OUT_BYTES = 6
DROP_BYTES = 7  # bytes of valid packets dropped after counting them in PKTS/BYTES
# Drops, one slot per reason.
BLEED = 8  # from a source other than the latched one: RTP bleed refused
INVALID = 9  # not RTP version 2, or shorter than a header
NO_PEER = 10  # nowhere to send yet (the other phone's address is unknown)
INACTIVE = 11  # the SDP direction forbids this flow (hold, recvonly ...)
UNSUPPORTED = 12  # a payload type the other leg cannot take (no transcoder, no DTMF PT)
SEND_ERROR = 13  # sendto failed (buffer full, ICMP unreachable reported)
RECV_ERROR = 14  # recv failed (ICMP port unreachable on a connected socket)
RTCP_INVALID = 15  # RTCP that did not parse
NCOUNTERS = 16
MAX_DROPOUT = 3000
"""Sequence jumps larger than this are a restarted stream, not loss (RFC 3550 A.1)."""

DROP_REASONS = {
    "bleed": BLEED,
    "invalid": INVALID,
    "no_peer": NO_PEER,
    "inactive": INACTIVE,
    "unsupported": UNSUPPORTED,
    "send_error": SEND_ERROR,
    "recv_error": RECV_ERROR,
    "rtcp_invalid": RTCP_INVALID,
}
"""Drop reason (counter name suffix) -> counter slot."""
# Valid packets dropped after being counted: these reduce what is forwarded.
_AFTER_RX = (NO_PEER, INACTIVE, UNSUPPORTED, SEND_ERROR)
COUNTER_NAMES = ("packets", "bytes", *(f"drop_{r}" for r in DROP_REASONS))


class Mode(enum.Enum):
    """Who forwards a session's packets; invisible to control."""

    RELAY = "relay"
    """The user-space epoll relay."""
    KERNEL = "kernel"
    """In-kernel forwarding (nftables NAT rules); not implemented yet."""


def _receives(direction: Direction) -> bool:
    """Whether a phone with this SDP direction wants media (RFC 3264 §5.1)."""
    return direction in (Direction.SENDRECV, Direction.RECVONLY)


def _sends(direction: Direction) -> bool:
    """Whether a phone with this SDP direction is expected to send media."""
    return direction in (Direction.SENDRECV, Direction.SENDONLY)


def _codec_key(name: str, clock: int, channels: int) -> tuple[str, int, int]:
    return (name.upper(), clock, channels)


def remap_table(src: LegSpec, dst: LegSpec) -> tuple[bytes, bytes | None, int, bool]:
    """How packets from ``src``'s phone are rewritten for ``dst``'s phone (cached).

    Returns (byte-1 table, payload transcode table or None, source audio PT,
    DTMF deliverable).  The byte-1 table maps the whole second header byte,
    marker bit included (RFC 3550 §5.1: M is the top bit, PT the lower 7), so
    remapping costs one index and one store per packet.  A payload type the
    destination also negotiated (same codec name, clock rate and channels;
    RFC 3264 §6.1 lets the two sides number it differently) gets the
    destination's number; the source's selected codec, when the destination
    selected another one, becomes the destination's selected payload type and
    is transcoded (G.711 only: PCMU<->PCMA by a 256-byte table); the
    telephone-event type (RFC 4733 §7.1.1) maps to the destination's.
    Anything else keeps its number.
    """
    return _remap(
        src.payload_types,
        src.selected_pt,
        src.dtmf_pt,
        dst.payload_types,
        dst.selected_pt,
        dst.dtmf_pt,
    )


@functools.lru_cache(maxsize=256)
def _remap(
    src_pts: tuple[PayloadType, ...],
    src_sel: int | None,
    src_dtmf: int | None,
    dst_pts: tuple[PayloadType, ...],
    dst_sel: int | None,
    dst_dtmf: int | None,
) -> tuple[bytes, bytes | None, int, bool]:
    """remap_table on the fields that matter: phones offer the same few codec
    lists over and over, and building the table costs ~1 ms of Python."""
    src = LegSpec(payload_types=src_pts, selected_pt=src_sel, dtmf_pt=src_dtmf)
    dst = LegSpec(payload_types=dst_pts, selected_pt=dst_sel, dtmf_pt=dst_dtmf)
    dst_by_codec = {_codec_key(p.name, p.clock_rate, p.channels): p.pt for p in dst.payload_types}
    mapping: dict[int, int] = {}
    for p in src.payload_types:
        target = dst_by_codec.get(_codec_key(p.name, p.clock_rate, p.channels))
        if target is not None:
            mapping[p.pt] = target
    xcode: bytes | None = None
    audio_pt = -1
    s_sel, d_sel = src.selected, dst.selected
    if s_sel is not None:
        audio_pt = s_sel.pt
        if d_sel is not None and _codec_key(s_sel.name, s_sel.clock_rate, s_sel.channels) != (
            _codec_key(d_sel.name, d_sel.clock_rate, d_sel.channels)
        ):
            xcode = transcode_table(s_sel.name, d_sel.name)
            if xcode is not None:
                mapping[s_sel.pt] = d_sel.pt
    dtmf_ok = src.dtmf_pt is None or dst.dtmf_pt is not None
    if src.dtmf_pt is not None and dst.dtmf_pt is not None:
        mapping[src.dtmf_pt] = dst.dtmf_pt
    table = bytes((b & 0x80) | mapping.get(b & 0x7F, b & 0x7F) for b in range(256))
    return table, xcode, audio_pt, dtmf_ok


IDENTITY = bytes(range(256))
_CONF_PKT = np.dtype(
    [
        ("b0", "u1"),
        ("b1", "u1"),
        ("seq", ">u2"),
        ("ts", ">u4"),
        ("ssrc", ">u4"),
        ("payload", "u1", (FRAME_SAMPLES,)),
    ]
)
"""One conference output packet: RTP header (RFC 3550 §5.1) + 20 ms of G.711."""


class Leg:
    """One phone's side of a session: sockets, signalled and latched addresses, counters."""

    __slots__ = (
        "c",
        "catcher",
        "clock",
        "dtmf",
        "final",
        "h_pkts",
        "h_seq",
        "index",
        "last_rx",
        "latched",
        "latched_at",
        "lost",
        "port",
        "remote",
        "rtcp",
        "rtcp_remote",
        "rtcp_stats",
        "rtp",
        "session",
        "spec",
        "sr_forwarded",
    )

    def __init__(self, session: Session, index: int, port: int, spec: LegSpec) -> None:
        self.session = session
        self.index = index
        self.port = port
        self.rtp: socket.socket | None = None
        self.rtcp: socket.socket | None = None
        self.catcher: socket.socket | None = None
        self.c: list[Any] = [0] * NCOUNTERS
        self.c[JITTER] = 0.0
        self.c[TRANSIT] = 0.0
        self.latched: tuple[str, int] | None = None
        self.latched_at = 0.0
        self.final = False  # latched for good: socket connected, catcher bound
        self.rtcp_remote: tuple[str, int] | None = None
        self.h_pkts = 0  # PKTS at the last housekeeping pass
        self.h_seq = -1  # SEQ at the last housekeeping pass (-1: before the first packet)
        self.lost = 0  # RFC 3550 A.3 cumulative loss (may dip below 0 with duplicates)
        self.last_rx = 0.0
        self.rtcp_stats: dict[str, float] = {}
        self.sr_forwarded: dict[int, float] = {}  # SR LSR value -> when we relayed it
        self.spec = spec
        self.remote: tuple[str, int] | None = None
        self.clock = 8000
        self.dtmf = DtmfDetector()
        self.set_spec(spec)

    def set_spec(self, spec: LegSpec) -> None:
        """Take control's description of the phone (its SDP, RFC 4566)."""
        self.spec = spec
        unspecified = spec.port == 0 or spec.address in ("0.0.0.0", "::")
        self.remote = None if unspecified else (spec.address, spec.port)
        sel = spec.selected
        self.clock = sel.clock_rate if sel is not None else 8000
        self.dtmf = DtmfDetector(self.clock)

    @property
    def receives(self) -> bool:
        """The phone wants media from the bearer (its SDP says sendrecv/recvonly)."""
        return _receives(self.spec.direction)

    @property
    def sends(self) -> bool:
        """The phone is expected to send media (sendrecv/sendonly)."""
        return _sends(self.spec.direction)

    @property
    def destination(self) -> tuple[str, int] | None:
        """Where RTP for this phone goes: its latched source (symmetric RTP) or the SDP."""
        return self.latched if self.latched is not None else self.remote

    @property
    def rtcp_destination(self) -> tuple[str, int] | None:
        """Where RTCP for this phone goes: its RTCP source, else RTP port + 1 (RFC 3550 §11)."""
        if self.rtcp_remote is not None:
            return self.rtcp_remote
        dest = self.destination
        return None if dest is None else (dest[0], dest[1] + 1)

    def housekeep(self, now: float) -> bool:
        """Account loss (RFC 3550 A.3) since the last pass; True if packets arrived.

        Loss is the growth of the expected count (the sequence number advance)
        minus the growth of the received count; a pass happens every half
        second, far less than the 65536 packets it takes seq to wrap.  An
        advance beyond MAX_DROPOUT more than what arrived, or backwards, is a
        new stream (the phone restarted its sender), not loss: the count
        resynchronises, as RFC 3550 A.1 does for such jumps.
        """
        c = self.c
        pkts = c[PKTS]
        got = pkts - self.h_pkts
        if got <= 0:
            return False
        seq = c[SEQ]
        if self.h_seq >= 0:  # set by the relay from the first packet: (seq - 1) mod 2^16
            expected = (seq - self.h_seq) & 0xFFFF
            if expected < 0x8000 and expected - got <= MAX_DROPOUT:
                self.lost += expected - got
        self.h_pkts = pkts
        self.h_seq = seq
        self.last_rx = now
        return True

    def forwarded_from(self) -> tuple[int, int]:
        """(packets, bytes) of this phone's media that went on to the other phone."""
        c = self.c
        dropped = sum(c[i] for i in _AFTER_RX)
        return c[PKTS] - dropped, c[BYTES] - c[DROP_BYTES]

    def account_rtcp(self, packets: list[Any], other: Leg | None, now: float) -> None:
        """Take what this phone's RTCP says (RFC 3550 §6.4) before it is relayed.

        An SR's LSR is remembered on the *other* leg with the time we relay it,
        so that when the other phone's RR echoes it the round trip between the
        bearer and that phone is ``now - relayed - DLSR`` (§6.4.1, Figure 2),
        measured on our clock alone.  Report blocks give the phone's view of
        the stream it receives from us: fraction lost, cumulative loss, jitter.
        """
        for p in packets:
            lsr = getattr(p, "lsr", None)
            if lsr is not None and other is not None:
                other.sr_forwarded[lsr] = now
                if len(other.sr_forwarded) > 8:
                    del other.sr_forwarded[next(iter(other.sr_forwarded))]
            for block in getattr(p, "reports", ()):
                st = self.rtcp_stats
                st["rtcp_fraction_lost"] = round(block.fraction_lost / 256.0, 4)
                st["rtcp_cumulative_lost"] = block.cumulative_lost
                st["rtcp_jitter"] = block.jitter
                sent = self.sr_forwarded.get(block.lsr)
                if block.lsr and sent is not None:
                    st["rtcp_rtt_ms"] = round((now - sent - block.dlsr / 65536.0) * 1000.0, 3)

    def counters(self) -> dict[str, int | float]:
        """This leg's counters as flat names (STATS replies)."""
        c = self.c
        out: dict[str, int | float] = {"packets": c[PKTS], "bytes": c[BYTES]}
        for name, slot in DROP_REASONS.items():
            out[f"drop_{name}"] = c[slot]
        out["lost"] = max(self.lost, 0)
        out["jitter_ms"] = round(c[JITTER] * 1000.0 / self.clock, 3)
        out["latched"] = int(self.latched is not None)
        for k, v in self.rtcp_stats.items():
            out[k] = v
        return out


class Session:
    """One call (two legs) or one conference participant (one leg)."""

    __slots__ = (
        "answered",
        "call_ref",
        "created",
        "flags",
        "id",
        "legs",
        "mode",
        "record_path",
        "recording",
        "room",
        "room_flags",
        "timed_out",
    )

    def __init__(self, session_id: int, call_ref: str, flags: AllocFlags, created: float) -> None:
        self.id = session_id
        self.call_ref = call_ref
        self.flags = flags
        self.created = created
        self.legs: list[Leg] = []
        self.mode = Mode.RELAY
        self.recording: Any = None  # a bearer.recorder Recording while recording
        self.record_path = ""  # the path RECORD asked for ("": a default name)
        self.room: str | None = None
        self.room_flags = 0
        self.timed_out = False
        self.answered = 0.0  # when every phone's address became known; 0 before

    @property
    def conference(self) -> bool:
        """A one-leg participant meant for a room (AllocFlags.CONFERENCE)."""
        return bool(self.flags & AllocFlags.CONFERENCE) or len(self.legs) == 1

    def other(self, leg: Leg) -> Leg | None:
        """The leg at the other end of the call (None for a conference participant)."""
        if len(self.legs) != 2:
            return None
        return self.legs[1 - leg.index]

    def update_answered(self, now: float) -> None:
        """A call is answered (media timeout armed) once every phone's address is known."""
        if not self.answered and all(leg.destination is not None for leg in self.legs):
            self.answered = now

    def leg_stats(self) -> tuple[LegStats, ...]:
        """Final per-leg counters for the DELETE reply (the CDR's media figures)."""
        out = []
        for leg in self.legs:
            other = self.other(leg)
            pk_out, by_out = other.forwarded_from() if other is not None else (0, 0)
            c = leg.c
            out.append(
                LegStats(
                    packets_in=c[PKTS],
                    bytes_in=c[BYTES],
                    packets_out=pk_out + c[OUT_PKTS],
                    bytes_out=by_out + c[OUT_BYTES],
                    packets_lost=max(leg.lost, 0),
                    jitter_us=int(c[JITTER] * 1_000_000 / leg.clock),
                )
            )
        return tuple(out)

    def counters(self) -> dict[str, int | float]:
        """Flat counters of the whole session, leg by leg (STATS replies)."""
        out: dict[str, int | float] = {"legs": len(self.legs), "mode_kernel": 0}
        if self.mode is Mode.KERNEL:
            out["mode_kernel"] = 1
        out["recording"] = int(self.recording is not None)
        stats = self.leg_stats()
        for leg, st in zip(self.legs, stats, strict=True):
            for k, v in leg.counters().items():
                out[f"leg{leg.index}_{k}"] = v
            out[f"leg{leg.index}_packets_out"] = st.packets_out
            out[f"leg{leg.index}_bytes_out"] = st.bytes_out
        return out


class ConferenceOut:
    """The bearer's own RTP streams to conference participants.

    Each participant gets its own SSRC, sequence numbers and timestamps
    (RFC 3550 §5.1: a mixer is a new synchronisation source).  Headers for
    all participants are updated with one numpy structured-array pass per
    tick, in place; only the send is per participant.
    """

    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer
        self.dest: dict[tuple[int, int], list[Any]] = {}  # pid -> [send, dest, counters, deaf]
        self.pids: list[Any] | None = None
        self.pk = np.zeros(0, dtype=_CONF_PKT)
        self.rows: dict[Any, int] = {}
        self.out: list[tuple[Any, Any, list[Any], memoryview]] = []

    def update(self, s: Session) -> None:
        """Refresh where a participant's mix goes (after latching, UPDATE, JOIN/LEAVE)."""
        for leg in s.legs:
            pid = (s.id, leg.index)
            if s.room is None or leg.rtp is None:
                self.dest.pop(pid, None)
                continue
            d = self.dest.setdefault(pid, [None, None, leg.c, False, leg])
            if not leg.receives or s.room_flags & JoinFlags.DEAF:
                d[0], d[1] = None, None
            elif leg.final:
                d[0], d[1] = leg.rtp.send, None
            elif leg.destination is not None:
                d[0], d[1] = leg.rtp.sendto, leg.destination
            else:
                d[0], d[1] = None, None
        self.pids = None  # realign at the next tick

    def push(self, s: Session, leg: Leg, seq: int, ts: int, payload: memoryview) -> None:
        """One received frame of a participant into the mixer (its jitter buffer)."""
        sel = leg.spec.selected
        self.mixer.push((s.id, leg.index), seq, ts, payload, sel.name if sel else "PCMU")

    def _realign(self, pids: list[Any]) -> None:
        """New participant order from the mixer: carry each stream's header state over.

        The packets live in one persistent structured array (header fields +
        payload); ``out`` holds, per participant that receives, its send
        callable, destination, counters and a memoryview of its row.
        """
        old_rows, old_pk = self.rows, self.pk
        pk = np.zeros(len(pids), dtype=_CONF_PKT)
        for i, pid in enumerate(pids):
            j = old_rows.get(pid)
            if j is not None:
                pk[i] = old_pk[j]
            else:
                d = self.dest.get(pid)
                leg = d[4] if d is not None else None
                pt = leg.spec.selected_pt if leg is not None else None
                pk[i]["b0"] = 0x80
                pk[i]["b1"] = pt if pt is not None else 0
                pk[i]["seq"] = random.getrandbits(16)
                pk[i]["ts"] = random.getrandbits(32)
                pk[i]["ssrc"] = random.getrandbits(32)
        self.pk = pk
        self.rows = {pid: i for i, pid in enumerate(pids)}
        flat = pk.view(np.uint8).reshape(-1).data  # memoryview(), as numpy's stubs allow
        size = _CONF_PKT.itemsize
        self.out = []
        for i, pid in enumerate(pids):
            d = self.dest.get(pid)
            if d is not None and d[0] is not None:
                self.out.append((d[0], d[1], d[2], flat[i * size : (i + 1) * size]))
        self.pids = pids

    def tick(self) -> None:
        """Mix every room and send each participant its packet (every 20 ms)."""
        pids, enc = self.mixer.tick_array()
        if pids is not self.pids:
            self._realign(pids)
        pk = self.pk
        pk["seq"] += 1
        pk["ts"] += FRAME_SAMPLES
        pk["payload"] = enc
        size = _CONF_PKT.itemsize
        for send, dest, c, row in self.out:
            try:
                if dest is None:
                    send(row)
                else:
                    send(row, dest)
                c[OUT_PKTS] += 1
                c[OUT_BYTES] += size
            except OSError:
                c[SEND_ERROR] += 1

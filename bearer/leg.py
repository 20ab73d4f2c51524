"""One phone's side of a media session: its sockets, addresses, latch and counters.

Theory of operation
-------------------
A ``Leg`` holds what control signalled about the phone (its SDP, a
``LegSpec``), what the bearer saw (the latched source address) and the
leg's statistics.  The decisions are sans-I/O: ``judge_source`` applies the
latching policy to a source address at a time, ``account_rtp`` and
``housekeep`` keep the RFC 3550 statistics; the session and the relay do
the socket work those decisions call for.

Symmetric RTP (DESIGN.md "Media"): a leg latches to the source of its first
valid RTP packet.  While the latch is *provisional* (to an address control
did not signal), a packet from the signalled address wins; after
``LATCH_GRACE`` seconds, or at once when the source is the signalled one,
the latch is *final* and every other source is bleed, counted and dropped.

The counters are a plain list, indexed by the constants below, because the
relay's hot loop updates them once per packet and a list item is the
cheapest mutable slot Python has (STYLE.md §8).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from bearer.rtp import DtmfDetector
from bearer.srtp import LegCrypto
from softswitch.protocol import Direction, LegSpec

if TYPE_CHECKING:
    from bearer.session import Session

__all__ = [
    "COUNTER_NAMES",
    "DROP_REASONS",
    "LATCH_GRACE",
    "SRC_BLEED",
    "SRC_FINAL",
    "SRC_LATCHED",
    "SRC_OK",
    "Leg",
]

LATCH_GRACE = 1.0
"""Seconds a provisional latch waits for packets from the signalled address."""

# What judge_source says about a packet's source address.
SRC_OK = 0  # the latched source: deliver
SRC_BLEED = 1  # another source once latched: counted (BLEED) and dropped
SRC_LATCHED = 2  # a new provisional latch to this source: deliver
SRC_FINAL = 3  # a new latch to the signalled address: deliver, then make it final

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
SRTP = 16  # SRTP/SRTCP that failed authentication or replay check, or arrived with no key
NCOUNTERS = 17
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
    "srtp": SRTP,
}
"""Drop reason (counter name suffix) -> counter slot."""
# Valid packets dropped after being counted: these reduce what is forwarded.
_AFTER_RX = (NO_PEER, INACTIVE, UNSUPPORTED, SEND_ERROR)
COUNTER_NAMES = ("packets", "bytes", *(f"drop_{r}" for r in DROP_REASONS))


def _receives(direction: Direction) -> bool:
    """Whether a phone with this SDP direction wants media (RFC 3264 §5.1)."""
    return direction in (Direction.SENDRECV, Direction.RECVONLY)


def _sends(direction: Direction) -> bool:
    """Whether a phone with this SDP direction is expected to send media."""
    return direction in (Direction.SENDRECV, Direction.SENDONLY)


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
        "srtp",
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
        self.srtp: LegCrypto | None = None  # SRTP keys and sessions (bearer.srtp), None: RTP
        self.set_spec(spec)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The leg's open sockets (RTP, RTCP, catcher)."""
        return tuple(s for s in (self.rtp, self.rtcp, self.catcher) if s is not None)

    def set_spec(self, spec: LegSpec) -> bool:
        """Take control's description of the phone (its SDP, RFC 4566).

        Returns True when the phone moved (a re-INVITE from a new signalled
        address) away from the source the leg is latched to: the latch must
        be forgotten (``forget_latch``) and learnt afresh.  Raises ValueError
        for malformed SRTP TLVs, before anything else changes.
        """
        if spec.srtp:
            crypto = self.srtp if self.srtp is not None else LegCrypto()
            crypto.apply(spec)
            self.srtp = crypto
        else:
            self.srtp = None
        old = self.remote
        self.spec = spec
        unspecified = spec.port == 0 or spec.address in ("0.0.0.0", "::")
        self.remote = None if unspecified else (spec.address, spec.port)
        sel = spec.selected
        self.clock = sel.clock_rate if sel is not None else 8000
        self.dtmf = DtmfDetector(self.clock)
        remote = self.remote
        return (
            self.latched is not None
            and remote is not None
            and remote != old
            and remote != self.latched
        )

    # ------------------------------------------------------------------ latching policy

    def judge_source(self, src: tuple[str, int], now: float) -> int:
        """The latching policy for one valid RTP packet from ``src`` (SRC_*).

        Unlatched: latch to ``src``.  Provisionally latched: the signalled
        address wins over the provisional one (a NAT may show the phone
        elsewhere first, the SDP is what the phone meant).  Otherwise only
        the latched source is accepted; anything else is bleed (counted).
        A final leg only sees other sources on its catcher socket or in the
        drain after connect(), so the same rule serves.
        """
        latched = self.latched
        if latched is None or (src != latched and not self.final and src == self.remote):
            self.latched = src
            self.latched_at = now
            return SRC_FINAL if src == self.remote else SRC_LATCHED
        if src != latched:
            self.c[BLEED] += 1
            return SRC_BLEED
        return SRC_OK

    def grace_over(self, now: float) -> bool:
        """A provisional latch has waited LATCH_GRACE for the signalled address."""
        return now - self.latched_at >= LATCH_GRACE

    @property
    def can_finalize(self) -> bool:
        """Latched provisionally to the address control has since signalled."""
        return self.latched is not None and not self.final and self.latched == self.remote

    def forget_latch(self, now: float) -> None:
        """Back to unlatched; loss so far is accounted, the new source starts afresh."""
        self.housekeep(now)
        self.h_seq = -1
        self.final = False
        self.latched = None

    def rtcp_source_ok(self, src: tuple[str, int]) -> bool:
        """Latch RTCP to its first source on the RTP latch's host, then accept only it."""
        if self.rtcp_remote is None:
            if self.latched is not None and src[0] != self.latched[0]:
                self.c[BLEED] += 1
                return False
            self.rtcp_remote = src
        elif src != self.rtcp_remote:
            self.c[BLEED] += 1
            return False
        return True

    # ------------------------------------------------------------------ statistics

    def account_rtp(self, n: int, seq: int, ts: int, now: float) -> None:
        """Count one valid RTP packet of ``n`` bytes (RFC 3550 A.8 jitter included).

        The relay's hot loop inlines the same arithmetic (STYLE.md §8); this
        is the one the other paths call, and the one the tests pin down.
        The first packet of a latch sets the loss baseline (A.3).
        """
        c = self.c
        if self.h_seq < 0:
            self.h_seq = (seq - 1) & 0xFFFF
            self.h_pkts = c[PKTS]
        c[PKTS] += 1
        c[BYTES] += n
        c[SEQ] = seq
        tr = now * self.clock - ts
        d = tr - c[TRANSIT]
        c[TRANSIT] = tr
        if d < 0:
            d = -d
        if d < 1e6:  # not the first packet, a timestamp jump or a wrap (RFC 3550 A.8)
            c[JITTER] += (d - c[JITTER]) * 0.0625

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

    # ------------------------------------------------------------------ per pass

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

"""RTP and RTCP helpers for the bearer: headers, sequence arithmetic, stats, DTMF.

Theory of operation
-------------------
Everything here is pure (no sockets, no clock): callers pass bytes and times.

* The per-packet path uses plain functions over ``bytes``/``bytearray``/
  ``memoryview`` with precompiled ``struct`` objects -- no object per packet
  (STYLE.md §8).  ``parse_header`` validates what RFC 3550 §5.1 and A.1 say a
  receiver must check and returns a flat tuple.
* Sequence-number and timestamp wrap-around arithmetic lives in this module
  only (``seq_delta``, ``ts_delta``, ``extend_seq``); nothing else in the
  bearer subtracts sequence numbers by hand.
* ``ReceiveStats`` is RFC 3550 A.1 (source validation, extended highest
  sequence number), A.3 (expected/lost/fraction) and A.8 (interarrival
  jitter) with ``__slots__`` and a handful of attribute updates per packet.
* RTCP (RFC 3550 §6.4) is parsed into frozen dataclasses: it arrives every few
  seconds per leg, so objects are fine there.  Malformed RTCP raises
  ``ValueError`` with a precise message, which the relay counts as a drop.
* RFC 4733 telephone-events are parsed to a tuple and ``DtmfDetector`` turns
  the stream of event packets into one report per key press.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DTMF_DIGITS",
    "HEADER",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SR",
    "Bye",
    "DtmfDetector",
    "ReceiveStats",
    "ReceiverReport",
    "ReportBlock",
    "SenderReport",
    "build_rtp",
    "extend_seq",
    "is_rtcp",
    "ntp_short",
    "parse_dtmf",
    "parse_header",
    "parse_rtcp",
    "payload_end",
    "rewrite_header",
    "rtt_seconds",
    "seq_delta",
    "set_payload_type",
    "ts_delta",
]

# ---------------------------------------------------------------------------
# RTP fixed header (RFC 3550 §5.1)
#
#   0                   1                   2                   3
#   |V=2|P|X|  CC   |M|     PT      |       sequence number         |
#   |                           timestamp                           |
#   |           synchronization source (SSRC) identifier            |
# ---------------------------------------------------------------------------

HEADER = struct.Struct("!BBHII")
"""The 12-byte fixed RTP header: (V/P/X/CC, M/PT, seq, timestamp, SSRC)."""
_SEQ_TS_SSRC = struct.Struct("!HII")
_U16 = struct.Struct("!H")

RTP_VERSION = 2


def parse_header(
    buf: bytes | bytearray | memoryview, n: int
) -> tuple[int, int, int, int, bool, int]:
    """Validate the RTP header of ``buf[:n]``; return (pt, seq, ts, ssrc, marker, header_len).

    ``header_len`` counts the fixed header, CSRC list (§5.1 CC) and header
    extension (§5.3.1), so the payload starts there; with the P bit set it ends
    at ``payload_end(buf, n)``.  Raises ValueError for anything RFC 3550 A.1
    says a receiver must reject.
    """
    if n < 12:
        raise ValueError(f"RTP packet too short: {n} bytes, header needs 12")
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(buf, 0)
    if b0 >> 6 != RTP_VERSION:
        raise ValueError(f"RTP version {b0 >> 6}, expected 2")
    header_len = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # X: header extension, §5.3.1 (16-bit profile, 16-bit word count)
        if n < header_len + 4:
            raise ValueError(f"RTP header extension truncated: {n} bytes")
        header_len += 4 + 4 * _U16.unpack_from(buf, header_len + 2)[0]
    if header_len > n:
        raise ValueError(f"RTP header is {header_len} bytes but packet is {n}")
    if b0 & 0x20:  # P: last octet counts padding octets, itself included (§5.1)
        pad = buf[n - 1]
        if pad == 0 or header_len + pad > n:
            raise ValueError(f"RTP padding of {pad} bytes invalid in {n}-byte packet")
    return b1 & 0x7F, seq, ts, ssrc, bool(b1 & 0x80), header_len


def payload_end(buf: bytes | bytearray | memoryview, n: int) -> int:
    """End offset of the payload: ``n`` minus padding when P is set (§5.1).

    Separate from ``parse_header`` because almost no G.711 sender pads, and the
    plain relay never looks at the payload at all.
    """
    return n - buf[n - 1] if buf[0] & 0x20 else n


def is_rtcp(buf: bytes | bytearray | memoryview) -> bool:
    """True if a packet on a muxed port is RTCP (RFC 5761 §4: PT byte 192-223)."""
    return len(buf) >= 2 and 192 <= buf[1] <= 223


def set_payload_type(buf: bytearray | memoryview, pt: int) -> None:
    """Rewrite the payload type in place, keeping the marker bit (PT remapping)."""
    buf[1] = (buf[1] & 0x80) | pt


def rewrite_header(buf: bytearray | memoryview, seq: int, ts: int, ssrc: int) -> None:
    """Overwrite seq, timestamp and SSRC in place (the bearer's own stream identity)."""
    _SEQ_TS_SSRC.pack_into(buf, 2, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def build_rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """A complete RTP packet with no CSRC, extension or padding."""
    return (
        HEADER.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        + payload
    )


# ---------------------------------------------------------------------------
# Wrap-around arithmetic (RFC 3550 §5.1: seq is 16 bits, timestamp 32 bits,
# both start at random values and wrap).  The ONLY place it is done.
# ---------------------------------------------------------------------------


def seq_delta(a: int, b: int) -> int:
    """Signed distance a - b between 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_delta(a: int, b: int) -> int:
    """Signed distance a - b between 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def extend_seq(seq: int, ref_ext: int) -> int:
    """The extended sequence number (cycles << 16 | seq) of ``seq`` nearest to ``ref_ext``.

    Used to key jitter buffers on a number that never wraps.
    """
    return ref_ext + seq_delta(seq, ref_ext & 0xFFFF)


# ---------------------------------------------------------------------------
# Receive statistics: RFC 3550 A.1 (validation), A.3 (loss), A.8 (jitter)
# ---------------------------------------------------------------------------

_RTP_SEQ_MOD = 1 << 16
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_MIN_SEQUENTIAL = 2


class ReceiveStats:
    """Per-source reception statistics, updated once per received RTP packet.

    ``update`` is the A.1 ``update_seq`` algorithm plus the A.8 jitter step; it
    returns False while the source is on probation or when a packet is a
    large jump (A.1: two sequential packets validate a source or a restart).
    ``report`` produces the values of an RTCP report block (A.3) and advances
    the "prior" counters, so call it exactly once per report sent.
    """

    __slots__ = (
        "bad_seq",
        "base_seq",
        "clock_rate",
        "cycles",
        "expected_prior",
        "jitter",
        "max_seq",
        "probation",
        "received",
        "received_prior",
        "transit",
    )

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.max_seq = -1  # -1: no packet seen yet
        self.base_seq = 0
        self.bad_seq = _RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0
        self.probation = _MIN_SEQUENTIAL
        self.transit: float | None = None
        self.jitter = 0.0

    def _init_seq(self, seq: int) -> None:
        # A.1 init_seq()
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, seq: int, rtp_ts: int, arrival_time: float) -> bool:
        """Account one packet; ``arrival_time`` in seconds on any monotonic clock.

        Returns True if the packet counts (source valid, not a wild jump).
        """
        max_seq = self.max_seq
        if max_seq < 0:  # first packet ever: A.1 "init_seq(s, seq); s->max_seq = seq - 1"
            self._init_seq(seq)
            max_seq = self.max_seq = (seq - 1) & 0xFFFF
        udelta = (seq - max_seq) & 0xFFFF
        if self.probation:
            # A.1: a source is valid after MIN_SEQUENTIAL in-order packets.
            if seq == (max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    self._jitter(rtp_ts, arrival_time)
                    return True
            else:
                self.probation = _MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < _MAX_DROPOUT:  # in order, with permissible gap
            if seq < max_seq:
                self.cycles += _RTP_SEQ_MOD
            self.max_seq = seq
        elif udelta <= _RTP_SEQ_MOD - _MAX_MISORDER:  # very large jump
            if seq == self.bad_seq:
                # Two sequential packets: the other side restarted without
                # telling us, so resync (A.1); its timestamps restarted too.
                self._init_seq(seq)
                self.transit = None
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted but max_seq unchanged
        self.received += 1
        self._jitter(rtp_ts, arrival_time)
        return True

    def _jitter(self, rtp_ts: int, arrival_time: float) -> None:
        # A.8: J += (|D(i-1,i)| - J) / 16, D from relative transit times, all
        # in timestamp units; D is wrapped so a timestamp wrap is not a spike.
        transit = arrival_time * self.clock_rate - rtp_ts
        last = self.transit
        self.transit = transit
        if last is not None:
            d = transit - last
            if d > 2147483648.0:
                d -= 4294967296.0
            elif d < -2147483648.0:
                d += 4294967296.0
            self.jitter += (abs(d) - self.jitter) / 16.0

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received (A.3)."""
        return self.cycles + max(self.max_seq, 0)

    @property
    def expected(self) -> int:
        """Packets expected since the source was validated (A.3)."""
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost; negative with duplicates (A.3)."""
        return self.expected - self.received

    @property
    def jitter_ms(self) -> float:
        """Interarrival jitter in milliseconds."""
        return self.jitter * 1000.0 / self.clock_rate

    def report(self) -> tuple[int, int, int, int]:
        """(fraction_lost/256, cumulative_lost, extended_highest, jitter) for an RR block.

        A.3: fraction over the interval since the previous report; cumulative
        lost clamped to the signed 24-bit field.
        """
        expected = self.expected
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior = expected
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        lost = max(-0x800000, min(0x7FFFFF, self.lost))
        return fraction, lost, self.extended_max, int(self.jitter)


# ---------------------------------------------------------------------------
# RTCP (RFC 3550 §6.4): SR, RR, BYE; anything else skipped
# ---------------------------------------------------------------------------

RTCP_SR = 200
RTCP_RR = 201
RTCP_BYE = 203

_RTCP_COMMON = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IIIIII")  # SSRC, NTP msw, NTP lsw, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction|cumulative, highest, jitter, LSR, DLSR
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # fixed point /256
    cumulative_lost: int  # signed 24 bits
    highest_seq: int  # extended highest sequence number received
    jitter: int  # timestamp units
    lsr: int  # middle 32 bits of the last SR's NTP timestamp, 0 if none
    dlsr: int  # delay since that SR, 1/65536 s

    def __bytes__(self) -> bytes:
        word = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        return _BLOCK.pack(self.ssrc, word, self.highest_seq, self.jitter, self.lsr, self.dlsr)

    @classmethod
    def parse(cls, data: bytes | memoryview, offset: int) -> ReportBlock:
        ssrc, word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset)
        cumulative = word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        return cls(ssrc, word >> 24, cumulative, highest, jitter, lsr, dlsr)

    def rtt(self, arrival_ntp_short: int) -> float | None:
        """Round-trip time in seconds, or None when the peer has had no SR yet."""
        return rtt_seconds(arrival_ntp_short, self.lsr, self.dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    """RTCP SR (RFC 3550 §6.4.1)."""

    ssrc: int
    ntp_msw: int
    ntp_lsw: int
    rtp_ts: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @property
    def lsr(self) -> int:
        """The value a receiver echoes as LSR: middle 32 bits of the NTP timestamp."""
        return ((self.ntp_msw & 0xFFFF) << 16) | (self.ntp_lsw >> 16)

    def __bytes__(self) -> bytes:
        length = 6 + 6 * len(self.reports)  # 32-bit words minus one
        info = _SR_INFO.pack(
            self.ssrc, self.ntp_msw, self.ntp_lsw, self.rtp_ts, self.packet_count,
            self.octet_count,
        )  # fmt: skip
        head = _RTCP_COMMON.pack(0x80 | len(self.reports), RTCP_SR, length)
        return head + info + b"".join(bytes(r) for r in self.reports)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RTCP RR (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def __bytes__(self) -> bytes:
        head = _RTCP_COMMON.pack(0x80 | len(self.reports), RTCP_RR, 1 + 6 * len(self.reports))
        return head + struct.pack("!I", self.ssrc) + b"".join(bytes(r) for r in self.reports)


@dataclass(frozen=True, slots=True)
class Bye:
    """RTCP BYE (RFC 3550 §6.6): these sources are leaving."""

    ssrcs: tuple[int, ...]
    reason: str = ""

    def __bytes__(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.ssrcs)
        if self.reason:
            text = self.reason.encode()[:255]
            body += bytes([len(text)]) + text
            body += b"\0" * (-len(body) % 4)
        return _RTCP_COMMON.pack(0x80 | len(self.ssrcs), RTCP_BYE, len(body) // 4) + body


RtcpPacket = SenderReport | ReceiverReport | Bye


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6.1) into SR, RR and BYE objects.

    Other packet types (SDES, APP, RFC 4585 feedback, XR ...) are skipped after
    their length is checked.  The first-packet-must-be-SR/RR rule of A.2 is not
    enforced, to accept reduced-size RTCP (RFC 5506).  Raises ValueError with
    a precise message for any framing error: the relay counts it as a drop.
    """
    view = memoryview(data)
    total = len(view)
    if total < 4:
        raise ValueError(f"RTCP packet too short: {total} bytes")
    if total % 4:
        raise ValueError(f"RTCP length {total} is not a multiple of 4")
    out: list[RtcpPacket] = []
    pos = 0
    while pos < total:  # bounded: pos grows by >= 4 each iteration
        if total - pos < 4:
            raise ValueError(f"RTCP header truncated at offset {pos}")
        b0, pt, length = _RTCP_COMMON.unpack_from(view, pos)
        if b0 >> 6 != RTP_VERSION:
            raise ValueError(f"RTCP version {b0 >> 6} at offset {pos}, expected 2")
        end = pos + 4 + 4 * length
        if end > total:
            raise ValueError(
                f"RTCP packet at offset {pos} claims {end - pos} bytes, {total - pos} left"
            )
        if b0 & 0x20:  # padding only on the last packet of a compound (§6.4.1)
            if end != total:
                raise ValueError(f"RTCP padding bit set on non-final packet at offset {pos}")
            pad = view[end - 1]
            if pad == 0 or pad > end - pos - 4:
                raise ValueError(f"RTCP padding of {pad} bytes invalid at offset {pos}")
            body_end = end - pad
        else:
            body_end = end
        count = b0 & 0x1F
        if pt == RTCP_SR:
            out.append(_parse_sr(view, pos, body_end, count))
        elif pt == RTCP_RR:
            out.append(_parse_rr(view, pos, body_end, count))
        elif pt == RTCP_BYE:
            out.append(_parse_bye(view, pos, body_end, count))
        pos = end
    return out


def _blocks(
    view: memoryview, start: int, body_end: int, count: int, what: str
) -> tuple[ReportBlock, ...]:
    if start + 24 * count > body_end:
        raise ValueError(f"RTCP {what} with {count} report blocks truncated")
    return tuple(ReportBlock.parse(view, start + 24 * i) for i in range(count))


def _parse_sr(view: memoryview, pos: int, body_end: int, count: int) -> SenderReport:
    if body_end - pos < 28:
        raise ValueError(f"RTCP SR too short: {body_end - pos} bytes, needs 28")
    ssrc, msw, lsw, rtp_ts, packets, octets = _SR_INFO.unpack_from(view, pos + 4)
    blocks = _blocks(view, pos + 28, body_end, count, "SR")
    return SenderReport(ssrc, msw, lsw, rtp_ts, packets, octets, blocks)


def _parse_rr(view: memoryview, pos: int, body_end: int, count: int) -> ReceiverReport:
    if body_end - pos < 8:
        raise ValueError(f"RTCP RR too short: {body_end - pos} bytes, needs 8")
    (ssrc,) = struct.unpack_from("!I", view, pos + 4)
    return ReceiverReport(ssrc, _blocks(view, pos + 8, body_end, count, "RR"))


def _parse_bye(view: memoryview, pos: int, body_end: int, count: int) -> Bye:
    start = pos + 4
    if start + 4 * count > body_end:
        raise ValueError(f"RTCP BYE with {count} sources truncated")
    ssrcs = struct.unpack_from(f"!{count}I", view, start)
    reason = ""
    rpos = start + 4 * count
    if rpos < body_end:
        rlen = view[rpos]
        if rpos + 1 + rlen > body_end:
            raise ValueError(f"RTCP BYE reason of {rlen} bytes truncated")
        reason = bytes(view[rpos + 1 : rpos + 1 + rlen]).decode("utf-8", "replace")
    return Bye(tuple(ssrcs), reason)


def ntp_short(unix_time: float) -> int:
    """Middle 32 bits of the NTP timestamp of ``unix_time`` (16.16 fixed point, §4)."""
    return int((unix_time + _NTP_EPOCH_OFFSET) * 65536.0) & 0xFFFFFFFF


def rtt_seconds(arrival_ntp_short: int, lsr: int, dlsr: int) -> float | None:
    """Round-trip time from a report block (RFC 3550 §6.4.1, Figure 2).

    RTT = A - LSR - DLSR, all in NTP short format (1/65536 s), modulo 2^32.
    None when LSR is 0 (no SR received yet by the reporter) or the result is
    negative (clock skew), which would otherwise wrap to ~18 hours.
    """
    if lsr == 0:
        return None
    rtt = (arrival_ntp_short - lsr - dlsr) & 0xFFFFFFFF
    if rtt >= 0x80000000:
        return None
    return rtt / 65536.0


# ---------------------------------------------------------------------------
# RFC 4733 telephone-events (DTMF)
# ---------------------------------------------------------------------------

DTMF_DIGITS = "0123456789*#ABCD"
"""Event codes 0-15 to key names (RFC 4733 §3.2, Table 1)."""

_DTMF = struct.Struct("!BBH")


def parse_dtmf(payload: bytes | bytearray | memoryview) -> tuple[int, bool, int, int]:
    """(event, end, volume, duration) of a telephone-event payload (RFC 4733 §2.3).

    volume is in -dBm0 (0-63); duration in RTP timestamp units.
    """
    if len(payload) < 4:
        raise ValueError(f"telephone-event payload too short: {len(payload)} bytes, needs 4")
    event, flags, duration = _DTMF.unpack_from(payload, 0)
    return event, bool(flags & 0x80), flags & 0x3F, duration


class DtmfDetector:
    """Turns a stream of telephone-event packets into one report per key press.

    RFC 4733 §2.5.1: all packets of one event share the RTP timestamp of its
    start; the duration grows; the final packet has E set and is sent three
    times (§2.5.1.4).  So a digit is reported once, on the first end packet,
    and later packets with an already-reported timestamp are ignored.  If the
    end packets are all lost, the digit is reported when the next event starts
    (a new timestamp) or on ``flush()``.
    """

    __slots__ = ("_clock_rate", "_pending", "_reported")

    def __init__(self, clock_rate: int = 8000) -> None:
        self._clock_rate = clock_rate
        self._reported: list[int] = []  # recent reported timestamps, newest last, max 4
        self._pending: tuple[int, int, int] | None = None  # (ts, event, duration)

    def feed(self, ts: int, payload: bytes | bytearray | memoryview) -> list[tuple[str, float]]:
        """Account one event packet; return the (digit, duration_ms) now complete.

        Usually empty or one item; two when an unterminated event is flushed
        by the start of the next one.  Non-DTMF events (flash, tones) are
        tracked for deduplication but not reported.
        """
        event, end, _volume, duration = parse_dtmf(payload)
        if ts in self._reported:
            return []
        out: list[tuple[str, float]] = []
        pending = self._pending
        if pending is not None and pending[0] != ts:
            out.extend(self._finish(*pending))
        if end:
            self._pending = None
            out.extend(self._finish(ts, event, duration))
        else:
            self._pending = (ts, event, duration)
        return out

    def flush(self) -> list[tuple[str, float]]:
        """Report an event whose end packets never came (stream stopped)."""
        pending, self._pending = self._pending, None
        return self._finish(*pending) if pending else []

    def _finish(self, ts: int, event: int, duration: int) -> list[tuple[str, float]]:
        self._reported.append(ts)
        if len(self._reported) > 4:
            del self._reported[0]
        if event >= len(DTMF_DIGITS):
            return []
        return [(DTMF_DIGITS[event], duration * 1000.0 / self._clock_rate)]

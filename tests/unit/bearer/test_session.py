"""The media session without I/O: latching, statistics and the media timeout.

Source addresses and times are fed in; the sockets are stand-ins that record
what the session asked of them, and the host records what it asked of the
bearer.  What these pin down is what the in-kernel implementation of
bearer.media.MediaSession must reproduce from conntrack's view.
"""

from __future__ import annotations

from typing import Any

import pytest

from bearer.conference import ConferenceOut
from bearer.leg import (
    BLEED,
    LATCH_GRACE,
    SRC_BLEED,
    SRC_FINAL,
    SRC_LATCHED,
    SRC_OK,
    Leg,
)
from bearer.media import Mode, RelayError
from bearer.mixer import Mixer
from bearer.session import Session
from softswitch.protocol import (
    AllocFlags,
    ErrorCode,
    Event,
    Latched,
    LegSpec,
    MediaTimeout,
    PayloadType,
)

PCMU = PayloadType(0, "PCMU", 8000)
PHONE_A = ("192.0.2.10", 4000)
PHONE_B = ("192.0.2.20", 5000)
NAT_A = ("198.51.100.7", 61000)  # where phone A's packets really come from, behind a NAT
T0 = 1000.0  # a monotonic clock well past its start, as on a running bearer


def spec(addr: tuple[str, int] | None = None) -> LegSpec:
    host, port = addr if addr is not None else ("0.0.0.0", 0)
    return LegSpec(host, port, (PCMU,), 0)


class FakeSocket:
    """A stand-in for a leg's socket: remembers connect() and close()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connected: tuple[str, int] | None = None
        self.closed = False

    def connect(self, addr: tuple[str, int]) -> None:
        self.connected = addr

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return id(self)


class FakeHost:
    """The bearer around a session, reduced to a record of what it was asked."""

    def __init__(self) -> None:
        self.mixer = Mixer(capacity=4)
        self.conference = ConferenceOut(self.mixer)
        self.rooms: dict[str, int] = {}
        self.recordings: set[Any] = set()
        self.provisional: set[Leg] = set()
        self.events: list[Event] = []
        self.registered: list[Any] = []
        self.released: list[int] = []
        self.drained: list[Leg] = []
        self.wired = 0
        self._next_port = 20000

    def open_pair(self) -> tuple[int, Any, Any]:
        port = self._next_port
        self._next_port += 2
        return port, FakeSocket(port), FakeSocket(port + 1)

    def bind(self, port: int) -> Any:
        return FakeSocket(port)

    def register(self, sock: Any) -> None:
        self.registered.append(sock)

    def discard(self, sock: Any) -> None:
        sock.close()

    def release_port(self, port: int) -> None:
        self.released.append(port)

    def wire(self, session: Any) -> None:
        self.wired += 1

    def drain(self, leg: Leg, now: float) -> None:
        self.drained.append(leg)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def start_recording(self, session: Any, path: str) -> Any:
        raise RelayError(ErrorCode.INTERNAL, "no recorder here")


def call(
    a: tuple[str, int] | None = PHONE_A, b: tuple[str, int] | None = PHONE_B, timeout: float = 30.0
) -> tuple[Session, FakeHost]:
    host = FakeHost()
    s = Session(7, "call-7", AllocFlags.NONE, T0, host, timeout)
    s.start((spec(a), spec(b)), T0)
    return s, host


def packets(leg: Leg, seqs: list[int], start: float, spacing: float = 0.02) -> float:
    """Account 172-byte packets with these sequence numbers, ``spacing`` apart."""
    now = start
    for seq in seqs:
        leg.account_rtp(172, seq, seq * 160, now)
        now += spacing
    return now


# ---------------------------------------------------------------------- latching


def test_first_source_latches_provisionally_then_only_it_is_accepted() -> None:
    s, _ = call()
    a = s.legs[0]
    assert a.judge_source(NAT_A, T0) == SRC_LATCHED
    assert a.latched == NAT_A and a.destination == NAT_A and not a.final
    assert a.judge_source(NAT_A, T0 + 0.1) == SRC_OK
    assert a.judge_source(("203.0.113.66", 4000), T0 + 0.2) == SRC_BLEED
    assert a.c[BLEED] == 1 and a.latched == NAT_A


def test_signalled_address_wins_over_a_provisional_latch() -> None:
    s, _ = call()
    a = s.legs[0]
    assert a.judge_source(NAT_A, T0) == SRC_LATCHED
    assert a.judge_source(PHONE_A, T0 + 0.5) == SRC_FINAL
    assert a.latched == PHONE_A and a.c[BLEED] == 0


def test_first_packet_from_the_signalled_address_latches_for_good() -> None:
    s, host = call()
    a = s.legs[0]
    assert a.judge_source(PHONE_A, T0) == SRC_FINAL
    s.latched(a, T0)
    assert a in host.provisional
    s.finalize(a, T0)
    assert a.final and a not in host.provisional
    assert a.rtp.connected == PHONE_A  # type: ignore[union-attr]
    assert a.catcher in host.registered and host.drained == [a]
    assert host.events == [Latched(7, 0, *PHONE_A)]


def test_provisional_latch_becomes_final_after_the_grace_period() -> None:
    s, _ = call()
    a = s.legs[0]
    a.judge_source(NAT_A, T0)
    assert not a.grace_over(T0 + LATCH_GRACE - 0.001)
    assert a.grace_over(T0 + LATCH_GRACE)
    s.finalize(a, T0 + LATCH_GRACE)
    assert a.final
    # Final: even the signalled address is now bleed (the NAT was right).
    assert a.judge_source(PHONE_A, T0 + 2) == SRC_BLEED


def test_phone_moving_to_a_new_address_is_latched_afresh_on_a_new_socket() -> None:
    s, host = call()
    a = s.legs[0]
    a.judge_source(PHONE_A, T0)
    s.finalize(a, T0)
    old_rtp, old_catcher = a.rtp, a.catcher
    moved = ("192.0.2.11", 4002)
    s.update(0, spec(moved), T0 + 5)
    assert a.latched is None and not a.final and a.catcher is None
    assert old_rtp.closed and old_catcher.closed  # type: ignore[union-attr]
    assert a.rtp is not old_rtp and a.rtp in host.registered
    assert a.rtp.connected is None  # type: ignore[union-attr]
    assert a.judge_source(moved, T0 + 5.1) == SRC_FINAL


def test_update_to_the_provisionally_latched_address_makes_it_final() -> None:
    s, host = call(a=None)
    a = s.legs[0]
    a.judge_source(NAT_A, T0)
    s.latched(a, T0)
    s.update(0, spec(NAT_A), T0 + 0.3)  # the SDP answer names what we latched to
    assert a.final and host.events == [Latched(7, 0, *NAT_A)]


def test_same_address_in_a_reinvite_keeps_the_latch() -> None:
    s, _ = call()
    a = s.legs[0]
    a.judge_source(NAT_A, T0)
    assert a.set_spec(spec(PHONE_A)) is False
    assert a.latched == NAT_A


def test_rtcp_latches_to_its_first_source_on_the_rtp_host() -> None:
    s, _ = call()
    a = s.legs[0]
    a.judge_source(PHONE_A, T0)
    assert not a.rtcp_source_ok(("203.0.113.66", 4001))  # another host: bleed
    assert a.rtcp_source_ok((PHONE_A[0], 4001))
    assert not a.rtcp_source_ok((PHONE_A[0], 4003))
    assert a.c[BLEED] == 2


def test_only_user_space_mode_exists() -> None:
    s, _ = call()
    with pytest.raises(RelayError):
        s.set_mode(Mode.KERNEL, T0)
    assert s.mode is Mode.RELAY and s.counters()["mode_kernel"] == 0


# ---------------------------------------------------------------------- statistics


def test_loss_is_the_sequence_advance_minus_what_arrived() -> None:
    s, _ = call()
    a = s.legs[0]
    now = packets(a, [1, 2, 3, 4, 7, 8, 9, 10], T0)  # 5 and 6 lost
    assert a.housekeep(now)
    counters = s.counters(now)
    assert counters["leg0_packets"] == 8 and counters["leg0_bytes"] == 8 * 172
    assert counters["leg0_lost"] == 2


def test_loss_spans_the_sequence_wrap() -> None:
    s, _ = call()
    a = s.legs[0]
    now = packets(a, [65533, 65534, 1, 2], T0)  # 65535 and 0 lost
    a.housekeep(now)
    assert a.lost == 2


def test_a_restarted_sender_is_not_loss() -> None:
    s, _ = call()
    a = s.legs[0]
    now = packets(a, [100, 101, 102], T0)
    a.housekeep(now)
    now = packets(a, [30000, 30001], now)  # a jump beyond MAX_DROPOUT: a new stream
    a.housekeep(now)
    now = packets(a, [30002, 30004], now)
    a.housekeep(now)
    assert a.lost == 1


def test_jitter_follows_rfc3550_a8() -> None:
    s, _ = call()
    a = s.legs[0]
    now = T0
    for seq in range(300):  # 20 ms apart on the RTP clock, arrivals off by 0 / 2 ms
        a.account_rtp(172, seq, seq * 160, now + seq * 0.02 + (0.002 if seq % 2 else 0.0))
    # |D| is 2 ms = 16 timestamp units every packet: J converges to 16 units, 2 ms.
    assert s.counters()["leg0_jitter_ms"] == pytest.approx(2.0, abs=0.01)
    steady, _ = call()
    b = steady.legs[1]
    packets(b, list(range(50)), T0)
    assert steady.counters()["leg1_jitter_ms"] == pytest.approx(0.0, abs=0.001)


def test_what_one_phone_sent_is_what_the_other_received() -> None:
    s, _ = call()
    a, b = s.legs
    packets(a, list(range(1, 11)), T0)
    packets(b, list(range(1, 4)), T0)
    stats = s.stop(T0 + 1)
    assert (stats[0].packets_in, stats[0].packets_out) == (10, 3)
    assert (stats[1].packets_in, stats[1].packets_out) == (3, 10)
    assert stats[1].bytes_out == 10 * 172


def test_stop_closes_every_socket_and_gives_the_ports_back() -> None:
    s, host = call()
    socks = [sock for leg in s.legs for sock in leg.sockets]
    s.stop(T0 + 1)
    assert all(sock.closed for sock in socks)  # type: ignore[attr-defined]
    assert host.released == [20000, 20002]
    assert all(leg.port == 0 and leg.rtp is None for leg in s.legs)


# ---------------------------------------------------------------------- media timeout


def test_silent_call_times_out_once_after_the_timeout_since_answer() -> None:
    s, _ = call(timeout=30.0)
    assert s.answered == T0  # both addresses known from the SDP
    assert s.housekeep(T0 + 29.9) is None
    assert s.housekeep(T0 + 30.0) == MediaTimeout(7, 0)
    assert s.housekeep(T0 + 60.0) is None  # reported once


def test_timeout_counts_from_the_last_packet_and_names_the_leg_silent_longest() -> None:
    s, _ = call(timeout=10.0)
    a, b = s.legs
    packets(a, [1, 2], T0 + 1)
    packets(b, [1, 2], T0 + 3)
    s.housekeep(T0 + 4)  # last_rx: a at 4, b at 4 (the pass that saw them)
    packets(b, [3], T0 + 5)
    assert s.housekeep(T0 + 6) is None
    assert s.housekeep(T0 + 14) is None  # a silent 10 s, b only 8
    assert s.housekeep(T0 + 16) == MediaTimeout(7, 0)


def test_one_phone_still_sending_keeps_the_call_up() -> None:
    s, _ = call(timeout=10.0)
    a = s.legs[0]
    now = T0
    for step in range(1, 5):
        now = packets(a, [step], T0 + step * 5)
        assert s.housekeep(now) is None


def test_no_timeout_before_every_phone_is_known() -> None:
    s, _ = call(b=None, timeout=10.0)
    assert s.answered == 0.0
    assert s.housekeep(T0 + 100) is None
    a = s.legs[1]
    a.judge_source(PHONE_B, T0 + 100)
    s.latched(a, T0 + 100)
    assert s.answered == T0 + 100
    assert s.housekeep(T0 + 109) is None
    assert s.housekeep(T0 + 110) == MediaTimeout(7, 0)

"""RFC 3261's transaction timers as one value object (§17, Table 4; RFC 6026).

Kept apart from the machines because it is configuration: the daemon builds
one from softswitch.conf and hands it to the layer, and every derived timer
follows T1, T2 and T4 here rather than in the state tables.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timers:
    """T1, T2, T4 and the timers derived from them (RFC 3261 §17, Table 4;
    RFC 6026 §8.11 for L and M). Values in seconds.

    T1 is the round-trip estimate, T2 the cap on non-INVITE retransmission
    intervals, T4 how long the network may hold a message. Operators raise T1
    for slow links; every derived timer follows.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: Timer D floor for unreliable transports ("at least 32 s", §17.1.1.2).
    d_unreliable: float = 32.0

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ValueError(f"timers need 0 < T1 <= T2, got T1={self.t1} T2={self.t2}")
        if self.t4 <= 0 or self.d_unreliable < 0:
            raise ValueError(f"timers need T4 > 0 and D >= 0, got T4={self.t4}")

    @property
    def a(self) -> float:
        """Initial INVITE retransmit interval (UDP); doubles on every firing."""
        return self.t1

    @property
    def b(self) -> float:
        """INVITE client transaction timeout."""
        return 64 * self.t1

    def d(self, reliable: bool) -> float:
        """Wait time for response retransmissions after a non-2xx to INVITE.

        Never shorter than timer H, the time the server keeps retransmitting
        that response, or a raised T1 would let late copies turn stray."""
        return 0.0 if reliable else max(self.d_unreliable, 64 * self.t1)

    @property
    def e(self) -> float:
        """Initial non-INVITE retransmit interval (UDP); doubles up to T2."""
        return self.t1

    @property
    def f(self) -> float:
        """Non-INVITE client transaction timeout."""
        return 64 * self.t1

    @property
    def g(self) -> float:
        """Initial INVITE final-response retransmit interval (UDP); doubles up to T2."""
        return self.t1

    @property
    def h(self) -> float:
        """Wait time for the ACK to a non-2xx final response."""
        return 64 * self.t1

    def i(self, reliable: bool) -> float:
        """Wait time for ACK retransmissions."""
        return 0.0 if reliable else self.t4

    def j(self, reliable: bool) -> float:
        """Wait time for non-INVITE request retransmissions."""
        return 0.0 if reliable else 64 * self.t1

    def k(self, reliable: bool) -> float:
        """Wait time for non-INVITE response retransmissions."""
        return 0.0 if reliable else self.t4

    @property
    def l(self) -> float:  # noqa: E743 - the RFC's name
        """RFC 6026: how long an Accepted server INVITE absorbs INVITE retransmissions."""
        return 64 * self.t1

    @property
    def m(self) -> float:
        """RFC 6026: how long an Accepted client INVITE passes 2xx retransmissions up."""
        return 64 * self.t1

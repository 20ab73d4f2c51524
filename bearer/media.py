"""What a bearer media session is, whoever moves its packets.

Theory of operation
-------------------
Control addresses a call's media by session id and never learns how its
packets are moved.  A session is one object (``MediaSession`` below) that owns
the call's legs (one per phone: its ports and, in user space, its sockets),
the latching policy, the statistics, the media timeout and the call's
membership in a conference room or a recording.  Two implementations are
planned behind this one interface:

* **user space** (``bearer.session.Session``, today's only one): sockets on
  the bearer's epoll loop (bearer.relay), every packet read and sent by
  Python; needed for anything that looks into the payload (transcoding,
  DTMF, conferences, recordings) and for latching;
* **kernel** (DESIGN.md "In-kernel forwarding", study in
  ``recipes/kernelpath/``): a plain call, once both legs are latched, is
  forwarded by stock nftables NAT + conntrack rules programmed per call.
  Per leg, one ``dnat`` map element sends what arrives on the leg's port to
  the *other* phone, one ``snat`` element makes it leave from the other leg's
  port; one conntrack entry then carries both directions.  Media never
  reaches user space, so there is no symmetric-RTP learning, no RTP
  statistics beyond conntrack's packet and byte counts (``nf_conntrack_acct``)
  and no payload work: a session enters the kernel only once its legs are
  final and it needs no transcoding, recording, room or DTMF detection, and
  goes back to user space (rules deleted, ``conntrack -D`` for the leg's
  tuple, sockets read again) the moment it needs any.

A session moves between the two with ``set_mode``; its id, ports, counters and
events are the same on both sides, which is what lets control not notice.
What a session needs from the bearer around it (port pool, socket
registration, the mixer, the recorder, the event sink) is ``SessionHost``,
implemented by the relay.
"""

from __future__ import annotations

import enum
import socket
from typing import TYPE_CHECKING, Any, Protocol

from softswitch.protocol import ErrorCode, Event, JoinFlags, LegSpec, LegStats

if TYPE_CHECKING:
    from bearer.conference import ConferenceOut
    from bearer.leg import Leg
    from bearer.mixer import Mixer

__all__ = ["MediaSession", "Mode", "RelayError", "SessionHost"]


class Mode(enum.Enum):
    """Who forwards a session's packets; invisible to control."""

    RELAY = "relay"
    """The user-space epoll relay."""
    KERNEL = "kernel"
    """In-kernel forwarding (nftables NAT rules); not implemented yet."""


class RelayError(Exception):
    """A refused request, with the protocol error code control gets."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class MediaSession(Protocol):
    """One call's media (two legs) or one conference participant (one leg).

    Every method is a control operation or a clock-driven duty; none is per
    packet.  ``now`` is always a parameter (``time.monotonic`` seconds), so
    an implementation's decisions can be tested on a simulated clock.
    """

    id: int
    call_ref: str
    mode: Mode

    def start(self, specs: tuple[LegSpec, ...], now: float) -> list[int]:
        """Take one port pair per leg and make the ports live; returns the RTP ports.

        User space: bind an RTP and an RTCP socket per leg from the port pool
        and register them on the epoll loop.  Kernel: the same ports are still
        taken and bound (so no other process takes them and the phones'
        packets have a home before the rules exist, and the RTCP sockets stay
        in user space); a session always *starts* in user space, since
        latching needs to see packets.  Raises ``RelayError(NO_PORTS)``.
        """
        ...

    def update(self, leg_index: int, spec: LegSpec, now: float) -> None:
        """Replace what control says about one phone (SDP answer, re-INVITE).

        A phone that moved to a new signalled address is latched afresh.
        User space: rebuild the hot-path entries of the session's sockets.
        Kernel: a changed address, direction or codec means new map elements
        for the other leg (``snat`` before ``dnat``, one transaction) and
        ``conntrack -D`` of the old tuple; anything the kernel cannot do
        (hold with a codec change, transcoding) moves the session back to
        user space first.
        """
        ...

    def stop(self, now: float) -> tuple[LegStats, ...]:
        """End the session: leave its room, stop its recording, release its ports.

        Returns the final per-leg counters (the CDR's media figures).
        User space: unregister and close the sockets.  Kernel: delete the
        map elements and the conntrack entry, after reading its counters
        (CTA_COUNTERS_ORIG/REPLY) into the legs' statistics.
        """
        ...

    def record(self, start: bool, path: str) -> bool:
        """Start or stop recording to ``path``; returns whether it is now recorded.

        Needs the payload, so the kernel implementation first hands the
        session back to user space (``set_mode(Mode.RELAY)``).
        """
        ...

    def join(self, room: str, leg_index: int, flags: JoinFlags) -> int:
        """Put this one-leg session into a conference room (the mixer).

        Returns the room's participant count.  User space only: a kernel
        session is moved back first.
        """
        ...

    def leave(self, room: str, leg_index: int) -> int:
        """Take this session out of its room; returns the room's remaining count."""
        ...

    def set_mode(self, mode: Mode, now: float) -> None:
        """Move the session between user space and the kernel.

        Kernel, on entry: program DNAT/SNAT map elements for both legs from
        their final latched addresses, delete any un-NATed conntrack entry
        the phones' packets created meanwhile, stop reading the RTP sockets;
        on exit: the reverse, and the conntrack counters since entry are
        added to the legs' counters.  Control never sees either move.
        Raises ``RelayError(BAD_REQUEST)`` for a mode that cannot take the
        session.
        """
        ...

    def housekeep(self, now: float) -> Event | None:
        """The periodic duty (twice a second): loss accounting, media timeout.

        Returns the ``MediaTimeout`` event once, when no phone has sent
        media for the timeout since the call was answered.  Kernel: packet
        counts come from conntrack accounting, "last seen" from the counters
        growing (or from conntrack DESTROY events when the entry expires).
        """
        ...

    def counters(self, now: float) -> dict[str, int | float]:
        """Flat STATS of the session, leg by leg; the same names in both modes."""
        ...


class SessionHost(Protocol):
    """What a user-space session needs from the bearer it lives in.

    The relay implements it: the port pool and sockets, the registration
    of sockets on the epoll loop, the shared mixer and recorder, the event
    sink.  A session never touches epoll itself.
    """

    mixer: Mixer
    conference: ConferenceOut
    rooms: dict[str, int]
    recordings: set[Any]
    provisional: set[Leg]

    def open_pair(self) -> tuple[int, socket.socket, socket.socket]:
        """A free even port with its RTP and RTCP sockets bound and registered."""
        ...

    def bind(self, port: int) -> socket.socket:
        """Another socket on ``port`` (SO_REUSEPORT), bound but not registered."""
        ...

    def register(self, sock: socket.socket) -> None:
        """Start watching a socket for reads."""
        ...

    def discard(self, sock: socket.socket) -> None:
        """Stop watching a socket, forget its entry and close it."""
        ...

    def release_port(self, port: int) -> None:
        """Give a port pair back to the pool."""
        ...

    def wire(self, session: Any) -> None:
        """Rebuild the packet-path entries of the session's sockets after a change."""
        ...

    def drain(self, leg: Leg, now: float) -> None:
        """Read what queued on a leg's RTP socket before it was connected."""
        ...

    def emit(self, event: Event) -> None:
        """An event for control (retransmitted until acknowledged)."""
        ...

    def start_recording(self, session: Any, path: str) -> Any:
        """A new Recording for the session; raises RelayError when it cannot."""
        ...

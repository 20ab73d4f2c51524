"""What the four transaction machines share: inputs, states, and the base
class that steps a machine through its transition table.

Each machine (client.py, server.py) is a subclass holding only its own table
and the actions in it; stepping, lingering and timer bookkeeping live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum, auto
from typing import TYPE_CHECKING, ClassVar

from softswitch.sip.message import Request, Response
from softswitch.sip.transaction.events import (
    Peer,
    TransactionTerminated,
    TransactionTimeout,
    TransitionError,
    TransportError,
)

if TYPE_CHECKING:
    from softswitch.sip.transaction.layer import TransactionLayer


class Input(IntEnum):
    """What can happen to a transaction. Response inputs mean "received" for
    client transactions and "sent by the TU" for server transactions.

    (IntEnum, like State, because every step hashes a (State, Input) pair:
    int hashing is C code, Enum hashing is Python code.)"""

    PROVISIONAL = auto()  # 1xx
    SUCCESS = auto()  # 2xx
    FAILURE = auto()  # 3xx-6xx
    REQUEST = auto()  # a retransmission of the request that created it
    ACK = auto()
    TRANSPORT_ERROR = auto()
    TIMER_A = auto()
    TIMER_B = auto()
    TIMER_D = auto()
    TIMER_E = auto()
    TIMER_F = auto()
    TIMER_G = auto()
    TIMER_H = auto()
    TIMER_I = auto()
    TIMER_J = auto()
    TIMER_K = auto()
    TIMER_L = auto()
    TIMER_M = auto()


def status_input(status: int) -> Input:
    """The input a response of this status is to a transaction."""
    if status < 200:
        return Input.PROVISIONAL
    if status < 300:
        return Input.SUCCESS
    return Input.FAILURE


class State(IntEnum):
    """The union of the states of the four machines (Figures 5-8 of RFC 3261,
    Figures 3 and 5 of RFC 6026); each machine uses a subset."""

    CALLING = auto()
    TRYING = auto()
    PROCEEDING = auto()
    ACCEPTED = auto()
    COMPLETED = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


# An action's message is a Response, a Request or None depending on the input
# that selected it, and its self is the machine whose table holds it: a
# dependency on the key that a dict type cannot state, hence the "...".
Action = Callable[..., None]
Table = dict[tuple[State, Input], tuple[State, Action | None]]


class Transaction:
    """State shared by the four machines. A subclass supplies ``TABLE``:
    (state, input) -> (next state, action); the action runs after the state
    changes and appends events. A pair missing from the table is illegal."""

    __slots__ = (
        "_immediate",
        "_interval",
        "_layer",
        "_timers",
        "_wire",
        "key",
        "last_response",
        "method",
        "peer",
        "request",
        "state",
        "status",
    )

    TABLE: ClassVar[Table]
    is_client: ClassVar[bool]
    is_invite: ClassVar[bool]
    #: The wait states (timers D, I, J, K, L, M: up to 64*T1 over UDP) in
    #: which the transaction only absorbs or answers retransmissions: on
    #: entering one it drops the parsed messages (see _linger).
    LINGER: ClassVar[frozenset[State]]

    def __init__(
        self, layer: TransactionLayer, key: tuple, request: Request, peer: Peer, state: State
    ) -> None:
        self._layer = layer
        self.key = key
        #: The request, and the last response sent or received, until the
        #: transaction lingers (None from then on, see _linger).
        self.request: Request | None = request
        self.method = request.method
        self.peer = peer
        self.state = state
        self.last_response: Response | None = None
        #: Status of the last response sent or received (0: none yet); kept
        #: when last_response is dropped.
        self.status = 0
        # What a retransmission re-sends: the request (client) or the last
        # response (server), serialised once.
        self._wire: bytes | None = bytes(request) if self.is_client else None
        self._timers: dict[Input, int] = {}  # armed timer -> heap token
        self._interval = 0.0  # current A/E/G retransmission interval
        self._immediate: Input | None = None  # a zero-length timer to fire now

    @property
    def reliable(self) -> bool:
        return self.peer.reliable

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.key[0]} {self.state.name}>"

    def _step(self, inp: Input, msg: Request | Response | None, now: float, events: list) -> None:
        entry = self.TABLE.get((self.state, inp))
        if entry is None:
            raise TransitionError(
                f"{type(self).__name__} in state {self.state.name} cannot take {inp.name}"
            )
        self.state, action = entry
        if action is not None:
            action(self, msg, now, events)
        if self.state in self.LINGER:
            self._linger()
        if self.state is State.TERMINATED:
            self._layer._remove(self)
            events.append(TransactionTerminated(self))
        elif self._immediate is not None:
            # Timers D, I, J, K are zero on reliable transports: "immediately"
            # in the RFC means within this same step, not on a later tick.
            inp, self._immediate = self._immediate, None
            self._step(inp, None, now, events)

    def _linger(self) -> None:
        """Keep only what absorbing retransmissions takes: the key, the peer,
        the bytes to send again (server: the last response; client INVITE:
        the ACK) and the timers. The parsed messages (several KB of objects
        each, all tracked by the garbage collector) would otherwise stay
        for up to 32 s per transaction: at 2,000 REGISTERs/s that is 128,000
        of them. RFC 2543 peers keep theirs: their matching reads To tags.
        """
        if self.key[0] == "rfc2543":
            return
        self.request = None
        self.last_response = None
        if self.is_client or self.state is not State.COMPLETED:
            self._wire = None  # nothing re-sends it from here

    def _arm(self, timer: Input, delay: float, now: float) -> None:
        if delay <= 0:
            self._immediate = timer
        else:
            self._layer._heap.arm(self, timer, now + delay)

    def _cancel(self, *timers: Input) -> None:
        heap = self._layer._heap
        for timer in timers:
            heap.disarm(self, timer)

    def _send(self, data: bytes) -> None:
        self._layer._outgoing.append((data, self.peer))

    def _send_wire(self) -> None:
        """Send the request (client) or the last response (server) again;
        only states that keep the bytes (see _linger) retransmit."""
        assert self._wire is not None, f"{self!r} has nothing to retransmit"
        self._layer._outgoing.append((self._wire, self.peer))

    def _start_retrying(
        self, retransmit: Input, interval: float, timeout: Input, after: float, now: float
    ) -> None:
        """Arm the retransmission timer (A, E or G; over UDP only, §17) at
        ``interval`` and the timer that ends the retrying (B, F or H)."""
        if not self.reliable:
            self._interval = interval
            self._arm(retransmit, interval, now)
        self._arm(timeout, after, now)

    def _retransmit_wire(self, timer: Input, interval: float, now: float) -> None:
        """Timer A, E or G fired: send the wire again, count it, and re-arm
        ``timer`` at the next ``interval`` (the machine's doubling rule)."""
        self._send_wire()
        self._layer.stats.retransmitted += 1
        self._interval = interval
        self._arm(timer, interval, now)

    # Actions shared by several machines.

    def _absorb(self, msg: object, now: float, events: list) -> None:
        self._layer.stats.absorbed += 1

    def _timeout(self, msg: object, now: float, events: list) -> None:
        self._layer.stats.timeouts += 1
        events.append(TransactionTimeout(self))

    def _transport_error(self, msg: object, now: float, events: list) -> None:
        events.append(TransportError(self))

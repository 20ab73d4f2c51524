"""SIP transactions: RFC 3261 §17 with the RFC 6026 corrections, sans-I/O.

A transaction is one request and every response to it. This layer exists so
that the transaction user (registrar, B2BUA) sees each request once and each
response once, whatever the network loses or repeats: it retransmits over UDP,
absorbs retransmissions it receives, answers them from memory, and tells the TU
when a peer stops answering.

Driving it (aioquic-style; time is always a parameter, the caller owns the
clock and the sockets)::

    events = layer.receive(message, peer, now)     # parsed message from the wire
    tx = layer.send_request(request, peer, now)     # caller built the Via + branch
    events = layer.send_response(tx, response, now)
    for data, peer in layer.datagrams_to_send(): ...
    deadline = layer.get_timer()                     # earliest deadline, or None
    events = layer.handle_timer(now)

RFC 6026 is taken where it fixes real bugs: a 2xx to INVITE moves both INVITE
transactions to "Accepted" instead of destroying them, so 2xx retransmissions
are the TU's job (the layer never retransmits a 2xx by itself), a retransmitted
INVITE is still absorbed, and the 2xx's ACK (a new transaction of its own in
RFC 3261) is handed to the TU.

Responses to requests are sent to the peer the request came from (the
"symmetric response routing" of RFC 3581, what Kamailio's force_rport does):
phones behind NAT are the norm for a softswitch, and over TCP it is the only
way to reach the same connection (§18.2.2). On receipt the layer also writes
received= and rport= into the request's top Via (§18.2.1, RFC 3581 §4), so
every response built from it records the real source.

The TU owes each server transaction a final response: there is no timer
that ends a server transaction still waiting for one (RFC 3261 has none).
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, auto
from typing import ClassVar

from softswitch.sip.errors import SipError
from softswitch.sip.message import Request, Response, Via, make_response

#: RFC 3261 §8.1.1.7: every branch of an RFC 3261 element starts with this,
#: which is how a server knows it may match on the branch alone (§17.2.3).
MAGIC_COOKIE = "z9hG4bK"

_DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "SCTP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}


def new_branch() -> str:
    """A fresh branch: the magic cookie and 80 random bits (§8.1.1.7 wants
    branches unique across space and time, so no counters)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from or goes to; the daemon edge maps it to a
    socket (UDP) or a connection (TCP). ``transport`` is 'udp' or 'tcp'."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Reliable transports get no retransmissions and zero-length wait
        states (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2)."""
        return self.transport != "udp"


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


class TransitionError(RuntimeError):
    """The TU asked for something its transaction's state forbids (for example
    a second final response). Network input never raises this: every
    (state, network input) pair is in the tables."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction; answer with send_response."""

    tx: ServerTransaction
    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx (end-to-end, RFC 6026 §8.7): the dialog consumes it."""

    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for a client transaction, first copy only (2xx to INVITE
    excepted: every copy comes up so the TU can re-ACK, §13.2.2.4)."""

    tx: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B or F (client: the TU acts as if it got a 408, §8.1.3.1) or
    timer H (server: the ACK for a non-2xx final never came)."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class TransportError:
    """The edge reported that sending failed (§17.1.4, §17.2.4)."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction is gone; drop any reference the TU keeps to it."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (§18.1.2: discard). Counted;
    a 2xx to INVITE here is one the TU may still want to ACK and BYE."""

    response: Response
    peer: Peer


Event = (
    RequestReceived
    | AckReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
    | StrayResponse
)


@dataclass(slots=True)
class TransactionStats:
    """Counters, so that nothing the layer swallows is swallowed silently."""

    client_created: int = 0
    server_created: int = 0
    retransmitted: int = 0  # requests, ACKs and responses we sent again
    absorbed: int = 0  # retransmissions received and handled by a transaction
    stray_responses: int = 0
    timeouts: int = 0
    malformed: int = 0  # messages whose Via/CSeq/From could not be read


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


def _status_input(status: int) -> Input:
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


# Short names for the transition tables below.
_S, _In = State, Input

# An action's message is a Response, a Request or None depending on the input
# that selected it, and its self is the machine whose table holds it: a
# dependency on the key that a dict type cannot state, hence the "...".
Action = Callable[..., None]
Table = dict[tuple[State, Input], tuple[State, Action | None]]


# --------------------------------------------------------------------------- machines


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
            self._layer._arm(self, timer, now + delay)

    def _cancel(self, *timers: Input) -> None:
        for timer in timers:
            if self._timers.pop(timer, None) is not None:
                self._layer._stale_one()

    def _send(self, data: bytes) -> None:
        self._layer._outgoing.append((data, self.peer))

    def _send_wire(self) -> None:
        """Send the request (client) or the last response (server) again;
        only states that keep the bytes (see _linger) retransmit."""
        assert self._wire is not None, f"{self!r} has nothing to retransmit"
        self._layer._outgoing.append((self._wire, self.peer))

    # Actions shared by several machines.

    def _absorb(self, msg: object, now: float, events: list) -> None:
        self._layer.stats.absorbed += 1

    def _timeout(self, msg: object, now: float, events: list) -> None:
        self._layer.stats.timeouts += 1
        events.append(TransactionTimeout(self))

    def _transport_error(self, msg: object, now: float, events: list) -> None:
        events.append(TransportError(self))


class ClientTransaction(Transaction):
    """A request we sent (§17.1). ``request`` is what went out."""

    __slots__ = ()
    is_client = True

    def _pass_up(self, msg: Response, now: float, events: list) -> None:
        self.last_response = msg
        self.status = msg.status
        events.append(ResponseReceived(self, msg))

    def _copy_for(self, method: str, to: str) -> Request:
        """The headers an ACK (§17.1.1.3) or a CANCEL (§9.1) copies from the
        request: same Request-URI, one Via equal to the request's top Via (so
        same branch), From, Call-ID, CSeq number, Route set."""
        req = self.request
        assert req is not None, "ACK and CANCEL are built before the transaction lingers"
        from_ = req.get("From")
        assert from_ is not None, "a request we sent has a From"
        headers = [
            ["Via", _top_via_text(req)],
            ["Max-Forwards", "70"],
            ["From", from_],
            ["To", to],
            ["Call-ID", req.call_id],
            ["CSeq", f"{req.cseq} {method}"],
        ]
        headers += [["Route", value] for value in req.get_all("Route")]
        return Request(method, req.uri, headers=headers)


class ClientInviteTransaction(ClientTransaction):
    # Theory of operation (§17.1.1, Figure 5; RFC 6026 Figure 3).
    # CALLING: the INVITE went out. Over UDP timer A retransmits it at T1,
    #   2*T1, 4*T1 ... (no cap); timer B (64*T1) gives up and tells the TU.
    # PROCEEDING: a 1xx arrived; retransmissions stop (the server has it) and
    #   so does timer B: from here the TU decides how long to ring.
    # COMPLETED: a 300-699 arrived; we ACK it ourselves with the INVITE's
    #   branch (the ACK belongs to this transaction) and re-send that ACK for
    #   every retransmitted final, until timer D.
    # ACCEPTED (RFC 6026): a 2xx arrived; every copy goes to the TU, which
    #   ACKs it end-to-end in a new transaction, until timer M.
    __slots__ = ("_ack",)
    is_invite = True
    LINGER = frozenset((State.COMPLETED, State.ACCEPTED))

    def _start(self, now: float) -> None:
        self._ack: bytes | None = None  # our ACK for a non-2xx final, once built
        self._send_wire()
        timers = self._layer.timers
        if not self.reliable:
            self._interval = timers.a
            self._arm(Input.TIMER_A, self._interval, now)
        self._arm(Input.TIMER_B, timers.b, now)

    def create_cancel(self) -> Request:
        """The CANCEL for this INVITE (§9.1). Send it with send_request(); by
        §9.1 only once a provisional response has arrived (state PROCEEDING)."""
        assert self.request is not None, "a lingering INVITE cannot be cancelled"
        to = self.request.get("To")
        assert to is not None, "a request we sent has a To"
        return self._copy_for("CANCEL", to)

    def _retransmit(self, msg: None, now: float, events: list) -> None:
        self._send_wire()
        self._layer.stats.retransmitted += 1
        self._interval *= 2
        self._arm(Input.TIMER_A, self._interval, now)

    def _provisional(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        self._pass_up(msg, now, events)

    def _accept(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        self._arm(Input.TIMER_M, self._layer.timers.m, now)
        self._pass_up(msg, now, events)

    def _complete(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        to = msg.get("To")
        assert to is not None, "the parser refuses a response without To"
        self._ack = bytes(self._copy_for("ACK", to))
        self._send(self._ack)
        self._arm(Input.TIMER_D, self._layer.timers.d(self.reliable), now)
        self._pass_up(msg, now, events)

    def _resend_ack(self, msg: Response, now: float, events: list) -> None:
        assert self._ack is not None, "COMPLETED is entered by _complete, which builds it"
        self._send(self._ack)
        self._layer.stats.retransmitted += 1
        self._layer.stats.absorbed += 1

    TABLE: ClassVar[Table] = {
        (_S.CALLING, _In.TIMER_A): (_S.CALLING, _retransmit),
        (_S.CALLING, _In.TIMER_B): (_S.TERMINATED, Transaction._timeout),
        (_S.CALLING, _In.PROVISIONAL): (_S.PROCEEDING, _provisional),
        (_S.CALLING, _In.SUCCESS): (_S.ACCEPTED, _accept),
        (_S.CALLING, _In.FAILURE): (_S.COMPLETED, _complete),
        (_S.CALLING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, _provisional),
        (_S.PROCEEDING, _In.SUCCESS): (_S.ACCEPTED, _accept),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _complete),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.PROVISIONAL): (_S.COMPLETED, Transaction._absorb),
        # A late 2xx from another fork: the TU must still ACK (and BYE) it.
        (_S.COMPLETED, _In.SUCCESS): (_S.COMPLETED, ClientTransaction._pass_up),
        (_S.COMPLETED, _In.FAILURE): (_S.COMPLETED, _resend_ack),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.TIMER_D): (_S.TERMINATED, None),
        (_S.ACCEPTED, _In.PROVISIONAL): (_S.ACCEPTED, Transaction._absorb),
        (_S.ACCEPTED, _In.SUCCESS): (_S.ACCEPTED, ClientTransaction._pass_up),
        (_S.ACCEPTED, _In.FAILURE): (_S.ACCEPTED, Transaction._absorb),
        (_S.ACCEPTED, _In.TRANSPORT_ERROR): (_S.ACCEPTED, None),
        (_S.ACCEPTED, _In.TIMER_M): (_S.TERMINATED, None),
    }


class ClientNonInviteTransaction(ClientTransaction):
    # Theory of operation (§17.1.2, Figure 6).
    # TRYING: the request went out. Over UDP timer E retransmits it at T1,
    #   2*T1 ... capped at T2; timer F (64*T1) gives up and tells the TU.
    # PROCEEDING: a 1xx arrived; retransmissions continue every T2 (a
    #   non-INVITE must still complete within F, RFC 4320).
    # COMPLETED: a final response arrived and went to the TU; copies of it
    #   are absorbed until timer K.
    __slots__ = ()
    is_invite = False
    LINGER = frozenset((State.COMPLETED,))

    def _start(self, now: float) -> None:
        self._send_wire()
        timers = self._layer.timers
        if not self.reliable:
            self._interval = timers.e
            self._arm(Input.TIMER_E, self._interval, now)
        self._arm(Input.TIMER_F, timers.f, now)

    def _retransmit_trying(self, msg: None, now: float, events: list) -> None:
        self._send_wire()
        self._layer.stats.retransmitted += 1
        self._interval = min(2 * self._interval, self._layer.timers.t2)
        self._arm(Input.TIMER_E, self._interval, now)

    def _retransmit_proceeding(self, msg: None, now: float, events: list) -> None:
        self._send_wire()
        self._layer.stats.retransmitted += 1
        self._interval = self._layer.timers.t2
        self._arm(Input.TIMER_E, self._interval, now)

    def _final(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_E, Input.TIMER_F)
        self._arm(Input.TIMER_K, self._layer.timers.k(self.reliable), now)
        self._pass_up(msg, now, events)

    TABLE: ClassVar[Table] = {
        (_S.TRYING, _In.TIMER_E): (_S.TRYING, _retransmit_trying),
        (_S.TRYING, _In.TIMER_F): (_S.TERMINATED, Transaction._timeout),
        (_S.TRYING, _In.PROVISIONAL): (_S.PROCEEDING, ClientTransaction._pass_up),
        (_S.TRYING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.TRYING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.TRYING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.PROCEEDING, _In.TIMER_E): (_S.PROCEEDING, _retransmit_proceeding),
        (_S.PROCEEDING, _In.TIMER_F): (_S.TERMINATED, Transaction._timeout),
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, ClientTransaction._pass_up),
        (_S.PROCEEDING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.PROVISIONAL): (_S.COMPLETED, Transaction._absorb),
        (_S.COMPLETED, _In.SUCCESS): (_S.COMPLETED, Transaction._absorb),
        (_S.COMPLETED, _In.FAILURE): (_S.COMPLETED, Transaction._absorb),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, None),
        (_S.COMPLETED, _In.TIMER_K): (_S.TERMINATED, None),
    }


class ServerTransaction(Transaction):
    """A request we received (§17.2). ``peer`` is where it came from and
    where every response goes."""

    __slots__ = ()
    is_client = False

    def _respond(self, msg: Response, now: float, events: list) -> None:
        self.last_response = msg
        self.status = msg.status
        self._wire = bytes(msg)
        self._send(self._wire)

    def _resend(self, msg: Request, now: float, events: list) -> None:
        """A retransmitted request: answer it with the very bytes we sent last
        (§17.2.1, §17.2.2); before any response there is nothing to say."""
        self._layer.stats.absorbed += 1
        if self._wire is not None:
            self._send(self._wire)
            self._layer.stats.retransmitted += 1


class ServerInviteTransaction(ServerTransaction):
    # Theory of operation (§17.2.1, Figure 7; RFC 6026 Figure 5).
    # PROCEEDING: the INVITE went to the TU, which should answer 100 at once
    #   (the layer does it when auto_trying is set). Retransmitted INVITEs are
    #   answered with the last provisional response.
    # COMPLETED: the TU sent 300-699. Over UDP timer G re-sends it at T1,
    #   2*T1 ... capped at T2 until the ACK comes; timer H (64*T1) gives up.
    # CONFIRMED: the ACK came; further ACKs are absorbed until timer I.
    # ACCEPTED (RFC 6026): the TU sent a 2xx. The TU, not the layer,
    #   retransmits it (each copy goes through send_response); the ACK is the
    #   TU's business and goes up; INVITE copies are absorbed until timer L.
    __slots__ = ()
    is_invite = True
    LINGER = frozenset((State.CONFIRMED, State.ACCEPTED))

    def _accept(self, msg: Response, now: float, events: list) -> None:
        self._respond(msg, now, events)
        self._arm(Input.TIMER_L, self._layer.timers.l, now)

    def _complete(self, msg: Response, now: float, events: list) -> None:
        self._respond(msg, now, events)
        timers = self._layer.timers
        if not self.reliable:
            self._interval = timers.g
            self._arm(Input.TIMER_G, self._interval, now)
        self._arm(Input.TIMER_H, timers.h, now)

    def _retransmit(self, msg: None, now: float, events: list) -> None:
        self._send_wire()
        self._layer.stats.retransmitted += 1
        self._interval = min(2 * self._interval, self._layer.timers.t2)
        self._arm(Input.TIMER_G, self._interval, now)

    def _confirm(self, msg: Request, now: float, events: list) -> None:
        self._cancel(Input.TIMER_G, Input.TIMER_H)
        self._arm(Input.TIMER_I, self._layer.timers.i(self.reliable), now)

    def _ack_to_tu(self, msg: Request, now: float, events: list) -> None:
        events.append(AckReceived(msg, self.peer))

    TABLE: ClassVar[Table] = {
        (_S.PROCEEDING, _In.REQUEST): (_S.PROCEEDING, ServerTransaction._resend),
        (_S.PROCEEDING, _In.ACK): (_S.PROCEEDING, Transaction._absorb),  # confused peer
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, ServerTransaction._respond),
        (_S.PROCEEDING, _In.SUCCESS): (_S.ACCEPTED, _accept),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _complete),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.REQUEST): (_S.COMPLETED, ServerTransaction._resend),
        (_S.COMPLETED, _In.ACK): (_S.CONFIRMED, _confirm),
        (_S.COMPLETED, _In.TIMER_G): (_S.COMPLETED, _retransmit),
        (_S.COMPLETED, _In.TIMER_H): (_S.TERMINATED, Transaction._timeout),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.CONFIRMED, _In.REQUEST): (_S.CONFIRMED, Transaction._absorb),
        (_S.CONFIRMED, _In.ACK): (_S.CONFIRMED, Transaction._absorb),
        (_S.CONFIRMED, _In.TRANSPORT_ERROR): (_S.CONFIRMED, None),
        (_S.CONFIRMED, _In.TIMER_I): (_S.TERMINATED, None),
        (_S.ACCEPTED, _In.REQUEST): (_S.ACCEPTED, Transaction._absorb),
        (_S.ACCEPTED, _In.ACK): (_S.ACCEPTED, _ack_to_tu),
        (_S.ACCEPTED, _In.SUCCESS): (_S.ACCEPTED, ServerTransaction._respond),
        # RFC 6026 §8.8: the 2xx is the TU's to retransmit, so is its failure.
        (_S.ACCEPTED, _In.TRANSPORT_ERROR): (_S.ACCEPTED, Transaction._transport_error),
        (_S.ACCEPTED, _In.TIMER_L): (_S.TERMINATED, None),
    }


class ServerNonInviteTransaction(ServerTransaction):
    # Theory of operation (§17.2.2, Figure 8).
    # TRYING: the request went to the TU; copies are absorbed in silence.
    # PROCEEDING: the TU sent a 1xx; copies of the request get it again.
    # COMPLETED: the TU sent the final response; copies of the request get it
    #   again until timer J (64*T1 over UDP, the longest the client retries).
    __slots__ = ()
    is_invite = False
    LINGER = frozenset((State.COMPLETED,))

    def _final(self, msg: Response, now: float, events: list) -> None:
        self._respond(msg, now, events)
        self._arm(Input.TIMER_J, self._layer.timers.j(self.reliable), now)

    TABLE: ClassVar[Table] = {
        (_S.TRYING, _In.REQUEST): (_S.TRYING, Transaction._absorb),
        (_S.TRYING, _In.PROVISIONAL): (_S.PROCEEDING, ServerTransaction._respond),
        (_S.TRYING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.TRYING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.TRYING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.PROCEEDING, _In.REQUEST): (_S.PROCEEDING, ServerTransaction._resend),
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, ServerTransaction._respond),
        (_S.PROCEEDING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.REQUEST): (_S.COMPLETED, ServerTransaction._resend),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, None),
        (_S.COMPLETED, _In.TIMER_J): (_S.TERMINATED, None),
    }


# --------------------------------------------------------------------------- matching


def _top_via_text(request: Request) -> str:
    """The top Via as header text, for the ACK and CANCEL that must repeat it."""
    return str(request.via)


def _stamp_via(via: Via, peer: Peer) -> None:
    """Record on the top Via where a request really came from, so that every
    response built from it (make_response copies the Vias) says so too.

    §18.2.1: add received= when the sent-by host is not the source address;
    RFC 3581 §4: when the client asked with a bare rport, fill it with the
    source port and add received= even if the host is the same.
    """
    source = peer.host.strip("[]")
    if via.rport is True:
        via.rport = peer.port
        via.received = source
    elif via.host.strip("[]") != source:
        via.received = source


def _via_identity(via: Via) -> tuple:
    """A top Via as a comparable value, for RFC 2543 matching (§17.2.3)."""
    params = tuple(sorted((str(k).lower(), v) for k, v in via.params.items()))
    return (via.transport.upper(), via.host.lower(), via.port, params)


def _server_key(request: Request, method: str) -> tuple:
    """The key a server transaction is found by (§17.2.3). ``method`` is the
    request's, except ACK and CANCEL looking for their INVITE, which pass
    "INVITE".

    RFC 3261 peers (branch with the magic cookie): branch + sent-by + method.
    RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number, top Via; the
    To tag is checked apart by _to_tag_matches because it is the response's
    To tag that an ACK must carry.
    """
    via = request.via
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        port = via.port or _DEFAULT_PORTS.get(via.transport.upper(), 5060)
        return (branch, via.host.lower(), port, method)
    return (
        "rfc2543",
        str(request.uri),
        request.from_.tag,
        request.call_id,
        request.cseq,
        _via_identity(via),
        method,
    )


def _to_tag_matches(tx: Transaction, request: Request) -> bool:
    """The To tag half of RFC 2543 matching (§17.2.3); always true for RFC 3261 keys."""
    if tx.key[0] != "rfc2543":
        return True
    if request.method == "ACK":
        sent = tx.last_response
        return sent is not None and request.to.tag == sent.to.tag
    assert tx.request is not None, "RFC 2543 transactions keep their request (_linger)"
    return request.to.tag == tx.request.to.tag


# --------------------------------------------------------------------------- the layer


class TransactionLayer:
    """Owns every transaction of one SIP endpoint and their timers.

    Transactions are found by dict lookups and their timers kept in one heap
    (lazy deletion: a cancelled timer stays in the heap, marked stale, until
    it surfaces or a compaction drops it), so that receive, get_timer and
    handle_timer stay O(log n) with thousands of calls in progress.
    """

    new_branch = staticmethod(new_branch)

    def __init__(self, timers: Timers | None = None, *, auto_trying: bool = False) -> None:
        """``auto_trying``: answer every new INVITE with 100 Trying before the
        TU sees it (§17.2.1 wants it within 200 ms; the TU may be slow)."""
        self.timers = timers or Timers()
        self.auto_trying = auto_trying
        self.stats = TransactionStats()
        self._clients: dict[tuple, ClientTransaction] = {}
        self._servers: dict[tuple, ServerTransaction] = {}
        self._heap: list[tuple[float, int, Transaction, Input]] = []
        self._token = 0
        self._stale = 0
        self._outgoing: list[tuple[bytes, Peer]] = []

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    # ------------------------------------------------------------ inputs

    def receive(self, message: Request | Response, peer: Peer, now: float) -> list[Event]:
        """Feed one parsed message that arrived from ``peer``.

        A request or response whose Via/CSeq/From cannot be read is counted
        in stats.malformed; a request then gets the SipError's response
        statelessly when one can be built (§8.2, §16.3), never a traceback.
        """
        try:
            if isinstance(message, Response):
                return self._receive_response(message, peer, now)
            return self._receive_request(message, peer, now)
        except SipError as err:
            self.stats.malformed += 1
            if isinstance(message, Request) and message.method != "ACK" and not err.drop:
                # A response needs the request's Via to be routed back (§8.2.6.2);
                # without one there is no answer to give, only the counter.
                try:
                    if message.vias:
                        reply = make_response(message, err.status, err.reason)
                        self._outgoing.append((bytes(reply), peer))
                except SipError:
                    pass
            return []

    def _receive_response(self, response: Response, peer: Peer, now: float) -> list[Event]:
        # §17.1.3: top Via branch and CSeq method identify the client transaction.
        tx = self._clients.get((response.via.branch, response.cseq_method))
        if tx is None:
            self.stats.stray_responses += 1
            return [StrayResponse(response, peer)]
        events: list[Event] = []
        tx._step(_status_input(response.status), response, now, events)
        return events

    def _receive_request(self, request: Request, peer: Peer, now: float) -> list[Event]:
        _stamp_via(request.via, peer)
        method = request.method
        events: list[Event] = []
        if method == "ACK":
            # §17.2.3: an ACK matches the INVITE it acknowledges. Only the
            # ACK for a non-2xx does; the ACK for a 2xx has its own branch and
            # goes to the TU (RFC 6026 §8.7 sends it there in Accepted too).
            tx = self._servers.get(_server_key(request, "INVITE"))
            if tx is None or not tx.is_invite or not _to_tag_matches(tx, request):
                return [AckReceived(request, peer)]
            tx._step(Input.ACK, request, now, events)
            return events
        key = _server_key(request, method)
        tx = self._servers.get(key)
        if tx is not None and _to_tag_matches(tx, request):
            tx._step(Input.REQUEST, request, now, events)
            return events
        cls = ServerInviteTransaction if method == "INVITE" else ServerNonInviteTransaction
        tx = cls(self, key, request, peer, State.PROCEEDING if cls.is_invite else State.TRYING)
        self._servers[key] = tx
        self.stats.server_created += 1
        events.append(RequestReceived(tx, request, peer))
        if cls.is_invite and self.auto_trying:
            tx._step(Input.PROVISIONAL, make_response(request, 100), now, events)
        return events

    def send_request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        """Start a client transaction; the request goes out at once.

        The caller built the top Via with a fresh branch (new_branch()): the
        layer adds nothing, so what is sent is exactly what the TU made. An
        ACK for a 2xx is no transaction (§17.1.1.3): use send_stateless().
        """
        if request.method == "ACK":
            raise ValueError("an ACK for a 2xx is not a transaction: use send_stateless()")
        branch = request.via.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError(f"request branch {branch!r} lacks the {MAGIC_COOKIE} cookie")
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"a client transaction with branch {branch} is in progress")
        cls = ClientInviteTransaction if request.method == "INVITE" else ClientNonInviteTransaction
        tx = cls(self, key, request, peer, State.CALLING if cls.is_invite else State.TRYING)
        self._clients[key] = tx
        self.stats.client_created += 1
        tx._start(now)
        return tx

    def send_response(
        self, tx_or_request: ServerTransaction | Request, response: Response, now: float
    ) -> list[Event]:
        """Send a response within its server transaction.

        A 2xx to an INVITE whose transaction has already ended (timer L) is
        still sent, statelessly: the TU retransmits 2xx until the ACK comes
        and should not have to race the transaction's lifetime.
        """
        if isinstance(tx_or_request, ServerTransaction):
            tx = tx_or_request
        else:
            found = self.find_server(tx_or_request)
            if found is None:
                raise LookupError("no server transaction for this request")
            tx = found
        if tx.state is State.TERMINATED:
            if tx.is_invite and 200 <= response.status < 300:
                self._outgoing.append((bytes(response), tx.peer))
                return []
            raise TransitionError(f"{tx!r} is terminated: cannot send {response.status}")
        events: list[Event] = []
        tx._step(_status_input(response.status), response, now, events)
        return events

    def send_stateless(self, message: Request | Response, peer: Peer) -> None:
        """Send outside any transaction: the ACK for a 2xx, a stray answer."""
        self._outgoing.append((bytes(message), peer))

    def transport_error(self, tx: Transaction, now: float) -> list[Event]:
        """The edge could not send for ``tx`` (ICMP error, TCP reset): §17.1.4, §17.2.4."""
        if tx.state is State.TERMINATED:
            return []
        events: list[Event] = []
        tx._step(Input.TRANSPORT_ERROR, None, now, events)
        return events

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` created or belongs to."""
        method = "INVITE" if request.method == "ACK" else request.method
        tx = self._servers.get(_server_key(request, method))
        if tx is not None and _to_tag_matches(tx, request):
            return tx
        return None

    def find_server_invite(self, cancel: Request) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL cancels (§9.2: matched like
        the INVITE itself, §17.2.3), so the TU can answer it 487; None when
        the CANCEL matches nothing (the TU then answers the CANCEL 481).
        Only a transaction still in PROCEEDING can take the 487; one that has
        already sent its final response just gets the CANCEL's 200."""
        tx = self._servers.get(_server_key(cancel, "INVITE"))
        if isinstance(tx, ServerInviteTransaction) and _to_tag_matches(tx, cancel):
            return tx
        return None

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """Everything queued for the wire since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, or None when idle."""
        heap = self._heap
        while heap:
            deadline, token, tx, timer = heap[0]
            if tx._timers.get(timer) == token:
                return deadline
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``."""
        events: list[Event] = []
        heap = self._heap
        # A fired timer re-arms at most one timer, always after ``now``, so
        # the number of due entries drops on every turn: len(heap) bounds it.
        for _ in range(len(heap)):
            if not heap or heap[0][0] > now:
                break
            _, token, tx, timer = heapq.heappop(heap)
            if tx._timers.get(timer) != token:
                self._stale -= 1
                continue
            del tx._timers[timer]
            tx._step(timer, None, now, events)
        return events

    # ------------------------------------------------------------ internals

    def _arm(self, tx: Transaction, timer: Input, deadline: float) -> None:
        if timer in tx._timers:
            self._stale += 1
        self._token += 1
        tx._timers[timer] = self._token
        heapq.heappush(self._heap, (deadline, self._token, tx, timer))

    def _stale_one(self) -> None:
        self._stale += 1
        # Cancelled timers would otherwise sit in the heap until their
        # deadline (up to 64*T1): compact once they are most of it.
        if self._stale > 256 and 2 * self._stale > len(self._heap):
            # In place: handle_timer may be iterating over this very list.
            self._heap[:] = [e for e in self._heap if e[2]._timers.get(e[3]) == e[1]]
            heapq.heapify(self._heap)
            self._stale = 0

    def _remove(self, tx: Transaction) -> None:
        for _ in tx._timers:
            self._stale += 1
        tx._timers.clear()
        table: dict = self._clients if tx.is_client else self._servers
        if table.get(tx.key) is tx:
            del table[tx.key]

"""The B2BUA's state, as data: call and fork state machines, refusals, the records.

Theory of operation
-------------------
A *call* joins two SIP dialogs through one bearer session.  Leg 0 is the
caller (A, we are its UAS), leg 1 the callee (B, we are its UAC); the bearer
numbers its legs the same way.  Every step of a call is one input to
``CALL_TRANSITIONS``, the only place that says which step may follow which;
``Call.step`` raises ``TransitionError`` on any pair missing from it:

    ALLOCATING   A's INVITE passed auth and routing; ALLOCATE is in flight.
       | ALLOCATED: INVITE to every binding of B      | ROOM_ALLOCATED: JOIN sent
    CALLING      forks ring; 1xx relayed to A      JOINING    (a conference)
       | CALLEE_ANSWERED: first 2xx wins,                | JOINED
       |   other forks CANCELled, bearer UPDATE sent     |
    CONNECTING   waiting for the bearer's Updated        |
       | MEDIA_READY: 200 to A                           |
    ANSWERED  <------------------------------------------+
       | CALLER_ACK: ACK to B (the 2xx's ACK is end to end, RFC 3261 §13.2.2.4)
    CONFIRMED  <--REINVITE_DONE--  REINVITING  (a hold/resume re-INVITE relayed)
       |     ^                        ^ REINVITE
       |     +--MOVED--  MOVING  <--ALLOCATED--  REALLOCATING
       |                 (both phones re-INVITEd)   ^ BEARER_LOST: its bearer
       |                                              died; ALLOCATE elsewhere
    any live state --HANGUP--> TERMINATING (BYE/CANCEL sent, DELETE in flight)
                                  | DELETED: CDR written
                               ENDED
    ALLOCATING, REALLOCATING --HANGUP--> ABANDONED: hung up with its ALLOCATE
       in flight; ALLOCATED sends the DELETE (TERMINATING), a refused or lost
       ALLOCATE leaves nothing to delete (DELETED: ENDED).

What the state does not say is data on ``Call``: ``pending`` holds the
bearer requests (UPDATE, JOIN) the next step waits for, and the state says
which step that is when the last one is answered (CALLING: early media to
A; CONNECTING, JOINING: 200 to A; REINVITING: the re-INVITE's 2xx; MOVING:
MOVED once both phones answered too).  A call whose bearer is gone is hung
up with ``bearer_gone`` (an input of the hang-up, not a flag on the call):
no DELETE is sent to a bearer that cannot answer.

A *fork* is one INVITE client transaction to one binding of the callee
(``FORK_TRANSITIONS``).  A fork told to stop before any provisional response
must wait for one before its CANCEL may go out (§9.1: CANCEL_PENDING); one
that answers 2xx after losing is ACKed and sent BYE at once (§13.2.2.4:
DROPPED).  Network input that a state cannot take (a 180 after the answer, a
BYE for a call already hanging up) is filtered by the handlers with ``can``
or ``live``; a transition missing from a table is a bug and raises.

Every way the switch itself refuses or ends an INVITE is one ``Refusal``,
mapped in ``REFUSALS`` to the SIP status sent and the CDR disposition (None:
not a call attempt, no CDR: a digest challenge, a malformed request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

from softswitch.model.cdr import Disposition
from softswitch.sip.transaction import TransitionError

if TYPE_CHECKING:
    from softswitch.calls.media import Sdes
    from softswitch.model.users import Binding, User
    from softswitch.protocol import LegSpec, LegStats
    from softswitch.sip.dialog import Dialog
    from softswitch.sip.message import Request, Response
    from softswitch.sip.offeranswer import LegOrigin
    from softswitch.sip.sdp import Codec, SessionDescription
    from softswitch.sip.transaction import (
        ClientInviteTransaction,
        ClientTransaction,
        Peer,
        ServerTransaction,
    )

__all__ = [
    "ALLOW",
    "CALLEE",
    "CALLER",
    "CALL_TRANSITIONS",
    "FORK_TRANSITIONS",
    "LIVE_STATES",
    "REFUSALS",
    "Call",
    "CallInput",
    "CallState",
    "Fork",
    "ForkInput",
    "ForkState",
    "Leg",
    "Refusal",
    "Timer",
    "TransitionError",
    "best_response",
    "disposition_for",
    "resend_timer",
]

CALLER, CALLEE = 0, 1  # leg numbers, the bearer's too

#: The methods the B2BUA takes (§20.5), in 405s, OPTIONS answers and our INVITEs.
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"


class CallState(Enum):
    ALLOCATING = auto()
    CALLING = auto()
    JOINING = auto()
    CONNECTING = auto()
    ANSWERED = auto()
    CONFIRMED = auto()
    REINVITING = auto()
    REALLOCATING = auto()  # its bearer died: ALLOCATE elsewhere (softswitch.calls.failover)
    MOVING = auto()  # allocated elsewhere: both phones re-INVITEd to the new bearer
    TERMINATING = auto()
    ABANDONED = auto()  # hung up while its ALLOCATE was in flight
    ENDED = auto()


class CallInput(Enum):
    ALLOCATED = auto()
    ROOM_ALLOCATED = auto()
    PROGRESS = auto()  # a 1xx relayed (with or without early media)
    CALLEE_ANSWERED = auto()
    MEDIA_READY = auto()
    JOINED = auto()
    CALLER_ACK = auto()
    REINVITE = auto()
    REINVITE_DONE = auto()
    BEARER_LOST = auto()
    MOVED = auto()
    HANGUP = auto()
    DELETED = auto()


_C, _I = CallState, CallInput

#: The states in which a call still has signalling to tear down.
LIVE_STATES = frozenset(s for s in CallState if s not in (_C.TERMINATING, _C.ABANDONED, _C.ENDED))
#: The live states with an ALLOCATE in flight: a hang-up must wait for its answer.
_ALLOCATING = (_C.ALLOCATING, _C.REALLOCATING)

CALL_TRANSITIONS: dict[tuple[CallState, CallInput], CallState] = {
    (_C.ALLOCATING, _I.ALLOCATED): _C.CALLING,
    (_C.ALLOCATING, _I.ROOM_ALLOCATED): _C.JOINING,
    (_C.CALLING, _I.PROGRESS): _C.CALLING,
    (_C.CALLING, _I.CALLEE_ANSWERED): _C.CONNECTING,
    (_C.CONNECTING, _I.MEDIA_READY): _C.ANSWERED,
    (_C.JOINING, _I.JOINED): _C.ANSWERED,
    (_C.ANSWERED, _I.CALLER_ACK): _C.CONFIRMED,
    (_C.CONFIRMED, _I.REINVITE): _C.REINVITING,
    (_C.REINVITING, _I.REINVITE_DONE): _C.CONFIRMED,
    (_C.CONFIRMED, _I.BEARER_LOST): _C.REALLOCATING,
    (_C.REALLOCATING, _I.ALLOCATED): _C.MOVING,
    (_C.MOVING, _I.MOVED): _C.CONFIRMED,
    **{(state, _I.HANGUP): _C.TERMINATING for state in LIVE_STATES if state not in _ALLOCATING},
    **{(state, _I.HANGUP): _C.ABANDONED for state in _ALLOCATING},
    (_C.ABANDONED, _I.ALLOCATED): _C.TERMINATING,
    (_C.ABANDONED, _I.DELETED): _C.ENDED,
    (_C.TERMINATING, _I.DELETED): _C.ENDED,
}


class ForkState(Enum):
    TRYING = auto()  # INVITE sent, nothing back yet
    RINGING = auto()  # a provisional response arrived
    CANCEL_PENDING = auto()  # told to stop before any 1xx: CANCEL waits for one (§9.1)
    CANCELLED = auto()  # CANCEL sent, the 487 is on its way
    ANSWERED = auto()  # this fork won
    FAILED = auto()  # a 3xx-6xx, or timer B (408)
    DROPPED = auto()  # answered after losing: ACKed and sent BYE (§13.2.2.4)


class ForkInput(Enum):
    PROVISIONAL = auto()
    SUCCESS = auto()
    FAILURE = auto()
    TIMEOUT = auto()
    CANCEL = auto()


_F, _FI = ForkState, ForkInput

FORK_TRANSITIONS: dict[tuple[ForkState, ForkInput], ForkState] = {
    (_F.TRYING, _FI.PROVISIONAL): _F.RINGING,
    (_F.TRYING, _FI.SUCCESS): _F.ANSWERED,
    (_F.TRYING, _FI.FAILURE): _F.FAILED,
    (_F.TRYING, _FI.TIMEOUT): _F.FAILED,
    (_F.TRYING, _FI.CANCEL): _F.CANCEL_PENDING,
    (_F.RINGING, _FI.PROVISIONAL): _F.RINGING,
    (_F.RINGING, _FI.SUCCESS): _F.ANSWERED,
    (_F.RINGING, _FI.FAILURE): _F.FAILED,
    (_F.RINGING, _FI.TIMEOUT): _F.FAILED,
    (_F.RINGING, _FI.CANCEL): _F.CANCELLED,
    (_F.CANCEL_PENDING, _FI.PROVISIONAL): _F.CANCELLED,
    (_F.CANCEL_PENDING, _FI.SUCCESS): _F.DROPPED,
    (_F.CANCEL_PENDING, _FI.FAILURE): _F.FAILED,
    (_F.CANCEL_PENDING, _FI.TIMEOUT): _F.FAILED,
    (_F.CANCEL_PENDING, _FI.CANCEL): _F.CANCEL_PENDING,
    (_F.CANCELLED, _FI.PROVISIONAL): _F.CANCELLED,
    (_F.CANCELLED, _FI.SUCCESS): _F.DROPPED,
    (_F.CANCELLED, _FI.FAILURE): _F.FAILED,
    (_F.CANCELLED, _FI.TIMEOUT): _F.FAILED,
    (_F.CANCELLED, _FI.CANCEL): _F.CANCELLED,
    (_F.ANSWERED, _FI.PROVISIONAL): _F.ANSWERED,
    (_F.ANSWERED, _FI.SUCCESS): _F.ANSWERED,  # a retransmitted 2xx: ACK it again
    (_F.ANSWERED, _FI.CANCEL): _F.ANSWERED,  # the winner is hung up with BYE
    (_F.FAILED, _FI.PROVISIONAL): _F.FAILED,
    (_F.FAILED, _FI.SUCCESS): _F.DROPPED,  # another branch behind a forking proxy
    (_F.FAILED, _FI.FAILURE): _F.FAILED,
    (_F.FAILED, _FI.CANCEL): _F.FAILED,
    (_F.DROPPED, _FI.PROVISIONAL): _F.DROPPED,
    (_F.DROPPED, _FI.SUCCESS): _F.DROPPED,
    (_F.DROPPED, _FI.FAILURE): _F.DROPPED,
    (_F.DROPPED, _FI.CANCEL): _F.DROPPED,
}


class Timer(Enum):
    """The call timers (one heap in softswitch.calls.table.CallTable)."""

    NO_ANSWER = auto()  # calls.no_answer_timeout after the INVITEs went out
    RESEND_CALLER = auto()  # our 2xx to leg 0 again, until its ACK (§13.3.1.4)
    RESEND_CALLEE = auto()  # our 2xx to leg 1 (a re-INVITE it sent)
    FORGET = auto()  # stop waiting for the last forks' final responses (§9.1: 64*T1)
    MOVE = auto()  # a move to another bearer not done within 64*T1: hang up


def resend_timer(leg: int) -> Timer:
    return Timer.RESEND_CALLER if leg == CALLER else Timer.RESEND_CALLEE


class Refusal(Enum):
    """Why the switch refuses an INVITE, or ends one it accepted, itself."""

    MALFORMED = auto()  # broken SDP or headers a dialog needs (§8.2)
    CHALLENGE = auto()  # no or wrong credentials: a fresh challenge (§22.3)
    BAD_CREDENTIALS = auto()  # unparseable Proxy-Authorization
    FORBIDDEN = auto()  # user disabled, or From is not the authenticated user
    TOO_MANY_HOPS = auto()  # Max-Forwards 0 (§8.2.2.1... §16.3 step 3)
    MERGED = auto()  # the same INVITE again over another path (§8.2.2.2)
    UNKNOWN_CALLEE = auto()
    NOT_REGISTERED = auto()
    CALLER_OVER_LIMIT = auto()
    CALLEE_OVER_LIMIT = auto()
    DO_NOT_DISTURB = auto()  # the callee's DND, no forward_busy
    FORWARD_LOOP = auto()  # forwarding back to a user in the chain, or too many hops
    NOT_ACCEPTABLE = auto()  # no usable SDP offer or codec (§21.4.26)
    NO_BEARER = auto()  # every bearer down or full
    ROOM_BEARER_UNAVAILABLE = auto()  # the bearer hosting a live room is down or full
    BEARER_FAILED = auto()  # ALLOCATE/UPDATE/JOIN refused or timed out
    CALLEE_FAILED = auto()  # the callee's 2xx came with unusable SDP
    NO_ANSWER = auto()  # rang for calls.no_answer_timeout
    CANCELLED = auto()  # the caller's CANCEL (§9.2)
    SHUTTING_DOWN = auto()
    REQUEST_PENDING = auto()  # re-INVITE glare (§14.2)
    NO_DIALOG = auto()
    NOT_ALLOWED = auto()


#: The one table of refusals: status sent, and the CDR disposition (None: no CDR).
REFUSALS: dict[Refusal, tuple[int, Disposition | None]] = {
    Refusal.MALFORMED: (400, None),
    Refusal.CHALLENGE: (407, None),
    Refusal.BAD_CREDENTIALS: (400, None),
    Refusal.FORBIDDEN: (403, Disposition.REJECTED),
    Refusal.TOO_MANY_HOPS: (483, Disposition.REJECTED),
    Refusal.MERGED: (482, None),
    Refusal.UNKNOWN_CALLEE: (404, Disposition.REJECTED),
    Refusal.NOT_REGISTERED: (480, Disposition.REJECTED),
    Refusal.CALLER_OVER_LIMIT: (486, Disposition.REJECTED),
    Refusal.CALLEE_OVER_LIMIT: (486, Disposition.REJECTED),
    Refusal.DO_NOT_DISTURB: (486, Disposition.BUSY),
    Refusal.FORWARD_LOOP: (482, Disposition.REJECTED),
    Refusal.NOT_ACCEPTABLE: (488, Disposition.REJECTED),
    Refusal.NO_BEARER: (503, Disposition.FAILED),
    Refusal.ROOM_BEARER_UNAVAILABLE: (503, Disposition.FAILED),
    Refusal.BEARER_FAILED: (503, Disposition.FAILED),
    Refusal.CALLEE_FAILED: (502, Disposition.FAILED),
    Refusal.NO_ANSWER: (480, Disposition.NO_ANSWER),
    Refusal.CANCELLED: (487, Disposition.CANCELLED),
    Refusal.SHUTTING_DOWN: (503, Disposition.FAILED),
    Refusal.REQUEST_PENDING: (491, None),
    Refusal.NO_DIALOG: (481, None),
    Refusal.NOT_ALLOWED: (405, None),
}


def disposition_for(status: int) -> Disposition:
    """The CDR disposition of a callee's final answer relayed to the caller."""
    if 200 <= status < 300:
        return Disposition.ANSWERED
    if status in (486, 600):
        return Disposition.BUSY
    if status in (408, 480):
        return Disposition.NO_ANSWER
    if status == 487:
        return Disposition.CANCELLED
    if 500 <= status < 600:
        return Disposition.FAILED
    return Disposition.REJECTED


# §16.7 step 6 orders by class, a 6xx wins outright; within 4xx the codes
# that say least (408 timeout, 480, 487 after our own CANCEL) come last and a
# real "busy" first, so two devices of one user, one busy and one not
# answering, tell the caller "busy".
_WEAK_4XX = {486: 0, 480: 2, 408: 3, 487: 4}


def _rank(status: int) -> tuple[int, int, int]:
    klass = status // 100
    if klass == 6:
        return (0, 0, status)
    order = {4: 1, 5: 2, 3: 3}.get(klass, 4)
    return (order, _WEAK_4XX.get(status, 1) if klass == 4 else 0, status)


def best_response(statuses: list[int]) -> int:
    """The final status to give the caller when every fork failed (§16.7).

    A B2BUA cannot relay what only makes sense hop by hop: 3xx (the caller
    would redirect to our callee's devices) becomes 480, a challenge from a
    phone (401/407, its realm, not ours) becomes 403, and 503 becomes 500 so
    the caller does not take *us* for overloaded (§16.7 step 6).
    """
    if not statuses:
        return 480
    best = min(statuses, key=_rank)
    if 300 <= best < 400:
        return 480
    if best in (401, 407):
        return 403
    if best == 503:
        return 500
    return best


# --------------------------------------------------------------------------- records


@dataclass(slots=True, eq=False)
class Leg:
    """One side's media and signalling: what the phone said, what we told it,
    and what the bearer was told, complete enough to rebuild the session on
    another bearer (DESIGN.md: calls that survive a bearer crash)."""

    peer: Peer | None  # where its requests go: the source it registered or called from
    origin: LegOrigin | None = None  # our o= line towards it, once the bearer is known
    dialog: Dialog | None = None
    sdp: SessionDescription | None = None  # the phone's last description
    index: int = 0  # its audio m-line
    codecs: tuple[Codec, ...] = ()  # usable codecs, the phone's numbering
    selected: Codec | None = None
    sent: SessionDescription | None = None  # our last description to the phone
    spec: LegSpec | None = None  # what the bearer has for this leg
    sdes: Sdes | None = None  # its SRTP (keys kept out of the repr), None: plain RTP


@dataclass(slots=True, eq=False)
class Fork:
    """One INVITE to one binding of the callee."""

    binding: Binding
    peer: Peer
    request: Request
    tx: ClientInviteTransaction
    state: ForkState = ForkState.TRYING
    status: int | None = None
    dialog: Dialog | None = None
    ack: Request | None = None  # our ACK for its 2xx, re-sent for each copy of the 2xx

    def step(self, inp: ForkInput) -> ForkState:
        nxt = FORK_TRANSITIONS.get((self.state, inp))
        if nxt is None:
            raise TransitionError(f"fork in {self.state.name} cannot take {inp.name}")
        self.state = nxt
        return nxt


@dataclass(slots=True, eq=False)
class Reinvite:
    """A re-INVITE being relayed from leg ``source`` to the other leg."""

    source: int
    tx: ServerTransaction
    request: Request
    offer: SessionDescription
    codecs: tuple[Codec, ...]  # the usable codecs of the offer
    sdes: Sdes | None = None  # the source leg's SRTP as the offer has it
    out: ClientTransaction | None = None
    answer: Response | None = None  # the other leg's 2xx, its ACK waits for ours


@dataclass(slots=True, eq=False)
class Call:
    """Everything the switch knows about one call attempt."""

    session_id: int
    a_tx: ServerTransaction
    a_request: Request
    a_tag: str
    caller: User
    callee: User | None  # None for a conference
    callee_aor: str
    room: str | None
    start: float
    legs: list[Leg]
    bearer: Any = None  # softswitch.bearerpool.Bearer
    bindings: tuple[Binding, ...] = ()  # to fork to, once allocated
    # Call forwarding (calls.routing): the users forwarded from, the dialled one first
    # (``callee`` is then the target), and where the current target's forks start.
    forwarded_from: tuple[str, ...] = ()
    first_fork: int = 0
    flags: int = 0
    record: bool = False  # recorded from the start: RECORD with our path once allocated
    address: str | None = None  # the bearer's media address
    ports: tuple[int, ...] = ()
    state: CallState = CallState.ALLOCATING
    forks: list[Fork] = field(default_factory=list)
    winner: Fork | None = None
    answer: float | None = None
    end: float | None = None
    status: int | None = None  # final status A got, for the CDR
    disposition: Disposition | None = None
    recording: str | None = None
    dtmf: list[str] = field(default_factory=list)
    pending: set[int] = field(default_factory=set)  # bearer requests the next step waits on
    early: Fork | None = None  # the fork whose early media the bearer carries
    b_invite_cseq: int = 0
    reinvite: Reinvite | None = None
    moving: dict[int, ClientTransaction] = field(default_factory=dict)  # leg -> its re-INVITE
    # Our re-INVITEs (hold/resume, moves), kept in the manager's transaction
    # table for their 2xx retransmissions (ACKed again) until the call is forgotten.
    reinvites: list[ClientTransaction] = field(default_factory=list)
    acks: dict[int, tuple[int, Request]] = field(default_factory=dict)  # leg -> CSeq, our ACK
    timers: dict[Timer, int] = field(default_factory=dict)  # armed timer -> heap token
    # leg -> [tx, our 2xx, interval, give-up time, CSeq of the other leg's INVITE to ACK]
    resend: dict[int, list[Any]] = field(default_factory=dict)
    stats: tuple[LegStats, ...] = ()

    def can(self, inp: CallInput) -> bool:
        return (self.state, inp) in CALL_TRANSITIONS

    def step(self, inp: CallInput) -> CallState:
        nxt = CALL_TRANSITIONS.get((self.state, inp))
        if nxt is None:
            raise TransitionError(f"call in {self.state.name} cannot take {inp.name}")
        self.state = nxt
        return nxt

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

"""Each B2BUA handler alone: a real CallTable, a fake Outputs, a fake clock.

``FakeOutputs`` records what a handler asked to send, in order, as
(kind, what) pairs (("reply", 407), ("invite", "bob"), ("bearer", "Allocate")
...); responses and requests it must hand back are real SIP messages, built
with the message API, so that dialogs form as on the wire.  No transaction
layer and no bearer protocol client exist here: that is the point.  The
whole B2BUA, wired, is tested in test_calls*.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

from softswitch.calls.failover import FailoverHandler
from softswitch.calls.midcall import MidCallHandler
from softswitch.calls.outputs import SDP, DelayHistogram
from softswitch.calls.routes import Routes
from softswitch.calls.setup import SetupHandler
from softswitch.calls.state import (
    CALLEE,
    CALLER,
    Call,
    CallInput,
    CallState,
    Leg,
    Timer,
    TransitionError,
)
from softswitch.calls.table import CallTable
from softswitch.daemon.settings import load_control_config
from softswitch.location import Location
from softswitch.model.cdr import Cdr, Disposition
from softswitch.model.users import Binding
from softswitch.protocol import Allocate, Allocated, Message
from softswitch.sip.dialog import Dialog
from softswitch.sip.digest import DigestServer
from softswitch.sip.message import Address, Request, Response, make_response
from softswitch.sip.transaction import Peer, State
from tests.unit.control.calls_harness import DOMAIN, T0, Switch, sdp

BEARER_ADDRESS = "203.0.113.5"


@dataclass(eq=False)
class FakeTx:
    """Stands in for a transaction: a hashable key with the fields handlers read."""

    peer: Peer
    request: Request | None = None
    state: State = State.PROCEEDING
    last_response: Response | None = None
    status: int = 0


@dataclass(eq=False)
class FakeBearer:
    id: int
    peer: Any
    name: str = ""
    up: bool = True
    auth_failed: bool = False
    sessions: int = 0
    capacity: int = 10


class FakePool:
    def __init__(self) -> None:
        self.bearers = [FakeBearer(1, "b1", "b1"), FakeBearer(2, "b2", "b2")]

    def choose(self) -> FakeBearer | None:
        up = [b for b in self.bearers if b.up]
        return up[0] if up else None


class FakeOutputs:
    """Outputs that only record (see the module docstring)."""

    t1, t2 = 0.5, 4.0

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.requests: list[tuple[Request, Peer, FakeTx]] = []
        self.bearer_sent: list[tuple[Any, Message, int]] = []
        self.responses: list[tuple[Any, Response]] = []
        self.cdrs: list[Cdr] = []
        self.counters: dict[str, int] = {}
        self.setup_delay = DelayHistogram()
        self._rids = itertools.count(1)
        self._ids = itertools.count(1)

    def kinds(self) -> list[tuple[str, Any]]:
        out, self.sent = self.sent, []
        return out

    # who we are
    def serves(self, transport: str) -> bool:
        return transport in ("udp", "tcp")

    def contact_for(self, peer: Peer) -> str:
        return "<sip:192.0.2.1:5060>"

    # responses
    def trying(self, tx: Any, request: Request, now: float) -> None:
        self.sent.append(("reply", 100))

    def reply(self, tx: Any, request: Request, status: int, now: float, **kw: Any) -> None:
        self.sent.append(("reply", status))
        self.responses.append((tx, make_response(request, status, kw.get("reason"))))

    def a_response(self, call: Call, status: int, *, reason: str | None = None, body: bytes = b""):
        response = make_response(call.a_request, status, reason, to_tag=call.a_tag)
        response.add("Contact", "<sip:192.0.2.1:5060>")
        if body:
            response.add("Content-Type", SDP)
            response.body = body
        return response

    def reply_a(self, call: Call, status: int, now: float, **kw: Any) -> None:
        self.sent.append(("reply_a", status))

    def leg_response(self, peer: Peer, request: Request, status: int, body: bytes) -> Response:
        return make_response(request, status)

    def respond(self, tx: Any, response: Response, now: float) -> None:
        self.sent.append(("respond", response.status))
        self.responses.append((tx, response))

    # requests
    def invite(
        self,
        uri: Any,
        peer: Peer,
        from_: Address,
        to: str,
        max_forwards: int | None,
        body: bytes,
        path: str | None,
        now: float,
    ) -> tuple[Request, FakeTx]:
        n = next(self._ids)
        request = Request(
            "INVITE",
            uri,
            headers=[
                ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfork{n}"),
                ("From", str(from_)),
                ("To", to),
                ("Call-ID", f"fork-{n}"),
                ("CSeq", "1 INVITE"),
                ("Contact", "<sip:192.0.2.1:5060>"),
                ("Content-Type", SDP),
            ],
            body=body,
        )
        tx = FakeTx(peer, request)
        self.sent.append(("invite", peer.host))
        self.requests.append((request, peer, tx))
        return request, tx

    def request(self, dialog: Dialog, peer: Peer, method: str, now: float, **kw: Any) -> FakeTx:
        via = f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{next(self._ids)}"
        request = dialog.create_request(method, via=via, body=kw.get("body", b""))
        tx = FakeTx(peer, request)
        self.sent.append((method, peer.host))
        self.requests.append((request, peer, tx))
        return tx

    def cancel(self, tx: FakeTx, peer: Peer, now: float) -> FakeTx:
        self.sent.append(("CANCEL", peer.host))
        return FakeTx(peer)

    def ack(self, dialog: Dialog, cseq: int, peer: Peer) -> Request:
        self.sent.append(("ACK", peer.host))
        return dialog.create_ack(cseq, via=f"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa{cseq}")

    def resend(self, message: Request, peer: Peer) -> None:
        self.sent.append(("ACK again", peer.host))

    # bearers, records
    def bearer(self, bearer: Any, message: Message, now: float) -> int:
        rid = next(self._rids)
        self.sent.append(("bearer", type(message).__name__))
        self.bearer_sent.append((bearer, message, rid))
        return rid

    def cdr(self, cdr: Cdr) -> None:
        self.cdrs.append(cdr)

    def bump(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


ALICE = Peer("udp", "198.51.100.10", 5060)
BOB = Peer("udp", "198.51.100.20", 5060)
BOB2 = Peer("udp", "198.51.100.21", 5060)


@dataclass
class World:
    """One CallTable, one FakeOutputs, the three handlers, a clock."""

    now: float = T0
    table: CallTable = field(default_factory=lambda: CallTable(DOMAIN))
    out: FakeOutputs = field(default_factory=FakeOutputs)
    pool: FakePool = field(default_factory=FakePool)
    location: Location = field(default_factory=Location)

    def __post_init__(self) -> None:
        self.config = load_control_config(
            "/nonexistent/softswitch.conf",
            overrides={("sip", "domain"): DOMAIN, ("calls", "no_answer_timeout"): 30},
        )
        users = Switch()  # the harness's directory and digest server: alice, bob ...
        self.directory = users.directory
        self.auth: DigestServer = users.auth
        self.setup = SetupHandler(
            self.table,
            self.out,  # type: ignore[arg-type]
            config=self.config,
            directory=self.directory,
            location=self.location,
            bearers=self.pool,
            auth=self.auth,
        )
        self.invite_txs: dict[str, FakeTx] = {}
        self.midcall = MidCallHandler(
            self.table,
            self.out,  # type: ignore[arg-type]
            config=self.config,
            find_invite=lambda r: self.invite_txs.get(r.call_id),  # type: ignore[arg-type,return-value]
        )
        self.failover = FailoverHandler(
            self.table,
            self.out,  # type: ignore[arg-type]
            config=self.config,
            bearers=self.pool,
        )
        self.routes = Routes()
        for handler in (self.setup, self.midcall, self.failover):
            handler.register(self.routes)

    def register(self, peer: Peer, user: str = "bob") -> None:
        self.location.save(
            Binding(
                username=user,
                domain=DOMAIN,
                contact=f"sip:{user}@{peer.host}:{peer.port}",
                expires_at=self.now + 3600,
                source_transport="udp",
                source_host=peer.host,
                source_port=peer.port,
                call_id=f"reg-{peer.host}",
                cseq=1,
            )
        )

    def fire_due(self) -> None:
        while (due := self.table.pop_expired(self.now)) is not None:
            call, kind = due
            self.routes.timers[kind](call, kind, self.now)

    # -- whole steps, as the manager would dispatch them

    def invite(self, *, credentials: bool = True) -> tuple[Request, FakeTx]:
        alice = Switch().phone("alice", ALICE.host)
        request = alice.invite("bob")
        if credentials:
            challenge = make_response(request, 407)
            for value in self.auth.challenge(self.now, stale=False):
                challenge.add("Proxy-Authenticate", value)
            request.add("Proxy-Authorization", alice.credentials(challenge, request))
        tx = FakeTx(ALICE, request)
        self.invite_txs[request.call_id] = tx
        self.setup.invite(tx, request, ALICE, self.now)  # type: ignore[arg-type]
        return request, tx

    def call(self) -> Call:
        (call,) = self.table.sessions.values()
        return call

    def allocated(self, call: Call) -> None:
        (_, allocate, rid) = self.out.bearer_sent[-1]
        assert isinstance(allocate, Allocate)
        del self.table.requests[rid]  # what the manager does with a reply
        reply = Allocated(call.session_id, BEARER_ADDRESS, (40000, 40002))
        if call.state is CallState.REALLOCATING:
            self.failover.moved(call, reply, self.now)
        else:
            self.setup.allocated(call, reply, self.now)

    def bearer_settles(self, call: Call) -> None:
        """Every pending UPDATE answered: the step that waited goes on."""
        call.pending.clear()
        step = self.routes.settled.get(call.state)
        if step is not None:
            step(call, self.now)

    def answer(self, call: Call, fork_index: int = 0) -> Response:
        request, peer, tx = self.out.requests[fork_index]
        ok = make_response(request, 200, to_tag=f"bobtag{fork_index}")
        ok.add("Contact", f"<sip:bob@{peer.host}>")
        ok.add("Content-Type", SDP)
        ok.body = sdp(peer.host, 30000)
        fork = self.table.txs[tx][2]  # type: ignore[index]
        self.setup.fork_response(call, tx, fork, ok, self.now)  # type: ignore[arg-type]
        return ok

    def confirmed(self) -> Call:
        """A call set up to CONFIRMED, the outputs' record cleared."""
        self.register(BOB)
        request, _ = self.invite()
        call = self.call()
        self.allocated(call)
        self.answer(call)
        self.bearer_settles(call)
        (_, ok) = self.out.responses[-1]
        dialog = Dialog.from_uac(request, ok)
        self.midcall.ack(
            dialog.create_ack(request.cseq, via="SIP/2.0/UDP h;branch=z9hG4bKx"), ALICE, self.now
        )
        assert call.state is CallState.CONFIRMED
        self.out.kinds()
        return call


@pytest.fixture
def w() -> World:
    return World()


# --------------------------------------------------------------------------- the state machine


def test_a_hangup_while_allocating_abandons_the_call_until_the_allocate_is_answered() -> None:
    call = Call(0, None, None, "", None, None, "", None, 0.0, [Leg(None), Leg(None)])  # type: ignore[arg-type]
    assert call.step(CallInput.HANGUP) is CallState.ABANDONED and not call.live
    assert call.step(CallInput.ALLOCATED) is CallState.TERMINATING  # the DELETE goes now
    assert call.step(CallInput.DELETED) is CallState.ENDED


def test_a_lost_bearer_reallocates_then_moves_and_an_illegal_step_raises() -> None:
    call = Call(0, None, None, "", None, None, "", None, 0.0, [Leg(None), Leg(None)])  # type: ignore[arg-type]
    call.state = CallState.CONFIRMED
    assert call.step(CallInput.BEARER_LOST) is CallState.REALLOCATING
    with pytest.raises(TransitionError, match="REALLOCATING cannot take MOVED"):
        call.step(CallInput.MOVED)
    assert call.step(CallInput.ALLOCATED) is CallState.MOVING
    assert call.step(CallInput.MOVED) is CallState.CONFIRMED


# --------------------------------------------------------------------------- the table


def test_the_table_fires_timers_in_deadline_order_and_forgets_disarmed_ones(w: World) -> None:
    w.register(BOB)
    w.invite()
    call = w.call()
    w.table.arm(call, Timer.NO_ANSWER, T0 + 30)
    w.table.arm(call, Timer.MOVE, T0 + 10)
    w.table.arm(call, Timer.FORGET, T0 + 20)
    w.table.disarm(call, Timer.MOVE)
    assert w.table.next_deadline() == T0 + 20
    assert w.table.pop_expired(T0 + 19) is None
    assert w.table.pop_expired(T0 + 40) == (call, Timer.FORGET)
    assert w.table.pop_expired(T0 + 40) == (call, Timer.NO_ANSWER)
    assert w.table.pop_expired(T0 + 40) is None and w.table.next_deadline() is None


def test_the_table_indexes_a_call_until_it_is_removed(w: World) -> None:
    w.register(BOB)
    request, _ = w.invite()
    call = w.call()
    assert w.table.by_invite[(request.call_id, request.from_.tag)] is call
    assert w.table.active_calls("alice", DOMAIN) == 1 and w.table.active_calls("bob", DOMAIN) == 1
    old = call.session_id
    w.table.rekey(call)
    assert old not in w.table.sessions and w.table.sessions[call.session_id] is call
    w.table.release(call)
    w.table.remove(call)
    assert w.table.sessions == {} and w.table.by_invite == {} and w.table.dialogs == {}
    assert w.table.active == {}


# --------------------------------------------------------------------------- set-up


def test_setup_challenges_an_invite_without_credentials_and_makes_no_call(w: World) -> None:
    w.register(BOB)
    w.invite(credentials=False)
    assert w.out.kinds() == [("reply", 100), ("reply", 407)]
    assert w.table.sessions == {} and w.out.cdrs == []


def test_setup_refuses_a_callee_not_registered_with_480_and_a_cdr(w: World) -> None:
    w.invite()
    assert w.out.kinds() == [("reply", 100), ("reply", 480)]
    (cdr,) = w.out.cdrs
    assert cdr.disposition is Disposition.REJECTED and cdr.sip_code == 480
    assert w.out.counters == {"refused_not_registered": 1}


def test_setup_allocates_then_forks_to_every_binding_and_arms_the_no_answer_timer(
    w: World,
) -> None:
    w.register(BOB)
    w.register(BOB2)
    w.invite()
    call = w.call()
    assert w.out.kinds() == [("reply", 100), ("bearer", "Allocate")]
    assert call.state is CallState.ALLOCATING
    w.now += 0.002
    w.allocated(call)
    assert sorted(w.out.kinds()) == [("invite", BOB.host), ("invite", BOB2.host)]
    assert call.state is CallState.CALLING
    assert {role for _, role, _ in w.table.txs.values()} == {"fork"}
    assert w.table.next_deadline() == w.now + 30
    assert w.out.setup_delay.snapshot()[1] == pytest.approx(0.002, abs=1e-6)


def test_setup_no_answer_hangs_up_with_480_and_deletes_the_session(w: World) -> None:
    w.register(BOB)
    w.invite()
    call = w.call()
    w.allocated(call)
    w.out.kinds()
    w.now += 30
    w.fire_due()
    # The fork never sent a 1xx: its CANCEL waits for one (§9.1).
    assert w.out.kinds() == [("reply_a", 480), ("bearer", "Delete")]
    assert call.state is CallState.TERMINATING and w.table.active == {}


def test_setup_first_2xx_wins_cancels_nothing_unrung_and_updates_the_bearer(w: World) -> None:
    w.register(BOB)
    w.register(BOB2)
    w.invite()
    call = w.call()
    w.allocated(call)
    w.out.kinds()
    w.answer(call, 0)
    # The caller keeps its codec: only the callee's leg is news to the bearer.
    assert w.out.kinds() == [("bearer", "Update")]
    assert call.state is CallState.CONNECTING and len(call.pending) == 1
    assert [f.state.name for f in call.forks] == ["ANSWERED", "CANCEL_PENDING"]
    w.bearer_settles(call)
    assert w.out.kinds() == [("respond", 200)]
    assert call.state is CallState.ANSWERED
    assert w.table.next_deadline() == w.now + FakeOutputs.t1  # the 200 again until the ACK


# --------------------------------------------------------------------------- mid-call


def test_midcall_ack_stops_the_resend_and_releases_the_ack_to_the_callee(w: World) -> None:
    call = w.confirmed()
    assert call.resend == {} and Timer.RESEND_CALLER not in call.timers
    assert call.legs[CALLEE].dialog is not None and CALLEE in call.acks


def test_midcall_bye_from_the_caller_hangs_up_the_callee_and_deletes(w: World) -> None:
    call = w.confirmed()
    a = call.legs[CALLER].dialog
    assert a is not None
    bye = Request(
        "BYE",
        "sip:192.0.2.1",
        headers=[
            ("Via", "SIP/2.0/UDP 198.51.100.10;branch=z9hG4bKbye"),
            ("From", str(Address(call.a_request.from_.uri, None, {"tag": a.remote_tag}))),
            ("To", f"<sip:bob@{DOMAIN}>;tag={call.a_tag}"),
            ("Call-ID", call.a_request.call_id),
            ("CSeq", f"{call.a_request.cseq + 1} BYE"),
        ],
    )
    w.midcall.bye(FakeTx(ALICE), bye, ALICE, w.now)  # type: ignore[arg-type]
    assert w.out.kinds() == [("reply", 200), ("BYE", BOB.host), ("bearer", "Delete")]
    assert call.state is CallState.TERMINATING


def test_midcall_answers_481_to_a_bye_outside_any_dialog(w: World) -> None:
    bye = Request(
        "BYE",
        "sip:192.0.2.1",
        headers=[
            ("Via", "SIP/2.0/UDP 198.51.100.10;branch=z9hG4bKbye"),
            ("From", "<sip:alice@example.com>;tag=x"),
            ("To", "<sip:bob@example.com>;tag=y"),
            ("Call-ID", "nothing"),
            ("CSeq", "2 BYE"),
        ],
    )
    w.midcall.bye(FakeTx(ALICE), bye, ALICE, w.now)  # type: ignore[arg-type]
    assert w.out.kinds() == [("reply", 481)]


def test_midcall_reinvite_during_an_unacked_2xx_gets_491(w: World) -> None:
    w.register(BOB)
    request, _ = w.invite()
    call = w.call()
    w.allocated(call)
    w.answer(call)
    w.bearer_settles(call)
    (_, ok) = w.out.responses[-1]
    w.out.kinds()
    call.state = CallState.CONFIRMED  # as if ACKed, but the 2xx is still being re-sent
    dialog = Dialog.from_uac(request, ok)
    reinvite = dialog.create_request(
        "INVITE", via="SIP/2.0/UDP 198.51.100.10;branch=z9hG4bKre", body=sdp(ALICE.host, 20000)
    )
    w.midcall.reinvite(FakeTx(ALICE), reinvite, ALICE, w.now)  # type: ignore[arg-type]
    assert w.out.kinds() == [("reply", 491)]


# --------------------------------------------------------------------------- failover


def test_failover_moves_a_confirmed_call_with_a_new_session_and_re_invites_both(w: World) -> None:
    call = w.confirmed()
    old = call.session_id
    w.pool.bearers[0].up = False
    w.failover.bearer_lost("b1", w.now)
    assert w.out.kinds() == [("bearer", "Allocate")]
    assert call.state is CallState.REALLOCATING and call.bearer is w.pool.bearers[1]
    assert old not in w.table.sessions and w.table.sessions[call.session_id] is call
    assert w.table.next_deadline() == w.now + 64 * FakeOutputs.t1
    w.allocated(call)
    assert w.out.kinds() == [("INVITE", ALICE.host), ("INVITE", BOB.host)]
    assert call.state is CallState.MOVING and set(call.moving) == {CALLER, CALLEE}


def test_failover_hangs_up_a_move_that_takes_longer_than_64_t1(w: World) -> None:
    call = w.confirmed()
    w.pool.bearers[0].up = False
    w.failover.bearer_lost("b1", w.now)
    w.out.kinds()
    w.now += 64 * FakeOutputs.t1
    w.fire_due()
    # Its ALLOCATE is still unanswered: the BYEs go now, the DELETE after it.
    assert w.out.kinds() == [("BYE", ALICE.host), ("BYE", BOB.host)]
    assert call.state is CallState.ABANDONED and w.out.counters == {"bearer_lost": 1}


def test_failover_hangs_up_a_ringing_call_without_a_delete_to_the_dead_bearer(w: World) -> None:
    w.register(BOB)
    w.invite()
    call = w.call()
    w.allocated(call)
    w.out.kinds()
    w.failover.bearer_lost("b1", w.now)
    assert w.out.kinds() == [("reply_a", 503)]
    assert call.state is CallState.ENDED and w.table.sessions == {}
    (cdr,) = w.out.cdrs
    assert cdr.disposition is Disposition.FAILED and w.out.counters["bearer_lost"] == 1


def test_the_handlers_claim_disjoint_inputs_and_every_timer() -> None:
    routes = World().routes
    assert set(routes.timers) == set(Timer) - {Timer.FORGET}  # FORGET: the manager's own
    assert set(routes.responses) == {"fork", "reinvite", "relay", "move"}
    assert ("INVITE", False) in routes.requests and ("INVITE", True) in routes.requests
    assert ("REFER", True) not in routes.requests  # room for the transfer handler


def test_setup_logs_a_caller_that_never_answers_407_and_one_answering_in_another_realm(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    """DigestServer.trouble on the INVITE path; the answers stay 407 (no new status)."""
    w.register(BOB)
    for _ in range(2):
        w.invite(credentials=False)
    alice = Switch().phone("alice", ALICE.host)
    request = alice.invite("bob")
    challenge = make_response(request, 407)
    for value in w.auth.challenge(w.now, stale=False):
        challenge.add("Proxy-Authenticate", value)
    good = alice.credentials(challenge, request)
    request.add("Proxy-Authorization", good.replace(f'realm="{DOMAIN}"', 'realm="elsewhere"'))
    w.setup.invite(FakeTx(ALICE, request), request, ALICE, w.now)  # type: ignore[arg-type]
    assert [k for k in w.out.kinds() if k[0] == "reply"] == [("reply", 100), ("reply", 407)] * 3
    assert w.table.sessions == {}
    unanswered, realm = [
        r.getMessage() for r in caplog.records if r.name == "softswitch.sip.digest"
    ]
    assert unanswered.startswith(f'digest auth from {ALICE.host} (user "alice") cannot succeed')
    assert "challenged 2 times within 300 s" in unanswered
    assert "offered algorithms: SHA-256, MD5" in unanswered
    assert 'answered for realm "elsewhere"' in realm

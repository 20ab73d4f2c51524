"""The B2BUA: one caller dialog, one callee dialog and one bearer session per call.

Theory of operation
-------------------
``CallManager`` is the transaction user for every INVITE-family request
(RFC 3261 §8.2, §13, §15); the daemon's dispatcher (softswitch.switch) feeds it
what the transaction layer and the bearer protocol client report, plus the
time, and drains the layer afterwards.  It never blocks and never reads a
clock: ``get_timer``/``handle_timer`` drive its one heap of timers
(no-answer, 2xx retransmission, late-fork clean-up).

Set-up, in the order the caller sees it (every step is a transition of
``softswitch.calls.state``): 100 Trying; 407 with a digest challenge
(RFC 3261 §22.3, SHA-256 and MD5 offered, RFC 8760); routing (a conference
prefix, a user's bindings, or a ``Refusal``); one ALLOCATE round trip to the
least-loaded bearer (a conference member: the bearer already hosting its
room); an INVITE to every binding of the callee, each its own
Call-ID and client transaction, sent to the address the binding registered
from (RFC 3581); 1xx relayed (a 183 with SDP becomes early media through the
bearer); the first 2xx wins and the other forks get CANCEL (§9.1) or, if
they answer too, ACK and BYE (§13.2.2.4); one UPDATE tells the bearer the
callee's media; the caller gets 200 with the bearer's address, retransmitted
until its ACK (§13.3.1.4), and that ACK releases ours to the callee.

Media state (what each phone said, what the bearer holds, ``Leg``) is kept
whole in control so that a session can later be rebuilt on another bearer.
A call's bearer requests are matched by request id; the step that waits on
them (``call.pending``) resumes when the last one is answered.  Every call
attempt that passed authentication leaves exactly one ``Cdr``.

The code is in four files read in this order: this one (entry points,
bearer replies, hang-up and CDR, timers), ``callsetup.py`` (the initial
INVITE up to the 200), ``midcall.py`` (CANCEL, BYE, INFO, re-INVITE) and
``failover.py`` (an answered call moved off a dead bearer);
states and refusals are data in ``callstate.py``, SDP decisions in
``media.py``, routing in ``routing.py``.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import re
import secrets
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from softswitch.calls.failover import Failover
from softswitch.calls.midcall import MidCall
from softswitch.calls.setup import RETRY_AFTER, CallSetup
from softswitch.calls.state import (
    ALLOW,
    CALLEE,
    CALLER,
    LIVE_STATES,
    REFUSALS,
    Call,
    CallInput,
    CallState,
    Fork,
    ForkInput,
    ForkState,
    Refusal,
    Timer,
    disposition_for,
    resend_timer,
)
from softswitch.model.cdr import Cdr, Disposition
from softswitch.model.users import UserDirectory
from softswitch.protocol import (
    Allocate,
    Allocated,
    Delete,
    Deleted,
    Dtmf,
    ErrorReply,
    Join,
    Leave,
    LegSpec,
    MediaTimeout,
    Message,
    Record,
    RecordingDone,
    RecordReply,
    Update,
)
from softswitch.protocol.endpoint import (
    EventReceived,
    PeerDown,
    PeerRestarted,
    ReplyReceived,
    RequestTimeout,
)
from softswitch.sip.dialog import request_dialog_id
from softswitch.sip.digest import DigestServer
from softswitch.sip.errors import SipError
from softswitch.sip.message import Request, Response, make_response
from softswitch.sip.offeranswer import LegOrigin
from softswitch.sip.sdp import SessionDescription
from softswitch.sip.transaction import (
    ClientTransaction,
    Peer,
    ServerTransaction,
    State,
    TransactionLayer,
    new_branch,
)

if TYPE_CHECKING:
    from softswitch.bearerpool import BearerPool
    from softswitch.location import LocalAddress, Location

__all__ = ["ALLOW", "RETRY_AFTER", "CallManager", "DelayHistogram"]

log = logging.getLogger("softswitch.calls.manager")

_SDP = "application/sdp"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _bearer_name(bearer: Any) -> str | None:
    """How the CDR names a bearer: its configured name, else its number."""
    if bearer is None:
        return None
    return getattr(bearer, "name", None) or str(bearer.id)


class CallManager(CallSetup, MidCall, Failover):
    """Every call of the switch; see the module docstring."""

    def __init__(
        self,
        *,
        layer: TransactionLayer,
        location: Location,
        directory: UserDirectory,
        bearers: BearerPool,
        auth: DigestServer,
        config: SimpleNamespace,
        local: LocalAddress,
        on_cdr: Callable[[Cdr], None],
        now: float,
    ) -> None:
        self.layer = layer
        self.location = location
        self.directory = directory
        self.bearers = bearers
        self.auth = auth
        self.on_cdr = on_cdr
        self.domain = (config.sip.domain or config.sip.listen[0]).lower()
        # Read on every use: a SIGHUP reload changes [calls] in place (core.reconfigure).
        self.config = config
        sent_by = f"{_bracket(local.host)}:{local.port}"
        self._via = {t: f"SIP/2.0/{t.upper()} {sent_by};rport;branch=" for t in ("udp", "tcp")}
        self._contact = {
            "udp": f"<sip:{sent_by}>",
            "tcp": f"<sip:{sent_by};transport=tcp>",
        }
        self._dialogs: dict[tuple, tuple[Call, int]] = {}  # dialog id -> call, leg
        self._by_invite: dict[tuple[str, str | None], Call] = {}  # A's Call-ID, From tag
        self._sessions: dict[int, Call] = {}
        self._txs: dict[ClientTransaction, tuple[Call, str, Any]] = {}
        self._requests: dict[int, tuple[Call, Message]] = {}  # bearer request id
        self._active: dict[tuple[str, str], int] = {}
        self._rooms: dict[str, list[Any]] = {}  # conference room -> [its bearer, members]
        self._heap: list[tuple[float, int, Call, Timer]] = []
        self._seq = 0
        self._stale = 0
        self._next_session = secrets.randbits(40) << 16
        self._closing = False
        self.counters: dict[str, int] = {}
        #: Added set-up delay (A's INVITE in -> INVITE out to B), for softswitch.daemon.metrics.
        self.setup_delay = DelayHistogram()

    # ================================================================ entry points

    def handle_request(
        self, tx: ServerTransaction, request: Request, peer: Peer, now: float
    ) -> None:
        """A new request for the B2BUA (not REGISTER, not out-of-dialog OPTIONS)."""
        method = request.method
        try:
            if method == "INVITE":
                if request.to.tag is None:
                    self._initial_invite(tx, request, peer, now)
                else:
                    self._reinvite(tx, request, now)
            elif method == "CANCEL":
                self._cancel(tx, request, now)
            elif method == "BYE":
                self._bye(tx, request, now)
            elif request.to.tag is not None and method in ("INFO", "UPDATE", "OPTIONS"):
                self._in_dialog(tx, request, now)
            else:
                self._reply(tx, request, 405, now, headers=[("Allow", ALLOW)])
        except SipError as err:
            if tx.last_response is None or tx.last_response.status < 200:
                self._reply(tx, request, err.status, now, reason=err.reason)

    def handle_ack(self, request: Request, peer: Peer, now: float) -> None:
        """The ACK for one of our 2xx (end to end, its own transaction, §13.2.2.4)."""
        entry = self._dialogs.get(request_dialog_id(request))
        if entry is None:
            return
        call, leg = entry
        resend = call.resend.pop(leg, None)
        if resend is None or request.cseq != resend[1].cseq:
            return
        self._disarm(call, resend_timer(leg))
        if leg == CALLER and call.state is CallState.ANSWERED:
            call.step(CallInput.CALLER_ACK)
        owed = resend[4]
        if owed is not None:
            self._send_ack(call, 1 - leg, owed)

    def handle_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        """A response to a request we sent (forks, CANCEL, BYE, re-INVITE, relayed INFO)."""
        entry = self._txs.get(tx)
        if entry is None:
            return
        call, role, extra = entry
        if role == "fork":
            self._fork_response(call, extra, response, now)
        elif role == "reinvite":
            self._reinvite_response(call, tx, response, now)
        elif role == "move":
            self._move_response(call, tx, extra, response, now)
        elif role == "relay" and response.status >= 200:
            del self._txs[tx]
            self._relay_back(extra, response, now)
        elif response.status >= 200 and response.cseq_method != "INVITE":
            del self._txs[tx]

    def handle_tx_timeout(self, tx: ClientTransaction, now: float) -> None:
        """Timer B/F or a transport error on a client transaction of ours (§8.1.3.1: as 408)."""
        entry = self._txs.pop(tx, None)
        if entry is None:
            return
        call, role, extra = entry
        if role == "fork":
            fork: Fork = extra
            if fork.state in (ForkState.ANSWERED, ForkState.FAILED, ForkState.DROPPED):
                return
            fork.step(ForkInput.TIMEOUT)
            fork.status = 408
            self._fork_settled(call, now)
        elif role == "reinvite":
            self._reinvite_failed(call, 408, now)
        elif role == "move":
            self._move_failed(call, tx, extra, now)
        elif role == "relay":
            server_tx, original = extra
            self._reply(server_tx, original, 408, now)

    def handle_bearer_event(self, event: object, now: float) -> None:
        """Every event of the bearer protocol client (replies, timeouts, bearer news)."""
        if isinstance(event, ReplyReceived):
            entry = self._requests.pop(event.request_id, None)
            if entry is not None:
                reply = None if isinstance(event.message, ErrorReply) else event.message
                self._bearer_reply(entry[0], event.request_id, entry[1], reply, event.message, now)
        elif isinstance(event, RequestTimeout):
            entry = self._requests.pop(event.request_id, None)
            if entry is not None:
                self._bearer_reply(entry[0], event.request_id, entry[1], None, "timeout", now)
        elif isinstance(event, EventReceived):
            self._bearer_notice(event.peer, event.message, now)
        elif isinstance(event, PeerDown | PeerRestarted):
            self._bearer_lost(event.peer, now)

    def get_timer(self) -> float | None:
        """The earliest deadline of any call timer, or None."""
        heap = self._heap
        while heap:  # bounded: every turn pops a stale entry
            deadline, seq, call, kind = heap[0]
            if call.timers.get(kind) == seq:
                return deadline
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def handle_timer(self, now: float) -> None:
        """Fire every call timer due at ``now``."""
        heap = self._heap
        for _ in range(len(heap)):  # a firing re-arms only later deadlines
            if not heap or heap[0][0] > now:
                break
            _, seq, call, kind = heapq.heappop(heap)
            if call.timers.get(kind) != seq:
                self._stale -= 1
                continue
            del call.timers[kind]
            self._fire(call, kind, now)

    def active_calls(self, username: str, domain: str) -> int:
        """Calls the user is in now (as caller or callee), for max_calls."""
        return self._active.get((username, domain.lower()), 0)

    def state_counts(self) -> dict[str, int]:
        """Live calls by state name, for softswitch.daemon.metrics.  Safe from another
        thread: the calls are copied in one C-level step before being read."""
        out: dict[str, int] = {}
        for call in tuple(self._sessions.values()):
            state = call.state
            if state in LIVE_STATES:
                name = state.name.lower()
                out[name] = out.get(name, 0) + 1
        return out

    @property
    def rooms(self) -> int:
        """Conference rooms open now."""
        return len(self._rooms)

    def snapshot(self) -> list[dict]:
        """The live calls, for ``softswitchctl calls``."""
        out = []
        for call in self._sessions.values():
            if not call.live:
                continue
            a, b = call.legs
            out.append(
                {
                    "call_id": call.a_request.call_id,
                    "caller": f"{call.caller.username}@{call.caller.domain}",
                    "callee": call.callee_aor,
                    "state": call.state.name.lower(),
                    "start": call.start,
                    "answer": call.answer,
                    "bearer": None if call.bearer is None else call.bearer.id,
                    "session": call.session_id,
                    "forks": len(call.forks),
                    "codecs": [
                        None if leg.selected is None else leg.selected.name for leg in (a, b)
                    ],
                    "held": [
                        leg.spec is not None and leg.spec.direction.name.lower() != "sendrecv"
                        for leg in (a, b)
                    ],
                    "dtmf": "".join(call.dtmf),
                    "recording": call.recording,
                }
            )
        return out

    def shutdown(self, now: float) -> None:
        """SIGTERM: refuse new calls, hang up every call cleanly (BYE/CANCEL, DELETE, CDR)."""
        self._closing = True
        for call in list(self._sessions.values()):
            self._hangup(call, now, refusal=Refusal.SHUTTING_DOWN)

    # ================================================================ bearer

    def _bearer(self, call: Call, message: Message, now: float) -> int:
        rid = self.bearers.request(call.bearer, message, now)
        self._requests[rid] = (call, message)
        return rid

    def _bearer_reply(
        self, call: Call, rid: int, sent: Message, reply: Message | None, raw: Any, now: float
    ) -> None:
        """A reply (None: refused or timed out) to one of ``call``'s bearer requests."""
        if isinstance(sent, Allocate):
            call.allocating = False
            if call.state is CallState.TERMINATING:
                if isinstance(reply, Allocated):  # hung up while allocating: free it now
                    self._bearer(call, Delete(call.session_id), now)
                else:
                    self._finish(call, now)
            elif isinstance(reply, Allocated) and call.state is CallState.MOVING:
                self._moved(call, reply, now)
            elif isinstance(reply, Allocated):
                self._allocated(call, reply, now)
            else:
                log.warning("call %s: ALLOCATE failed: %r", call.a_request.call_id, raw)
                self._hangup(call, now, refusal=Refusal.BEARER_FAILED)
        elif isinstance(sent, Delete):
            if call.state is CallState.TERMINATING:
                if isinstance(reply, Deleted):
                    call.stats = reply.legs
                self._finish(call, now)
        elif isinstance(sent, Update | Join):
            call.pending.discard(rid)
            self._pending_reply(call, sent, reply, raw, now)
        elif isinstance(sent, Record) and not (
            isinstance(reply, RecordReply) and reply.recording == sent.start
        ):
            log.warning("call %s: RECORD failed: %r", call.a_request.call_id, raw)
            if sent.start and raw != "timeout" and call.recording == sent.path:
                call.recording = None  # refused: no such file will exist

    def _pending_reply(
        self, call: Call, sent: Message, reply: Message | None, raw: Any, now: float
    ) -> None:
        if not call.live:
            return
        if reply is None:
            log.warning("call %s: %s failed: %r", call.a_request.call_id, type(sent).__name__, raw)
            return self._hangup(call, now, refusal=Refusal.BEARER_FAILED)
        if call.pending:
            return None
        state = call.state
        if state is CallState.CALLING:
            self._send_early_media(call, now)
        elif state is CallState.CONNECTING or state is CallState.JOINING:
            self._answer_caller(call, now)
        elif state is CallState.REINVITING:
            self._reinvite_answer(call, now)
        elif state is CallState.MOVING:
            self._move_settled(call, now)
        return None

    def _allocated(self, call: Call, reply: Allocated, now: float) -> None:
        call.address = reply.address
        call.ports = reply.ports
        for leg in call.legs:
            leg.origin = LegOrigin(reply.address, sess_id=secrets.randbits(31))
        if call.record:
            self._start_recording(call, now)
        if call.room is not None:
            call.step(CallInput.ROOM_ALLOCATED)
            call.pending.add(self._bearer(call, Join(call.room, call.session_id), now))
            return
        call.step(CallInput.ALLOCATED)
        self._fork(call, now)

    def _start_recording(self, call: Call, now: float) -> None:
        """One RECORD, with the path the CDR will name (a new one after a move)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        name = _UNSAFE.sub("_", call.a_request.call_id)[:120]
        directory = self.config.recording.dir.rstrip("/")
        path = f"{directory}/{name}-{stamp}.wav"
        if path == call.recording:  # moved within the second it started
            path = f"{directory}/{name}-{stamp}-{call.session_id & 0xFFFF}.wav"
        call.recording = path
        self._bearer(call, Record(call.session_id, True, path), now)

    def _update(self, call: Call, leg: int, spec: LegSpec, now: float) -> None:
        """Tell the bearer a leg's new description, unless it already has it."""
        if call.legs[leg].spec == spec:
            return
        call.legs[leg].spec = spec
        call.pending.add(self._bearer(call, Update(call.session_id, leg, spec), now))

    def _bearer_notice(self, peer: object, event: Message, now: float) -> None:
        call = self._sessions.get(getattr(event, "session_id", -1))
        if call is None:
            return
        if isinstance(event, MediaTimeout):
            log.info("call %s: no media on leg %d", call.a_request.call_id, event.leg)
            self._hangup(call, now, refusal=Refusal.BEARER_FAILED)
        elif isinstance(event, Dtmf):
            if len(call.dtmf) < 256:
                call.dtmf.append(event.digit)
        elif isinstance(event, RecordingDone):
            call.recording = event.path

    # ================================================================ responses to A

    def _a_response(
        self, call: Call, status: int, *, reason: str | None = None, body: bytes = b""
    ) -> Response:
        request = call.a_request
        response = make_response(request, status, reason, to_tag=call.a_tag)
        if status < 300:
            peer = call.legs[CALLER].peer
            assert peer is not None, "the caller's INVITE came from somewhere"
            response.add("Contact", self._contact[peer.transport])
        if body:
            response.add("Content-Type", _SDP)
            response.body = body
        return response

    def _reply_a(
        self, call: Call, status: int, now: float, *, reason: str | None = None, body: bytes = b""
    ) -> None:
        self.layer.send_response(
            call.a_tx, self._a_response(call, status, reason=reason, body=body), now
        )

    def _reply(
        self,
        tx: ServerTransaction,
        request: Request,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        response = make_response(
            request, status, reason, to_tag=None if status == 100 else secrets.token_hex(8)
        )
        for name, value in headers or ():
            response.add(name, value)
        if body:
            response.add("Content-Type", content_type or _SDP)
            response.body = body
        self.layer.send_response(tx, response, now)

    def _send_2xx(
        self,
        call: Call,
        leg: int,
        tx: ServerTransaction,
        response: Response,
        owed: int | None,
        now: float,
    ) -> None:
        """Send a 2xx to an INVITE and keep re-sending it until the ACK (§13.3.1.4).

        ``owed``: the CSeq of the other leg's INVITE whose 2xx we ACK when this
        one is ACKed (the ACK is end to end through the B2BUA).
        """
        self.layer.send_response(tx, response, now)
        t1 = self.layer.timers.t1
        give_up = now + 64 * t1
        call.resend[leg] = [tx, response, t1, give_up, owed]
        peer = call.legs[leg].peer
        assert peer is not None, "a leg that sent an INVITE has a peer"
        reliable = peer.reliable
        self._arm(call, resend_timer(leg), give_up if reliable else now + t1)

    def _send_ack(self, call: Call, leg: int, cseq: int) -> None:
        """ACK the 2xx leg ``leg`` sent to our INVITE with CSeq ``cseq`` (§13.2.2.4)."""
        target = call.legs[leg]
        assert target.peer is not None and target.dialog is not None, "its 2xx made the dialog"
        via = self._via[target.peer.transport] + new_branch()
        ack = target.dialog.create_ack(cseq, via=via)
        call.acks[leg] = (cseq, ack)
        if leg == CALLEE and call.winner is not None and cseq == call.b_invite_cseq:
            call.winner.ack = ack
        self.layer.send_stateless(ack, target.peer)

    # ================================================================ the end

    def _hangup(
        self,
        call: Call,
        now: float,
        *,
        refusal: Refusal | None = None,
        status: int | None = None,
        by: int | None = None,
    ) -> None:
        """End ``call``: final answer or BYE to each side not already gone, bearer DELETE."""
        if not call.live:
            return
        if call.state is CallState.MOVING and by is None:
            self._bump("bearer_lost")  # the move failed
        call.end = now
        for kind in list(call.timers):
            self._disarm(call, kind)
        call.resend.clear()
        a, b = call.legs
        if call.answer is None:
            if status is not None:
                code = status
            else:
                assert refusal is not None, "a hang-up names a status or a refusal"
                code = REFUSALS[refusal][0]
            call.status = code
            disposition = REFUSALS[refusal][1] if refusal is not None else None
            call.disposition = disposition or disposition_for(code)
            if call.a_tx.state is State.PROCEEDING:
                self._reply_a(call, code, now)
            assert a.dialog is not None, "the caller's dialog exists from its INVITE on"
            a.dialog.terminate()
        else:
            call.status = 200
            call.disposition = Disposition.ANSWERED
            if by != CALLER:
                self._send_bye(call, CALLER, now)
        if call.reinvite is not None:  # §15.1.2: pending requests get 487
            ri, call.reinvite = call.reinvite, None
            self._reply(ri.tx, ri.request, 487, now)
        winner = call.winner
        if winner is not None and by != CALLEE and b.dialog is not None:
            if winner.ack is None:  # the 2xx must be ACKed before the BYE (§15)
                self._send_ack(call, CALLEE, call.b_invite_cseq)
            self._send_bye(call, CALLEE, now)
        for fork in call.forks:
            if fork is not winner:
                self._stop_fork(call, fork, now)
        call.step(CallInput.HANGUP)
        self._count(call, -1)
        if call.room is not None:
            self._left_room(call.room)
        if call.allocating:
            return  # the DELETE goes when the ALLOCATE is answered
        if call.bearer_lost or call.address is None:
            return self._finish(call, now)
        if call.room is not None:
            self._bearer(call, Leave(call.room, call.session_id), now)
        self._bearer(call, Delete(call.session_id), now)
        return None

    def _send_reinvite(
        self, call: Call, leg: int, offer: SessionDescription, role: str, extra: Any, now: float
    ) -> ClientTransaction:
        """An INVITE offering ``offer`` in ``leg``'s dialog (hold/resume, a move).

        Its transaction stays in the table under ``role`` after its final
        response, so that 2xx retransmissions are ACKed again, until the call
        is forgotten (``_forget``)."""
        target = call.legs[leg]
        assert target.dialog is not None and target.peer is not None, "a confirmed leg"
        invite = target.dialog.create_request(
            "INVITE",
            via=self._via[target.peer.transport] + new_branch(),
            body=bytes(offer),
            content_type=_SDP,
        )
        tx = self.layer.send_request(invite, target.peer, now)
        self._txs[tx] = (call, role, extra)
        call.reinvites.append(tx)
        return tx

    def _send_bye(self, call: Call, leg: int, now: float) -> None:
        target = call.legs[leg]
        if target.dialog is None:
            return
        assert target.peer is not None, "a leg with a dialog has a peer"
        bye = target.dialog.create_request(
            "BYE", via=self._via[target.peer.transport] + new_branch()
        )
        target.dialog.terminate()
        self._txs[self.layer.send_request(bye, target.peer, now)] = (call, "bye", None)

    def _finish(self, call: Call, now: float) -> None:
        """The bearer session is gone: write the CDR and forget the call."""
        if call.state is CallState.ENDED:
            return
        call.step(CallInput.DELETED)
        assert call.disposition is not None and call.status is not None, "set by _hangup"
        a_stats = call.stats[0] if len(call.stats) > 0 else None
        b_stats = call.stats[1] if len(call.stats) > 1 else None
        self.on_cdr(
            Cdr(
                call_id=call.a_request.call_id,
                caller=f"{call.caller.username}@{call.caller.domain}",
                callee=call.callee_aor,
                start=call.start,
                answer=call.answer,
                end=call.end,
                disposition=call.disposition,
                sip_code=call.status,
                bearer=_bearer_name(call.bearer),
                recording=call.recording,
                a_packets=a_stats.packets_in if a_stats else 0,
                a_lost=a_stats.packets_lost if a_stats else 0,
                a_jitter_ms=a_stats.jitter_us / 1000 if a_stats else 0.0,
                b_packets=b_stats.packets_in if b_stats else 0,
                b_lost=b_stats.packets_lost if b_stats else 0,
                b_jitter_ms=b_stats.jitter_us / 1000 if b_stats else 0.0,
            )
        )
        self._bump(f"cdr_{call.disposition.value}")
        self._sessions.pop(call.session_id, None)
        key = (call.a_request.call_id, call.a_request.from_.tag)
        if self._by_invite.get(key) is call:
            del self._by_invite[key]
        for leg in call.legs:
            if leg.dialog is not None and self._dialogs.get(leg.dialog.id, (None,))[0] is call:
                del self._dialogs[leg.dialog.id]
        unsettled = (ForkState.CANCEL_PENDING, ForkState.CANCELLED)
        if call.reinvites or any(f.state in unsettled for f in call.forks):
            # A 2xx may still come (a re-INVITE crossing our BYE) or come
            # again: ACK it, for as long as the phone may retransmit it.
            self._arm(call, Timer.FORGET, now + 64 * self.layer.timers.t1)
        else:
            self._forget(call)

    def _forget(self, call: Call) -> None:
        """Drop the call's INVITE transactions from the table, which keeps
        them after their final response for 2xx retransmissions: the last
        reference to the call, so nothing of it outlives it."""
        for fork in call.forks:
            self._txs.pop(fork.tx, None)
        for tx in call.reinvites:
            self._txs.pop(tx, None)

    # ================================================================ timers

    def _arm(self, call: Call, kind: Timer, deadline: float) -> None:
        if kind in call.timers:
            self._stale += 1
        self._seq += 1
        call.timers[kind] = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, call, kind))

    def _disarm(self, call: Call, kind: Timer) -> None:
        if call.timers.pop(kind, None) is not None:
            self._stale += 1
            if self._stale > 256 and 2 * self._stale > len(self._heap):
                self._heap[:] = [e for e in self._heap if e[2].timers.get(e[3]) == e[1]]
                heapq.heapify(self._heap)
                self._stale = 0

    def _fire(self, call: Call, kind: Timer, now: float) -> None:
        if kind is Timer.NO_ANSWER:
            if call.state is CallState.CALLING:
                self._hangup(call, now, refusal=Refusal.NO_ANSWER)
        elif kind is Timer.FORGET:
            self._forget(call)
        elif kind is Timer.MOVE:
            if call.state is CallState.MOVING:
                log.warning("call %s: the move took too long", call.a_request.call_id)
                self._hangup(call, now, refusal=Refusal.BEARER_FAILED)
        else:
            leg = CALLER if kind is Timer.RESEND_CALLER else CALLEE
            entry = call.resend.get(leg)
            if entry is None:
                return
            tx, response, interval, give_up, _ = entry
            if now >= give_up:  # §13.3.1.4: no ACK, the dialog is over
                del call.resend[leg]
                log.info("call %s: no ACK from leg %d", call.a_request.call_id, leg)
                return self._hangup(call, now, refusal=Refusal.CALLEE_FAILED)
            self.layer.send_response(tx, response, now)
            interval = min(2 * interval, self.layer.timers.t2)
            entry[2] = interval
            self._arm(call, kind, min(now + interval, give_up))
        return None

    # ================================================================ bookkeeping

    def _count(self, call: Call, delta: int) -> None:
        keys = [(call.caller.username, self.domain)]
        if call.callee is not None:
            keys.append((call.callee.username, self.domain))
        for key in keys:
            n = self._active.get(key, 0) + delta
            if n > 0:
                self._active[key] = n
            else:
                self._active.pop(key, None)

    def _left_room(self, room: str) -> None:
        """A member of ``room`` is gone; with the last one, so is the room's bearer."""
        entry = self._rooms.get(room)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._rooms[room]

    def _contact_for(self, peer: Peer) -> str:
        return self._contact[peer.transport]

    def _bump(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class DelayHistogram:
    """Bucket counts of a delay, updated on the main thread for a few
    nanoseconds per observation; softswitch.daemon.metrics reads them as a
    Prometheus histogram (``snapshot`` copies, so another thread may call it).

    >>> h = DelayHistogram((0.001, 0.01))
    >>> for s in (0.0005, 0.001, 0.002, 3.0):
    ...     h.observe(s)
    >>> h.snapshot()
    ([(0.001, 2), (0.01, 3), (inf, 4)], 3.0035)
    """

    #: Upper bounds in seconds (DESIGN.md: p99 < 5 ms, target < 2 ms).
    BOUNDS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # a wall-clock step back is not a negative delay
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative ``(upper bound, count)`` pairs ending with +Inf, and the sum."""
        counts, total = list(self.counts), self.total
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append((bound, running))
        return out, round(total, 9)

"""The B2BUA's front door: every input about calls, dispatched to a handler.

Theory of operation
-------------------
``CallManager`` is the transaction user for every INVITE-family request
(RFC 3261 §8.2, §13, §15); the daemon's dispatcher (softswitch.switch) feeds it
what the transaction layer and the bearer protocol client report, plus the
time, and drains the layer afterwards.  It never blocks and never reads a
clock.  It decides nothing about a call either: it looks each input up in
``Routes`` and calls the handler that claimed it:

* a new request, by method and whether it is in a dialog;
* a response or a timeout of one of our requests, by the role the
  ``CallTable`` recorded for its client transaction;
* a bearer reply, by the request it answers (ALLOCATE, DELETE, UPDATE/JOIN
  ending a wait, RECORD); a bearer event, by its type; a lost bearer, to
  failover;
* a due timer, by its kind.

The handlers share one ``CallTable`` (indexes and timers) and one
``Outputs`` (everything sent); see the package docstring for the map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from softswitch.calls.failover import FailoverHandler
from softswitch.calls.features import FeatureCodes
from softswitch.calls.midcall import MidCallHandler
from softswitch.calls.outputs import DelayHistogram, Outputs
from softswitch.calls.routes import Routes
from softswitch.calls.setup import RETRY_AFTER, SetupHandler
from softswitch.calls.state import (
    ALLOW,
    LIVE_STATES,
    Call,
    CallInput,
    CallState,
    Refusal,
    Timer,
)
from softswitch.calls.steps import Steps
from softswitch.calls.table import CallTable
from softswitch.db.messages import UpdateUser
from softswitch.model.cdr import Cdr
from softswitch.model.users import UserDirectory
from softswitch.protocol import (
    Allocate,
    Allocated,
    Delete,
    Deleted,
    Dtmf,
    ErrorReply,
    Join,
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
from softswitch.sip.digest import DigestServer
from softswitch.sip.errors import SipError
from softswitch.sip.message import Request, Response
from softswitch.sip.transaction import (
    ClientTransaction,
    Peer,
    ServerTransaction,
    TransactionLayer,
)

if TYPE_CHECKING:
    from softswitch.bearerpool import BearerPool
    from softswitch.guard import Guard
    from softswitch.location import LocalAddress, Location

__all__ = ["ALLOW", "RETRY_AFTER", "CallManager", "DelayHistogram"]

log = logging.getLogger("softswitch.calls.manager")


class CallManager:
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
        guard: Guard | None = None,
        on_db: Callable[[UpdateUser], None] | None = None,
    ) -> None:
        self.domain = (config.sip.domain or config.sip.listen[0]).lower()
        self.table = table = CallTable(self.domain)
        self.out = out = Outputs(layer=layer, bearers=bearers, local=local, on_cdr=on_cdr)
        self.steps = Steps(table, out, config)
        self.setup = SetupHandler(
            table,
            out,
            config=config,
            directory=directory,
            location=location,
            bearers=bearers,
            auth=auth,
            guard=guard,
        )
        self.features = FeatureCodes(
            out,
            config=config,
            directory=directory,
            domain=self.domain,
            on_update=on_db if on_db is not None else (lambda update: None),
        )
        self.setup.features = self.features
        self.midcall = MidCallHandler(
            table, out, config=config, find_invite=layer.find_server_invite
        )
        self.failover = FailoverHandler(table, out, config=config, bearers=bearers)
        # One registration per handler: transfer (REFER), forwarding and
        # presence go here the same way.
        self.routes = routes = Routes()
        for handler in (self.setup, self.midcall, self.failover):
            handler.register(routes)
        routes.timer(Timer.FORGET, self._forget)
        routes.event(MediaTimeout, self._media_timeout)
        routes.event(Dtmf, self._dtmf)
        routes.event(RecordingDone, self._recording_done)
        self._requests = routes.requests
        self._responses = routes.responses
        self._timeouts = routes.timeouts
        #: Named event counts, for softswitch.daemon.metrics (the outputs' dict).
        self.counters = out.counters
        #: Added set-up delay (A's INVITE in -> INVITE out to B), for softswitch.daemon.metrics.
        self.setup_delay = out.setup_delay

    # ================================================================ SIP

    def handle_request(
        self, tx: ServerTransaction, request: Request, peer: Peer, now: float
    ) -> None:
        """A new request for the B2BUA (not REGISTER, not out-of-dialog OPTIONS)."""
        try:
            handler = self._requests.get((request.method, request.to.tag is not None))
            if handler is None:
                self.out.reply(tx, request, 405, now, headers=[("Allow", ALLOW)])
            else:
                handler(tx, request, peer, now)
        except SipError as err:
            if tx.last_response is None or tx.last_response.status < 200:
                self.out.reply(tx, request, err.status, now, reason=err.reason)

    def handle_ack(self, request: Request, peer: Peer, now: float) -> None:
        """The ACK for one of our 2xx (end to end, its own transaction, §13.2.2.4)."""
        if self.features.pending and self.features.ack(request, now):
            return
        self.midcall.ack(request, peer, now)

    def handle_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        """A response to a request we sent (forks, CANCEL, BYE, re-INVITE, relayed INFO)."""
        entry = self.table.txs.get(tx)
        if entry is None:
            return
        call, role, extra = entry
        handler = self._responses.get(role)
        if handler is not None:
            handler(call, tx, extra, response, now)
        elif response.status >= 200 and response.cseq_method != "INVITE":
            del self.table.txs[tx]  # a BYE or CANCEL answered: nothing waits on it

    def handle_tx_timeout(self, tx: ClientTransaction, now: float) -> None:
        """Timer B/F or a transport error on a client transaction of ours (§8.1.3.1: as 408)."""
        entry = self.table.txs.pop(tx, None)
        if entry is None:
            return
        call, role, extra = entry
        handler = self._timeouts.get(role)
        if handler is not None:
            handler(call, tx, extra, now)

    # ================================================================ bearers

    def handle_bearer_event(self, event: object, now: float) -> None:
        """Every event of the bearer protocol client (replies, timeouts, bearer news)."""
        if isinstance(event, ReplyReceived):
            entry = self.table.requests.pop(event.request_id, None)
            if entry is not None:
                reply = None if isinstance(event.message, ErrorReply) else event.message
                self._bearer_reply(entry[0], event.request_id, entry[1], reply, event.message, now)
        elif isinstance(event, RequestTimeout):
            entry = self.table.requests.pop(event.request_id, None)
            if entry is not None:
                self._bearer_reply(entry[0], event.request_id, entry[1], None, "timeout", now)
        elif isinstance(event, EventReceived):
            message = event.message
            call = self.table.sessions.get(getattr(message, "session_id", -1))
            handler = self.routes.events.get(type(message))
            if call is not None and handler is not None:
                handler(call, message, now)
        elif isinstance(event, PeerDown | PeerRestarted):
            self.failover.bearer_lost(event.peer, now)

    def _bearer_reply(
        self, call: Call, rid: int, sent: Message, reply: Message | None, raw: Any, now: float
    ) -> None:
        """A reply (None: refused or timed out) to one of ``call``'s bearer requests."""
        if isinstance(sent, Allocate):
            self._allocate_reply(call, reply, raw, now)
        elif isinstance(sent, Delete):
            if call.state is CallState.TERMINATING:
                if isinstance(reply, Deleted):
                    call.stats = reply.legs
                self.steps.finish(call, now)
        elif isinstance(sent, Update | Join):
            call.pending.discard(rid)
            self._pending_reply(call, sent, reply, raw, now)
        elif isinstance(sent, Record) and not (
            isinstance(reply, RecordReply) and reply.recording == sent.start
        ):
            log.warning("call %s: RECORD failed: %r", call.a_request.call_id, raw)
            if sent.start and raw != "timeout" and call.recording == sent.path:
                call.recording = None  # refused: no such file will exist

    def _allocate_reply(self, call: Call, reply: Message | None, raw: Any, now: float) -> None:
        state = call.state
        if state is CallState.ABANDONED:  # hung up while allocating
            if isinstance(reply, Allocated):  # free it now
                call.step(CallInput.ALLOCATED)
                self.steps.bearer(call, Delete(call.session_id), now)
            else:
                self.steps.finish(call, now)
        elif not isinstance(reply, Allocated):
            log.warning("call %s: ALLOCATE failed: %r", call.a_request.call_id, raw)
            self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)
            self.steps.finish(call, now)  # answered: nothing to delete
        elif state is CallState.REALLOCATING:
            self.failover.moved(call, reply, now)
        else:
            self.setup.allocated(call, reply, now)

    def _pending_reply(
        self, call: Call, sent: Message, reply: Message | None, raw: Any, now: float
    ) -> None:
        """An UPDATE or JOIN answered: the step that waited on it goes on (``Routes.settled``)."""
        if not call.live:
            return
        if reply is None:
            log.warning("call %s: %s failed: %r", call.a_request.call_id, type(sent).__name__, raw)
            self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)
            return
        if call.pending:
            return
        step = self.routes.settled.get(call.state)
        if step is not None:
            step(call, now)

    def _media_timeout(self, call: Call, event: MediaTimeout, now: float) -> None:
        log.info("call %s: no media on leg %d", call.a_request.call_id, event.leg)
        self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)

    def _dtmf(self, call: Call, event: Dtmf, now: float) -> None:
        if len(call.dtmf) < 256:
            call.dtmf.append(event.digit)

    def _recording_done(self, call: Call, event: RecordingDone, now: float) -> None:
        call.recording = event.path

    # ================================================================ timers

    def get_timer(self) -> float | None:
        """The earliest deadline of any call timer, or None."""
        return self.table.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Fire every call timer due at ``now``."""
        table, timers = self.table, self.routes.timers
        for _ in range(table.heap_size):  # a firing re-arms only later deadlines
            due = table.pop_expired(now)
            if due is None:
                break
            call, kind = due
            timers[kind](call, kind, now)

    def _forget(self, call: Call, kind: Timer, now: float) -> None:
        self.table.forget(call)

    # ================================================================ reading, lifecycle

    def active_calls(self, username: str, domain: str) -> int:
        """Calls the user is in now (as caller or callee), for max_calls."""
        return self.table.active_calls(username, domain)

    def state_counts(self) -> dict[str, int]:
        """Live calls by state name, for softswitch.daemon.metrics.  Safe from another
        thread: the calls are copied in one C-level step before being read."""
        out: dict[str, int] = {}
        for call in tuple(self.table.sessions.values()):
            state = call.state
            if state in LIVE_STATES:
                name = state.name.lower()
                out[name] = out.get(name, 0) + 1
        return out

    @property
    def rooms(self) -> int:
        """Conference rooms open now."""
        return len(self.table.rooms)

    def snapshot(self) -> list[dict]:
        """The live calls, for ``softswitchctl calls``."""
        out = []
        for call in self.table.sessions.values():
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
                    "srtp": [None if leg.sdes is None else leg.sdes.suite.name for leg in (a, b)],
                }
            )
        return out

    def shutdown(self, now: float) -> None:
        """SIGTERM: refuse new calls, hang up every call cleanly (BYE/CANCEL, DELETE, CDR)."""
        self.setup.closing = True
        for call in list(self.table.sessions.values()):
            self.steps.hangup(call, now, refusal=Refusal.SHUTTING_DOWN)

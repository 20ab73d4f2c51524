"""The steps every call handler takes: each one an output plus the bookkeeping
that must go with it, so that no handler can do one without the other.

* a bearer request is remembered by its id (its reply finds the call);
* an UPDATE joins ``call.pending`` (the next step waits for its answer);
* a 2xx to an INVITE is re-sent until its ACK (§13.3.1.4), and that ACK
  releases ours to the other leg (end to end, §13.2.2.4);
* our re-INVITEs stay in the transaction index for their 2xx copies;
* a hang-up answers or BYEs each side, stops the forks, frees the user
  limits and the room, DELETEs the bearer session; its answer writes the
  one CDR (``finish``), and the call is forgotten once no 2xx can come.

``Steps`` holds the ``CallTable`` and the ``Outputs`` and nothing else of the
B2BUA; the handlers (setup, midcall, failover) each hold a ``Steps``.
"""

from __future__ import annotations

import logging
import re
import time
from types import SimpleNamespace
from typing import Any

from softswitch.calls.outputs import SDP, Outputs
from softswitch.calls.state import (
    CALLEE,
    CALLER,
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
from softswitch.calls.table import CallTable
from softswitch.model.cdr import Cdr, Disposition
from softswitch.model.users import User
from softswitch.protocol import Delete, Leave, LegSpec, Message, Record, Update
from softswitch.sip.message import Request, Response
from softswitch.sip.sdp import SessionDescription
from softswitch.sip.transaction import ClientTransaction, ServerTransaction, State

__all__ = ["Steps"]

log = logging.getLogger("softswitch.calls")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _bearer_name(bearer: Any) -> str | None:
    """How the CDR names a bearer: its configured name, else its number."""
    if bearer is None:
        return None
    return getattr(bearer, "name", None) or str(bearer.id)


class Steps:
    """Outputs with their table bookkeeping; see the module docstring."""

    __slots__ = ("config", "out", "table")

    def __init__(self, table: CallTable, out: Outputs, config: SimpleNamespace) -> None:
        self.table = table
        self.out = out
        # Read on every use: a SIGHUP reload changes [calls] in place.
        self.config = config

    # ------------------------------------------------------------------ bearers

    def bearer(self, call: Call, message: Message, now: float) -> int:
        rid = self.out.bearer(call.bearer, message, now)
        self.table.requests[rid] = (call, message)
        return rid

    def update(self, call: Call, leg: int, spec: LegSpec, now: float) -> None:
        """Tell the bearer a leg's new description, unless it already has it."""
        if call.legs[leg].spec == spec:
            return
        call.legs[leg].spec = spec
        call.pending.add(self.bearer(call, Update(call.session_id, leg, spec), now))

    def start_recording(self, call: Call, now: float) -> None:
        """One RECORD, with the path the CDR will name (a new one after a move)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        name = _UNSAFE.sub("_", call.a_request.call_id)[:120]
        directory = self.config.recording.dir.rstrip("/")
        path = f"{directory}/{name}-{stamp}.wav"
        if path == call.recording:  # moved within the second it started
            path = f"{directory}/{name}-{stamp}-{call.session_id & 0xFFFF}.wav"
        call.recording = path
        self.bearer(call, Record(call.session_id, True, path), now)

    # ------------------------------------------------------------------ phones

    def refuse(
        self,
        tx: ServerTransaction,
        request: Request,
        refusal: Refusal,
        now: float,
        caller: User | None = None,
        callee: str = "",
        *,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Answer ``request`` for ``refusal`` (REFUSALS) and write its CDR if it has one."""
        status, disposition = REFUSALS[refusal]
        out = self.out
        out.reply(tx, request, status, now, reason=reason, headers=headers)
        out.bump(f"refused_{refusal.name.lower()}")
        if disposition is not None and caller is not None:
            out.cdr(
                Cdr(
                    call_id=request.call_id,
                    caller=f"{caller.username}@{caller.domain}",
                    callee=callee,
                    start=now,
                    answer=None,
                    end=now,
                    disposition=disposition,
                    sip_code=status,
                )
            )

    def send_2xx(
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
        self.out.respond(tx, response, now)
        t1 = self.out.t1
        give_up = now + 64 * t1
        call.resend[leg] = [tx, response, t1, give_up, owed]
        peer = call.legs[leg].peer
        assert peer is not None, "a leg that sent an INVITE has a peer"
        self.table.arm(call, resend_timer(leg), give_up if peer.reliable else now + t1)

    def resend_2xx(self, call: Call, kind: Timer, now: float) -> None:
        """A resend timer fired: the 2xx again, or give up on its ACK (§13.3.1.4)."""
        leg = CALLER if kind is Timer.RESEND_CALLER else CALLEE
        entry = call.resend.get(leg)
        if entry is None:
            return
        tx, response, interval, give_up, _ = entry
        if now >= give_up:  # no ACK, the dialog is over
            del call.resend[leg]
            log.info("call %s: no ACK from leg %d", call.a_request.call_id, leg)
            self.hangup(call, now, refusal=Refusal.CALLEE_FAILED)
            return
        self.out.respond(tx, response, now)
        interval = min(2 * interval, self.out.t2)
        entry[2] = interval
        self.table.arm(call, kind, min(now + interval, give_up))

    def send_ack(self, call: Call, leg: int, cseq: int) -> None:
        """ACK the 2xx leg ``leg`` sent to our INVITE with CSeq ``cseq`` (§13.2.2.4)."""
        target = call.legs[leg]
        assert target.peer is not None and target.dialog is not None, "its 2xx made the dialog"
        ack = self.out.ack(target.dialog, cseq, target.peer)
        call.acks[leg] = (cseq, ack)
        if leg == CALLEE and call.winner is not None and cseq == call.b_invite_cseq:
            call.winner.ack = ack

    def ack_again(self, call: Call, leg: int, cseq: int) -> None:
        """A copy of a 2xx we ACKed already: the same ACK again (§13.2.2.4)."""
        sent = call.acks.get(leg)
        peer = call.legs[leg].peer
        if sent is not None and sent[0] == cseq and peer is not None:
            self.out.resend(sent[1], peer)

    def send_reinvite(
        self, call: Call, leg: int, offer: SessionDescription, role: str, extra: Any, now: float
    ) -> ClientTransaction:
        """An INVITE offering ``offer`` in ``leg``'s dialog (hold/resume, a move).

        Its transaction stays in the table under ``role`` after its final
        response, so that 2xx retransmissions are ACKed again, until the call
        is forgotten (``CallTable.forget``)."""
        target = call.legs[leg]
        assert target.dialog is not None and target.peer is not None, "a confirmed leg"
        tx = self.out.request(
            target.dialog, target.peer, "INVITE", now, body=bytes(offer), content_type=SDP
        )
        self.table.txs[tx] = (call, role, extra)
        call.reinvites.append(tx)
        return tx

    def send_bye(self, call: Call, leg: int, now: float) -> None:
        target = call.legs[leg]
        if target.dialog is None:
            return
        assert target.peer is not None, "a leg with a dialog has a peer"
        tx = self.out.request(target.dialog, target.peer, "BYE", now)
        target.dialog.terminate()
        self.table.txs[tx] = (call, "bye", None)

    def send_cancel(self, call: Call, fork: Fork, now: float) -> None:
        self.table.txs[self.out.cancel(fork.tx, fork.peer, now)] = (call, "cancel", fork)

    def stop_fork(self, call: Call, fork: Fork, now: float) -> None:
        before = fork.state
        fork.step(ForkInput.CANCEL)
        if before is ForkState.RINGING:
            self.send_cancel(call, fork, now)

    # ------------------------------------------------------------------ the end

    def hangup(
        self,
        call: Call,
        now: float,
        *,
        refusal: Refusal | None = None,
        status: int | None = None,
        by: int | None = None,
        bearer_gone: bool = False,
    ) -> None:
        """End ``call``: final answer or BYE to each side not already gone, bearer DELETE.

        ``by``: the leg that hung up (it gets no BYE); ``bearer_gone``: the
        bearer died with the session, so nothing is DELETEd."""
        if not call.live:
            return
        if by is None and call.state in (CallState.REALLOCATING, CallState.MOVING):
            self.out.bump("bearer_lost")  # the move failed
        call.end = now
        self.table.disarm_all(call)
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
                self.out.reply_a(call, code, now)
            assert a.dialog is not None, "the caller's dialog exists from its INVITE on"
            a.dialog.terminate()
        else:
            call.status = 200
            call.disposition = Disposition.ANSWERED
            if by != CALLER:
                self.send_bye(call, CALLER, now)
        if call.reinvite is not None:  # §15.1.2: pending requests get 487
            ri, call.reinvite = call.reinvite, None
            self.out.reply(ri.tx, ri.request, 487, now)
        winner = call.winner
        if winner is not None and by != CALLEE and b.dialog is not None:
            if winner.ack is None:  # the 2xx must be ACKed before the BYE (§15)
                self.send_ack(call, CALLEE, call.b_invite_cseq)
            self.send_bye(call, CALLEE, now)
        for fork in call.forks:
            if fork is not winner:
                self.stop_fork(call, fork, now)
        call.step(CallInput.HANGUP)
        self.table.release(call)
        if call.state is CallState.ABANDONED:
            return  # the DELETE goes when the ALLOCATE is answered
        if bearer_gone or call.address is None:
            self.finish(call, now)
            return
        if call.room is not None:
            self.bearer(call, Leave(call.room, call.session_id), now)
        self.bearer(call, Delete(call.session_id), now)

    def finish(self, call: Call, now: float) -> None:
        """The bearer session is gone: write the CDR and forget the call."""
        if call.state is CallState.ENDED:
            return
        call.step(CallInput.DELETED)
        assert call.disposition is not None and call.status is not None, "set by hangup"
        a_stats = call.stats[0] if len(call.stats) > 0 else None
        b_stats = call.stats[1] if len(call.stats) > 1 else None
        out = self.out
        out.cdr(
            Cdr(
                call_id=call.a_request.call_id,
                caller=f"{call.caller.username}@{call.caller.domain}",
                callee=_callee(call, self.table.domain),
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
                forwarded_from=call.callee_aor if call.forwarded_from else None,
            )
        )
        out.bump(f"cdr_{call.disposition.value}")
        table = self.table
        table.remove(call)
        unsettled = (ForkState.CANCEL_PENDING, ForkState.CANCELLED)
        if call.reinvites or any(f.state in unsettled for f in call.forks):
            # A 2xx may still come (a re-INVITE crossing our BYE) or come
            # again: ACK it, for as long as the phone may retransmit it.
            table.arm(call, Timer.FORGET, now + 64 * out.t1)
        else:
            table.forget(call)


def _callee(call: Call, domain: str) -> str:
    """The CDR's callee: the dialled user, or the one a forwarded call went to."""
    if call.forwarded_from and call.callee is not None:
        return f"{call.callee.username}@{domain}"
    return call.callee_aor

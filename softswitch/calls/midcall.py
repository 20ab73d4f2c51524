"""Requests within a call: CANCEL, BYE, ACK, INFO/UPDATE/OPTIONS, re-INVITE.

A re-INVITE (hold/resume, RFC 3264 §8.4) is relayed, not answered: the
offer goes to the other leg rewritten to the bearer with that leg's own
codec (so a transcoded call stays transcoded), the other leg's answer
updates the bearer (each leg's direction as its phone put it), and the
sender gets an answer built from its offer with the direction the other
leg chose.  As for the initial INVITE, the other leg's 2xx is ACKed when
the sender ACKs ours (end to end, §13.2.2.4).  A second re-INVITE while one
is in progress, or before the last 2xx was ACKed, gets 491 (§14.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from softswitch.calls import media
from softswitch.calls.outputs import Outputs
from softswitch.calls.routes import Routes
from softswitch.calls.state import (
    ALLOW,
    CALLER,
    Call,
    CallInput,
    CallState,
    Refusal,
    Reinvite,
    Timer,
    resend_timer,
)
from softswitch.calls.steps import Steps
from softswitch.calls.table import CallTable
from softswitch.sip.dialog import request_dialog_id, response_dialog_id
from softswitch.sip.message import Request, Response
from softswitch.sip.sdp import SdpError
from softswitch.sip.transaction import ClientTransaction, Peer, ServerTransaction, State

log = logging.getLogger("softswitch.calls.midcall")

__all__ = ["MidCallHandler"]


class MidCallHandler:
    """CANCEL, BYE, ACK, in-dialog requests and re-INVITEs."""

    __slots__ = ("config", "find_invite", "out", "steps", "table")

    def __init__(
        self,
        table: CallTable,
        out: Outputs,
        *,
        config: SimpleNamespace,
        find_invite: Callable[[Request], ServerTransaction | None],
    ) -> None:
        """``find_invite``: the server INVITE transaction a CANCEL is for (§9.2),
        the transaction layer's ``find_server_invite``."""
        self.table = table
        self.out = out
        self.steps = Steps(table, out, config)
        # Read on every use: a SIGHUP reload changes [calls] in place.
        self.config = config
        self.find_invite = find_invite

    def register(self, routes: Routes) -> None:
        routes.request("CANCEL", self.cancel, initial=True, in_dialog=True)
        routes.request("BYE", self.bye, initial=True, in_dialog=True)
        routes.request("INVITE", self.reinvite, initial=False, in_dialog=True)
        for method in ("INFO", "UPDATE", "OPTIONS"):
            routes.request(method, self.in_dialog, initial=False, in_dialog=True)
        routes.role("reinvite", self.reinvite_response, self.reinvite_timeout)
        routes.role("relay", self.relay_response, self.relay_timeout)
        routes.timer(Timer.RESEND_CALLER, self.steps.resend_2xx)
        routes.timer(Timer.RESEND_CALLEE, self.steps.resend_2xx)
        routes.when_settled(CallState.REINVITING, self.reinvite_answer)

    # ================================================================ ACK

    def ack(self, request: Request, peer: Peer, now: float) -> None:
        """The ACK for one of our 2xx (end to end, its own transaction, §13.2.2.4)."""
        entry = self.table.dialogs.get(request_dialog_id(request))
        if entry is None:
            return
        call, leg = entry
        resend = call.resend.pop(leg, None)
        if resend is None or request.cseq != resend[1].cseq:
            return
        self.table.disarm(call, resend_timer(leg))
        if leg == CALLER and call.state is CallState.ANSWERED:
            call.step(CallInput.CALLER_ACK)
        owed = resend[4]
        if owed is not None:
            self.steps.send_ack(call, 1 - leg, owed)

    # ================================================================ CANCEL, BYE, in-dialog

    def cancel(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        """CANCEL (§9.2): 200 for the CANCEL, 487 for the INVITE if still unanswered."""
        invite_tx = self.find_invite(request)
        if invite_tx is None:
            return self.out.reply(tx, request, 481, now)
        self.out.reply(tx, request, 200, now)
        call = self.table.by_invite.get((request.call_id, request.from_.tag))
        if call is not None and call.a_tx is invite_tx and call.answer is None and call.live:
            self.steps.hangup(call, now, refusal=Refusal.CANCELLED)
        return None

    def _dialog_request(
        self, tx: ServerTransaction, request: Request, now: float
    ) -> tuple[Call, int] | None:
        """The call and leg of a mid-dialog request, its dialog told of it (CSeq,
        remote target); None after answering 481 when no dialog matches (§12.2.2)."""
        entry = self.table.dialogs.get(request_dialog_id(request))
        if entry is None:
            self.out.reply(tx, request, 481, now)
            return None
        dialog = entry[0].legs[entry[1]].dialog
        assert dialog is not None, "the table's dialogs index holds legs with a dialog"
        dialog.receive_request(request)
        return entry

    def bye(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        entry = self._dialog_request(tx, request, now)
        if entry is None:
            return None
        call, leg = entry
        self.out.reply(tx, request, 200, now)
        if call.live:
            if leg == CALLER and call.answer is None:
                self.steps.hangup(call, now, refusal=Refusal.CANCELLED, by=leg)
            else:
                self.steps.hangup(call, now, refusal=Refusal.CALLEE_FAILED, by=leg)
        return None

    def in_dialog(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        """INFO is relayed to the other leg; OPTIONS and a body-less UPDATE answered here."""
        entry = self._dialog_request(tx, request, now)
        if entry is None:
            return None
        call, leg = entry
        method = request.method
        other = call.legs[1 - leg] if call.room is None else None
        if method == "UPDATE" and request.body:
            # RFC 3311 §5.2: an offer we cannot take leaves the session as it was.
            return self.out.reply(
                tx, request, 488, now, reason="Not Acceptable Here: use re-INVITE"
            )
        if method != "INFO" or other is None or other.dialog is None or not call.live:
            return self.out.reply(tx, request, 200, now, headers=[("Allow", ALLOW)])
        assert other.peer is not None, "a leg with a dialog has a peer"
        headers = [(n, v) for n in ("Info-Package", "Content-Disposition") if (v := request.get(n))]
        out = self.out.request(
            other.dialog,
            other.peer,
            "INFO",
            now,
            body=request.body,
            content_type=request.get("Content-Type") if request.body else None,
            headers=headers,
        )
        self.table.txs[out] = (call, "relay", (tx, request))
        return None

    def relay_response(
        self,
        call: Call,
        out: ClientTransaction,
        extra: tuple[ServerTransaction, Request],
        response: Response,
        now: float,
    ) -> None:
        """The other leg's answer to a relayed INFO goes back to the sender."""
        if response.status < 200:
            return
        del self.table.txs[out]
        tx, request = extra
        if tx.state is State.TERMINATED or tx.status >= 200:
            return
        kind = response.get("Content-Type")
        self.out.reply(
            tx,
            request,
            response.status,
            now,
            reason=response.reason,
            body=response.body,
            content_type=kind,
        )

    def relay_timeout(
        self,
        call: Call,
        out: ClientTransaction,
        extra: tuple[ServerTransaction, Request],
        now: float,
    ) -> None:
        tx, request = extra
        self.out.reply(tx, request, 408, now)

    # ================================================================ re-INVITE

    def reinvite(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        """A re-INVITE (hold/resume, §14): relay the offer, bring the answer back."""
        entry = self.table.dialogs.get(request_dialog_id(request))
        if entry is None:
            return self.out.reply(tx, request, 481, now)
        call, leg = entry
        if not call.live:
            return self.steps.refuse(tx, request, Refusal.NO_DIALOG, now)
        if call.state is not CallState.CONFIRMED or call.resend:
            return self.steps.refuse(tx, request, Refusal.REQUEST_PENDING, now)  # §14.2
        x = call.legs[leg]
        assert x.dialog is not None, "_dialogs holds legs with a dialog"
        x.dialog.receive_request(request)
        if not request.body:
            # No offer: ours goes in the 2xx, its answer in the ACK (§14.1).
            assert x.sent is not None, "a confirmed leg has had our description"
            response = self._leg_response(call, leg, request, 200, bytes(x.sent))
            return self.steps.send_2xx(call, leg, tx, response, None, now)
        sd = media.parse_sdp(request.body, request.content_type)
        index = media.audio_index(sd)
        codecs = media.usable_codecs(sd.media[index], self.config.calls.codecs)
        sdes = media.reoffer_sdes(sd.media[index], x.sdes)
        call.step(CallInput.REINVITE)
        call.reinvite = Reinvite(
            source=leg, tx=tx, request=request, offer=sd, codecs=codecs, sdes=sdes
        )
        if call.room is not None:  # nobody to ask: the bearer is the other side
            self._reinvite_apply_source(call, "sendrecv", now)
            if not call.pending:
                self.reinvite_answer(call, now)
            return None
        y = call.legs[1 - leg]
        assert y.dialog is not None and y.peer is not None, "a confirmed call has both dialogs"
        assert call.address is not None and y.origin is not None, "allocated"
        keep = [c for c in (y.selected, media.telephone_event(y.codecs)) if c is not None]
        offer = media.offer_for(
            sd, index, keep, call.address, call.ports[1 - leg], y.origin, y.sdes
        )
        call.reinvite.out = self.steps.send_reinvite(call, 1 - leg, offer, "reinvite", None, now)
        return None

    def reinvite_response(
        self, call: Call, tx: ClientTransaction, extra: Any, response: Response, now: float
    ) -> None:
        """The other leg's answer to a re-INVITE we relayed (or a hold/resume of ours)."""
        ri = call.reinvite
        status = response.status
        if ri is None or ri.out is not tx:
            if 200 <= status < 300:  # a copy of a 2xx we handled: ACK it again (§13.2.2.4)
                entry = self.table.dialogs.get(response_dialog_id(response))
                if entry is not None:
                    self.steps.ack_again(call, entry[1], response.cseq)
            return
        if status < 200:
            return
        other = 1 - ri.source
        y = call.legs[other]
        if status >= 300:
            return self._reinvite_failed(call, status, now)
        assert y.dialog is not None, "the re-INVITE went out in its dialog"
        y.dialog.receive_response(response)
        ri.answer = response
        index = media.audio_index(ri.offer)
        try:
            sd = media.parse_sdp(response.body, response.content_type, "answer")
            codecs = media.answered_codecs(sd, index)
            y_sdes = media.answer_sdes(sd.media[index], y.sdes)
        except SdpError as err:
            log.info("call %s: re-INVITE answer unusable: %s", call.a_request.call_id, err)
            self.steps.send_ack(call, other, response.cseq)
            return self.steps.hangup(call, now, refusal=Refusal.CALLEE_FAILED)
        md = sd.media[index]
        y.sdp, y.index, y.codecs, y.sdes = sd, index, codecs, y_sdes
        y.selected = media.real_codec(codecs)
        direction = media.direction_of(md)
        spec = media.leg_spec(md, codecs, y.selected, direction)
        self.steps.update(call, other, media.with_sdes(spec, y_sdes), now)
        self._reinvite_apply_source(call, direction, now)
        if not call.pending:
            self.reinvite_answer(call, now)
        return None

    def _reinvite_apply_source(self, call: Call, direction: str, now: float) -> None:
        """The re-INVITE's sender: new media, same codec if still offered, its answer built."""
        ri = call.reinvite
        assert ri is not None, "called while a re-INVITE is relayed"
        x = call.legs[ri.source]
        assert call.address is not None and x.origin is not None, "allocated"
        sd = ri.offer
        index = media.audio_index(sd)
        codecs = ri.codecs
        previous = x.selected
        assert previous is not None, "usable_codecs left a confirmed leg a real codec"
        x.sdp, x.index, x.codecs = sd, index, codecs
        partner = call.legs[1 - ri.source].selected or previous
        x.selected = media.caller_codec(codecs, previous or partner)
        answer = [x.selected]
        te = media.telephone_event(codecs)
        if te is not None:
            answer.append(te)
        x.sdes = ri.sdes
        x.sent = media.answer_for(
            sd, answer, call.address, call.ports[ri.source], x.origin, direction, x.sdes
        )
        md = sd.media[index]  # its rtpmap list is the whole offer, as at set-up
        spec = media.leg_spec(md, codecs, x.selected, media.direction_of(md))
        self.steps.update(call, ri.source, media.with_sdes(spec, x.sdes), now)

    def reinvite_answer(self, call: Call, now: float) -> None:
        ri = call.reinvite
        assert ri is not None, "called while a re-INVITE is relayed"
        call.reinvite = None
        call.step(CallInput.REINVITE_DONE)
        x = call.legs[ri.source]
        assert x.sent is not None, "_reinvite_apply_source built its answer"
        response = self._leg_response(call, ri.source, ri.request, 200, bytes(x.sent))
        owed = None if ri.answer is None else ri.answer.cseq
        self.steps.send_2xx(call, ri.source, ri.tx, response, owed, now)

    def reinvite_timeout(self, call: Call, tx: ClientTransaction, extra: Any, now: float) -> None:
        self._reinvite_failed(call, 408, now)

    def _reinvite_failed(self, call: Call, status: int, now: float) -> None:
        ri = call.reinvite
        if ri is None:
            return
        call.reinvite = None
        call.step(CallInput.REINVITE_DONE)
        self.out.reply(ri.tx, ri.request, status, now)
        if status in (408, 481):  # §12.2.1.2: the dialog is gone
            self.steps.hangup(call, now, refusal=Refusal.CALLEE_FAILED)

    def _leg_response(
        self, call: Call, leg: int, request: Request, status: int, body: bytes
    ) -> Response:
        peer = call.legs[leg].peer
        assert peer is not None, "a leg that sends requests has a peer"
        return self.out.leg_response(peer, request, status, body)

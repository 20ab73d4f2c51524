"""Calls that survive a bearer crash (DESIGN.md, "Where this is going").

When the bearer protocol client reports a bearer down (missed heartbeats)
or restarted (a new epoch: its sessions are gone), every call on it has
lost its media.  Control holds each leg's media whole (``Leg``: the phone's
codecs and address, the ``LegSpec`` the bearer had, our o= line), so an
answered call is *moved*:

1. a new session (a new session id, so nothing the old bearer may still say
   about the old one can reach the call) is ALLOCATEd on the bearer the
   pool would choose for a new call, with both legs' ``LegSpec`` as they
   were; a restarted bearer that is up again qualifies like any other;
2. if the call was recorded, RECORD starts a second file on the new session
   (the first one ends where the bearer died; the CDR names the second);
3. each phone gets a re-INVITE (both at once) offering what it already
   has, the negotiated codec and telephone-event, on the new bearer's
   address and port for its leg, with the leg's own o= line, its
   sess-version up by one (RFC 3264 §8: same origin, new version);
4. each 2xx is ACKed; an answer that changed the phone's address, port,
   codec or direction is sent to the bearer in one UPDATE;
5. when both have answered (and the bearer has any UPDATE), the call is
   CONFIRMED again and goes on as before.

Any failure on the way (no bearer up with room, ALLOCATE refused or timed
out, a phone answering the re-INVITE with a non-2xx or not at all, an
unusable answer, an UPDATE refused, 64*T1 without the whole move done)
hangs the call up as before the move existed: BYE to both phones, CDR
"answered" with the answer time it had and the bearer it ended on.

Only CONFIRMED two-party calls with no offer/answer in progress move.
Calls not yet answered (or answered and not ACKed), conference members
(their room lives on the dead bearer, with every other member), and calls
in the middle of a re-INVITE or waiting for the ACK of one are hung up with
``Refusal.BEARER_FAILED`` as before: their state is not settled enough to
offer it again.  The dead session's RTP statistics are lost with it: the
CDR's packet counts are those of the last session only.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from softswitch.calls import media
from softswitch.calls.outputs import Outputs
from softswitch.calls.routes import Routes
from softswitch.calls.state import Call, CallInput, CallState, Refusal, Timer
from softswitch.calls.steps import Steps
from softswitch.calls.table import CallTable
from softswitch.protocol import Allocate, Allocated, AllocFlags
from softswitch.sip.message import Response
from softswitch.sip.sdp import SdpError
from softswitch.sip.transaction import ClientTransaction

log = logging.getLogger("softswitch.calls.failover")

__all__ = ["FailoverHandler"]


class FailoverHandler:
    """Moving answered calls off a lost bearer."""

    __slots__ = ("bearers", "out", "steps", "table")

    def __init__(
        self, table: CallTable, out: Outputs, *, config: SimpleNamespace, bearers: Any
    ) -> None:
        self.table = table
        self.out = out
        self.steps = Steps(table, out, config)
        self.bearers = bearers

    def register(self, routes: Routes) -> None:
        routes.role("move", self.move_response, self.move_timeout)
        routes.timer(Timer.MOVE, self.too_long)
        routes.when_settled(CallState.MOVING, self.move_settled)

    def bearer_lost(self, peer: object, now: float) -> None:
        """A bearer died or restarted: its sessions are gone; move or hang up their calls.

        A call already hanging up needs nothing: its DELETE times out."""
        for call in [c for c in self.table.sessions.values() if c.bearer.peer == peer]:
            if not call.live:
                continue
            if self._movable(call) and self._move(call, now):
                continue
            self.out.bump("bearer_lost")
            self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED, bearer_gone=True)

    @staticmethod
    def _movable(call: Call) -> bool:
        """Answered, ACKed, two-party, and no offer/answer under way on either leg."""
        return (
            call.state is CallState.CONFIRMED
            and call.room is None
            and call.reinvite is None
            and not call.resend
            and not call.pending
        )

    def _move(self, call: Call, now: float) -> bool:
        """ALLOCATE ``call`` again on another bearer; False if none is up with room."""
        bearer = self.bearers.choose()
        if bearer is None:
            log.warning("call %s: its bearer is lost and no other has room", call.a_request.call_id)
            return False
        a, b = call.legs
        assert a.spec is not None and b.spec is not None, "a confirmed call has both specs"
        self.table.rekey(call)
        call.bearer = bearer
        call.address, call.ports, call.stats = None, (), ()
        call.step(CallInput.BEARER_LOST)
        allocate = Allocate(
            call.session_id, call.a_request.call_id, (a.spec, b.spec), AllocFlags(call.flags)
        )
        self.steps.bearer(call, allocate, now)
        self.table.arm(call, Timer.MOVE, now + 64 * self.out.t1)
        log.warning(
            "call %s: its bearer is lost, moving it to bearer %s",
            call.a_request.call_id,
            getattr(bearer, "name", bearer.id),
        )
        return True

    def moved(self, call: Call, reply: Allocated, now: float) -> None:
        """The new session exists: RECORD again, re-INVITE both phones to it."""
        call.step(CallInput.ALLOCATED)
        call.address = reply.address
        call.ports = reply.ports
        if not media.take_keys(call.legs, reply.keys):  # new keys: the re-INVITEs carry them
            log.warning("call %s: the new bearer made no SRTP keys", call.a_request.call_id)
            self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)
            return
        if call.record:
            previous = call.recording
            self.steps.start_recording(call, now)
            log.info(
                "call %s: recording goes on in %s (%s ends where the bearer died)",
                call.a_request.call_id,
                call.recording,
                previous,
            )
        for n, leg in enumerate(call.legs):
            assert leg.sent is not None and leg.origin is not None, "a confirmed leg had ours"
            assert leg.dialog is not None and leg.peer is not None, "a confirmed leg's dialog"
            assert leg.selected is not None, "a confirmed leg has a codec"
            keep = [leg.selected]
            te = media.telephone_event(leg.codecs)
            if te is not None and media.telephone_event(leg.sent.media[leg.index].codecs):
                keep.append(te)
            offer = media.offer_for(
                leg.sent, leg.index, keep, reply.address, reply.ports[n], leg.origin, leg.sdes
            )
            leg.sent = offer
            call.moving[n] = self.steps.send_reinvite(call, n, offer, "move", n, now)

    def move_response(
        self, call: Call, tx: ClientTransaction, n: int, response: Response, now: float
    ) -> None:
        """A phone's answer to its re-INVITE towards the new bearer."""
        status = response.status
        if status < 200:
            return None
        first = call.moving.get(n) is tx
        if first:
            del call.moving[n]
        leg = call.legs[n]
        if status >= 300:
            if first and call.state is CallState.MOVING:
                log.warning(
                    "call %s: leg %d refused the move: %d", call.a_request.call_id, n, status
                )
                self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)
            return None
        assert leg.dialog is not None and leg.peer is not None, "the re-INVITE went in its dialog"
        if not first:  # a copy of a 2xx already ACKed (§13.2.2.4): the same ACK again
            self.steps.ack_again(call, n, response.cseq)
            return None
        leg.dialog.receive_response(response)
        self.steps.send_ack(call, n, response.cseq)
        if call.state is not CallState.MOVING:
            return None  # hung up meanwhile: ACKed, the BYE is on its way
        try:
            sd = media.parse_sdp(response.body, response.content_type, "answer")
            codecs = media.answered_codecs(sd, leg.index)
            sdes = media.answer_sdes(sd.media[leg.index], leg.sdes)
        except SdpError as err:
            log.warning("call %s: leg %d's answer unusable: %s", call.a_request.call_id, n, err)
            return self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)
        md = sd.media[leg.index]
        leg.sdp, leg.codecs, leg.selected = sd, codecs, media.real_codec(codecs)
        leg.sdes = sdes
        spec = media.leg_spec(md, codecs, leg.selected, media.direction_of(md))
        spec = media.with_sdes(spec, sdes)
        if _media_of(spec) != _media_of(leg.spec):  # the bearer was ALLOCATEd with leg.spec
            self.steps.update(call, n, spec, now)
        return self.move_settled(call, now)

    def move_timeout(self, call: Call, tx: ClientTransaction, n: int, now: float) -> None:
        """No final answer to a re-INVITE of the move (timer B, transport error)."""
        if call.moving.get(n) is tx:
            del call.moving[n]
            if call.state is CallState.MOVING:
                log.warning("call %s: leg %d did not answer the move", call.a_request.call_id, n)
                self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)

    def too_long(self, call: Call, kind: Timer, now: float) -> None:
        """64*T1 and the move is not done (Timer.MOVE): hang up."""
        if call.state in (CallState.REALLOCATING, CallState.MOVING):
            log.warning("call %s: the move took too long", call.a_request.call_id)
            self.steps.hangup(call, now, refusal=Refusal.BEARER_FAILED)

    def move_settled(self, call: Call, now: float) -> None:
        """Both phones answered and the bearer has what they said: the call goes on."""
        if call.moving or call.pending or call.state is not CallState.MOVING:
            return
        self.table.disarm(call, Timer.MOVE)
        call.step(CallInput.MOVED)
        self.out.bump("bearer_moved")
        log.warning(
            "call %s: moved to bearer %s",
            call.a_request.call_id,
            getattr(call.bearer, "name", call.bearer.id),
        )


def _media_of(spec: Any) -> tuple:
    """What of a LegSpec a phone's answer can change: address, port, codec, events,
    direction, and its SRTP key (a phone may re-key when it answers)."""
    if spec is None:
        return ()
    return (spec.address, spec.port, spec.selected, spec.dtmf_pt, spec.direction, spec.extensions)

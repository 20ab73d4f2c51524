"""Call set-up: the caller's INVITE up to the 200 (RFC 3261 §13).

The order of the checks on a new INVITE is the order a caller would want to
hear about problems in, and cheapest first: 100 Trying (§17.2.1), hop count
(483), a merged request (482, §8.2.2.2), credentials (407/403, §22.3), the
caller's limit (486), routing (404/480/486), the SDP offer (488), a bearer
(503 + Retry-After).  Only then does the call exist and cost anything.

Then one ALLOCATE round trip; an INVITE to every binding of the callee,
each its own Call-ID and client transaction, sent to the address the
binding registered from (RFC 3581); 1xx relayed (a 183 with SDP becomes
early media through the bearer); the first 2xx wins and the other forks get
CANCEL (§9.1) or, if they answer too, ACK and BYE (§13.2.2.4); one UPDATE
tells the bearer the callee's media; the caller gets 200 with the bearer's
address, retransmitted until its ACK (§13.3.1.4).

A conference room lives on one bearer, the one its first member was put
on (``CallTable.rooms``: room -> [bearer, members]); later members go to
that bearer or, when it is down or full, get 503 + Retry-After.  The room is
forgotten when its last member hangs up.

Call forwarding (the callee's ``forward_*`` and ``dnd``): what is known
before ringing is decided by ``routing.route``; here, when every fork of
the current target answered busy (486/600), or nobody answered within the
target's ``noanswer_after``, the call goes on to ``forward_busy`` or
``forward_noanswer``: the forks still ringing get CANCEL, and the new
target's devices an INVITE with the same offer, while the caller's dialog
and bearer session stay as they are.  If that forward cannot be followed
(loop, unknown or unreachable target) the caller gets what it would have
got without it.  Two limits: a call whose early media (183 with SDP) is
already playing is not forwarded on no answer, and the callee leg keeps the
SRTP policy of the user that was dialled.
"""

from __future__ import annotations

import logging
import secrets
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from softswitch.calls import media
from softswitch.calls.outputs import Outputs
from softswitch.calls.routes import Routes
from softswitch.calls.routing import Conference, Destination, forward_to, route, settle
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
    Leg,
    Refusal,
    Timer,
    best_response,
)
from softswitch.calls.steps import Steps
from softswitch.calls.table import CallTable
from softswitch.model.users import Binding, User, UserDirectory
from softswitch.protocol import Allocate, Allocated, AllocFlags, Join, LegSpec
from softswitch.sip.dialog import Dialog
from softswitch.sip.digest import AuthFailure, DigestServer
from softswitch.sip.errors import SipError
from softswitch.sip.headers import parse_address
from softswitch.sip.message import Address, Request, Response
from softswitch.sip.offeranswer import LegOrigin
from softswitch.sip.sdp import SdpError
from softswitch.sip.transaction import ClientTransaction, Peer, ServerTransaction
from softswitch.sip.uri import SipUri, parse_uri

if TYPE_CHECKING:
    from softswitch.calls.features import FeatureCodes
    from softswitch.guard import Guard
    from softswitch.location import Location

log = logging.getLogger("softswitch.calls.setup")

__all__ = ["RETRY_AFTER", "SetupHandler"]

#: Seconds a 503 for "no bearer" asks the caller to wait (§20.33, §21.5.4).
RETRY_AFTER = 5


class SetupHandler:
    """INVITE processing, forking and the answer."""

    __slots__ = (
        "auth",
        "bearers",
        "closing",
        "config",
        "directory",
        "domain",
        "features",
        "guard",
        "location",
        "out",
        "steps",
        "table",
    )

    def __init__(
        self,
        table: CallTable,
        out: Outputs,
        *,
        config: SimpleNamespace,
        directory: UserDirectory,
        location: Location,
        bearers: Any,
        auth: DigestServer,
        guard: Guard | None = None,
    ) -> None:
        self.table = table
        self.out = out
        self.steps = Steps(table, out, config)
        # Read on every use: a SIGHUP reload changes [calls] in place.
        self.config = config
        self.directory = directory
        self.location = location
        self.bearers = bearers
        self.auth = auth
        self.guard = guard  # told every digest check's outcome (softswitch/guard.py)
        self.domain = table.domain
        self.closing = False  # SIGTERM: new calls are refused
        self.features: FeatureCodes | None = None  # set by CallManager (calls.features)

    def register(self, routes: Routes) -> None:
        routes.request("INVITE", self.invite, initial=True, in_dialog=False)
        routes.role("fork", self.fork_response, self.fork_timeout)
        routes.timer(Timer.NO_ANSWER, self.no_answer)
        routes.when_settled(CallState.CALLING, self.send_early_media)
        routes.when_settled(CallState.CONNECTING, self.answer_caller)
        routes.when_settled(CallState.JOINING, self.answer_caller)

    # ================================================================ initial INVITE

    def invite(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        """A new INVITE (no To tag): refuse it, or start a call and ALLOCATE."""
        self.out.trying(tx, request, now)  # §17.2.1
        if request.max_forwards == 0:
            return self.steps.refuse(tx, request, Refusal.TOO_MANY_HOPS, now)
        known = self.table.by_invite.get((request.call_id, request.from_.tag))
        if known is not None and known.a_tx is not tx:
            return self.steps.refuse(tx, request, Refusal.MERGED, now)  # §8.2.2.2
        caller = self._authenticate(tx, request, peer, now)
        if caller is None:
            return None
        aor = self._callee_aor(request)
        if self.closing:
            return self.steps.refuse(tx, request, Refusal.SHUTTING_DOWN, now, caller, aor)
        if not request.contacts:
            return self.steps.refuse(tx, request, Refusal.MALFORMED, now, reason="Missing Contact")
        if self.features is not None and self.features.handle(tx, request, peer, caller, now):
            return None  # *72carol and friends: a setting, not a call
        if (
            caller.max_calls
            and self.table.active_calls(caller.username, self.domain) >= caller.max_calls
        ):
            return self.steps.refuse(tx, request, Refusal.CALLER_OVER_LIMIT, now, caller, aor)
        where = route(
            request.uri,
            self.domain,
            prefix=self.config.calls.conference_prefix,
            directory=self.directory,
            location=self.location,
            active_calls=self.table.active_calls,
            now=now,
        )
        if isinstance(where, Refusal):
            return self.steps.refuse(tx, request, where, now, caller, aor)
        try:
            sd = media.parse_sdp(request.body, request.content_type)
            index = media.audio_index(sd)
            codecs = media.usable_codecs(sd.media[index], self.config.calls.codecs)
            a_sdes = media.offer_sdes(sd.media[index], self.srtp_policy(caller))
        except SdpError as err:
            refusal = Refusal.MALFORMED if err.status == 400 else Refusal.NOT_ACCEPTABLE
            return self.steps.refuse(tx, request, refusal, now, caller, aor, reason=err.reason)
        room = where.room if isinstance(where, Conference) else None
        dest = None if isinstance(where, Conference) else where
        bearer = self._room_bearer(room) if room is not None else self.bearers.choose()
        if bearer is None:
            hosted = room is not None and room in self.table.rooms
            return self.steps.refuse(
                tx,
                request,
                Refusal.ROOM_BEARER_UNAVAILABLE if hosted else Refusal.NO_BEARER,
                now,
                caller,
                aor,
                headers=[("Retry-After", str(RETRY_AFTER))],
            )
        a_tag = secrets.token_hex(8)
        md = sd.media[index]
        a = Leg(peer=peer, sdp=sd, index=index, codecs=codecs, selected=media.real_codec(codecs))
        a.dialog = Dialog.from_uas(
            request, a_tag, local_target=self.out.contact_for(peer), early=True
        )
        a.sdes = a_sdes
        a.spec = media.with_sdes(
            media.leg_spec(md, codecs, a.selected, media.direction_of(md)), a_sdes
        )
        call = Call(
            session_id=self.table.new_session_id(),
            a_tx=tx,
            a_request=request,
            a_tag=a_tag,
            caller=caller,
            callee=None if dest is None else dest.user,
            callee_aor=aor,
            room=room,
            start=now,
            legs=[a, Leg(peer=None)],
            bearer=bearer,
        )
        flags = AllocFlags.NONE
        if ":" in a.spec.address:
            flags |= AllocFlags.IPV6
        if dest is None:
            flags |= AllocFlags.CONFERENCE
            specs: tuple[LegSpec, ...] = (a.spec,)
        else:
            call.bindings = dest.bindings
            call.forwarded_from = dest.forwarded_from
            if dest.forwarded_from:
                self.out.bump("call_forwarded")
            offered = media.callee_codecs(codecs, self.config.calls.codecs)
            call.legs[CALLEE].codecs = tuple(offered)
            te = media.telephone_event(offered)
            b_spec = LegSpec(
                payload_types=media.payload_types(offered), dtmf_pt=None if te is None else te.pt
            )
            b_sdes = media.callee_offer_sdes(self.srtp_policy(dest.user))
            b_spec = media.with_sdes(b_spec, b_sdes)
            call.legs[CALLEE].sdes = b_sdes
            call.legs[CALLEE].spec = b_spec
            specs = (a.spec, b_spec)
            # Not AllocFlags.RECORD: the bearer would start a file under a name of
            # its own, and the CDR must name the file control chose (_allocated).
            call.record = caller.record_calls or dest.user.record_calls
        call.flags = flags
        self.table.add(call)
        self.steps.bearer(call, Allocate(call.session_id, request.call_id, specs, flags), now)
        return None

    def srtp_policy(self, user: User) -> str:
        """A user's SRTP policy: its own, else [calls] srtp (calls.media)."""
        return media.srtp_policy(user.srtp, self.config.calls.srtp)

    def _room_bearer(self, room: str) -> Any:
        """The bearer for a new member of ``room``: the one hosting it, else the least loaded.

        A bearer mixes only the members it carries, so every member of a room
        must be on the bearer its first member was put on.  If that bearer is
        down or full the caller gets 503 with Retry-After (None here) rather
        than a room of its own elsewhere; spreading one large room over
        several bearers is future work (DESIGN.md).
        """
        entry = self.table.rooms.get(room)
        if entry is None:
            return self.bearers.choose()
        b = entry[0]
        if b.up and not b.auth_failed and b.sessions < b.capacity:
            return b
        return None

    def _authenticate(
        self, tx: ServerTransaction, request: Request, peer: Peer, now: float
    ) -> User | None:
        """The caller, or None once refused (§22.3: 407 and Proxy-Authenticate).
        Attempts that cannot work are logged (``DigestServer.trouble``)."""
        trouble = self.auth.trouble
        credentials = request.get("Proxy-Authorization") or request.get("Authorization")
        if credentials is None:
            trouble.challenged(peer.host, _from_aor(request), now)
            self._challenge(tx, request, now, stale=False)
            return None
        trouble.answered(peer.host, _from_aor(request))
        result = self.auth.verify(credentials, "INVITE", now, self.ha1s, body=request.body)
        if self.guard is not None:
            self.guard.auth_result(peer.host, result.username, result.reason, now)
        if not result.ok:
            trouble.refused(peer.host, credentials, result, now)
            if result.reason is AuthFailure.MALFORMED:
                self.steps.refuse(tx, request, Refusal.BAD_CREDENTIALS, now)
            else:
                stale = result.reason is AuthFailure.STALE_NONCE
                self._challenge(tx, request, now, stale=stale)
            self.out.bump(f"auth_{result.reason.value if result.reason else 'failed'}")
            return None
        user = self.directory.lookup(result.username or "", self.domain)
        if user is None:
            self._challenge(tx, request, now, stale=False)
            return None
        from_uri = request.from_.uri
        if not user.enabled or not isinstance(from_uri, SipUri) or from_uri.user != user.username:
            # A disabled account, or credentials of one user calling as another.
            self.steps.refuse(tx, request, Refusal.FORBIDDEN, now, user, self._callee_aor(request))
            return None
        return user

    def ha1s(self, username: str) -> dict[str, str] | None:
        user = self.directory.lookup(username, self.domain)
        if user is None:
            return None
        return {"MD5": user.ha1_md5, "SHA-256": user.ha1_sha256}

    def _challenge(self, tx: ServerTransaction, request: Request, now: float, stale: bool) -> None:
        values = self.auth.challenge(now, stale=stale)
        headers = [("Proxy-Authenticate", v) for v in values]
        self.out.reply(tx, request, REFUSALS[Refusal.CHALLENGE][0], now, headers=headers)

    def _callee_aor(self, request: Request) -> str:
        uri = request.uri
        user = uri.user if isinstance(uri, SipUri) else getattr(uri, "number", "")
        return f"{user}@{self.domain}"

    # ================================================================ forks

    def allocated(self, call: Call, reply: Allocated, now: float) -> None:
        """The bearer session exists: JOIN the room, or INVITE the callee's devices."""
        call.address = reply.address
        call.ports = reply.ports
        for leg in call.legs:
            leg.origin = LegOrigin(reply.address, sess_id=secrets.randbits(31))
        if not media.take_keys(call.legs, reply.keys):
            log.warning("call %s: the bearer made no SRTP keys", call.a_request.call_id)
            return self.steps.hangup(call, now, refusal=Refusal.NOT_ACCEPTABLE)
        if call.record:
            self.steps.start_recording(call, now)
        if call.room is not None:
            call.step(CallInput.ROOM_ALLOCATED)
            call.pending.add(self.steps.bearer(call, Join(call.room, call.session_id), now))
            return
        call.step(CallInput.ALLOCATED)
        self._fork(call, now)

    def no_answer(self, call: Call, kind: Timer, now: float) -> None:
        """calls.no_answer_timeout (or the callee's noanswer_after) since the INVITEs went out."""
        if call.state is CallState.CALLING:
            if call.callee is not None and self._forward(call, call.callee.forward_noanswer, now):
                return
            self.steps.hangup(call, now, refusal=Refusal.NO_ANSWER)

    def _forward(self, call: Call, target: str, now: float) -> bool:
        """Forward a ringing call to ``target`` (see the module docstring); False if not."""
        callee = call.callee
        if not target or callee is None or call.room is not None or call.early is not None:
            return False
        where: tuple[User, tuple[str, ...]] | Destination | Refusal
        where = forward_to(callee, target, call.forwarded_from, self.domain, self.directory)
        if not isinstance(where, Refusal):
            where = settle(
                *where,
                self.domain,
                directory=self.directory,
                location=self.location,
                active_calls=self.table.active_calls,
                now=now,
            )
        if isinstance(where, Refusal):
            log.info(
                "call %s: forward %s -> %s not followed: %s",
                call.a_request.call_id,
                callee.username,
                target,
                where.name,
            )
            return False
        self.table.disarm(call, Timer.NO_ANSWER)
        for fork in call.forks[call.first_fork :]:
            if fork.state in (ForkState.TRYING, ForkState.RINGING):
                self.steps.stop_fork(call, fork, now)
        self.table.retarget(call, where.user)
        call.forwarded_from = where.forwarded_from
        call.bindings = where.bindings
        self.out.bump("call_forwarded")
        self._fork(call, now)
        return True

    def _fork(self, call: Call, now: float) -> None:
        """An INVITE to every binding of the callee (parallel forking, §16.6 in spirit)."""
        a = call.legs[CALLER]
        request = call.a_request
        b = call.legs[CALLEE]
        assert a.sdp is not None and call.address is not None and b.origin is not None, "allocated"
        offer = media.offer_for(
            a.sdp, a.index, b.codecs, call.address, call.ports[CALLEE], b.origin, b.sdes
        )
        body = bytes(offer)
        b.sent = offer
        mf = request.max_forwards
        caller_from = request.from_
        to = str(Address(request.to.uri, request.to.display))
        first = call.first_fork = len(call.forks)
        for binding in call.bindings:
            try:
                self._fork_one(call, binding, body, caller_from, to, mf, now)
            except (SipError, ValueError) as err:
                log.warning("binding %s unusable: %s", binding.contact, err)
        call.bindings = ()
        if len(call.forks) == first:
            return self.steps.hangup(call, now, refusal=Refusal.NOT_REGISTERED)
        if first == 0:
            self.out.setup_delay.observe(now - call.start)  # the INVITEs are out
        ring = self.config.calls.no_answer_timeout
        if call.callee is not None and call.callee.forward_noanswer:
            ring = call.callee.noanswer_after  # then forward_noanswer, not 480
        self.table.arm(call, Timer.NO_ANSWER, now + ring)
        return None

    def _fork_one(
        self,
        call: Call,
        binding: Binding,
        body: bytes,
        caller_from: Address,
        to: str,
        max_forwards: int | None,
        now: float,
    ) -> None:
        contact = binding.contact
        if contact.startswith("<") or '"' in contact:
            uri = parse_address(contact, "Contact").uri
        else:
            uri = parse_uri(contact, "Contact")
        transport = binding.source_transport.lower()
        if not self.out.serves(transport):
            raise ValueError(f"transport {transport!r} not served")
        peer = Peer(transport, binding.source_host, binding.source_port)
        from_ = Address(caller_from.uri, caller_from.display, {"tag": secrets.token_hex(8)})
        invite, tx = self.out.invite(uri, peer, from_, to, max_forwards, body, binding.path, now)
        fork = Fork(binding=binding, peer=peer, request=invite, tx=tx)
        call.forks.append(fork)
        self.table.txs[tx] = (call, "fork", fork)

    def fork_response(
        self, call: Call, tx: ClientTransaction, fork: Fork, response: Response, now: float
    ) -> None:
        """A response from one device of the callee."""
        status = response.status
        if status < 200:
            if status == 100:
                return
            before = fork.state
            fork.step(ForkInput.PROVISIONAL)
            if before is ForkState.CANCEL_PENDING:
                self.steps.send_cancel(call, fork, now)  # §9.1: now it may go
            elif fork.state is ForkState.RINGING and call.state is CallState.CALLING:
                self._relay_provisional(call, fork, response, now)
            return
        if status < 300:
            before = fork.state
            fork.step(ForkInput.SUCCESS)
            if fork.state is ForkState.DROPPED:
                self._drop(call, fork, response, before is not ForkState.DROPPED, now)
            elif before is ForkState.ANSWERED:
                if fork.ack is not None:  # the 2xx again: our ACK was lost (§13.2.2.4)
                    self.out.resend(fork.ack, fork.peer)
            else:
                self._callee_answered(call, fork, response, now)
            return
        if fork.state in (ForkState.FAILED, ForkState.DROPPED):
            return
        fork.step(ForkInput.FAILURE)
        fork.status = status
        self._fork_settled(call, now)

    def fork_timeout(self, call: Call, tx: ClientTransaction, fork: Fork, now: float) -> None:
        """Timer B or a transport error on a fork (§8.1.3.1: as a 408)."""
        if fork.state in (ForkState.ANSWERED, ForkState.FAILED, ForkState.DROPPED):
            return
        fork.step(ForkInput.TIMEOUT)
        fork.status = 408
        self._fork_settled(call, now)

    def _fork_settled(self, call: Call, now: float) -> None:
        """A fork failed; when the last one has, the caller gets the best answer (§16.7)."""
        if call.state is not CallState.CALLING:
            return
        forks = call.forks[call.first_fork :]  # the current target's (forwarding)
        if any(f.state is not ForkState.FAILED for f in forks):
            return
        status = best_response([f.status or 408 for f in forks])
        callee = call.callee
        busy = status in (486, 600) and callee is not None
        if busy and callee is not None and self._forward(call, callee.forward_busy, now):
            return
        self.steps.hangup(call, now, status=status)

    def _drop(self, call: Call, fork: Fork, response: Response, first: bool, now: float) -> None:
        """A 2xx from a fork that lost: ACK it, and the first time also BYE it (§13.2.2.4)."""
        if first:
            fork.dialog = Dialog.from_uac(fork.request, response)
            fork.ack = self.out.ack(fork.dialog, fork.request.cseq, fork.peer)
            bye = self.out.request(fork.dialog, fork.peer, "BYE", now)
            self.table.txs[bye] = (call, "bye", None)
        elif fork.ack is not None:
            self.out.resend(fork.ack, fork.peer)

    def _relay_provisional(self, call: Call, fork: Fork, response: Response, now: float) -> None:
        status = response.status
        if status == 183 and response.body and call.early is None:
            try:
                sd = media.parse_sdp(response.body, response.content_type, "answer")
                codecs = media.answered_codecs(sd, call.legs[CALLER].index)
                media.answer_sdes(sd.media[call.legs[CALLER].index], call.legs[CALLEE].sdes)
            except SdpError:
                pass
            else:
                call.early = fork
                self._callee_media(call, fork, sd, codecs, now)
                if not call.pending:
                    self.send_early_media(call, now)
                return
        call.step(CallInput.PROGRESS)
        self.out.reply_a(call, status, now, reason=response.reason)

    def send_early_media(self, call: Call, now: float) -> None:
        """The bearer carries the callee's early media: 183 with our SDP to A."""
        call.step(CallInput.PROGRESS)
        a = call.legs[CALLER]
        assert a.sent is not None, "_callee_media answered the caller"
        self.out.reply_a(call, 183, now, body=bytes(a.sent))

    def _callee_media(self, call: Call, fork: Fork, sd: Any, codecs: tuple, now: float) -> None:
        """The callee's SDP (early or final): settle both codecs, tell the bearer."""
        a, b = call.legs
        b.peer = fork.peer
        b.sdp = sd
        b.index = a.index
        b.codecs = codecs
        b.selected = media.real_codec(codecs)
        md = sd.media[a.index]
        b.sdes = media.answer_sdes(md, b.sdes)  # checked by the caller: no SdpError here
        b_direction = media.direction_of(md)
        assert b.selected is not None, "answered_codecs returns at least one real codec"
        if a.sent is None:  # the caller's answer is given once (§13.2.1)
            assert a.sdp is not None and call.address is not None and a.origin is not None
            a.selected = media.caller_codec(a.codecs, b.selected)
            a_te = media.telephone_event(a.codecs)
            answer = [a.selected]
            if a_te is not None and media.telephone_event(codecs) is not None:
                answer.append(a_te)
            a.sent = media.answer_for(
                a.sdp, answer, call.address, call.ports[CALLER], a.origin, b_direction, a.sdes
            )
            # Its rtpmap list stays the whole offer: only a changed codec needs an UPDATE.
            a_md = a.sdp.media[a.index]
            spec = media.leg_spec(a_md, a.codecs, a.selected, media.direction_of(a_md))
            spec = media.with_sdes(spec, a.sdes)
            self.steps.update(call, CALLER, spec, now)
        b_spec = media.leg_spec(md, codecs, b.selected, b_direction)
        self.steps.update(call, CALLEE, media.with_sdes(b_spec, b.sdes), now)

    def _callee_answered(self, call: Call, fork: Fork, response: Response, now: float) -> None:
        """The first 2xx: this fork wins, the others stop, the bearer learns its media."""
        call.winner = fork
        fork.dialog = Dialog.from_uac(fork.request, response)
        b = call.legs[CALLEE]
        # Where the callee's in-dialog requests go, at once: the hang-up below
        # (an unusable answer) ACKs and BYEs it before _callee_media runs.
        b.peer = fork.peer
        b.dialog = fork.dialog
        self.table.add_dialog(call, CALLEE)
        self.table.disarm(call, Timer.NO_ANSWER)
        for other in call.forks:
            if other is not fork:
                self.steps.stop_fork(call, other, now)
        call.step(CallInput.CALLEE_ANSWERED)
        call.b_invite_cseq = fork.request.cseq
        try:
            if response.body:
                sd = media.parse_sdp(response.body, response.content_type, "answer")
                codecs = media.answered_codecs(sd, call.legs[CALLER].index)
                media.answer_sdes(sd.media[call.legs[CALLER].index], b.sdes)
            elif call.early is fork:
                assert b.sdp is not None, "_callee_media took its 183's answer"
                sd, codecs = b.sdp, b.codecs  # the answer came in its 183 already
            else:
                raise SdpError(488, "Not Acceptable Here: 2xx without SDP answer")
        except SdpError as err:
            log.info("call %s: callee answer unusable: %s", call.a_request.call_id, err)
            return self.steps.hangup(call, now, refusal=Refusal.CALLEE_FAILED)
        if call.early is not fork or b.sdp is not sd:
            self._callee_media(call, fork, sd, codecs, now)
        if not call.pending:
            self.answer_caller(call, now)
        return None

    def answer_caller(self, call: Call, now: float) -> None:
        """200 to A with the bearer's A-leg address; retransmitted until the ACK."""
        a = call.legs[CALLER]
        assert a.dialog is not None, "the caller's dialog exists from its INVITE on"
        if call.room is not None:
            assert a.sdp is not None and call.address is not None and a.origin is not None
            call.step(CallInput.JOINED)
            answer = [c for c in (a.selected, media.telephone_event(a.codecs)) if c is not None]
            a.sent = media.answer_for(
                a.sdp, answer, call.address, call.ports[CALLER], a.origin, "sendrecv", a.sdes
            )
            owed = None
        else:
            call.step(CallInput.MEDIA_READY)
            owed = call.b_invite_cseq
        call.answer = now
        a.dialog.confirm()
        assert a.sent is not None, "answered in _callee_media, or just above for a room"
        response = self.out.a_response(call, 200, body=bytes(a.sent))
        self.steps.send_2xx(call, CALLER, call.a_tx, response, owed, now)


def _from_aor(request: Request) -> str:
    """user@host of the From URI: who a caller says it is, before authentication."""
    uri = request.from_.uri
    if isinstance(uri, SipUri):
        return f"{uri.user or ''}@{uri.host}"
    return str(uri)

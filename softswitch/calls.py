"""The B2BUA: one caller dialog, one callee dialog and one bearer session per call.

Theory of operation
-------------------
``CallManager`` is the transaction user for every INVITE-family request
(RFC 3261 §8.2, §13, §15); the daemon's dispatcher (softswitch.core) feeds it
what the transaction layer and the bearer protocol client report, plus the
time, and drains the layer afterwards.  It never blocks and never reads a
clock: ``get_timer``/``handle_timer`` drive its one heap of timers
(no-answer, 2xx retransmission, late-fork clean-up).

Set-up, in the order the caller sees it (every step is a transition of
``softswitch.callstate``): 100 Trying; 407 with a digest challenge
(RFC 3261 §22.3, SHA-256 and MD5 offered, RFC 8760); routing (a conference
prefix, a user's bindings, or a ``Refusal``); one ALLOCATE round trip to the
least-loaded bearer; an INVITE to every binding of the callee, each its own
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
"""

from __future__ import annotations

import heapq
import logging
import re
import secrets
import time
from collections.abc import Callable
from enum import Enum, auto
from types import SimpleNamespace
from typing import Any

from bearer.protoclient import (
    EventReceived,
    PeerDown,
    PeerRestarted,
    ReplyReceived,
    RequestTimeout,
)
from bearer.protocol import (
    Allocate,
    Allocated,
    AllocFlags,
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
    Update,
)
from softswitch import media
from softswitch.callstate import (
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
    Reinvite,
    best_response,
    disposition_for,
)
from softswitch.cdr import Cdr, Disposition
from softswitch.routing import Conference, route
from softswitch.sip.dialog import Dialog, request_dialog_id, response_dialog_id
from softswitch.sip.digest import AuthFailure, DigestServer
from softswitch.sip.errors import SipError
from softswitch.sip.headers import parse_address
from softswitch.sip.message import Address, Request, Response, make_response
from softswitch.sip.offeranswer import LegOrigin
from softswitch.sip.sdp import SdpError
from softswitch.sip.transaction import (
    ClientTransaction,
    Peer,
    ServerTransaction,
    State,
    TransactionLayer,
    new_branch,
)
from softswitch.sip.uri import SipUri, parse_uri
from softswitch.userdb import Binding, User, UserDirectory

__all__ = ["ALLOW", "RETRY_AFTER", "CallManager"]

log = logging.getLogger("softswitch.calls")

#: Seconds a 503 for "no bearer" asks the caller to wait (§20.33, §21.5.4).
RETRY_AFTER = 5
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
_SDP = "application/sdp"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Timer(Enum):
    NO_ANSWER = auto()
    RESEND_CALLER = auto()  # our 2xx to leg 0, until its ACK (§13.3.1.4)
    RESEND_CALLEE = auto()  # our 2xx to leg 1 (a re-INVITE it sent)
    FORGET = auto()  # stop waiting for the last forks' final responses (§9.1: 64*T1)


_RESEND = (Timer.RESEND_CALLER, Timer.RESEND_CALLEE)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class CallManager:
    """Every call of the switch; see the module docstring."""

    def __init__(
        self,
        *,
        layer: TransactionLayer,
        location: Any,
        directory: UserDirectory,
        bearers: Any,
        auth: DigestServer,
        config: SimpleNamespace,
        local: Any,
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
        self.codecs = tuple(config.calls.codecs)
        self.no_answer_timeout = float(config.calls.no_answer_timeout)
        self.prefix = config.calls.conference_prefix
        self.recording_dir = config.recording.dir.rstrip("/")
        sent_by = f"{_bracket(local.host)}:{local.port}"
        self._via = {t: f"SIP/2.0/{t.upper()} {sent_by};rport;branch=" for t in ("udp", "tcp")}
        self._contact = {
            "udp": f"<sip:{sent_by}>",
            "tcp": f"<sip:{sent_by};transport=tcp>",
        }
        self._origin_address = local.host.strip("[]")
        self._dialogs: dict[tuple, tuple[Call, int]] = {}  # dialog id -> call, leg
        self._by_invite: dict[tuple[str, str | None], Call] = {}  # A's Call-ID, From tag
        self._sessions: dict[int, Call] = {}
        self._txs: dict[ClientTransaction, tuple[Call, str, Any]] = {}
        self._requests: dict[int, tuple[Call, Message]] = {}  # bearer request id
        self._active: dict[tuple[str, str], int] = {}
        self._heap: list[tuple[float, int, Call, Timer]] = []
        self._seq = 0
        self._stale = 0
        self._next_session = secrets.randbits(40) << 16
        self._closing = False
        self.counters: dict[str, int] = {}

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
        self._disarm(call, _RESEND[leg])
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

    # ================================================================ initial INVITE

    def _initial_invite(
        self, tx: ServerTransaction, request: Request, peer: Peer, now: float
    ) -> None:
        if tx.last_response is None and not self.layer.auto_trying:
            self.layer.send_response(tx, make_response(request, 100), now)  # §17.2.1
        if request.max_forwards == 0:
            return self._refuse(tx, request, Refusal.TOO_MANY_HOPS, now)
        known = self._by_invite.get((request.call_id, request.from_.tag))
        if known is not None and known.a_tx is not tx:
            return self._refuse(tx, request, Refusal.MERGED, now)  # §8.2.2.2
        caller = self._authenticate(tx, request, now)
        if caller is None:
            return None
        aor = self._callee_aor(request)
        if self._closing:
            return self._refuse(tx, request, Refusal.SHUTTING_DOWN, now, caller, aor)
        if not request.contacts:
            return self._refuse(tx, request, Refusal.MALFORMED, now, reason="Missing Contact")
        if caller.max_calls and self.active_calls(caller.username, self.domain) >= caller.max_calls:
            return self._refuse(tx, request, Refusal.CALLER_OVER_LIMIT, now, caller, aor)
        where = route(
            request.uri,
            self.domain,
            prefix=self.prefix,
            directory=self.directory,
            location=self.location,
            active_calls=self.active_calls,
            now=now,
        )
        if isinstance(where, Refusal):
            return self._refuse(tx, request, where, now, caller, aor)
        try:
            sd = media.parse_sdp(request.body, request.content_type)
            index = media.audio_index(sd)
            codecs = media.usable_codecs(sd.media[index], self.codecs)
        except SdpError as err:
            refusal = Refusal.MALFORMED if err.status == 400 else Refusal.NOT_ACCEPTABLE
            return self._refuse(tx, request, refusal, now, caller, aor, reason=err.reason)
        bearer = self.bearers.choose()
        if bearer is None:
            return self._refuse(
                tx,
                request,
                Refusal.NO_BEARER,
                now,
                caller,
                aor,
                headers=[("Retry-After", str(RETRY_AFTER))],
            )
        conference = isinstance(where, Conference)
        a_tag = secrets.token_hex(8)
        md = sd.media[index]
        a = Leg(peer=peer, sdp=sd, index=index, codecs=codecs, selected=media.real_codec(codecs))
        a.dialog = Dialog.from_uas(request, a_tag, local_target=self._contact_for(peer), early=True)
        a.spec = media.leg_spec(md, codecs, a.selected, media.direction_of(md))
        self._next_session += 1
        call = Call(
            session_id=self._next_session,
            a_tx=tx,
            a_request=request,
            a_tag=a_tag,
            caller=caller,
            callee=None if conference else where.user,
            callee_aor=aor,
            room=where.room if conference else None,
            start=now,
            legs=[a, Leg(peer=None)],
            bearer=bearer,
        )
        flags = AllocFlags.NONE
        if ":" in a.spec.address:
            flags |= AllocFlags.IPV6
        if conference:
            flags |= AllocFlags.CONFERENCE
            specs: tuple[LegSpec, ...] = (a.spec,)
        else:
            call.bindings = where.bindings
            offered = media.callee_codecs(codecs, self.codecs)
            call.legs[CALLEE].codecs = tuple(offered)
            te = media.telephone_event(offered)
            b_spec = LegSpec(
                payload_types=media.payload_types(offered), dtmf_pt=None if te is None else te.pt
            )
            call.legs[CALLEE].spec = b_spec
            specs = (a.spec, b_spec)
            if caller.record_calls or where.user.record_calls:
                flags |= AllocFlags.RECORD
        call.flags = flags
        self._by_invite[(request.call_id, request.from_.tag)] = call
        self._sessions[call.session_id] = call
        self._dialogs[a.dialog.id] = (call, CALLER)
        self._count(call, +1)
        call.allocating = True
        self._bearer(call, Allocate(call.session_id, request.call_id, specs, flags), now)
        return None

    def _authenticate(self, tx: ServerTransaction, request: Request, now: float) -> User | None:
        """The caller, or None once refused (§22.3: 407 and Proxy-Authenticate)."""
        credentials = request.get("Proxy-Authorization") or request.get("Authorization")
        if credentials is None:
            self._challenge(tx, request, now, stale=False)
            return None
        result = self.auth.verify(credentials, "INVITE", now, self._ha1s, body=request.body)
        if not result.ok:
            if result.reason is AuthFailure.MALFORMED:
                self._refuse(tx, request, Refusal.BAD_CREDENTIALS, now)
            else:
                stale = result.reason is AuthFailure.STALE_NONCE
                self._challenge(tx, request, now, stale=stale)
            self._bump(f"auth_{result.reason.value if result.reason else 'failed'}")
            return None
        user = self.directory.lookup(result.username or "", self.domain)
        if user is None:
            self._challenge(tx, request, now, stale=False)
            return None
        from_uri = request.from_.uri
        if not user.enabled or not isinstance(from_uri, SipUri) or from_uri.user != user.username:
            # A disabled account, or credentials of one user calling as another.
            self._refuse(tx, request, Refusal.FORBIDDEN, now, user, self._callee_aor(request))
            return None
        return user

    def _ha1s(self, username: str) -> dict[str, str] | None:
        user = self.directory.lookup(username, self.domain)
        if user is None:
            return None
        return {"MD5": user.ha1_md5, "SHA-256": user.ha1_sha256}

    def _challenge(self, tx: ServerTransaction, request: Request, now: float, stale: bool) -> None:
        values = self.auth.challenge(now, stale=stale)
        headers = [("Proxy-Authenticate", v) for v in values]
        self._reply(tx, request, REFUSALS[Refusal.CHALLENGE][0], now, headers=headers)

    def _refuse(
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
        self._reply(tx, request, status, now, reason=reason, headers=headers)
        self._bump(f"refused_{refusal.name.lower()}")
        if disposition is not None and caller is not None:
            self.on_cdr(
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

    def _callee_aor(self, request: Request) -> str:
        uri = request.uri
        user = uri.user if isinstance(uri, SipUri) else getattr(uri, "number", "")
        return f"{user}@{self.domain}"

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
        elif isinstance(sent, Record) and reply is None:
            log.warning("call %s: RECORD failed: %r", call.a_request.call_id, raw)

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
        return None

    def _allocated(self, call: Call, reply: Allocated, now: float) -> None:
        call.address = reply.address
        call.ports = reply.ports
        for leg in call.legs:
            leg.origin = LegOrigin(reply.address, sess_id=secrets.randbits(31))
        if call.flags & AllocFlags.RECORD:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            name = _UNSAFE.sub("_", call.a_request.call_id)[:120]
            call.recording = f"{self.recording_dir}/{name}-{stamp}.wav"
            self._bearer(call, Record(call.session_id, True, call.recording), now)
        if call.room is not None:
            call.step(CallInput.ROOM_ALLOCATED)
            call.pending.add(self._bearer(call, Join(call.room, call.session_id), now))
            return
        call.step(CallInput.ALLOCATED)
        self._fork(call, now)

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

    def _bearer_lost(self, peer: object, now: float) -> None:
        """A bearer died or restarted: its sessions are gone, hang their calls up."""
        for call in [c for c in self._sessions.values() if c.bearer.peer == peer]:
            call.bearer_lost = True
            self._hangup(call, now, refusal=Refusal.BEARER_FAILED)

    # ================================================================ forks

    def _fork(self, call: Call, now: float) -> None:
        """An INVITE to every binding of the callee (parallel forking, §16.6 in spirit)."""
        a = call.legs[CALLER]
        request = call.a_request
        b = call.legs[CALLEE]
        offer = media.offer_for(
            a.sdp, a.index, b.codecs, call.address, call.ports[CALLEE], b.origin
        )
        body = bytes(offer)
        b.sent = offer
        mf = request.max_forwards
        caller_from = request.from_
        to = str(Address(request.to.uri, request.to.display))
        for binding in call.bindings:
            try:
                self._fork_one(call, binding, body, caller_from, to, mf, now)
            except (SipError, ValueError) as err:
                log.warning("binding %s unusable: %s", binding.contact, err)
        call.bindings = ()
        if not call.forks:
            return self._hangup(call, now, refusal=Refusal.NOT_REGISTERED)
        self._arm(call, Timer.NO_ANSWER, now + self.no_answer_timeout)
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
        if transport not in self._via:
            raise ValueError(f"transport {transport!r} not served")
        peer = Peer(transport, binding.source_host, binding.source_port)
        from_ = Address(caller_from.uri, caller_from.display, {"tag": secrets.token_hex(8)})
        headers = [
            ["Via", self._via[transport] + new_branch()],
            ["Max-Forwards", str((70 if max_forwards is None else max_forwards) - 1)],
            ["From", str(from_)],
            ["To", to],
            ["Call-ID", secrets.token_hex(12)],
            ["CSeq", "1 INVITE"],
            ["Contact", self._contact[transport]],
            ["Allow", ALLOW],
            ["Content-Type", _SDP],
        ]
        if binding.path:  # RFC 3327: reach the device through the proxies it registered by
            headers += [["Route", p] for p in binding.path.split(",") if p.strip()]
        invite = Request("INVITE", uri, headers=headers, body=body)
        tx = self.layer.send_request(invite, peer, now)
        fork = Fork(binding=binding, peer=peer, request=invite, tx=tx)
        call.forks.append(fork)
        self._txs[tx] = (call, "fork", fork)

    def _fork_response(self, call: Call, fork: Fork, response: Response, now: float) -> None:
        status = response.status
        if status < 200:
            if status == 100:
                return
            before = fork.state
            fork.step(ForkInput.PROVISIONAL)
            if before is ForkState.CANCEL_PENDING:
                self._send_cancel(call, fork, now)  # §9.1: now it may go
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
                    self.layer.send_stateless(fork.ack, fork.peer)
            else:
                self._callee_answered(call, fork, response, now)
            return
        if fork.state in (ForkState.FAILED, ForkState.DROPPED):
            return
        fork.step(ForkInput.FAILURE)
        fork.status = status
        self._fork_settled(call, now)

    def _fork_settled(self, call: Call, now: float) -> None:
        """A fork failed; when the last one has, the caller gets the best answer (§16.7)."""
        if call.state is not CallState.CALLING:
            return
        if any(f.state is not ForkState.FAILED for f in call.forks):
            return
        status = best_response([f.status or 408 for f in call.forks])
        self._hangup(call, now, status=status)

    def _send_cancel(self, call: Call, fork: Fork, now: float) -> None:
        tx = self.layer.send_request(fork.tx.create_cancel(), fork.peer, now)
        self._txs[tx] = (call, "cancel", fork)

    def _stop_fork(self, call: Call, fork: Fork, now: float) -> None:
        before = fork.state
        fork.step(ForkInput.CANCEL)
        if before is ForkState.RINGING:
            self._send_cancel(call, fork, now)

    def _drop(self, call: Call, fork: Fork, response: Response, first: bool, now: float) -> None:
        """A 2xx from a fork that lost: ACK it, and the first time also BYE it (§13.2.2.4)."""
        if first:
            fork.dialog = Dialog.from_uac(fork.request, response)
            via = self._via[fork.peer.transport] + new_branch()
            fork.ack = fork.dialog.create_ack(fork.request.cseq, via=via)
            self.layer.send_stateless(fork.ack, fork.peer)
            bye = fork.dialog.create_request(
                "BYE", via=self._via[fork.peer.transport] + new_branch()
            )
            self._txs[self.layer.send_request(bye, fork.peer, now)] = (call, "bye", None)
        elif fork.ack is not None:
            self.layer.send_stateless(fork.ack, fork.peer)

    def _relay_provisional(self, call: Call, fork: Fork, response: Response, now: float) -> None:
        status = response.status
        if status == 183 and response.body and call.early is None:
            try:
                sd = media.parse_sdp(response.body, response.content_type, "answer")
                codecs = media.answered_codecs(sd, call.legs[CALLER].index)
            except SdpError:
                pass
            else:
                call.early = fork
                self._callee_media(call, fork, sd, codecs, now)
                if not call.pending:
                    self._send_early_media(call, now)
                return
        call.step(CallInput.PROGRESS)
        self._reply_a(call, status, now, reason=response.reason)

    def _send_early_media(self, call: Call, now: float) -> None:
        call.step(CallInput.PROGRESS)
        a = call.legs[CALLER]
        self._reply_a(call, 183, now, body=bytes(a.sent))

    def _callee_media(self, call: Call, fork: Fork, sd: Any, codecs: tuple, now: float) -> None:
        """The callee's SDP (early or final): settle both codecs, tell the bearer."""
        a, b = call.legs
        b.peer = fork.peer
        b.sdp = sd
        b.index = a.index
        b.codecs = codecs
        b.selected = media.real_codec(codecs)
        md = sd.media[a.index]
        b_direction = media.direction_of(md)
        if a.sent is None:  # the caller's answer is given once (§13.2.1)
            a.selected = media.caller_codec(a.codecs, b.selected)
            a_te = media.telephone_event(a.codecs)
            answer = [a.selected]
            if a_te is not None and media.telephone_event(codecs) is not None:
                answer.append(a_te)
            a.sent = media.answer_for(
                a.sdp, answer, call.address, call.ports[CALLER], a.origin, b_direction
            )
            # Its rtpmap list stays the whole offer: only a changed codec needs an UPDATE.
            a_md = a.sdp.media[a.index]
            spec = media.leg_spec(a_md, a.codecs, a.selected, media.direction_of(a_md))
            self._update(call, CALLER, spec, now)
        self._update(call, CALLEE, media.leg_spec(md, codecs, b.selected, b_direction), now)

    def _callee_answered(self, call: Call, fork: Fork, response: Response, now: float) -> None:
        """The first 2xx: this fork wins, the others stop, the bearer learns its media."""
        call.winner = fork
        fork.dialog = Dialog.from_uac(fork.request, response)
        b = call.legs[CALLEE]
        b.dialog = fork.dialog
        self._dialogs[fork.dialog.id] = (call, CALLEE)
        self._disarm(call, Timer.NO_ANSWER)
        for other in call.forks:
            if other is not fork:
                self._stop_fork(call, other, now)
        call.step(CallInput.CALLEE_ANSWERED)
        call.b_invite_cseq = fork.request.cseq
        try:
            if response.body:
                sd = media.parse_sdp(response.body, response.content_type, "answer")
                codecs = media.answered_codecs(sd, call.legs[CALLER].index)
            elif call.early is fork:
                sd, codecs = b.sdp, b.codecs  # the answer came in its 183 already
            else:
                raise SdpError(488, "Not Acceptable Here: 2xx without SDP answer")
        except SdpError as err:
            log.info("call %s: callee answer unusable: %s", call.a_request.call_id, err)
            return self._hangup(call, now, refusal=Refusal.CALLEE_FAILED)
        if call.early is not fork or b.sdp is not sd:
            self._callee_media(call, fork, sd, codecs, now)
        if not call.pending:
            self._answer_caller(call, now)
        return None

    def _answer_caller(self, call: Call, now: float) -> None:
        """200 to A with the bearer's A-leg address; retransmitted until the ACK."""
        a = call.legs[CALLER]
        if call.room is not None:
            call.step(CallInput.JOINED)
            answer = [c for c in (a.selected, media.telephone_event(a.codecs)) if c is not None]
            a.sent = media.answer_for(
                a.sdp, answer, call.address, call.ports[CALLER], a.origin, "sendrecv"
            )
            owed = None
        else:
            call.step(CallInput.MEDIA_READY)
            owed = call.b_invite_cseq
        call.answer = now
        a.dialog.confirm()
        response = self._a_response(call, 200, body=bytes(a.sent))
        self._send_2xx(call, CALLER, call.a_tx, response, owed, now)

    # ================================================================ responses to A

    def _a_response(
        self, call: Call, status: int, *, reason: str | None = None, body: bytes = b""
    ) -> Response:
        request = call.a_request
        response = make_response(request, status, reason, to_tag=call.a_tag)
        if status < 300:
            response.add("Contact", self._contact[call.legs[CALLER].peer.transport])
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
        reliable = call.legs[leg].peer.reliable
        self._arm(call, _RESEND[leg], give_up if reliable else now + t1)

    def _send_ack(self, call: Call, leg: int, cseq: int) -> None:
        """ACK the 2xx leg ``leg`` sent to our INVITE with CSeq ``cseq`` (§13.2.2.4)."""
        target = call.legs[leg]
        via = self._via[target.peer.transport] + new_branch()
        ack = target.dialog.create_ack(cseq, via=via)
        call.acks[leg] = (cseq, ack)
        if leg == CALLEE and call.winner is not None and cseq == call.b_invite_cseq:
            call.winner.ack = ack
        self.layer.send_stateless(ack, target.peer)

    # ================================================================ CANCEL, BYE, in-dialog

    def _cancel(self, tx: ServerTransaction, request: Request, now: float) -> None:
        """CANCEL (§9.2): 200 for the CANCEL, 487 for the INVITE if still unanswered."""
        invite_tx = self.layer.find_server_invite(request)
        if invite_tx is None:
            return self._reply(tx, request, 481, now)
        self._reply(tx, request, 200, now)
        call = self._by_invite.get((request.call_id, request.from_.tag))
        if call is not None and call.a_tx is invite_tx and call.answer is None and call.live:
            self._hangup(call, now, refusal=Refusal.CANCELLED)
        return None

    def _bye(self, tx: ServerTransaction, request: Request, now: float) -> None:
        entry = self._dialogs.get(request_dialog_id(request))
        if entry is None:
            return self._reply(tx, request, 481, now)
        call, leg = entry
        call.legs[leg].dialog.receive_request(request)
        self._reply(tx, request, 200, now)
        if call.live:
            if leg == CALLER and call.answer is None:
                self._hangup(call, now, refusal=Refusal.CANCELLED, by=leg)
            else:
                self._hangup(call, now, refusal=Refusal.CALLEE_FAILED, by=leg)
        return None

    def _in_dialog(self, tx: ServerTransaction, request: Request, now: float) -> None:
        """INFO is relayed to the other leg; OPTIONS and a body-less UPDATE answered here."""
        entry = self._dialogs.get(request_dialog_id(request))
        if entry is None:
            return self._reply(tx, request, 481, now)
        call, leg = entry
        call.legs[leg].dialog.receive_request(request)
        method = request.method
        other = call.legs[1 - leg] if call.room is None else None
        if method == "UPDATE" and request.body:
            # RFC 3311 §5.2: an offer we cannot take leaves the session as it was.
            return self._reply(tx, request, 488, now, reason="Not Acceptable Here: use re-INVITE")
        if method != "INFO" or other is None or other.dialog is None or not call.live:
            return self._reply(tx, request, 200, now, headers=[("Allow", ALLOW)])
        headers = [(n, v) for n in ("Info-Package", "Content-Disposition") if (v := request.get(n))]
        relayed = other.dialog.create_request(
            "INFO",
            via=self._via[other.peer.transport] + new_branch(),
            body=request.body,
            content_type=request.get("Content-Type") if request.body else None,
            headers=headers,
        )
        out = self.layer.send_request(relayed, other.peer, now)
        self._txs[out] = (call, "relay", (tx, request))
        return None

    def _relay_back(
        self, extra: tuple[ServerTransaction, Request], response: Response, now: float
    ) -> None:
        tx, request = extra
        if tx.state is State.TERMINATED or (tx.last_response and tx.last_response.status >= 200):
            return
        kind = response.get("Content-Type")
        self._reply(
            tx,
            request,
            response.status,
            now,
            reason=response.reason,
            body=response.body,
            content_type=kind,
        )

    # ================================================================ re-INVITE

    def _reinvite(self, tx: ServerTransaction, request: Request, now: float) -> None:
        """A re-INVITE (hold/resume, §14): relay the offer, bring the answer back."""
        entry = self._dialogs.get(request_dialog_id(request))
        if entry is None:
            return self._reply(tx, request, 481, now)
        call, leg = entry
        if not call.live:
            return self._refuse(tx, request, Refusal.NO_DIALOG, now)
        if call.state is not CallState.CONFIRMED or call.resend:
            return self._refuse(tx, request, Refusal.REQUEST_PENDING, now)  # §14.2
        x = call.legs[leg]
        x.dialog.receive_request(request)
        if not request.body:
            # No offer: ours goes in the 2xx, its answer in the ACK (§14.1).
            response = self._leg_response(call, leg, request, 200, bytes(x.sent))
            return self._send_2xx(call, leg, tx, response, None, now)
        sd = media.parse_sdp(request.body, request.content_type)
        index = media.audio_index(sd)
        codecs = media.usable_codecs(sd.media[index], self.codecs)
        call.step(CallInput.REINVITE)
        call.reinvite = Reinvite(source=leg, tx=tx, request=request, offer=sd, codecs=codecs)
        if call.room is not None:  # nobody to ask: the bearer is the other side
            self._reinvite_apply_source(call, "sendrecv", now)
            if not call.pending:
                self._reinvite_answer(call, now)
            return None
        y = call.legs[1 - leg]
        keep = [c for c in (y.selected, media.telephone_event(y.codecs)) if c is not None]
        offer = media.offer_for(sd, index, keep, call.address, call.ports[1 - leg], y.origin)
        out = y.dialog.create_request(
            "INVITE",
            via=self._via[y.peer.transport] + new_branch(),
            body=bytes(offer),
            content_type=_SDP,
        )
        call.reinvite.out = self.layer.send_request(out, y.peer, now)
        self._txs[call.reinvite.out] = (call, "reinvite", None)
        return None

    def _reinvite_response(
        self, call: Call, tx: ClientTransaction, response: Response, now: float
    ) -> None:
        ri = call.reinvite
        status = response.status
        if ri is None or ri.out is not tx:
            if 200 <= status < 300:  # a copy of a 2xx we handled: ACK it again (§13.2.2.4)
                entry = self._dialogs.get(response_dialog_id(response))
                sent = call.acks.get(entry[1]) if entry is not None else None
                if sent is not None and sent[0] == response.cseq:
                    self.layer.send_stateless(sent[1], call.legs[entry[1]].peer)
            return
        if status < 200:
            return
        other = 1 - ri.source
        y = call.legs[other]
        if status >= 300:
            return self._reinvite_failed(call, status, now)
        y.dialog.receive_response(response)
        ri.answer = response
        index = media.audio_index(ri.offer)
        try:
            sd = media.parse_sdp(response.body, response.content_type, "answer")
            codecs = media.answered_codecs(sd, index)
        except SdpError as err:
            log.info("call %s: re-INVITE answer unusable: %s", call.a_request.call_id, err)
            self._send_ack(call, other, response.cseq)
            return self._hangup(call, now, refusal=Refusal.CALLEE_FAILED)
        md = sd.media[index]
        y.sdp, y.index, y.codecs = sd, index, codecs
        y.selected = media.real_codec(codecs)
        direction = media.direction_of(md)
        self._update(call, other, media.leg_spec(md, codecs, y.selected, direction), now)
        self._reinvite_apply_source(call, direction, now)
        if not call.pending:
            self._reinvite_answer(call, now)
        return None

    def _reinvite_apply_source(self, call: Call, direction: str, now: float) -> None:
        """The re-INVITE's sender: new media, same codec if still offered, its answer built."""
        ri = call.reinvite
        x = call.legs[ri.source]
        sd = ri.offer
        index = media.audio_index(sd)
        codecs = ri.codecs
        previous = x.selected
        x.sdp, x.index, x.codecs = sd, index, codecs
        partner = call.legs[1 - ri.source].selected or previous
        x.selected = media.caller_codec(codecs, previous or partner)
        answer = [x.selected]
        te = media.telephone_event(codecs)
        if te is not None:
            answer.append(te)
        x.sent = media.answer_for(
            sd, answer, call.address, call.ports[ri.source], x.origin, direction
        )
        md = sd.media[index]
        self._update(
            call, ri.source, media.leg_spec(md, answer, x.selected, media.direction_of(md)), now
        )

    def _reinvite_answer(self, call: Call, now: float) -> None:
        ri = call.reinvite
        call.reinvite = None
        call.step(CallInput.REINVITE_DONE)
        x = call.legs[ri.source]
        response = self._leg_response(call, ri.source, ri.request, 200, bytes(x.sent))
        owed = None if ri.answer is None else ri.answer.cseq
        self._send_2xx(call, ri.source, ri.tx, response, owed, now)

    def _reinvite_failed(self, call: Call, status: int, now: float) -> None:
        ri = call.reinvite
        if ri is None:
            return
        call.reinvite = None
        call.step(CallInput.REINVITE_DONE)
        self._reply(ri.tx, ri.request, status, now)
        if status in (408, 481):  # §12.2.1.2: the dialog is gone
            self._hangup(call, now, refusal=Refusal.CALLEE_FAILED)

    def _leg_response(
        self, call: Call, leg: int, request: Request, status: int, body: bytes
    ) -> Response:
        response = make_response(request, status)
        response.add("Contact", self._contact[call.legs[leg].peer.transport])
        if body:
            response.add("Content-Type", _SDP)
            response.body = body
        return response

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
        call.end = now
        for kind in list(call.timers):
            self._disarm(call, kind)
        call.resend.clear()
        a, b = call.legs
        if call.answer is None:
            code = status if status is not None else REFUSALS[refusal][0]
            call.status = code
            disposition = REFUSALS[refusal][1] if refusal is not None else None
            call.disposition = disposition or disposition_for(code)
            if call.a_tx.state is State.PROCEEDING:
                self._reply_a(call, code, now)
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
        if call.allocating:
            return  # the DELETE goes when the ALLOCATE is answered
        if call.bearer_lost or call.address is None:
            return self._finish(call, now)
        if call.room is not None:
            self._bearer(call, Leave(call.room, call.session_id), now)
        self._bearer(call, Delete(call.session_id), now)
        return None

    def _send_bye(self, call: Call, leg: int, now: float) -> None:
        target = call.legs[leg]
        if target.dialog is None:
            return
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
                bearer=str(call.bearer.id) if call.bearer is not None else None,
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
        if any(f.state in unsettled for f in call.forks):
            self._arm(call, Timer.FORGET, now + 64 * self.layer.timers.t1)
        else:
            self._forget(call)

    def _forget(self, call: Call) -> None:
        for fork in call.forks:
            self._txs.pop(fork.tx, None)

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
        else:
            leg = _RESEND.index(kind)
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

    def _contact_for(self, peer: Peer) -> str:
        return self._contact[peer.transport]

    def _bump(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

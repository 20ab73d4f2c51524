"""The shared harness of the B2BUA tests (no tests here; the test_calls_* modules use it).

A real TransactionLayer and CallManager on a fake clock, in-memory phones that
build requests with the message API and parse whatever the layer emits, a fake
bearer pool that answers ALLOCATE/UPDATE/DELETE like a bearer (with failures
on demand), and a stand-in location service.  ``Switch.trace`` records, in
emission order, every message the switch sends: (who, method-or-status) for
SIP and ("bearer", type name) for the bearer protocol, so tests can assert the
exact sequence of a call flow.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, cast

from softswitch.bearerpool import BearerPool
from softswitch.calls.manager import CallManager
from softswitch.daemon.settings import load_control_config
from softswitch.location import LocalAddress, Location
from softswitch.model.cdr import Cdr
from softswitch.model.users import Binding, User, UserDirectory
from softswitch.protocol import (
    Allocate,
    Allocated,
    Delete,
    Deleted,
    ErrorCode,
    ErrorReply,
    Join,
    Joined,
    Leave,
    Left,
    LegSpec,
    LegStats,
    Message,
    Record,
    RecordReply,
    SrtpKey,
    Update,
    Updated,
)
from softswitch.protocol.endpoint import EventReceived, PeerDown, ReplyReceived, RequestTimeout
from softswitch.sip.dialog import Dialog
from softswitch.sip.digest import DigestServer, authorize, ha1
from softswitch.sip.message import Request, Response, make_response, parse
from softswitch.sip.sdp import SessionDescription
from softswitch.sip.transaction import (
    AckReceived,
    ClientTransaction,
    Peer,
    RequestReceived,
    ResponseReceived,
    Timers,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    new_branch,
)

DOMAIN = "example.com"
SWITCH = LocalAddress(host="192.0.2.1", port=5060, transports=("udp", "tcp"))
BEARER_ADDRESS = "203.0.113.5"
BEARER_PORTS = (40000, 40002)
T0 = 1_700_000_000.0  # wall-clock seconds: digest nonces carry the time
STATS = (
    LegStats(packets_in=1500, bytes_in=258000, packets_out=1490, packets_lost=3, jitter_us=2500),
    LegStats(packets_in=1490, bytes_in=256280, packets_out=1500, packets_lost=1, jitter_us=1200),
)


def sdp(
    host: str,
    port: int,
    codecs: tuple[tuple[int, str], ...] = ((0, "PCMU"), (8, "PCMA"), (101, "telephone-event")),
    direction: str | None = None,
    version: int = 1,
) -> bytes:
    """A phone's audio offer or answer."""
    lines = [
        "v=0",
        f"o=- 42 {version} IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP " + " ".join(str(pt) for pt, _ in codecs),
    ]
    for pt, name in codecs:
        lines.append(f"a=rtpmap:{pt} {name}/8000")
        if name == "telephone-event":
            lines.append(f"a=fmtp:{pt} 0-16")
    if direction:
        lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


def media_of(message: Request | Response) -> tuple[str, int, str, list[str]]:
    """(c= address, m= port, direction, codec names) of a message's SDP."""
    sd = SessionDescription.parse(message.body)
    md = sd.media[0]
    address = md.effective_address
    assert address is not None
    return address, md.port, md.direction, [c.name for c in md.codecs]


def header(message: Request | Response, name: str) -> str:
    """A header the message must carry."""
    value = message.get(name)
    assert value is not None, f"no {name} in {message!r}"
    return value


# --------------------------------------------------------------------------- bearer


@dataclass(eq=False)
class FakeBearer:
    id: int
    peer: Any
    up: bool = True
    epoch: int | None = 1
    sessions: int = 0
    capacity: int = 500
    cpu: float = 0.0
    auth_failed: bool = False
    address: str = BEARER_ADDRESS  # what its ALLOCATEs answer
    ports: tuple[int, ...] = BEARER_PORTS


class FakeBearerPool:
    """Answers requests like a bearer, through ``outbox`` (the harness delivers it).

    ``errors[Type] = ErrorCode`` refuses that request type; ``silent`` holds
    types whose answers are kept in ``held`` until ``Switch.release`` (or never:
    the test then sends RequestTimeout).
    """

    def __init__(self) -> None:
        self.bearers = [FakeBearer(1, ("192.0.2.50", 7000)), FakeBearer(2, ("192.0.2.51", 7000))]
        self.sent: list[tuple[FakeBearer, Message, int]] = []
        self.outbox: list[object] = []
        self.errors: dict[type, ErrorCode] = {}
        self.silent: set[type] = set()
        self.held: list[ReplyReceived] = []
        self.trace: list[tuple[str, str]] | None = None
        self._ids = itertools.count(1)

    def choose(self) -> FakeBearer | None:
        up = [b for b in self.bearers if b.up and b.sessions < b.capacity]
        return min(up, key=lambda b: b.sessions) if up else None

    def request(self, bearer: FakeBearer, message: Message, now: float) -> int:
        rid = next(self._ids)
        self.sent.append((bearer, message, rid))
        if self.trace is not None:
            self.trace.append(("bearer", type(message).__name__))
        kind = type(message)
        if kind in self.errors:
            reply: Message = ErrorReply(message.TYPE, self.errors[kind], "refused by test")
        else:
            reply = self._reply(bearer, message)
        if kind in self.silent:
            self.held.append(ReplyReceived(rid, bearer.peer, reply))
        else:
            self.outbox.append(ReplyReceived(rid, bearer.peer, reply))
        return rid

    def _reply(self, bearer: FakeBearer, m: Any) -> Message:
        if isinstance(m, Allocate):
            bearer.sessions += 1
            keys = tuple(_bearer_key(leg) for leg in m.legs)
            return Allocated(
                m.session_id, bearer.address, bearer.ports[: len(m.legs)], keys if any(keys) else ()
            )
        if isinstance(m, Update):
            return Updated(m.session_id)
        if isinstance(m, Delete):
            bearer.sessions -= 1
            return Deleted(m.session_id, STATS)
        if isinstance(m, Record):
            return RecordReply(m.session_id, m.start)
        if isinstance(m, Join):
            return Joined(m.room_id, m.session_id, 1)
        if isinstance(m, Leave):
            return Left(m.room_id, m.session_id, 0)
        raise AssertionError(f"unexpected bearer request {m!r}")

    def of(self, kind: type) -> list[Any]:
        return [m for _, m, _ in self.sent if isinstance(m, kind)]

    def rid_of(self, kind: type) -> int:
        return next(rid for _, m, rid in reversed(self.sent) if isinstance(m, kind))


def _bearer_key(spec: LegSpec) -> SrtpKey | None:
    """What a bearer makes for a leg that asks for SRTP: a fresh random key."""
    suite = spec.srtp_local
    return None if suite is None else SrtpKey(suite, os.urandom(30))


# --------------------------------------------------------------------------- phones


class Phone:
    """A SIP phone in memory: ``inbox`` holds what the switch sent it, parsed."""

    def __init__(
        self, sw: Switch, name: str, host: str, port: int = 5060, transport: str = "udp"
    ) -> None:
        self.sw = sw
        self.name = name
        self.host = host
        self.port = port
        self.peer = Peer(transport, host, port)
        self.transport = transport
        self.password = f"{name}-secret"
        self.inbox: list[Request | Response] = []
        self.tag = f"{name}tag"
        self.media_port = 20000 + len(sw.phones) * 10
        sw.phones[self.peer] = self

    @property
    def contact(self) -> str:
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"<sip:{self.name}@{self.host}:{self.port}{suffix}>"

    def via(self, branch: str | None = None) -> str:
        sent_by = f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport.upper()} {sent_by};branch={branch or new_branch()}"

    def offer(self, **kw: Any) -> bytes:
        return sdp(self.host, self.media_port, **kw)

    # -- building requests

    def invite(
        self,
        to_user: str,
        body: bytes | None = None,
        *,
        call_id: str = "call-1@alice",
        cseq: int = 1,
        branch: str | None = None,
        max_forwards: int = 70,
        credentials: str | None = None,
        from_user: str | None = None,
    ) -> Request:
        headers = [
            ("Via", self.via(branch)),
            ("Max-Forwards", str(max_forwards)),
            (
                "From",
                f'"{self.name.title()}" <sip:{from_user or self.name}@{DOMAIN}>;tag={self.tag}',
            ),
            ("To", f"<sip:{to_user}@{DOMAIN}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", self.contact),
        ]
        if credentials:
            headers.append(("Proxy-Authorization", credentials))
        if body is None:
            body = self.offer()
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return Request("INVITE", f"sip:{to_user}@{DOMAIN}", headers=headers, body=body)

    def credentials(
        self, challenge_response: Response, request: Request, password: str | None = None
    ) -> str:
        return authorize(
            challenge_response.get_all("Proxy-Authenticate"),
            method="INVITE",
            uri=str(request.uri),
            username=self.name,
            password=password or self.password,
            cnonce="0a4f113b",
            nc=1,
            body=request.body,
        )

    def ack_failure(self, invite: Request, response: Response) -> Request:
        """The ACK for a non-2xx final (§17.1.1.3): same branch, the response's To."""
        return Request(
            "ACK",
            invite.uri,
            headers=[
                ("Via", str(invite.via)),
                ("Max-Forwards", "70"),
                ("From", header(invite, "From")),
                ("To", header(response, "To")),
                ("Call-ID", invite.call_id),
                ("CSeq", f"{invite.cseq} ACK"),
            ],
        )

    def cancel(self, invite: Request) -> Request:
        return Request(
            "CANCEL",
            invite.uri,
            headers=[
                ("Via", str(invite.via)),
                ("Max-Forwards", "70"),
                ("From", header(invite, "From")),
                ("To", header(invite, "To")),
                ("Call-ID", invite.call_id),
                ("CSeq", f"{invite.cseq} CANCEL"),
            ],
        )

    def answer(
        self, request: Request, status: int, body: bytes = b"", tag: str | None = None
    ) -> Response:
        """Our response to a request the switch sent us."""
        response = make_response(request, status, to_tag=tag or self.tag)
        if 100 < status < 300:
            response.add("Contact", self.contact)
        if body:
            response.add("Content-Type", "application/sdp")
            response.body = body
        return response

    def send(self, message: Request | Response) -> None:
        self.sw.receive(self, message)

    # -- reading the inbox

    def take(self, what: str | int) -> Any:
        """The first message in the inbox that is request ``what`` or a response ``what``."""
        for i, m in enumerate(self.inbox):
            if (isinstance(m, Request) and m.method == what) or (
                isinstance(m, Response) and m.status == what
            ):
                return self.inbox.pop(i)
        raise AssertionError(f"{self.name} got no {what}; inbox: {self.inbox}")

    def has(self, what: str | int) -> bool:
        return any(
            (isinstance(m, Request) and m.method == what)
            or (isinstance(m, Response) and m.status == what)
            for m in self.inbox
        )

    def clear(self) -> None:
        self.inbox.clear()


# --------------------------------------------------------------------------- the switch


class TracingLayer(TransactionLayer):
    """A TransactionLayer that also records what the TU sends, in order."""

    trace: list[tuple[str, Any]]
    names: dict[Peer, str]

    def _who(self, peer: Peer) -> str:
        return self.names.get(peer, f"{peer.host}:{peer.port}")

    def send_request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        self.trace.append((self._who(peer), request.method))
        return super().send_request(request, peer, now)

    def send_response(self, tx: Any, response: Response, now: float) -> list:
        self.trace.append((self._who(tx.peer), response.status))
        return super().send_response(tx, response, now)

    def send_stateless(self, message: Request | Response, peer: Peer) -> None:
        what = message.method if isinstance(message, Request) else message.status
        self.trace.append((self._who(peer), what))
        super().send_stateless(message, peer)


@dataclass
class Established:
    """A call set up by ``Switch.establish``: both sides' view of the dialog."""

    invite_a: Request  # what A sent (authenticated)
    ok_a: Response  # the 200 A got
    invite_b: Request  # what B got
    dialog_a: Dialog  # A's UAC dialog
    dialog_b: Dialog  # B's UAS dialog
    extra: dict[str, Any] = field(default_factory=dict)


class Switch:
    def __init__(
        self,
        *,
        no_answer_timeout: int = 60,
        codecs: tuple[str, ...] = ("PCMU", "PCMA", "telephone-event"),
        recording_users: tuple[str, ...] = (),
        max_calls: dict[str, int] | None = None,
        disabled: tuple[str, ...] = (),
        srtp: str = "optional",
        srtp_users: dict[str, str] | None = None,
    ) -> None:
        self.now = T0
        self.trace: list[tuple[str, Any]] = []
        self.cdrs: list[Cdr] = []
        self.db: list[object] = []  # DB commands from the B2BUA (feature codes)
        self.phones: dict[Peer, Phone] = {}
        self.layer = TracingLayer(Timers())
        self.layer.trace = self.trace
        self.layer.names = {}
        self.config = load_control_config(
            "/nonexistent/softswitch.conf",
            overrides={
                ("sip", "domain"): DOMAIN,
                ("calls", "no_answer_timeout"): no_answer_timeout,
                ("calls", "codecs"): list(codecs),
                ("calls", "srtp"): srtp,
                ("recording", "dir"): "/var/spool/softswitch/recordings",
            },
        )
        self.directory = UserDirectory()
        users = {}
        for i, name in enumerate(("alice", "bob", "carol", "dave")):
            users[(name, DOMAIN)] = User(
                id=i + 1,
                username=name,
                domain=DOMAIN,
                ha1_md5=ha1(name, DOMAIN, f"{name}-secret", "MD5"),
                ha1_sha256=ha1(name, DOMAIN, f"{name}-secret", "SHA-256"),
                display_name=name.title(),
                enabled=name not in disabled,
                record_calls=name in recording_users,
                max_calls=(max_calls or {}).get(name, 0),
                srtp=(srtp_users or {}).get(name, ""),
            )
        self.directory.load(users)
        self.location = Location()
        self.pool = FakeBearerPool()
        self.pool.trace = self.trace
        self.auth = DigestServer(b"k" * 32, DOMAIN)
        self.calls = CallManager(
            layer=self.layer,
            location=self.location,
            directory=self.directory,
            # The fake answers like a bearer without a ProtocolClient underneath;
            # it duck-types the part of BearerPool that CallManager uses.
            bearers=cast(BearerPool, self.pool),
            auth=self.auth,
            config=self.config,
            local=SWITCH,
            on_cdr=self.cdrs.append,
            now=self.now,
            on_db=self.db.append,
        )

    # -- the world

    def phone(self, name: str, host: str, port: int = 5060, transport: str = "udp") -> Phone:
        p = Phone(self, name, host, port, transport)
        self.layer.names[p.peer] = name
        return p

    def register(self, phone: Phone, user: str | None = None, expires: float = 3600) -> None:
        self.location.save(
            Binding(
                username=user or phone.name,
                domain=DOMAIN,
                contact=phone.contact.strip("<>"),
                expires_at=self.now + expires,
                source_transport=phone.transport,
                source_host=phone.host,
                source_port=phone.port,
                call_id=f"reg-{phone.name}",
                cseq=1,
            )
        )

    def receive(self, phone: Phone, message: Request | Response) -> None:
        """``message`` crosses the wire from ``phone`` to the switch."""
        msg = parse(bytes(message))
        self.dispatch(self.layer.receive(msg, phone.peer, self.now))
        self.pump()

    def dispatch(self, events: list) -> None:
        calls, now = self.calls, self.now
        for ev in events:
            if isinstance(ev, RequestReceived):
                calls.handle_request(ev.tx, ev.request, ev.peer, now)
            elif isinstance(ev, AckReceived):
                calls.handle_ack(ev.request, ev.peer, now)
            elif isinstance(ev, ResponseReceived):
                calls.handle_response(ev.tx, ev.response, now)
            elif isinstance(ev, TransactionTimeout | TransportError) and isinstance(
                ev.tx, ClientTransaction
            ):
                calls.handle_tx_timeout(ev.tx, now)

    def pump(self) -> None:
        """Deliver everything queued (SIP to phones, bearer replies to the switch)."""
        for _ in range(1000):
            datagrams = self.layer.datagrams_to_send()
            replies, self.pool.outbox = self.pool.outbox, []
            if not datagrams and not replies:
                return
            for data, peer in datagrams:
                self.phones[peer].inbox.append(parse(data))
            for event in replies:
                self.calls.handle_bearer_event(event, self.now)
        raise AssertionError("the switch never went quiet")

    def bearer_event(self, event: object) -> None:
        self.calls.handle_bearer_event(event, self.now)
        self.pump()

    def timeout_bearer_request(self, kind: type) -> None:
        rid = self.pool.rid_of(kind)
        bearer, message = next((b, m) for b, m, r in self.pool.sent if r == rid)
        self.bearer_event(RequestTimeout(rid, bearer.peer, message))

    def release(self) -> None:
        """Deliver the bearer replies ``silent`` held back."""
        held, self.pool.held = self.pool.held, []
        for event in held:
            self.bearer_event(event)

    def bearer_down(self, bearer_index: int = 0) -> None:
        bearer = self.pool.bearers[bearer_index]
        bearer.up = False
        self.bearer_event(PeerDown(bearer.peer))

    def event(self, message: Any, bearer_index: int = 0) -> None:
        self.bearer_event(EventReceived(self.pool.bearers[bearer_index].peer, 99, message))

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, firing every timer due on the way."""
        end = self.now + seconds
        for _ in range(10_000):
            deadlines = [
                t for t in (self.layer.get_timer(), self.calls.get_timer()) if t is not None
            ]
            nxt = min(deadlines, default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            self.dispatch(self.layer.handle_timer(self.now))
            self.calls.handle_timer(self.now)
            self.pump()
        self.now = end

    # -- whole flows

    def authenticated_invite(
        self, caller: Phone, callee_user: str, body: bytes | None = None, **kw: Any
    ) -> Request:
        """INVITE, 407, ACK, INVITE with credentials: returns the second INVITE (sent)."""
        return authenticated_invite(caller, callee_user, body, **kw)

    def ringing(
        self, caller: Phone, callee: Phone, callee_user: str | None = None, **kw: Any
    ) -> tuple[Request, Request]:
        """A call that rings and is not answered: INVITE/407/INVITE, the callee's
        180; returns (the caller's INVITE, the callee's). The 180 the switch
        relays stays in the caller's inbox for the test to take or ignore."""
        invite_a = self.authenticated_invite(caller, callee_user or callee.name, **kw)
        invite_b = callee.take("INVITE")
        callee.send(callee.answer(invite_b, 180))
        return invite_a, invite_b

    def establish(
        self,
        caller: Phone,
        callee: Phone,
        callee_user: str | None = None,
        answer_body: bytes | None = None,
        offer: bytes | None = None,
    ) -> Established:
        """A full set-up A -> B: INVITE/407/INVITE, 180, 200, ACK."""
        invite_a = self.authenticated_invite(caller, callee_user or callee.name, offer)
        invite_b = callee.take("INVITE")
        callee.send(callee.answer(invite_b, 180))
        callee.send(callee.answer(invite_b, 200, answer_body or callee.offer()))
        ok_a = caller.take(200)
        dialog_a = Dialog.from_uac(invite_a, ok_a)
        caller.send(dialog_a.create_ack(invite_a.cseq, via=caller.via()))
        dialog_b = Dialog.from_uas(invite_b, callee.tag, local_target=callee.contact)
        return Established(invite_a, ok_a, invite_b, dialog_a, dialog_b)


def authenticated_invite(
    caller: Phone, callee_user: str, body: bytes | None = None, **kw: Any
) -> Request:
    """INVITE, 407, ACK, INVITE with credentials: returns the second INVITE (sent).

    A function of the phone alone, so worlds other than Switch can use it too.
    """
    first = caller.invite(callee_user, body, **kw)
    caller.send(first)
    challenge = caller.take(407)
    caller.send(caller.ack_failure(first, challenge))
    kw["cseq"] = kw.get("cseq", 1) + 1
    kw.pop("branch", None)
    second = caller.invite(callee_user, body, **kw)
    second.add("Proxy-Authorization", caller.credentials(challenge, second))
    caller.send(second)
    return second

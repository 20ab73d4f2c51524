"""The switch: every sans-I/O part of the control daemon, composed.

Theory of operation
-------------------
``Switch`` is what ``softswitch.daemon.main`` drives, aioquic-style: inputs are
``receive_sip`` (one UDP datagram or one framed TCP message),
``receive_bearer`` (one control-protocol datagram), ``apply_db_result``
(what the DB thread sends back) and ``handle_timer``; outputs are drained
with ``sip_datagrams_to_send``, ``bearer_datagrams_to_send`` and
``db_commands``, and ``get_timer`` says when to call ``handle_timer`` next.
Time is always a parameter: wall-clock seconds, because digest nonces and
persisted binding expiries are wall-clock too.

Dispatch (RFC 3261 §8.2 for what a UAS checks before the method's own logic):

* before anything else, ``Guard.admit``: a banned source, or one over its
  rate limit, is dropped unparsed and counted (softswitch/guard.py); every
  digest check's outcome goes back to the guard (``Guard.auth_result``);
* parse failures: a ``SipError`` on a request with enough headers to route a
  response is answered statelessly with its status and reason (400, 505,
  416 ...); anything else (responses, garbage, ``drop=True``) is counted by
  reason and dropped, never a traceback;
* the transaction layer absorbs retransmissions and hands up new requests;
* REGISTER → ``Registrar``; out-of-dialog OPTIONS → 200 with Allow, Accept
  and Supported (§11.2); ACK for a 2xx → calls; an unknown method → 501 with
  Allow (§8.2.1); a Require we do not support → 420 with Unsupported
  (§8.2.2.3); Max-Forwards 0 on a request the B2BUA would forward → 483
  (§16.3 step 3); everything else → ``CallManager.handle_request``;
* client-transaction events → calls; protocol-client events → the
  ``BearerPool`` first (bookkeeping), then calls.

Every refusal the core itself makes is one ``CoreRefusal`` mapped to one
status in ``CORE_ANSWERS``.  A bug in a handler costs one request (500 if
it still owes an answer), is logged with its traceback and counted; it never
stops the loop.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from enum import Enum
from types import SimpleNamespace
from typing import Any

from softswitch.bearerpool import BearerPool
from softswitch.calls.manager import CallManager
from softswitch.db.messages import (
    DbCommand,
    DbFatal,
    DbStatus,
    DeleteBinding,
    Loaded,
    SaveBinding,
    UsersChanged,
    WriteCdr,
)
from softswitch.guard import Guard
from softswitch.location import LocalAddress, Location
from softswitch.model.cdr import Cdr
from softswitch.model.users import UserDirectory
from softswitch.overload import IN_PROGRESS_METHODS, Admission
from softswitch.protocol import ProtocolError
from softswitch.protocol.endpoint import ProtocolClient
from softswitch.registrar import Registrar, new_tag
from softswitch.sip.digest import AuthFailure, DigestServer
from softswitch.sip.errors import SipError
from softswitch.sip.message import KNOWN_METHODS, Request, make_response, parse
from softswitch.sip.message.parser import salvage_request
from softswitch.sip.sdes import redact
from softswitch.sip.transaction import (
    AckReceived,
    ClientTransaction,
    Peer,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    State,
    StrayResponse,
    Timers,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)

__all__ = [
    "ALLOW",
    "CORE_ANSWERS",
    "CoreRefusal",
    "Switch",
]

log = logging.getLogger("softswitch.switch")
trace_log = logging.getLogger("softswitch.sip.trace")

#: Methods we serve (§20.5 Allow); any other gets 501 with this list.
ALLOWED = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE")
ALLOW = ", ".join(ALLOWED)
#: Option tags we support (§19.2); a Require naming another gets 420.
SUPPORTED_TAGS: frozenset[str] = frozenset()
#: Requests whose Max-Forwards is checked: the ones the B2BUA passes on.
_FORWARDED = frozenset({"INVITE", "BYE", "INFO", "UPDATE", "OPTIONS"})
#: Methods counted by name (a bounded set: wire tokens are unbounded).
_COUNTED = KNOWN_METHODS

STUN_COOKIE = b"\x21\x12\xa4\x42"  # RFC 5389 §6 magic cookie
#: [security] keys applied on reload (nftables needs a restart).
_GUARD_KEYS = (
    "max_auth_failures",
    "failure_window",
    "ban_time",
    "ban_time_max",
    "allow",
    "rate_limit",
    "rate_burst",
)


# --------------------------------------------------------------------------- refusals


class CoreRefusal(Enum):
    """Requests the core refuses before any module sees them."""

    UNKNOWN_METHOD = "unknown-method"
    BAD_EXTENSION = "bad-extension"
    TOO_MANY_HOPS = "too-many-hops"
    NOT_READY = "not-ready"
    SHUTTING_DOWN = "shutting-down"
    NO_CALLS = "no-calls"
    INTERNAL_ERROR = "internal-error"
    SIPS_WITHOUT_TLS = "sips-without-tls"


#: The one table: refusal -> (status, reason phrase or None for the standard one).
CORE_ANSWERS: dict[CoreRefusal, tuple[int, str | None]] = {
    CoreRefusal.UNKNOWN_METHOD: (501, None),  # §8.2.1, with Allow
    CoreRefusal.BAD_EXTENSION: (420, None),  # §8.2.2.3, with Unsupported
    CoreRefusal.TOO_MANY_HOPS: (483, None),  # §16.3 step 3
    CoreRefusal.NOT_READY: (503, "Users not loaded yet"),  # with Retry-After
    CoreRefusal.SHUTTING_DOWN: (503, "Shutting down"),  # with Retry-After
    CoreRefusal.NO_CALLS: (501, "Calls not available"),
    CoreRefusal.INTERNAL_ERROR: (500, None),
    # A sips: Request-URI says every hop must be TLS (RFC 3261 §26.2.2, RFC
    # 5630 §3.1.3); one that came over UDP or TCP already broke that, and
    # serving it would pretend otherwise.  416: the scheme cannot be served
    # as received (480 would invite the same request again).
    CoreRefusal.SIPS_WITHOUT_TLS: (416, "SIPS Requires TLS"),
}


class Switch:
    """The control daemon's whole state machine; see the module docstring."""

    def __init__(
        self,
        config: SimpleNamespace,
        now: float,
        *,
        epoch: int | None = None,
        bearer_key: bytes | None = None,
        secret: bytes | None = None,
        bearer_endpoints: list | None = None,
        calls_factory: Callable[..., Any] | None = CallManager,
        features: dict[str, bool] | None = None,
    ) -> None:
        """``bearer_endpoints`` defaults to ``config.bearers.endpoints`` (the
        daemon passes them with host names resolved); ``calls_factory`` is
        the B2BUA's class (tests pass fakes, or None for no calls at all)."""
        sip = config.sip
        self.config = config
        self.started = now
        self.features = dict(features or {})
        self.domain: str = (sip.domain or sip.listen[0]).lower()
        self.realm: str = sip.realm or self.domain
        # TLS is served when a certificate is configured ([sip] tls_certificate).
        transports = (*sip.transports, *(("tls",) if sip.tls_certificate else ()))
        self.local = LocalAddress(sip.listen[0], sip.port, transports, sip.tls_port)
        self.locals = [LocalAddress(h, sip.port, transports, sip.tls_port) for h in sip.listen]
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        # For softswitch.daemon.metrics (read from its HTTP thread, which copies them):
        # responses received by status, messages sent by method or status
        # (bytes as on the wire: decoded at scrape time, not per message), and
        # every CDR by disposition.
        self.rx_codes: Counter[int] = Counter()
        self.tx_codes: Counter[bytes] = Counter()
        self.tx_methods: Counter[bytes] = Counter()
        self.dispositions: Counter[str] = Counter()
        self.loaded = False
        self.stopping = False
        self.fatal: str | None = None
        self.db_state: DbStatus | None = None
        self.trace = bool(config.log.sip_trace)
        self._db: list[DbCommand] = []

        self.guard = Guard.from_config(config.security)
        self.layer = TransactionLayer(Timers(sip.t1, sip.t2, sip.t4), auto_trying=True)
        overload = config.overload
        self.admission = Admission(
            overload.shed_delay,
            overload.drop_delay,
            int(overload.retry_after),
            float(overload.shed_rate),
        )
        self._jitter = random.Random(secrets.token_bytes(8))
        self.directory = UserDirectory()
        self.location = Location()
        self.auth = DigestServer(
            secret if secret is not None else secrets.token_bytes(32),
            self.realm,
            nonce_ttl=float(sip.nonce_ttl),
            # Offered in this order (RFC 8760: preferred first).  The default is
            # ["MD5"] alone: baresip 1.0 (libre) gives up on a 401 that carries any
            # non-MD5 challenge, and SIPp 3.6 reads only the first one.  SHA-256
            # (first, or alone) is an option for sites whose phones all support it;
            # etc/softswitch/softswitch.conf has the measured matrix per client.
            algorithms=tuple(sip.digest_algorithms),
            # Salts need uniqueness, not secrecy (the MAC protects the nonce):
            # no getrandom() syscall per 401.
            rand=random.Random(secrets.token_bytes(16)).randbytes,
        )
        self.registrar = Registrar(
            location=self.location,
            directory=self.directory,
            auth=self.auth,
            config=sip,
            domain=self.domain,
            local_hosts=sip.listen,
        )
        self.client = ProtocolClient(
            bearer_key,
            epoch if epoch is not None else time.time_ns(),
            now,
            heartbeat_interval=config.bearers.heartbeat_interval,
        )
        endpoints = config.bearers.endpoints if bearer_endpoints is None else bearer_endpoints
        self.bearers = BearerPool(self.client, list(endpoints), now)
        self.calls: Any = None
        if calls_factory is not None:
            self.calls = calls_factory(
                layer=self.layer,
                location=self.location,
                directory=self.directory,
                bearers=self.bearers,
                auth=self.auth,
                config=config,
                local=self.local,
                on_cdr=self._on_cdr,
                now=now,
                guard=self.guard,
                on_db=self._db_command,
            )

    # ------------------------------------------------------------------ SIP input

    def receive_sip(
        self,
        data: bytes,
        peer: Peer,
        now: float,
        *,
        stream: bool = False,
        age: float | None = None,
        answered_challenge: bool = False,
    ) -> None:
        """One UDP datagram, or one message cut by StreamFramer (``stream=True``).

        ``age`` is the queueing delay of a UDP datagram the transport judged
        new work (``softswitch.overload.work_kind``); None for work in
        progress and for streams; ``answered_challenge`` says it carries
        credentials.  See softswitch/overload.py.
        """
        if not self.guard.admit(peer.host, now):
            return  # banned or over its rate: counted by the guard, never parsed
        counters = self.counters
        shed = False
        if age is not None:
            verdict = self.admission.judge(age, now, answered_challenge)
            if verdict == 2:
                self.drops["overload_dropped"] += 1
                return
            shed = verdict == 1
        counters["rx_messages"] += 1
        if self.trace:
            trace_log.info("recv %d bytes from %s:\n%s", len(data), _peer_text(peer), _text(data))
        if len(data) <= 4 and not data.strip(b"\r\n\0 "):
            counters["rx_keepalives"] += 1  # RFC 5626 §3.5.1 pings, NAT keep-alives
            return
        if len(data) >= 20 and data[4:8] == STUN_COOKIE and data[0] < 2:
            self.drops["stun"] += 1  # RFC 5389 on the SIP port: not served
            return
        try:
            message = parse(data, stream=stream)
        except SipError as err:
            self._malformed(data, err, peer)
            return
        if isinstance(message, Request):
            counters["rx_requests"] += 1
            method = message.method
            counters["rx_" + (method if method in _COUNTED else "other")] += 1
            if shed or (
                stream
                and message.to.tag is None
                and method not in IN_PROGRESS_METHODS
                and self.admission.behind(now)
            ):
                self._shed(message, peer)
                return
        else:
            counters["rx_responses"] += 1
            self.rx_codes[message.status] += 1
        try:
            events = self.layer.receive(message, peer, now)
        except Exception:  # a bug in the layer costs this message, not the daemon
            self._internal("the transaction layer", message)
            return
        self._dispatch(events, now)

    def _shed(self, request: Request, peer: Peer) -> None:
        """503 with Retry-After for new work control cannot serve in time,
        statelessly (a transaction would hold memory for Timer J, 32 s, per
        request refused).  The Retry-After is spread over [n, 2n] seconds so
        that the phones refused together do not all come back together."""
        self.counters["overload_shed"] += 1
        retry = self.admission.retry_after
        response = make_response(request, 503, "Overloaded", to_tag=new_tag())
        response.headers.append(["Retry-After", str(self._jitter.randint(retry, 2 * retry))])
        response.headers.append(["Server", self.config.sip.user_agent])
        try:
            self.layer.send_stateless(response, peer)
        except (SipError, ValueError):
            self.drops["overload_unanswerable"] += 1

    def _malformed(self, data: bytes, err: SipError, peer: Peer) -> None:
        """A message the parser refused: answer it statelessly if we can (§8.2,
        RFC 4475), else count and drop it."""
        if err.drop:
            self.drops[_slug(err.reason)] += 1
            return
        request = err.request if err.request is not None else salvage_request(data)
        if request is None or request.method == "ACK":
            self.drops["unanswerable_" + _slug(err.reason)] += 1
            return
        try:
            response = make_response(request, err.status, err.reason)
            if err.status == 501:
                response.headers.append(["Allow", ALLOW])
            response.headers.append(["Server", self.config.sip.user_agent])
            self.layer.send_stateless(response, peer)
        except (SipError, ValueError):
            self.drops["unanswerable_" + _slug(err.reason)] += 1
            return
        self.counters["malformed_answered"] += 1
        log.debug("refused a request from %s: %s", _peer_text(peer), err)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, events: Iterable[Any], now: float) -> None:
        for ev in events:
            kind = type(ev)
            try:
                if kind is RequestReceived:
                    self._on_request(ev.tx, ev.request, ev.peer, now)
                elif kind is AckReceived:
                    if self.calls is not None:
                        self.calls.handle_ack(ev.request, ev.peer, now)
                elif kind is ResponseReceived:
                    if self.calls is not None:
                        self.calls.handle_response(ev.tx, ev.response, now)
                elif kind is TransactionTimeout or kind is TransportError:
                    if isinstance(ev.tx, ClientTransaction):
                        if self.calls is not None:
                            self.calls.handle_tx_timeout(ev.tx, now)
                    else:
                        self.counters[
                            "server_"
                            + ("timeouts" if kind is TransactionTimeout else "transport_errors")
                        ] += 1
                elif kind is StrayResponse:
                    self.drops["stray_response"] += 1
                elif kind is TransactionTerminated:
                    pass
            except Exception:
                self._bug(ev, now)

    def _internal(self, where: str, message: Any) -> None:
        self.counters["internal_errors"] += 1
        log.exception("bug in %s (%r)", where, message)

    def _bug(self, ev: Any, now: float) -> None:
        """A handler raised: log it, count it, and answer 500 if a request
        is still owed a final response (§8.2: every request gets one)."""
        self.counters["internal_errors"] += 1
        log.exception("bug while handling %s", type(ev).__name__)
        tx = getattr(ev, "tx", None)
        if isinstance(tx, ServerTransaction) and tx.state in (State.TRYING, State.PROCEEDING):
            try:
                # Not lingering yet (TRYING, PROCEEDING), so it still has its request.
                assert tx.request is not None
                self._refuse(tx, tx.request, CoreRefusal.INTERNAL_ERROR, now)
            except Exception:
                log.exception("could not even answer 500")

    def _on_request(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        method = request.method
        if method not in ALLOWED:
            self._refuse(tx, request, CoreRefusal.UNKNOWN_METHOD, now)
            return
        if method != "CANCEL":
            unsupported = [t for t in request.get_all("Require") if t not in SUPPORTED_TAGS]
            if unsupported:
                self._refuse(tx, request, CoreRefusal.BAD_EXTENSION, now, unsupported)
                return
        if peer.transport != "tls" and getattr(request.uri, "scheme", "") == "sips":
            self._refuse(tx, request, CoreRefusal.SIPS_WITHOUT_TLS, now)
            return
        in_dialog = request.to.tag is not None
        if method == "OPTIONS" and not in_dialog:
            self._options(tx, request, now)
            return
        if not self.loaded:
            self._refuse(tx, request, CoreRefusal.NOT_READY, now)
            return
        if method == "REGISTER":
            self._register(tx, request, peer, now)
            return
        if self.stopping and not in_dialog and method == "INVITE":
            self._refuse(tx, request, CoreRefusal.SHUTTING_DOWN, now)
            return
        if method in _FORWARDED and request.max_forwards == 0:
            self._refuse(tx, request, CoreRefusal.TOO_MANY_HOPS, now)
            return
        if self.calls is None:
            self._refuse(tx, request, CoreRefusal.NO_CALLS, now)
            return
        self.calls.handle_request(tx, request, peer, now)

    def _register(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        result = self.registrar.handle(request, peer, now)
        refusal = result.refusal
        if refusal is None or type(refusal) is AuthFailure:
            user = getattr(request.to.uri, "user", None)
            self.guard.auth_result(peer.host, user, refusal, now)
        self._send(tx, result.response, now)
        db = self._db
        for b in result.deleted:
            db.append(DeleteBinding(b.username, b.domain, b.contact))
        for b in result.saved:
            db.append(SaveBinding(b))
        if result.refusal is None and (result.saved or result.deleted):
            log.debug(
                "%s: %d saved, %d removed, from %s",
                result.aor,
                len(result.saved),
                len(result.deleted),
                _peer_text(peer),
            )

    def _options(self, tx: ServerTransaction, request: Request, now: float) -> None:
        """§11.2: what we are able to do, as to any out-of-dialog OPTIONS
        (also the phones' and monitors' keep-alive ping)."""
        response = make_response(request, 200, to_tag=new_tag())
        response.headers += [
            ["Allow", ALLOW],
            ["Accept", "application/sdp"],
            ["Supported", ", ".join(sorted(SUPPORTED_TAGS))],
            ["Server", self.config.sip.user_agent],
        ]
        self._send(tx, response, now)

    def _refuse(
        self,
        tx: ServerTransaction,
        request: Request,
        refusal: CoreRefusal,
        now: float,
        unsupported: list[str] | None = None,
    ) -> None:
        status, reason = CORE_ANSWERS[refusal]
        self.counters["refused_" + refusal.value] += 1
        response = make_response(request, status, reason, to_tag=new_tag())
        headers = response.headers
        if refusal is CoreRefusal.UNKNOWN_METHOD:
            headers.append(["Allow", ALLOW])
        elif refusal is CoreRefusal.BAD_EXTENSION:
            headers.append(["Unsupported", ", ".join(unsupported or ())])
        elif status == 503:
            headers.append(["Retry-After", "5"])
        headers.append(["Server", self.config.sip.user_agent])
        self._send(tx, response, now)

    def _send(self, tx: ServerTransaction, response: Any, now: float) -> None:
        self._dispatch(self.layer.send_response(tx, response, now), now)

    # ------------------------------------------------------------------ bearers

    def receive_bearer(self, data: bytes, source: Any, now: float) -> None:
        """One datagram from the bearer control socket (``source`` as the
        socket reports it: a path, or ``(ip, port)``)."""
        try:
            events = self.client.receive(data, source, now)
        except ProtocolError as err:
            self.drops["bearer_" + err.reason.value] += 1
            self.bearers.note_protocol_error(source, err.reason, now)
            return
        except Exception:
            self._internal("the bearer protocol client", data[:32])
            return
        self._bearer_events(events, now)

    def _bearer_events(self, events: Iterable[Any], now: float) -> None:
        for ev in events:
            self.bearers.handle_event(ev, now)
            if self.calls is not None:
                try:
                    self.calls.handle_bearer_event(ev, now)
                except Exception:
                    self._bug(ev, now)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The earliest deadline of any part, or None when idle."""
        deadline = self.layer.get_timer()
        for t in (
            self.client.get_timer(),
            self.location.get_timer(),
            self.calls.get_timer() if self.calls is not None else None,
            self.guard.get_timer(),
        ):
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fire everything due at ``now``.  A bug in one part is logged and
        counted and the others still run: a dead timer would stall them all."""
        try:
            self._dispatch(self.layer.handle_timer(now), now)
        except Exception:
            self._internal("the transaction timers", None)
        try:
            self._bearer_events(self.client.handle_timer(now), now)
        except Exception:
            self._internal("the bearer protocol timers", None)
        if self.calls is not None:
            try:
                self.calls.handle_timer(now)
            except Exception:
                self._internal("the calls timers", None)
        for b in self.location.expire(now):
            self._db.append(DeleteBinding(b.username, b.domain, b.contact))
            self.counters["bindings_expired"] += 1
        try:
            self.guard.handle_timer(now)
        except Exception:
            self._internal("the guard timers", None)

    # ------------------------------------------------------------------ outputs

    def sip_datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """Everything for the SIP sockets since the last call, in order."""
        out = self.layer.datagrams_to_send()
        if out:
            counters = self.counters
            counters["tx_messages"] += len(out)
            codes, methods = self.tx_codes, self.tx_methods
            for data, peer in out:
                if data[:8] == b"SIP/2.0 ":
                    counters["tx_" + chr(data[8]) + "xx"] += 1
                    codes[data[8:11]] += 1
                else:  # our own requests: "METHOD uri SIP/2.0"
                    space = data.find(b" ", 0, 16)
                    methods[data[:space] if space > 0 else b"other"] += 1
                if self.trace:
                    trace_log.info("send to %s:\n%s", _peer_text(peer), _text(data))
        return out

    def bearer_datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        """Everything for the bearer control socket."""
        return self.client.datagrams_to_send()

    def db_commands(self) -> list[DbCommand]:
        """DB-thread work queued since the last call."""
        out, self._db = self._db, []
        return out

    def _db_command(self, command: DbCommand) -> None:
        """A DB command from the B2BUA (a feature code's UpdateUser)."""
        self._db.append(command)

    def _on_cdr(self, cdr: Cdr) -> None:
        self.dispositions[cdr.disposition.value] += 1
        self._db.append(WriteCdr(cdr))

    # ------------------------------------------------------------------ DB results

    def apply_db_result(self, result: Any, now: float) -> None:
        """Fold in one message from the DB thread."""
        kind = type(result)
        if kind is Loaded:
            self.directory.load(result.users)
            kept = self.location.load(result.registrations, now)
            self.loaded = True
            log.info("serving %d users, %d registrations restored", len(self.directory), kept)
        elif kind is UsersChanged:
            self.directory.apply(result.users, result.deleted)
            touched = [(d.username, d.domain) for d in result.deleted]
            touched += [(u.username, u.domain) for u in result.users if not u.enabled]
            for username, domain in touched:
                user = self.directory.lookup(username, domain)
                if user is not None and user.enabled:
                    continue  # deleted and re-added within one poll
                for b in self.location.remove_aor(username, domain):
                    self._db.append(DeleteBinding(b.username, b.domain, b.contact))
            log.info(
                "users changed: %d added or updated, %d deleted",
                len(result.users),
                len(result.deleted),
            )
        elif kind is DbStatus:
            previous = self.db_state
            self.db_state = result
            if not result.ok:
                log.warning(
                    "database unavailable (%s); %d writes queued, %d dropped",
                    result.error,
                    result.queued,
                    result.dropped,
                )
            elif previous is not None and not previous.ok:
                log.info("database back; %d writes queued", result.queued)
        elif kind is DbFatal:
            self.fatal = result.error
            log.error("database: %s", result.error)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, now: float) -> None:
        """SIGTERM: refuse new calls, let calls hang up what it can."""
        self.stopping = True
        if self.calls is not None:
            try:
                self.calls.shutdown(now)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("bug in calls.shutdown")

    def in_flight(self) -> int:
        """Transactions still waiting for an answer: what a graceful stop waits for."""
        return self.layer.unanswered()

    def reconfigure(self, new: SimpleNamespace) -> tuple[list[str], list[str]]:
        """Apply a re-read configuration (SIGHUP): returns (applied, needs a
        restart) as 'section.key' lists.  Values are copied into the live
        namespaces, which the registrar and calls read on every use."""
        applied: list[str] = []
        restart: list[str] = []
        live = {
            ("sip", "t1"),
            ("sip", "t2"),
            ("sip", "t4"),
            ("sip", "min_expires"),
            ("sip", "max_expires"),
            ("sip", "default_expires"),
            ("sip", "nonce_ttl"),
            ("sip", "user_agent"),
            ("calls", "no_answer_timeout"),
            ("calls", "conference_prefix"),
            ("calls", "max_calls_per_user"),
            ("calls", "codecs"),
            ("calls", "srtp"),
            ("log", "level"),
            ("log", "sip_trace"),
            ("overload", "shed_delay"),
            ("overload", "drop_delay"),
            ("overload", "retry_after"),
            ("overload", "shed_rate"),
            *(("security", k) for k in _GUARD_KEYS),
        }
        for section, values in vars(new).items():
            current = getattr(self.config, section)
            for key, value in vars(values).items():
                if getattr(current, key) == value:
                    continue
                name = f"{section}.{key}"
                if (section, key) in live:
                    setattr(current, key, value)
                    applied.append(name)
                else:
                    restart.append(name)
        sip = self.config.sip
        self.layer.timers = Timers(sip.t1, sip.t2, sip.t4)
        self.auth.nonce_ttl = float(sip.nonce_ttl)
        self.trace = bool(self.config.log.sip_trace)
        overload = self.config.overload
        self.admission.shed_delay = overload.shed_delay
        self.admission.drop_delay = overload.drop_delay
        self.admission.retry_after = int(overload.retry_after)
        self.admission.shed_rate = float(overload.shed_rate)
        if any(name.startswith("security.") for name in applied):
            self.guard.reconfigure(self.config.security)
        return applied, restart

    # ------------------------------------------------------------------ admin

    def admin_registrations(self, now: float) -> list[dict[str, Any]]:
        return self.location.snapshot(now)

    def admin_calls(self) -> list[dict[str, Any]]:
        return [] if self.calls is None else list(self.calls.snapshot())

    def admin_bearers(self) -> list[dict[str, Any]]:
        return self.bearers.snapshot()

    def admin_bans(self, now: float) -> list[dict[str, Any]]:
        return [b.row() for b in self.guard.bans(now)]

    def admin_status(self, now: float) -> dict[str, Any]:
        """``softswitchctl status``: one flat object."""
        db = self.db_state
        calls = 0 if self.calls is None else len(self.calls.snapshot())
        status: dict[str, Any] = {
            "uptime_s": round(now - self.started, 1),
            "state": "stopping" if self.stopping else ("serving" if self.loaded else "loading"),
            "domain": self.domain,
            "listen": ", ".join(f"{la.host_port}" for la in self.locals),
            "users": len(self.directory),
            "registrations": len(self.location),
            "registered_aors": self.location.aor_count,
            "calls": calls,
            "bearers_up": f"{self.bearers.up_count}/{len(self.bearers)}",
            "database": _db_text(db, self.loaded),
            "db_queued": 0 if db is None else db.queued,
            "db_dropped": 0 if db is None else db.dropped,
            "db_spool_errors": 0 if db is None else db.spool_errors,
            "transactions": len(self.layer),
            "bans": len(self.guard.bans(now)),
            "guard_dropped_banned": self.guard.drops["banned"],
            "guard_dropped_rate_limited": self.guard.drops["rate_limited"],
        }
        for name, available in sorted(self.features.items()):
            status[f"feature_{name}"] = available
        status.update(sorted(self.counters.items()))
        status.update((f"drop_{k}", v) for k, v in sorted(self.drops.items()))
        status.update((f"register_refused_{k}", v) for k, v in self.registrar.refusals.items())
        return status


# --------------------------------------------------------------------------- helpers


def _db_text(db: DbStatus | None, loaded: bool) -> str:
    if db is None:
        return "ok" if loaded else "loading"
    return "ok" if db.ok else f"down: {db.error}"


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "_").replace("-", "_")[:40]


def _peer_text(peer: Peer) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{peer.transport}:{host}:{peer.port}"


def _text(data: bytes) -> str:
    """A message for the SIP trace, SDES keys (a=crypto inline:) redacted."""
    return redact(data[:4096]).decode("utf-8", "replace")

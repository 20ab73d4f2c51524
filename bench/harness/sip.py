"""Phones that drive the real switch over SIP, built on the project's own stack.

``SipClient`` is one phone on UDP or TCP: it builds requests with
``softswitch.sip.message``, answers challenges with ``DigestClient`` and
parses what comes back.  ``Dialer`` is a caller's side of one call (the 407
round, CANCEL, ACK, BYE), ``answer`` a callee's 200 with SDP, and ``Call``
one answered call between Alice and Bob with RTP sockets on both sides: the
set-up the integration tests share instead of each writing it out again.
"""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import time
from typing import Any

from bench.harness.bearer import Phone
from bench.harness.control import DOMAIN, ControlProcess
from softswitch.sip.digest import DigestClient
from softswitch.sip.framing import StreamFramer
from softswitch.sip.message import Request, Response, make_response, parse


class SipClient:
    """A phone on loopback, UDP, TCP or TLS, using the project's own SIP stack."""

    def __init__(
        self,
        port: int,
        user: str = "alice",
        password: str = "secret",
        *,
        transport: str = "udp",
        timeout: float = 5.0,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a client context, for ``transport="tls"`` (``port`` is then
        the server's TLS port)."""
        self.server = (host, port)
        self.user = user
        self.transport = transport
        self.digest = DigestClient(user, password=password)
        self.call_id = f"{secrets.token_hex(6)}@127.0.0.1"
        self.cseq = 0
        self.timeout = timeout
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, kind)
        self.sock.settimeout(timeout)
        if transport == "udp":
            self.sock.bind((host, 0))
        else:
            self.sock.connect(self.server)
            if transport == "tls":
                assert tls is not None, "transport tls needs a client context"
                self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.local = self.sock.getsockname()[:2]
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def contact(self) -> str:
        host = f"[{self.local[0]}]" if ":" in self.local[0] else self.local[0]
        return f"<sip:{self.user}@{host}:{self.local[1]};transport={self.transport}>"

    def build(
        self,
        method: str,
        *,
        uri: str | None = None,
        headers: list[str] | None = None,
        to: str | None = None,
    ) -> bytes:
        self.cseq += 1
        host, port = self.local
        if ":" in host:
            host = f"[{host}]"
        lines = [
            f"{method} {uri or f'sip:{DOMAIN}'} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {host}:{port};rport;branch=z9hG4bK"
            f"{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{DOMAIN}>;tag={secrets.token_hex(4)}",
            f"To: {to or f'<sip:{self.user}@{DOMAIN}>'}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {method}",
            "User-Agent: sipclient-test",
            *(headers or []),
        ]
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def receive(self) -> bytes:
        if self.transport == "udp":
            data, _ = self.sock.recvfrom(65535)
            return data
        for _ in range(1000):  # bounded: each round reads or returns
            if self.pending:
                return self.pending.pop(0)
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.pending += self.framer.feed(chunk)
        raise RuntimeError("no message")

    def final(self) -> Response:
        """The next final response (1xx skipped)."""
        for _ in range(20):  # bounded
            msg = parse(self.receive())
            assert isinstance(msg, Response)
            if msg.status >= 200:
                return msg
        raise RuntimeError("no final response")

    def request(self, method: str, **kw: Any) -> Response:
        self.send(self.build(method, **kw))
        return self.final()

    def register(self, expires: int | None = 3600, contact: str | None = None) -> Response:
        """REGISTER, answering one challenge if there is one (nonce reused after)."""
        headers = [f"Contact: {contact or self.contact()}"]
        if expires is not None:
            headers.append(f"Expires: {expires}")
        for _ in range(3):  # at most: no credentials, stale nonce, answered
            auth = self.digest.authorization("REGISTER", f"sip:{DOMAIN}")
            extra = headers + ([f"Authorization: {auth}"] if auth else [])
            response = self.request("REGISTER", headers=extra)
            if response.status != 401:
                return response
            self.digest.challenged(response.get_all("WWW-Authenticate"))
        return response


def sdp(port: int, host: str = "127.0.0.1") -> bytes:
    """A phone's SDP: PCMU and telephone-event on ``host``:``port``."""
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def media_port(body: bytes) -> int:
    """The audio port of an SDP body (the bearer's, in what the switch sends)."""
    m = re.search(rb"m=audio (\d+) ", body)
    assert m, body
    return int(m.group(1))


def next_request(client: SipClient, method: str) -> Request:
    """The next ``method`` request reaching ``client`` (other messages skipped)."""
    for _ in range(20):  # bounded: skips ACKs and retransmissions
        msg = parse(client.receive())
        if isinstance(msg, Request) and msg.method == method:
            return msg
    raise AssertionError(f"no {method}")


def answer(callee: SipClient, invite: Request, rtp_port: int, to_tag: str = "bobtag") -> None:
    """The callee's phone answers ``invite``: 200 with its Contact and SDP."""
    ok = make_response(invite, 200, to_tag=to_tag)
    ok.headers += [
        ["Contact", f"<sip:{callee.user}@127.0.0.1:{callee.local[1]}>"],
        ["Content-Type", "application/sdp"],
    ]
    ok.body = sdp(rtp_port)
    callee.send(bytes(ok))


def answer_reinvite(invite: Request, rtp_port: int, contact_port: int) -> bytes:
    """A phone's 200 to the switch's re-INVITE (hold, a bearer move), its media at ``rtp_port``."""
    ok = make_response(invite, 200)
    ok.headers += [
        ["Contact", f"<sip:phone@127.0.0.1:{contact_port}>"],
        ["Content-Type", "application/sdp"],
    ]
    ok.body = sdp(rtp_port)
    return bytes(ok)


class Dialer:
    """A caller's side of one call: INVITE, the 407 round, CANCEL, ACK, BYE."""

    def __init__(self, client: SipClient, callee: str, rtp_port: int = 40000) -> None:
        self.c = client
        self.callee = callee
        self.rtp_port = rtp_port
        self.tag = secrets.token_hex(4)
        self.branch = ""
        self.remote_tag: str | None = None
        self.target = f"sip:{callee}@{DOMAIN}"

    def message(self, method: str, branch: str, cseq: int, auth: str | None = None) -> bytes:
        host, port = self.c.local
        body = sdp(self.rtp_port) if method == "INVITE" else b""
        in_dialog = method == "BYE" or (method == "ACK" and self.remote_tag is not None)
        uri = self.target if in_dialog else f"sip:{self.callee}@{DOMAIN}"
        to = f"<sip:{self.callee}@{DOMAIN}>"
        if self.remote_tag and method in ("ACK", "BYE"):
            to += f";tag={self.remote_tag}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:{self.c.user}@{DOMAIN}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.c.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{self.c.user}@{host}:{port}>",
            *(["Content-Type: application/sdp"] if body else []),
            *([f"Proxy-Authorization: {auth}"] if auth else []),
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self) -> None:
        """INVITE, 407, ACK for the 407 (§17.1.1.3: same branch), INVITE with credentials."""
        first = f"z9hG4bK{secrets.token_hex(6)}"
        self.c.send(self.message("INVITE", first, 1))
        challenge = self.c.final()
        assert challenge.status == 407, challenge
        self.c.send(self.message("ACK", first, 1))
        self.c.digest.challenged(challenge.get_all("Proxy-Authenticate"))
        auth = self.c.digest.authorization("INVITE", f"sip:{self.callee}@{DOMAIN}")
        self.branch = f"z9hG4bK{secrets.token_hex(6)}"
        self.c.send(self.message("INVITE", self.branch, 2, auth))

    def response(self, *statuses: int) -> Response:
        """The next response to the authorised INVITE with one of ``statuses``."""
        for _ in range(20):  # bounded: 100 Trying and retransmissions are skipped
            msg = parse(self.c.receive())
            if isinstance(msg, Response) and msg.cseq == 2 and msg.status in statuses:
                return msg
        raise AssertionError(f"no {statuses}")

    def ringing(self, callee: SipClient, to_tag: str | None = None) -> Request:
        """INVITE until it rings: the callee's phone gets the INVITE and sends
        180, the caller gets the 180; returns the INVITE the callee got."""
        self.invite()
        invite = next_request(callee, "INVITE")
        callee.send(bytes(make_response(invite, 180, to_tag=to_tag or secrets.token_hex(4))))
        assert self.response(180).status == 180
        return invite

    def cancel(self, callee: SipClient, invite: Request) -> None:
        """CANCEL the INVITE ringing at ``callee``'s phone, which answers the switch's
        CANCEL (200) and its INVITE (487); the caller gets 487 and ACKs it."""
        self.c.send(self.message("CANCEL", self.branch, 2))
        cancel = next_request(callee, "CANCEL")
        assert cancel.call_id == invite.call_id
        callee.send(bytes(make_response(cancel, 200)))
        callee.send(bytes(make_response(invite, 487, to_tag=invite.to.tag or "gone")))
        assert self.response(487).status == 487
        self.c.send(self.message("ACK", self.branch, 2))

    def answered(self, ok: Response) -> None:
        """The 200 came: remember the dialog and ACK it."""
        self.remote_tag = ok.to.tag
        self.target = str(ok.contacts[0].uri)
        self.c.send(self.message("ACK", f"z9hG4bK{secrets.token_hex(6)}", 2))

    def bye(self, callee: SipClient) -> Response:
        """BYE; ``callee``'s phone answers the switch's BYE; the caller's answer."""
        self.c.send(self.message("BYE", f"z9hG4bK{secrets.token_hex(6)}", 3))
        bye = next_request(callee, "BYE")
        callee.send(bytes(make_response(bye, 200)))
        for _ in range(20):  # bounded
            msg = parse(self.c.receive())
            if isinstance(msg, Response) and msg.cseq == 3:
                return msg
        raise AssertionError("no answer to BYE")


class Call:
    """An answered call from Alice (alice/secret) to Bob (bob/hunter2), media flowing.

    Bob registers when the call is made; ``establish`` runs the whole set-up
    (407 round, 180, 200 with SDP, ACKs both sides) and keeps the bearer's
    port for each side; ``talk`` sends RTP both ways; ``hang_up`` is Alice's BYE.
    """

    def __init__(self, switch: ControlProcess) -> None:
        self.bob = SipClient(switch.port, "bob", "hunter2")
        assert self.bob.register(contact=f"<sip:bob@127.0.0.1:{self.bob.local[1]}>").status == 200
        self.alice = SipClient(switch.port, "alice", "secret")
        self.a_rtp, self.b_rtp = Phone(), Phone()
        self.dialer = Dialer(self.alice, "bob", self.a_rtp.addr[1])

    def establish(self) -> None:
        bob = self.bob
        self.dialer.invite()
        # Bob's phone rings, then answers with its media port.
        invite = next_request(bob, "INVITE")
        self.bearer_port_for_bob = media_port(invite.body)
        bob.send(bytes(make_response(invite, 180, to_tag="bobtag")))
        answer(bob, invite, self.b_rtp.addr[1])
        # Alice gets 180 then the 200 with the bearer's address.
        statuses = []
        ok: Response | None = None
        for _ in range(10):  # bounded
            msg = parse(self.alice.receive())
            if isinstance(msg, Response) and msg.cseq == 2:
                statuses.append(msg.status)
                if msg.status == 200:
                    ok = msg
                    break
        assert ok is not None and 180 in statuses, statuses
        self.bearer_port_for_alice = media_port(ok.body)
        self.dialer.answered(ok)
        assert next_request(bob, "ACK").cseq == invite.cseq

    def talk(self) -> tuple[int, int]:
        """RTP both ways through the bearer; packets (Bob got, Alice got)."""
        for _ in range(5):
            self.a_rtp.send(self.bearer_port_for_alice, b"\xff" * 160)
            self.b_rtp.send(self.bearer_port_for_bob, b"\x7f" * 160)
            time.sleep(0.02)
        return len(self.b_rtp.recv_all()), len(self.a_rtp.recv_all())

    def hang_up(self) -> Response:
        """Alice's BYE; Bob's phone answers the switch's BYE; Alice's answer."""
        return self.dialer.bye(self.bob)

    def close(self) -> None:
        for s in (self.a_rtp, self.b_rtp, self.alice, self.bob):
            s.close()

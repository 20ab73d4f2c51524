"""One answered call through the real daemons: signalling through control,
RTP through a real bearer, a CDR at the end.

This is the composition check (daemon ↔ core ↔ calls ↔ bearer pool ↔ the
bearer process); the call flows one by one are tested against the B2BUA
itself.  Alice and Bob are SipClients on UDP; their media are plain UDP
sockets sending RTP.
"""

from __future__ import annotations

import json
import re
import signal
import time

from softswitch.sip.message import Request, Response, make_response, parse
from tests.integration.bearer.harness import Phone
from tests.integration.control.harness import DOMAIN, ControlProcess, SipClient


def sdp(port: int) -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def media_port(body: bytes) -> int:
    m = re.search(rb"m=audio (\d+) ", body)
    assert m, body
    return int(m.group(1))


class Caller:
    """Alice's side of one call: INVITE (with the 407 round), ACK, BYE."""

    def __init__(self, client: SipClient, rtp_port: int) -> None:
        self.c = client
        self.rtp_port = rtp_port
        self.tag = "alicetag"
        self.remote_tag: str | None = None
        self.target = f"sip:bob@{DOMAIN}"
        self.cseq = 0

    def request(self, method: str, branch: str, *, auth: str | None = None, cseq: int) -> bytes:
        host, port = self.c.local
        body = sdp(self.rtp_port) if method == "INVITE" else b""
        uri = self.target if method in ("ACK", "BYE") else f"sip:bob@{DOMAIN}"
        to = f"<sip:bob@{DOMAIN}>" + (f";tag={self.remote_tag}" if self.remote_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};rport;branch={branch}",
            "Max-Forwards: 70",
            f"From: <sip:alice@{DOMAIN}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.c.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:alice@{host}:{port}>",
            *(["Content-Type: application/sdp"] if body else []),
            *([f"Proxy-Authorization: {auth}"] if auth else []),
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def next_request(client: SipClient, method: str) -> Request:
    for _ in range(10):  # bounded: skip retransmitted responses' ACKs etc.
        msg = parse(client.receive())
        if isinstance(msg, Request) and msg.method == method:
            return msg
    raise AssertionError(f"no {method}")


class Call:
    """An answered call between Alice and Bob, media flowing."""

    def __init__(self, switch: ControlProcess) -> None:
        self.bob = SipClient(switch.port, "bob", "hunter2")
        assert self.bob.register(contact=f"<sip:bob@127.0.0.1:{self.bob.local[1]}>").status == 200
        self.alice = SipClient(switch.port, "alice", "secret")
        self.a_rtp, self.b_rtp = Phone(), Phone()
        self.caller = Caller(self.alice, self.a_rtp.addr[1])

    def establish(self) -> None:
        alice, bob, caller = self.alice, self.bob, self.caller
        # INVITE, 407, ACK for the 407 (§17.1.1.3: same branch), INVITE with credentials.
        alice.send(caller.request("INVITE", "z9hG4bKa1", cseq=1))
        challenge = alice.final()
        assert challenge.status == 407
        alice.send(caller.request("ACK", "z9hG4bKa1", cseq=1))
        alice.digest.challenged(challenge.get_all("Proxy-Authenticate"))
        auth = alice.digest.authorization("INVITE", f"sip:bob@{DOMAIN}")
        alice.send(caller.request("INVITE", "z9hG4bKa2", auth=auth, cseq=2))

        # Bob's phone rings, then answers with its media port.
        invite = next_request(bob, "INVITE")
        self.bearer_port_for_bob = media_port(invite.body)
        bob.send(bytes(make_response(invite, 180, to_tag="bobtag")))
        ok = make_response(invite, 200, to_tag="bobtag")
        ok.headers += [
            ["Contact", f"<sip:bob@127.0.0.1:{bob.local[1]}>"],
            ["Content-Type", "application/sdp"],
        ]
        ok.body = sdp(self.b_rtp.addr[1])
        bob.send(bytes(ok))

        # Alice gets 180 then the 200 with the bearer's address.
        statuses = []
        answer: Response | None = None
        for _ in range(10):  # bounded
            msg = parse(alice.receive())
            if isinstance(msg, Response) and msg.cseq == 2:
                statuses.append(msg.status)
                if msg.status == 200:
                    answer = msg
                    break
        assert answer is not None and 180 in statuses, statuses
        caller.remote_tag = answer.to.tag
        caller.target = str(answer.contacts[0].uri)
        self.bearer_port_for_alice = media_port(answer.body)
        alice.send(caller.request("ACK", "z9hG4bKa3", cseq=2))
        assert next_request(bob, "ACK").cseq == invite.cseq

    def talk(self) -> tuple[int, int]:
        """RTP both ways through the bearer; packets (Bob got, Alice got)."""
        for _ in range(5):
            self.a_rtp.send(self.bearer_port_for_alice, b"\xff" * 160)
            self.b_rtp.send(self.bearer_port_for_bob, b"\x7f" * 160)
            time.sleep(0.02)
        return len(self.b_rtp.recv_all()), len(self.a_rtp.recv_all())

    def close(self) -> None:
        for s in (self.a_rtp, self.b_rtp, self.alice, self.bob):
            s.close()


def wait_cdrs(switch: ControlProcess, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded: CDRs are batched within a second
        out = switch.ctl("cdr", "--json")
        if out.returncode == 0 and json.loads(out.stdout):
            return json.loads(out.stdout)
        time.sleep(0.2)
    return []


def test_answered_call_relays_rtp_and_leaves_a_cdr(switch: ControlProcess) -> None:
    call = Call(switch)
    try:
        call.establish()
        got_b, got_a = call.talk()
        assert got_b >= 4 and got_a >= 4
        assert len(switch.admin("calls")) == 1
        # Alice hangs up; Bob's phone gets the BYE.
        call.alice.send(call.caller.request("BYE", "z9hG4bKa4", cseq=3))
        bye = next_request(call.bob, "BYE")
        call.bob.send(bytes(make_response(bye, 200)))
        assert call.alice.final().status == 200
        cdrs = wait_cdrs(switch)
        assert cdrs and cdrs[0]["disposition"] == "answered", cdrs
        assert switch.admin("calls") == []
    finally:
        call.close()


def test_sigterm_hangs_up_both_phones_and_keeps_the_cdr(switch: ControlProcess) -> None:
    call = Call(switch)
    try:
        call.establish()
        call.talk()
        switch.send_signal(signal.SIGTERM)
        # Both phones get a BYE from the stopping switch and answer it.
        for phone in (call.alice, call.bob):
            bye = next_request(phone, "BYE")
            phone.send(bytes(make_response(bye, 200)))
        assert switch.proc.wait(15) == 0, switch.log()
        assert "unfinished at stop" not in switch.log()
        switch.start()  # the CDR was flushed by the DB thread at stop
        cdrs = wait_cdrs(switch)
        assert cdrs and cdrs[0]["disposition"] == "answered", cdrs
    finally:
        call.close()

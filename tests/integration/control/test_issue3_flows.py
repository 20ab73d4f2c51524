"""Issue 3's "Show" checks not covered elsewhere, against the real daemons.

Control + two bearers on loopback (the integration harness), phones built on
the project's own SIP stack over UDP:

* bearers full (max_sessions = 1 each): the third simultaneous call gets 503
  with Retry-After, the callee never sees it, and a call gets through again
  once a session is freed;
* registrations survive a control restart and the callee is reachable right
  after: a call to the phone that registered before the restart is answered,
  and RTP flows through the bearer;
* malformed requests get a 400 and the daemon keeps serving: an OPTIONS sent
  right after each one is answered.

(A user added with ``softswitchctl user add`` registering within 2 s is in
test_control.py; the flows one by one are in tests/unit/control.)
"""

from __future__ import annotations

import re
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from softswitch.sip.message import Request, Response, make_response, parse
from tests.integration.bearer.harness import Phone, start_bearer
from tests.integration.control.harness import (
    DOMAIN,
    ControlProcess,
    SipClient,
    add_users,
    free_sip_port,
    write_control_config,
)

USERS = {"alice": "secret", "bob": "hunter2", "carol": "pw-carol", "dave": "pw-dave"}


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


def next_request(client: SipClient, method: str) -> Request:
    for _ in range(20):  # bounded: skips ACKs and retransmissions
        msg = parse(client.receive())
        if isinstance(msg, Request) and msg.method == method:
            return msg
    raise AssertionError(f"no {method}")


def nothing_arrives(client: SipClient, seconds: float) -> list[bytes]:
    """Whatever reaches ``client`` within ``seconds`` (normally nothing)."""
    client.sock.settimeout(seconds)
    got = []
    try:
        for _ in range(20):  # bounded
            got.append(client.receive())
    except TimeoutError:
        pass
    finally:
        client.sock.settimeout(client.timeout)
    return got


def register(control: ControlProcess, user: str) -> SipClient:
    phone = SipClient(control.port, user, USERS[user])
    r = phone.register(contact=f"<sip:{user}@127.0.0.1:{phone.local[1]}>")
    assert r.status == 200, r
    return phone


def wait_bearers_up(control: ControlProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:  # bounded
        rows = control.admin("bearers")
        if rows and all(r["state"] == "up" for r in rows):
            return
        time.sleep(0.05)
    raise AssertionError(f"bearers not up: {rows}")


@contextmanager
def running_switch(tmp: Path, **bearer_options: Any) -> Iterator[ControlProcess]:
    """Control + two bearers (``start_bearer`` options); users alice, bob, carol, dave.

    Afterwards every daemon must have stopped with 0 and control logged no traceback.
    """
    bearers = [start_bearer(tmp / f"b{i}", **bearer_options) for i in range(2)]
    port = free_sip_port()
    etc = write_control_config(tmp, port, bearers)
    add_users(tmp, USERS)
    control = ControlProcess(tmp, etc, port)
    try:
        control.start()
        yield control
    finally:
        code = control.stop(signal.SIGTERM)
        codes = [b.stop() for b in bearers]
    assert code == 0, f"control exited {code}:\n{control.log()}"
    assert codes == [0, 0], [b.log() for b in bearers]
    assert "Traceback" not in control.log(), control.log()


@pytest.fixture
def small_switch(tmp_path: Path) -> Iterator[ControlProcess]:
    """Bearers of ONE session each."""
    with running_switch(tmp_path, max_sessions=1, ports=8) as control:
        yield control


@pytest.fixture
def four_users_switch(tmp_path: Path) -> Iterator[ControlProcess]:
    with running_switch(tmp_path) as control:
        yield control


def test_bearers_full_third_call_gets_503_with_retry_after(small_switch: ControlProcess) -> None:
    control = small_switch
    wait_bearers_up(control)
    bob = register(control, "bob")
    callers = {u: SipClient(control.port, u, USERS[u]) for u in ("alice", "carol", "dave")}
    ringing: list[tuple[Dialer, Request]] = []
    try:
        # Two calls ring at Bob's phone: one session on each bearer.
        for user in ("alice", "carol"):
            call = Dialer(callers[user], "bob")
            call.invite()
            invite = next_request(bob, "INVITE")
            bob.send(bytes(make_response(invite, 180, to_tag=secrets.token_hex(4))))
            assert call.response(180).status == 180
            ringing.append((call, invite))

        # The third finds both bearers full: 503 + Retry-After; Bob's phone hears nothing.
        third = Dialer(callers["dave"], "bob")
        third.invite()
        refused = third.response(503)
        retry = refused.get("Retry-After")
        assert retry is not None and retry.strip().isdigit() and int(retry) > 0, refused
        callers["dave"].send(third.message("ACK", third.branch, 2))
        assert [m for m in nothing_arrives(bob, 0.5) if m.startswith(b"INVITE")] == []

        # Alice gives up; her session is freed and a call gets through again.
        first, first_invite = ringing.pop(0)
        first.cancel(bob, first_invite)
        deadline = time.monotonic() + 5
        outcome: Request | int = 0
        while time.monotonic() < deadline:  # bounded: the DELETE reaches the bearer
            again = Dialer(SipClient(control.port, "dave", USERS["dave"]), "bob")
            again.invite()
            outcome = _outcome(again, bob)
            if isinstance(outcome, Request):
                ringing.append((again, outcome))
                break
            again.c.send(again.message("ACK", again.branch, 2))
            again.c.close()
            time.sleep(0.2)
        assert isinstance(outcome, Request), f"still {outcome} after a session was freed"

        for call, invite in ringing:
            call.cancel(bob, invite)
        ringing.clear()
        assert _wait_calls_gone(control) == []
    finally:
        bob.close()
        for c in callers.values():
            c.close()
        for call, _ in ringing:
            call.c.close()


def _outcome(call: Dialer, callee: SipClient) -> Request | int:
    """The INVITE if the callee's phone got the call (it rings), else the caller's final status."""
    callee.sock.settimeout(1.0)
    try:
        for _ in range(10):  # bounded: the ACK for an earlier 487 may come first
            msg = parse(callee.receive())
            if isinstance(msg, Request) and msg.method == "INVITE":
                callee.send(bytes(make_response(msg, 180, to_tag="again")))
                assert call.response(180).status == 180
                return msg
    except TimeoutError:
        pass
    finally:
        callee.sock.settimeout(callee.timeout)
    return call.c.final().status


def _wait_calls_gone(control: ControlProcess, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    calls = control.admin("calls")
    while calls and time.monotonic() < deadline:  # bounded
        time.sleep(0.1)
        calls = control.admin("calls")
    return calls


def test_callee_registered_before_a_restart_is_called_right_after_it(
    four_users_switch: ControlProcess,
) -> None:
    control = four_users_switch
    bob = register(control, "bob")
    alice = SipClient(control.port, "alice", USERS["alice"])
    a_rtp, b_rtp = Phone(), Phone()
    try:
        assert control.stop(signal.SIGTERM) == 0, control.log()
        control.start()
        serving = time.monotonic()
        # Right away: Bob's binding came back from the database.
        call = Dialer(alice, "bob", a_rtp.addr[1])
        call.invite()
        invite = next_request(bob, "INVITE")
        ok = make_response(invite, 200, to_tag="bobtag")
        ok.headers += [
            ["Contact", f"<sip:bob@127.0.0.1:{bob.local[1]}>"],
            ["Content-Type", "application/sdp"],
        ]
        ok.body = sdp(b_rtp.addr[1])
        bob.send(bytes(ok))
        answer = call.response(200)
        call.answered(answer)
        reached = time.monotonic() - serving
        assert next_request(bob, "ACK")
        # Media through the bearer both ways.
        to_bearer_a, to_bearer_b = media_port(answer.body), media_port(invite.body)
        for _ in range(5):
            a_rtp.send(to_bearer_a, b"\xff" * 160)
            b_rtp.send(to_bearer_b, b"\x7f" * 160)
            time.sleep(0.02)
        assert len(b_rtp.recv_all()) >= 4 and len(a_rtp.recv_all()) >= 4
        assert call.bye(bob).status == 200
        assert reached < 2.0, f"callee reached {reached:.2f} s after the restart"
    finally:
        for s in (a_rtp, b_rtp, alice, bob):
            s.close()


@pytest.mark.parametrize(
    "breakage",
    [
        (b"Max-Forwards: 70", b"Max-Forwards: lots"),
        (b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"),
        (b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 7"),
        (b"From: <sip:", b"From: sip:<<"),
    ],
    ids=["max-forwards", "cseq", "content-length", "from"],
)
def test_malformed_request_gets_400_and_the_next_options_is_answered(
    switch: ControlProcess, breakage: tuple[bytes, bytes]
) -> None:
    client = SipClient(switch.port)
    try:
        good = client.build("OPTIONS")
        assert breakage[0] in good
        client.send(good.replace(*breakage, 1))
        # Read raw: the 400 copies the broken header, which our parser refuses too.
        raw = client.receive()
        assert raw.startswith(b"SIP/2.0 400 "), raw
        assert client.request("OPTIONS").status == 200
        assert switch.proc is not None and switch.proc.poll() is None
    finally:
        client.close()

"""SIP over TLS (RFC 3261 §26, RFC 5630) against a real softswitch-control.

Certificates are made with the openssl command as ``make run`` makes them;
the phones are the project's SIP client over the standard library's ssl,
trusting only the certificate the test made.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bench.harness.control import ControlProcess, free_sip_port, start_switch
from bench.harness.sip import Dialer, SipClient, next_request
from softswitch.daemon.tls import make_self_signed
from softswitch.sip.message import make_response
from tests.integration.control.test_control import _run, write_control_config
from tests.unit.sip.test_fuzz import CORPUS, SEED, mutate


def _certificate(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    make_self_signed(cert, key, [name, "localhost"])
    return cert, key


def _trusting(cert: Path) -> ssl.SSLContext:
    """What a phone configured to trust ``cert`` does: verify the server by it."""
    return ssl.create_default_context(cafile=str(cert))


class TlsSwitch:
    def __init__(self, control: ControlProcess, port: int, cert: Path, key: Path) -> None:
        self.control, self.port, self.cert, self.key = control, port, cert, key

    def phone(self, user: str = "bob", password: str = "hunter2", **kw: object) -> SipClient:
        return SipClient(self.port, user, password, transport="tls", tls=_trusting(self.cert), **kw)  # type: ignore[arg-type]


@pytest.fixture
def tls_switch(tmp_path: Path) -> Iterator[TlsSwitch]:
    cert, key = _certificate(tmp_path / "certs")
    port = free_sip_port()
    control, bearers = start_switch(
        tmp_path, sip={"tls_port": port, "tls_certificate": str(cert), "tls_key": str(key)}
    )
    yield TlsSwitch(control, port, cert, key)
    code = control.stop(signal.SIGTERM)
    for b in bearers:
        assert b.stop() == 0, b.log()
    assert code == 0, f"control exited {code}:\n{control.log()}"
    assert "Traceback" not in control.log(), control.log()


def _registrations(control: ControlProcess) -> list[dict]:
    result = control.ctl("registrations", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_register_over_tls_then_invite_arrives_on_that_connection(tls_switch: TlsSwitch) -> None:
    control = tls_switch.control
    control.wait_log("tls on port")  # the start line may follow the serving state
    bob = tls_switch.phone()
    assert cast(ssl.SSLSocket, bob.sock).version() in ("TLSv1.2", "TLSv1.3")
    r = bob.register()
    assert r.status == 200, r
    (row,) = _registrations(control)
    assert row["source"] == f"tls:127.0.0.1:{bob.local[1]}"
    bob.sock.sendall(b"\r\n\r\n")  # RFC 5626 §3.5.1 ping, inside TLS
    assert bob.sock.recv(16) == b"\r\n"
    # Alice calls over UDP; Bob's phone gets the INVITE on its TLS connection.
    alice = SipClient(control.port, "alice", "secret")
    dialer = Dialer(alice, "bob")
    dialer.invite()
    invite = next_request(bob, "INVITE")
    assert invite.via.transport == "TLS" and invite.via.port == tls_switch.port
    (contact,) = invite.contacts
    assert str(contact.uri) == f"sip:127.0.0.1:{tls_switch.port};transport=tls"
    bob.send(bytes(make_response(invite, 486, to_tag="bobtag")))
    assert dialer.response(486).status == 486
    alice.close()
    bob.close()


def test_sips_over_tls_is_served_and_over_udp_or_tcp_refused_416(tls_switch: TlsSwitch) -> None:
    control = tls_switch.control
    bob = tls_switch.phone()
    headers = [f"Contact: <sips:bob@127.0.0.1:{bob.local[1]}>", "Expires: 600"]
    r = bob.request("REGISTER", uri="sips:127.0.0.1", headers=headers)
    assert r.status == 401
    bob.digest.challenged(r.get_all("WWW-Authenticate"))
    auth = bob.digest.authorization("REGISTER", "sips:127.0.0.1")
    r = bob.request("REGISTER", uri="sips:127.0.0.1", headers=[*headers, f"Authorization: {auth}"])
    assert r.status == 200, r
    assert r.contacts[0].uri.scheme == "sips"
    for transport in ("udp", "tcp"):
        plain = SipClient(control.port, transport=transport)
        r = plain.request("REGISTER", uri="sips:127.0.0.1")
        assert (r.status, r.reason) == (416, "SIPS Requires TLS"), r
        plain.close()
    bob.close()


def test_sips_invite_gets_a_sips_contact_in_the_dialog(tls_switch: TlsSwitch) -> None:
    """A callee registered with a sips: contact over TLS gets a sips: INVITE
    whose Contact is sips: too (RFC 3261 §8.1.1.8)."""
    control = tls_switch.control
    bob = tls_switch.phone()
    assert bob.register(contact=f"<sips:bob@127.0.0.1:{bob.local[1]}>").status == 200
    alice = SipClient(control.port, "alice", "secret")
    Dialer(alice, "bob").invite()
    invite = next_request(bob, "INVITE")
    assert str(invite.uri).startswith("sips:bob@")
    assert str(invite.contacts[0].uri) == f"sips:127.0.0.1:{tls_switch.port}"
    bob.send(bytes(make_response(invite, 486, to_tag="bobtag")))
    alice.close()
    bob.close()


def test_reload_keeps_connections_and_new_handshakes_get_the_new_certificate(
    tls_switch: TlsSwitch, tmp_path: Path
) -> None:
    control = tls_switch.control
    bob = tls_switch.phone()
    assert bob.register().status == 200
    old_cert = tmp_path / "old.crt"
    old_cert.write_bytes(tls_switch.cert.read_bytes())
    # Renewal in place: new certificate and key at the same paths, then reload.
    make_self_signed(tls_switch.cert, tls_switch.key, ["127.0.0.1", "renewed.example"])
    control.send_signal(signal.SIGHUP)
    control.wait_log("TLS certificate reloaded")
    # The phone's connection is the same one and still serves; its binding stays.
    assert bob.request("OPTIONS").status == 200
    assert len(_registrations(control)) == 1
    # A new handshake gets the new certificate: trusted by it, refused by the old one.
    carol = SipClient(tls_switch.port, transport="tls", tls=_trusting(tls_switch.cert))
    assert "renewed.example" in str(cast(ssl.SSLSocket, carol.sock).getpeercert())
    carol.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        SipClient(tls_switch.port, transport="tls", tls=_trusting(old_cert))
    # A broken key at reload: one line, and the running certificate stays.
    good = tls_switch.key.read_bytes()
    tls_switch.key.write_text("not a key\n")
    control.send_signal(signal.SIGHUP)
    control.wait_log("TLS certificate not reloaded, the running one stays: [sip] tls_key")
    tls_switch.key.write_bytes(good)
    dave = SipClient(tls_switch.port, transport="tls", tls=_trusting(tls_switch.cert))
    assert dave.request("OPTIONS").status == 200
    dave.close()
    assert bob.request("OPTIONS").status == 200  # still the first connection
    bob.close()


def test_handshake_failures_are_counted_not_logged(tls_switch: TlsSwitch) -> None:
    control = tls_switch.control
    control.wait_log("tls on port")  # logged after the daemon starts serving: not ours
    before = len(control.log())
    # Plain SIP to the TLS port, a client that does not trust the certificate,
    # and one that connects and says nothing until it hangs up.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", tls_switch.port), timeout=5) as s:
            s.sendall(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n\r\n")
            s.recv(100)  # the alert, then EOF
    with pytest.raises(ssl.SSLCertVerificationError):
        SipClient(tls_switch.port, transport="tls", tls=ssl.create_default_context())
    socket.create_connection(("127.0.0.1", tls_switch.port), timeout=5).close()
    deadline = time.monotonic() + 5
    failures: dict[str, int] = {}
    while time.monotonic() < deadline:  # bounded: the daemon counts as they close
        status = control.admin("status")
        failures = {k: v for k, v in status.items() if k.startswith("drop_tls_handshake_")}
        if sum(failures.values()) >= 5:
            break
        time.sleep(0.05)
    assert failures.get("drop_tls_handshake_wrong_version_number", 0) == 3, failures
    assert failures.get("drop_tls_handshake_closed", 0) == 1, failures
    assert sum(failures.values()) == 5, failures
    new_lines = control.log()[before:]
    assert "ssl" not in new_lines.lower() and "tls" not in new_lines.lower(), new_lines
    # And the daemon still serves TLS.
    bob = tls_switch.phone()
    assert bob.register().status == 200
    bob.close()


def test_bad_certificate_path_at_start_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cert, _ = _certificate(tmp_path / "certs")
    for sip, named in (
        ({"tls_certificate": str(tmp_path / "missing.crt")}, "[sip] tls_certificate"),
        ({"tls_certificate": str(cert), "tls_key": str(tmp_path / "missing.key")}, "tls_key"),
    ):
        etc = write_control_config(tmp_path, free_sip_port(), [], sip=sip)
        r = _run(etc)
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert named in lines[0] and "No such file or directory" in lines[0], lines
        assert str(etc / "softswitch.conf") in lines[0]


def test_auto_certificate_beside_the_config_turns_tls_on(tmp_path: Path) -> None:
    """``tls_certificate = "auto"`` (the default) serves TLS with tls.crt/tls.key
    beside softswitch.conf, as the package and ``make run`` create them."""
    port = free_sip_port()
    etc = tmp_path / "etc"
    cert, _ = _certificate(etc)
    control, _ = start_switch(tmp_path, bearers=0, sip={"tls_port": port})
    try:
        phone = SipClient(port, "alice", "secret", transport="tls", tls=_trusting(cert))
        assert phone.register().status == 200
        phone.close()
    finally:
        assert control.stop() == 0, control.log()


def test_torture_corpus_and_mutants_over_a_real_tls_connection(tls_switch: TlsSwitch) -> None:
    """The daemon's side of the fuzz tests over TLS framing: every torture
    message and a few hundred mutants, each on its own TLS connection; it stays up, logs no
    traceback (the fixture checks), counts no internal error and serves."""
    rng = random.Random(SEED)
    context = _trusting(tls_switch.cert)
    messages = list(CORPUS) + [mutate(rng, rng.choice(CORPUS)) for _ in range(300)]
    for data in messages:  # one connection each: a closed stream loses nothing after it
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", tls_switch.port), timeout=5),
            server_hostname="127.0.0.1",
        ) as conn:
            conn.sendall(data)
    status = tls_switch.control.admin("status")
    assert status.get("internal_errors", 0) == 0
    assert status["rx_messages"] > len(CORPUS) // 2
    bob = tls_switch.phone()
    assert bob.register().status == 200
    bob.close()


def test_sips_invite_over_tls_reaches_the_calls_and_over_udp_gets_416(
    tls_switch: TlsSwitch,
) -> None:
    """An INVITE for sips:bob over TLS is served (challenged like any other
    call); the same over UDP is refused before any module sees it."""
    control = tls_switch.control
    alice = tls_switch.phone("alice", "secret")
    invite = alice.build(
        "INVITE", uri="sips:bob@127.0.0.1", to="<sips:bob@127.0.0.1>",
        headers=[f"Contact: <sips:alice@127.0.0.1:{alice.local[1]}>"],
    )  # fmt: skip
    alice.send(invite)
    assert alice.final().status == 407
    plain = SipClient(control.port, "alice", "secret")
    plain.send(plain.build("INVITE", uri="sips:bob@127.0.0.1", to="<sips:bob@127.0.0.1>"))
    r = plain.final()
    assert (r.status, r.reason) == (416, "SIPS Requires TLS")
    plain.close()
    alice.close()

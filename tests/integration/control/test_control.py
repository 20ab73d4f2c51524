"""softswitch-control as a process: registration, reload, restart, bad input.

Real daemons on 127.0.0.1 (control + two bearers), a SIP client built on the
project's own stack, softswitchctl as the operator would run it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

from bench.harness.bearer import start_bearer
from bench.harness.control import (
    CONTROL_EXE,
    DOMAIN,
    ControlProcess,
    add_users,
    free_sip_port,
    start_switch,
    write_control_config,
)
from bench.harness.sip import SipClient
from softswitch.sip.message import Request, make_response, parse


def registrations(control: ControlProcess) -> list[dict]:
    result = control.ctl("registrations", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_register_over_udp_wrong_then_right_password(switch: ControlProcess) -> None:
    wrong = SipClient(switch.port, "alice", "nope")
    r = wrong.register()
    assert r.status == 401 and r.get_all("WWW-Authenticate")
    phone = SipClient(switch.port, "alice", "secret")
    r = phone.register(expires=600)
    assert r.status == 200, r
    (contact,) = r.contacts
    assert contact.params["expires"] == "600"
    (row,) = registrations(switch)
    assert row["aor"] == f"alice@{DOMAIN}"
    assert row["source"] == f"udp:127.0.0.1:{phone.local[1]}"  # RFC 3581 source
    assert 590 <= row["expires"] <= 600
    text = switch.ctl("registrations").stdout
    assert "alice@127.0.0.1" in text and "AOR" in text
    wrong.close()
    phone.close()


def test_register_over_tcp_and_keepalive_pong(switch: ControlProcess) -> None:
    phone = SipClient(switch.port, "bob", "hunter2", transport="tcp")
    r = phone.register()
    assert r.status == 200, r
    (row,) = registrations(switch)
    assert row["source"] == f"tcp:127.0.0.1:{phone.local[1]}"
    phone.sock.sendall(b"\r\n\r\n")  # RFC 5626 §3.5.1 ping
    assert phone.sock.recv(16) == b"\r\n"
    # The same connection keeps serving.
    assert phone.request("OPTIONS").status == 200
    phone.close()


def test_options_answered_with_allow(switch: ControlProcess) -> None:
    client = SipClient(switch.port)
    r = client.request("OPTIONS")
    assert r.status == 200
    allow = r.get("Allow")
    assert allow is not None and "REGISTER" in allow and r.get("Accept") == "application/sdp"
    client.close()


def test_unknown_method_and_malformed_request_are_answered(switch: ControlProcess) -> None:
    client = SipClient(switch.port)
    assert client.request("SUBSCRIBE").status == 501
    bad = client.build("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: lots")
    client.send(bad)
    r = client.final()
    assert (r.status, r.reason) == (400, "Bad Max-Forwards header")
    client.close()


def test_bearers_are_up_and_status_answers(switch: ControlProcess) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # bounded: bearers answer the first heartbeat
        rows = switch.admin("bearers")
        if all(r["state"] == "up" for r in rows):
            break
        time.sleep(0.1)
    assert [r["state"] for r in rows] == ["up", "up"]
    assert all(r["capacity"] == 100 for r in rows)
    status = switch.admin("status")
    assert status["state"] == "serving" and status["users"] == 2
    assert status["bearers_up"] == "2/2" and status["database"] == "ok"
    assert "feature_aiortc" in status
    assert status["bearer_send_waiting"] == 0 and "bearer_send_deferred" in status
    assert switch.ctl("status").returncode == 0


def test_user_added_with_softswitchctl_registers_within_two_seconds(
    switch: ControlProcess,
) -> None:
    added = switch.ctl("user", "add", "carol", "--password", "pw123")
    assert added.returncode == 0, added.stderr
    start = time.monotonic()
    phone = SipClient(switch.port, "carol", "pw123")
    status = None
    while time.monotonic() - start < 2.0:  # bounded
        status = phone.register().status
        if status == 200:
            break
        phone.digest = type(phone.digest)("carol", password="pw123")
        time.sleep(0.1)
    assert status == 200, switch.log()
    phone.close()


def test_sighup_applies_max_expires_and_keeps_registrations(switch: ControlProcess) -> None:
    phone = SipClient(switch.port)
    assert phone.register(expires=3600).contacts[0].params["expires"] == "3600"
    conf = switch.etc / "softswitch.conf"
    conf.write_text(conf.read_text().replace("[sip]\n", "[sip]\nmax_expires = 120\n", 1))
    switch.send_signal(signal.SIGHUP)
    switch.wait_log("configuration reloaded: changed sip.max_expires")
    assert len(registrations(switch)) == 1  # nothing dropped
    assert phone.register(expires=3600).contacts[0].params["expires"] == "120"
    phone.close()


def test_reload_refuses_a_broken_file_and_keeps_running(switch: ControlProcess) -> None:
    conf = switch.etc / "softswitch.conf"
    good = conf.read_text()
    conf.write_text(good.replace("[sip]\n", '[sip]\nmax_expires = "never"\n', 1))
    switch.send_signal(signal.SIGHUP)
    switch.wait_log("reload refused, the running configuration stays")
    client = SipClient(switch.port)
    assert client.request("OPTIONS").status == 200
    conf.write_text(good.replace("[sip]\n", "[sip]\nmax_expires = 90\n", 1))
    r = switch.ctl("reload", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"applied": ["sip.max_expires"], "needs_restart": []}
    client.close()


def test_registrations_survive_a_restart(switch: ControlProcess) -> None:
    phone = SipClient(switch.port)
    assert phone.register(expires=900).status == 200
    assert switch.stop(signal.SIGTERM) == 0
    assert "stopped" in switch.log()
    switch.start()
    rows = registrations(switch)
    assert [r["aor"] for r in rows] == [f"alice@{DOMAIN}"]
    assert rows[0]["source"] == f"udp:127.0.0.1:{phone.local[1]}"
    assert 880 <= rows[0]["expires"] <= 900
    # The phone keeps working with a fresh challenge (new process, new nonce secret).
    assert phone.register(expires=900).status == 200
    phone.close()


def test_ten_thousand_garbage_datagrams_do_not_kill_it(switch: ControlProcess) -> None:
    rng = random.Random(4475)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", switch.port)
    templates = [b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"]
    for i in range(10_000):
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(1, 1400))
        else:
            base = bytearray(rng.choice(templates))
            for _ in range(rng.randrange(1, 8)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base)
        sock.sendto(data, target)
        if i % 1000 == 999:
            _wait_received(switch, i + 1)  # paced: a robustness test, not a flood test
    sock.close()
    client = SipClient(switch.port)
    assert client.request("OPTIONS").status == 200
    status = switch.admin("status")
    assert status["rx_messages"] >= 9_000  # UDP may lose a few on a busy host
    refused = sum(v for k, v in status.items() if k.startswith("drop_"))
    refused += status.get("malformed_answered", 0) + status.get("rx_keepalives", 0)
    assert refused >= status["rx_messages"] - 2  # every one accounted for (+ the OPTIONS)
    client.close()


def _wait_received(control: ControlProcess, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        if control.admin("status").get("rx_messages", 0) >= count * 0.95:
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------- start-up failures


def _run(etc: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SOFTSWITCH_CONFIG_DIR", None)
    return subprocess.run(
        [str(CONTROL_EXE), "--config-dir", str(etc), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_bad_config_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    etc = write_control_config(tmp_path, free_sip_port(), [], sip={"min_expires": "soon"})
    r = _run(etc)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0] == (
        f"softswitch-control: {etc / 'softswitch.conf'}:4: [sip] min_expires: "
        'expected an integer, got a string ("soon")'
    )
    # INI habits are TOML syntax errors, with line and column
    (etc / "softswitch.conf").write_text("[sip]\nlisten = 127.0.0.1\n")
    r = _run(etc)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (
        f"softswitch-control: {etc / 'softswitch.conf'}:2: "
        "Expected newline or end of document after a statement (column 15)\n"
    )


def test_missing_key_for_udp_bearers_is_one_line_and_exit_2(tmp_path: Path) -> None:
    etc = write_control_config(
        tmp_path,
        free_sip_port(),
        [],
        bearers={"endpoints": ["udp:127.0.0.1:7700"], "local": "udp:127.0.0.1:7799"},
    )
    r = _run(etc)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "control key" in r.stderr


def test_bad_arguments_print_usage_and_exit_2(tmp_path: Path) -> None:
    r = _run(tmp_path, "--bogus")
    assert r.returncode == 2 and "usage: softswitch-control" in r.stderr
    assert "Traceback" not in r.stderr


def test_sip_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    etc = write_control_config(tmp_path, busy.getsockname()[1], [])
    add_users(tmp_path, {})
    r = _run(etc)
    busy.close()
    assert r.returncode == 1, r.stderr
    assert "softswitch-control: SIP 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ IPv6, systemd, TCP reuse


def test_ipv6_listen_address_serves_udp_and_tcp(tmp_path: Path) -> None:
    control, bearers = start_switch(tmp_path, sip={"listen": ["127.0.0.1", "::1"]})
    try:
        for transport in ("udp", "tcp"):
            phone = SipClient(control.port, "alice", "secret", transport=transport, host="::1")
            r = phone.register(contact=f"<sip:alice@[::1]:{phone.local[1]};transport={transport}>")
            assert r.status == 200, r
            via = r.get("Via")
            assert via is not None
            assert "received=::1" in via or transport == "tcp"
            phone.close()
        sources = sorted(row["source"] for row in registrations(control))
        assert sources[0].startswith("tcp:[::1]:") and sources[1].startswith("udp:[::1]:")
    finally:
        assert control.stop() == 0, control.log()
        for b in bearers:
            b.stop()


def test_systemd_hears_ready_status_and_stopping(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(20)
    os.environ["NOTIFY_SOCKET"] = str(path)
    try:
        port = free_sip_port()
        control = ControlProcess(tmp_path, write_control_config(tmp_path, port, []), port)
        add_users(tmp_path, {"alice": "secret"})
        control.start(keep_notify=True)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    ready = notify.recv(4096).decode()
    assert "READY=1" in ready and "STATUS=0 registrations, 0 calls" in ready
    assert control.stop() == 0
    messages = []
    for _ in range(5):  # bounded: STATUS updates may come first
        messages.append(notify.recv(4096).decode())
        if "STOPPING=1" in messages[-1]:
            break
    assert any("STOPPING=1" in m for m in messages), messages
    notify.close()


def _offer(port: int) -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def _invite(alice: SipClient, branch: str, auth: str | None, method: str = "INVITE") -> bytes:
    """Alice's INVITE (or the ACK for its non-2xx, §17.1.1.3: same branch)."""
    body = _offer(40000) if method == "INVITE" else b""
    host, port = alice.local
    lines = [
        f"{method} sip:bob@{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};rport;branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:alice@{DOMAIN}>;tag=alicetag",
        f"To: <sip:bob@{DOMAIN}>",
        f"Call-ID: {alice.call_id}",
        f"CSeq: {alice.cseq} {method}",
        f"Contact: <sip:alice@{host}:{port}>",
        *(["Content-Type: application/sdp"] if body else []),
        *([f"Proxy-Authorization: {auth}"] if auth else []),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_invite_reaches_a_tcp_registered_phone_on_its_own_connection(
    switch: ControlProcess,
) -> None:
    bob = SipClient(switch.port, "bob", "hunter2", transport="tcp")
    assert bob.register().status == 200
    alice = SipClient(switch.port, "alice", "secret")
    alice.cseq = 1
    alice.send(_invite(alice, "z9hG4bKinv1", None))
    challenge = alice.final()
    assert challenge.status == 407
    alice.send(_invite(alice, "z9hG4bKinv1", None, "ACK"))
    alice.digest.challenged(challenge.get_all("Proxy-Authenticate"))
    alice.cseq = 2
    auth = alice.digest.authorization("INVITE", f"sip:bob@{DOMAIN}")
    alice.send(_invite(alice, "z9hG4bKinv2", auth))
    # Bob's phone gets the INVITE on the TCP connection it registered on.
    invite = parse(bob.receive())
    assert isinstance(invite, Request) and invite.method == "INVITE", invite
    assert invite.via.transport == "TCP"
    busy = make_response(invite, 486, to_tag="bobtag")
    bob.send(bytes(busy))
    assert alice.final().status == 486
    alice.close()
    bob.close()


def test_udp_bearers_with_hmac_one_key_right_one_wrong(tmp_path: Path) -> None:
    good = start_bearer(tmp_path / "b0", udp=True)
    bad = start_bearer(tmp_path / "b1", udp=True)  # its own random key
    control_port = free_sip_port()
    key_file = tmp_path / "control.key"
    key_file.write_bytes((good.config_dir / "control.key").read_bytes())
    key_file.chmod(0o600)
    etc = write_control_config(
        tmp_path,
        free_sip_port(),
        [],
        bearers={
            "endpoints": [f"udp:127.0.0.1:{good.control[1]}", f"udp:127.0.0.1:{bad.control[1]}"],
            "local": f"udp:127.0.0.1:{control_port}",
            "key_file": str(key_file),
            "heartbeat_interval": 0.2,
        },
    )
    add_users(tmp_path, {})
    control = ControlProcess(tmp_path, etc, 0)
    try:
        control.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: the first refusal comes at once
            rows = control.admin("bearers")
            if rows[0]["state"] == "up" and rows[1]["reason"] != "not heard from yet":
                break
            time.sleep(0.1)
        # The bad bearer answers our datagrams with a refusal under its own
        # key: a definite "wrong key", not "never answered".
        assert rows[0]["state"] == "up", rows
        assert rows[1]["state"] == "auth-failed", rows
        assert rows[1]["reason"] == "refuses our requests: wrong key?", rows
        text = control.ctl("bearers").stdout
        assert f"udp:127.0.0.1:{bad.control[1]}" in text and "wrong key?" in text
        control.wait_log(
            f"bearer udp:127.0.0.1:{bad.control[1]} refuses our requests: wrong key? (bad_hmac)"
        )
        assert "never answered" not in control.log()
        said = f"control datagram from udp:127.0.0.1:{control_port} failed HMAC: different key?"
        deadline = time.monotonic() + 5
        while said not in bad.log() and time.monotonic() < deadline:  # bounded
            time.sleep(0.05)
        assert said in bad.log(), bad.log()
    finally:
        assert control.stop() == 0, control.log()
        good.stop()
        bad.stop()

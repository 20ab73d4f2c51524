"""Brute-force defence on a real control daemon: a password guesser is banned
and then ignored, softswitchctl lists and lifts the ban, a phone that
mistypes is not banned (softswitch/guard.py).

The harness allow-lists loopback for every other test; here the allow-list
is empty. The guesser sends from 127.0.0.2, the phone from 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.control import ControlProcess, start_switch
from bench.harness.sip import SipClient

GUESSER = "127.0.0.2"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[ControlProcess]:
    control, _ = start_switch(tmp_path, bearers=0, security={"allow": []})
    yield control
    code = control.stop(signal.SIGTERM)
    assert code == 0, control.log()
    assert "Traceback" not in control.log(), control.log()


def client(port: int, password: str, source: str = "127.0.0.1") -> SipClient:
    c = SipClient(port, "alice", password, timeout=1.0)
    if source != "127.0.0.1":
        c.sock.close()
        c.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sock.settimeout(1.0)
        c.sock.bind((source, 0))
        c.local = c.sock.getsockname()[:2]
    return c


def attempt(port: int, password: str, source: str = "127.0.0.1") -> int | None:
    """One login as a phone makes it: REGISTER, challenge, REGISTER with
    credentials. The final status, or None when nothing answers."""
    c = client(port, password, source)
    try:
        r = c.request("REGISTER", headers=[f"Contact: {c.contact()}"])
        if r.status != 401:
            return r.status
        c.digest.challenged(r.get_all("WWW-Authenticate"))
        auth = c.digest.authorization("REGISTER", f"sip:{c.server[0]}")
        return c.request(
            "REGISTER", headers=[f"Contact: {c.contact()}", f"Authorization: {auth}"]
        ).status
    except TimeoutError:
        return None
    finally:
        c.close()


def bans(control: ControlProcess) -> list[dict]:
    out = control.ctl("bans", "--json")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_a_phone_that_mistypes_three_times_is_not_banned(guarded: ControlProcess) -> None:
    assert [attempt(guarded.port, "typo") for _ in range(3)] == [401, 401, 401]
    assert attempt(guarded.port, "secret") == 200
    assert bans(guarded) == []
    assert guarded.ctl("bans").stdout.strip() == "(no bans)"


def test_guesser_banned_after_five_then_ignored_listed_and_lifted(
    guarded: ControlProcess,
) -> None:
    port = guarded.port
    assert [attempt(port, f"guess{i}", GUESSER) for i in range(5)] == [401] * 5
    guarded.wait_log(f"banned {GUESSER} for 900 s: 5 authentication failures within 60 s")
    # Now silence, even for the right password, and for TCP too ...
    assert attempt(port, "secret", GUESSER) is None
    with socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(GUESSER, 0)) as s:
        s.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        try:
            assert s.recv(100) == b""  # closed on accept, nothing answered
        except ConnectionResetError:
            pass  # closed before our bytes arrived: the kernel answers them with RST
    # ... while everyone else is served.
    assert attempt(port, "secret") == 200

    (row,) = bans(guarded)
    assert row["address"] == GUESSER and row["failures"] == 5 and row["reason"] == "auth-failures"
    table = guarded.ctl("bans").stdout
    assert "ADDRESS" in table and "UNTIL" in table and GUESSER in table
    status = guarded.admin("status")
    assert status["bans"] == 1 and status["guard_dropped_banned"] >= 1
    assert status["drop_tcp_banned"] == 1
    assert status["nftables"] == "off"  # a test never touches the host's ruleset

    bad = guarded.ctl("bans", "del", "not-an-address")
    assert bad.returncode == 2 and "not an IP address" in bad.stderr
    assert "Traceback" not in bad.stderr
    other = guarded.ctl("bans", "del", "192.0.2.1")
    assert other.returncode == 1 and "192.0.2.1 is not banned" in other.stderr

    lifted = guarded.ctl("bans", "del", GUESSER)
    assert lifted.returncode == 0, lifted.stderr
    assert bans(guarded) == []
    assert attempt(port, "secret", GUESSER) == 200
    guarded.wait_log(f"unbanned {GUESSER} (by operator)")


def test_reload_allow_lists_a_banned_address(guarded: ControlProcess) -> None:
    assert [attempt(guarded.port, f"guess{i}", GUESSER) for i in range(6)] == [401] * 5 + [None]
    conf = guarded.etc / "softswitch.conf"
    conf.write_text(conf.read_text().replace("allow = []", f'allow = ["{GUESSER}/32"]'))
    guarded.send_signal(signal.SIGHUP)
    guarded.wait_log("configuration reloaded: changed security.allow")
    guarded.wait_log(f"unbanned {GUESSER} (allow-listed)")
    assert bans(guarded) == []
    assert [attempt(guarded.port, "wrong", GUESSER) for _ in range(6)] == [401] * 6  # exempt

"""`make run` supervises as systemd does (issue 10 step 7).

Under systemd a bearer killed mid-call is restarted and control moves the call
(softswitch/calls/failover.py); a killed control is restarted and finds its
registrations again.  The launcher used to stop everything at the first death
instead ("exited with -9", "stopping") and the call dropped.  Here the
launcher runs as `make run` runs it, in a temporary directory: a bearer
carrying a call gets SIGKILL, then control does; each comes back, the call is
re-INVITEd and talks again, the registration survives, and Ctrl-C (SIGINT)
leaves no daemon behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.harness.control import ROOT, add_users, free_sip_port
from bench.harness.sip import Call, SipClient, answer_reinvite, media_port, next_request
from softswitch.cli.devrun import write_dev_config
from softswitch.daemon.admin import AdminClient, AdminError
from softswitch.daemonkit.runtime import die_with_parent

_STARTED = re.compile(r"softswitch: (control|bearer \d) (?:started|restarted) \(pid (\d+)\)")


def _until(what: str, check: Callable[[], Any], log: Path, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout:g} s:\n{log.read_text()}")


def _pids(log: Path) -> dict[str, int]:
    """Each daemon's current pid, as the launcher's last start line for it says."""
    return {name: int(pid) for name, pid in _STARTED.findall(log.read_text())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_bearer_and_control_come_back_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    var = tmp_path / "var"
    port = free_sip_port()
    write_dev_config(var, sip_port=port, metrics_listen="")  # make run keeps it
    add_users(var, {"alice": "secret", "bob": "hunter2"})
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("SOFTSWITCH_CONFIG_DIR", None)
    log = tmp_path / "devrun.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "softswitch.cli.devrun", "--var", str(var)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=die_with_parent(os.getpid()),
        )
    admin = AdminClient(var / "run" / "admin.sock", timeout=5)

    def status() -> dict[str, Any] | None:
        try:
            s: dict[str, Any] = admin.call("status")
        except AdminError:
            return None  # control not (yet) running
        return s if s["state"] == "serving" and s["bearers_up"] == "2/2" else None

    seen: set[int] = set()
    call = None
    try:
        _until("switch serving with 2 bearers up", status, log, timeout=30)
        pids = _pids(log)
        seen |= set(pids.values())
        assert set(pids) == {"control", "bearer 0", "bearer 1"}, log.read_text()

        # A call up between Alice and Bob, media through one bearer.
        call = Call(SimpleNamespace(port=port))  # type: ignore[arg-type]
        call.establish()
        assert min(call.talk()) >= 4
        (row,) = admin.call("calls")
        endpoint = {b["id"]: b["endpoint"] for b in admin.call("bearers")}[row["bearer"]]
        x = int(re.findall(r"bearer-(\d+)\.sock", endpoint)[0])

        # That bearer dies: restarted; the call is re-INVITEd and talks again.
        os.kill(pids[f"bearer {x}"], signal.SIGKILL)
        for phone in (call.alice, call.bob):
            phone.sock.settimeout(15)  # three missed heartbeats, or the new epoch
        ri_a = next_request(call.alice, "INVITE")
        ri_b = next_request(call.bob, "INVITE")
        call.alice.send(answer_reinvite(ri_a, call.a_rtp.addr[1], call.alice.local[1]))
        call.bob.send(answer_reinvite(ri_b, call.b_rtp.addr[1], call.bob.local[1]))
        assert next_request(call.alice, "ACK").cseq == ri_a.cseq
        assert next_request(call.bob, "ACK").cseq == ri_b.cseq
        call.bearer_port_for_alice, call.bearer_port_for_bob = (
            media_port(ri_a.body),
            media_port(ri_b.body),
        )
        assert min(call.talk()) >= 4
        text = log.read_text()
        assert (
            f"softswitch: bearer {x} (pid {pids[f'bearer {x}']}) was killed by SIGKILL" in text
        ), text
        assert "restarting it in 0.1 s" in text, text
        new = _until("bearer restarted", lambda: _pids(log)[f"bearer {x}"] not in seen, log)
        assert new
        restarted = _pids(log)[f"bearer {x}"]
        seen.add(restarted)
        assert _alive(restarted)
        _until("both bearers up again", status, log)
        assert "softswitch: stopping" not in log.read_text()  # the others ran on

        # Control dies: restarted, Bob's registration kept, REGISTER answered.
        registered = admin.call("status")["registrations"]
        assert registered >= 1
        os.kill(pids["control"], signal.SIGKILL)
        _until(
            "control restarted", lambda: _pids(log)["control"] != pids["control"], log, timeout=10
        )
        seen.add(_pids(log)["control"])
        after = _until("control serving again", status, log, timeout=30)
        assert after["registrations"] == registered, after
        assert f"softswitch: control (pid {pids['control']}) was killed by SIGKILL" in (
            log.read_text()
        )
        phone = SipClient(port, "alice", "secret")
        assert phone.register().status == 200
        phone.close()
    finally:
        if call is not None:
            call.close()
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert "stopping: control first, then the bearers" in text, text
    assert text.count("stopped") >= 3, text
    assert not [pid for pid in seen if _alive(pid)], text

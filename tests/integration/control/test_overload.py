"""Entry control against a real control daemon: requests that waited in the
kernel's queue too long are refused cheaply, work in progress is served.

The daemon is frozen with SIGSTOP while requests queue in its UDP socket,
so their kernel arrival stamps are older than the thresholds when it reads
them after SIGCONT: the real SO_TIMESTAMPNS path, no fake clock.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from bench.harness.control import ControlProcess, start_switch
from softswitch.sip.message import Response, parse

HOST = "127.0.0.1"


def options(n: int, *, to_tag: str = "") -> bytes:
    lines = [
        f"OPTIONS sip:{HOST} SIP/2.0",
        f"Via: SIP/2.0/UDP {HOST}:9;branch=z9hG4bKovl{n}{to_tag}",
        "Max-Forwards: 70",
        f"From: <sip:probe@{HOST}>;tag=p{n}",
        f"To: <sip:{HOST}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: overload-{n}-{to_tag}@{HOST}",
        f"CSeq: {n} OPTIONS",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def queue_while_frozen(
    control: ControlProcess, sock: socket.socket, datagrams: list[bytes]
) -> None:
    """Send ``datagrams`` to a frozen daemon and let them age 0.5 s."""
    assert control.proc is not None
    control.proc.send_signal(signal.SIGSTOP)
    try:
        for data in datagrams:
            sock.sendto(data, (HOST, control.port))
        time.sleep(0.5)  # the age under test, not a synchronisation
    finally:
        control.proc.send_signal(signal.SIGCONT)


def collect(sock: socket.socket, seconds: float) -> list[Response]:
    got: list[Response] = []
    sock.settimeout(seconds)
    try:
        for _ in range(100):  # bounded
            msg = parse(sock.recv(65535))
            assert isinstance(msg, Response)
            got.append(msg)
    except TimeoutError:
        pass
    return got


def status(control: ControlProcess) -> dict:
    return control.admin("status")


def test_late_new_work_is_dropped_and_in_dialog_work_served(tmp_path: Path) -> None:
    control, _ = start_switch(tmp_path, bearers=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(options(0), (HOST, control.port))
        assert [r.status for r in collect(sock, 2.0)] == [200]  # fresh: served
        queue_while_frozen(
            control, sock, [options(n) for n in range(1, 6)] + [options(9, to_tag="x")]
        )
        answers = collect(sock, 1.0)
        # The in-dialog request is served (481: no such dialog); the five new
        # ones waited past drop_delay (0.3 s) and got nothing.
        assert [r.status for r in answers] == [481]
        assert status(control).get("drop_overload_dropped") == 5
        sock.sendto(options(20), (HOST, control.port))
        assert [r.status for r in collect(sock, 2.0)] == [200]  # caught up: served again
    finally:
        sock.close()
        assert control.stop() == 0, control.log()
        assert "Traceback" not in control.log()


def test_moderately_late_new_work_gets_503_retry_after(tmp_path: Path) -> None:
    control, _ = start_switch(tmp_path, bearers=0, overload={"shed_delay": 0.1, "drop_delay": 5.0})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        queue_while_frozen(control, sock, [options(n) for n in range(1, 4)])
        answers = collect(sock, 1.0)
        assert [r.status for r in answers] == [503, 503, 503]
        assert all(5 <= int(r.get("Retry-After") or 0) <= 10 for r in answers)
        assert status(control).get("overload_shed") == 3
    finally:
        sock.close()
        assert control.stop() == 0, control.log()

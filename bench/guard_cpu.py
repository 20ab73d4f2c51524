"""Control's CPU per datagram it drops for a banned or rate-limited source.

    python -m bench.guard_cpu [N]

Each scenario starts its own control daemon on loopback (no bearers, an
empty allow-list), sends N REGISTER datagrams from one address in a bounded
loop, and divides the daemon's CPU time (utime + stime from /proc) by the
datagrams it saw (the guard's and the switch's counters: what the kernel
dropped from a full socket buffer costs the daemon nothing and is not
counted):

* floor: CRLF keep-alives from an allow-listed address (read, counted,
  returned: the cost of getting a datagram into Python at all);
* banned: from 127.0.0.2 after 5 wrong passwords;
* limited: from 127.0.0.3 at full speed (the first 400 and then 100/s get
  through and are answered: a small part of the total);
* parsed: N/5 REGISTERs with no rate limit, each parsed and answered 401.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness.control import ControlProcess, start_switch
from bench.harness.sip import SipClient

HZ = os.sysconf("SC_CLK_TCK")
COUNTERS = ("guard_dropped_banned", "guard_dropped_rate_limited", "rx_messages")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def register(src: str) -> bytes:
    return (
        f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {src}:5999;rport;branch=z9hG4bKf1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=f1\r\nTo: <sip:alice@127.0.0.1>\r\n"
        "Call-ID: flood-1@x\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.0.0.5:5062>\r\n"
        "Expires: 3600\r\nUser-Agent: flood\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def flood(src: str, port: int, data: bytes, n: int) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src, 0))
    start = time.monotonic()
    for i in range(n):  # bounded
        sock.sendto(data, ("127.0.0.1", port))
        if i % 200 == 199:
            time.sleep(0.0005)  # paced so the daemon's socket buffer mostly keeps up
    sock.close()
    return time.monotonic() - start


def ban_from(src: str) -> Callable[[ControlProcess], None]:
    def ban(control: ControlProcess) -> None:
        for i in range(5):
            c = SipClient(control.port, "alice", f"guess{i}", timeout=1.0)
            c.sock.close()
            c.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.sock.settimeout(1.0)
            c.sock.bind((src, 0))
            c.local = c.sock.getsockname()[:2]
            r = c.request("REGISTER", headers=[f"Contact: {c.contact()}"])
            c.digest.challenged(r.get_all("WWW-Authenticate"))
            auth = c.digest.authorization("REGISTER", "sip:127.0.0.1")
            c.request("REGISTER", headers=[f"Contact: {c.contact()}", f"Authorization: {auth}"])
            c.close()
        assert control.admin("bans"), "not banned"

    return ban


def scenario(
    tmp: Path,
    name: str,
    security: dict[str, Any],
    src: str,
    data: bytes,
    n: int,
    prepare: Callable[[ControlProcess], None] | None = None,
) -> None:
    where = tmp / name
    where.mkdir()
    control, _ = start_switch(where, bearers=0, security=security)
    try:
        assert control.proc is not None
        if prepare is not None:
            prepare(control)
        time.sleep(0.5)
        before, cpu0 = control.admin("status"), cpu_seconds(control.proc.pid)
        took = flood(src, control.port, data, n)
        time.sleep(1.0)  # the daemon drains its socket
        cpu, after = cpu_seconds(control.proc.pid) - cpu0, control.admin("status")
    finally:
        control.stop()
    seen = {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}
    total = sum(seen.values())
    print(
        f"{name:9} sent {n} in {took:.2f} s; daemon saw {total} {seen}; "
        f"CPU {cpu:.2f} s = {1e6 * cpu / max(total, 1):.2f} us per datagram"
    )


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 100_000
    tmp = Path(tempfile.mkdtemp(prefix="guard-cpu-"))
    try:
        scenario(tmp, "floor", {"allow": ["127.0.0.4"]}, "127.0.0.4", b"\r\n\r\n", n)
        banned = ban_from("127.0.0.2")
        scenario(tmp, "banned", {"allow": []}, "127.0.0.2", register("127.0.0.2"), n, banned)
        scenario(tmp, "limited", {"allow": []}, "127.0.0.3", register("127.0.0.3"), n)
        parsed = {"allow": [], "rate_limit": 0}
        scenario(tmp, "parsed", parsed, "127.0.0.3", register("127.0.0.3"), n // 5)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

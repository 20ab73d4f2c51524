"""A bounded flood of bad-credential INVITEs and REGISTERs from one address.

Usage: python -m bench.flood HOST:PORT --source ADDR [--rate 5000] [--seconds 20]

What an attacker's tool sends at a switch on a public address: requests
with credentials that cannot be right (a made-up nonce and response), each
a new transaction (fresh branch, Call-ID and From tag), so no
retransmission absorption saves the switch any work.  Half are INVITEs
(``Proxy-Authorization``), half REGISTERs (``Authorization``), each for one
of a few user names.  Paced in 1 ms slots, from ``--source`` (a loopback
address of its own, so the switch sees one source), for at most
``--seconds``; answers are read and counted, never acted on.  Prints one
JSON line: what was sent, what came back.

Loopback only: the target must be a 127.0.0.0/8 or ::1 address.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import time

USERS = ("admin", "100", "alice", "1000", "test")


def request(n: int, target: str, domain: str, source: str, sport: int) -> bytes:
    method = "INVITE" if n % 2 == 0 else "REGISTER"
    user = USERS[n % len(USERS)]
    branch = f"z9hG4bKfl{os.getpid():x}{n:x}"
    uri = f"sip:{user}@{domain}" if method == "INVITE" else f"sip:{domain}"
    header = "Proxy-Authorization" if method == "INVITE" else "Authorization"
    nonce = f"{n:043x}"[-43:]
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {source}:{sport};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{domain}>;tag=f{n:x}",
        f"To: <sip:{user}@{domain}>",
        f"Call-ID: flood-{os.getpid():x}-{n:x}@{source}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:{user}@{source}:{sport}>",
        f'{header}: Digest username="{user}", realm="{domain}", nonce="{nonce}", '
        f'uri="{uri}", response="{n:032x}"',
        "User-Agent: bench-flood",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def flood(
    target: tuple[str, int], source: str, domain: str, rate: int, seconds: float
) -> dict[str, object]:
    """Send ``rate`` requests/s for ``seconds``; what was sent and answered."""
    if not ipaddress.ip_address(target[0]).is_loopback:
        raise SystemExit(f"bench.flood: {target[0]} is not a loopback address")
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    sport = sock.getsockname()[1]
    sent = send_errors = answered = 0
    statuses: dict[str, int] = {}
    t0 = time.monotonic()
    end = t0 + seconds
    n = 0
    while True:  # bounded: stops at `end`
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate)
        while n < due:
            try:
                sock.sendto(request(n, target[0], domain, source, sport), target)
                sent += 1
            except OSError:
                send_errors += 1
            n += 1
        for _ in range(1000):  # drain answers, bounded
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            answered += 1
            code = data[8:11].decode(errors="replace")
            statuses[code] = statuses.get(code, 0) + 1
        time.sleep(0.001)
    sock.close()
    took = time.monotonic() - t0
    return {
        "source": source,
        "sent": sent,
        "send_errors": send_errors,
        "seconds": round(took, 2),
        "rate_achieved": round(sent / took, 1) if took else 0,
        "answered": answered,
        "answers_by_status": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.splitlines()[0])
    p.add_argument("target", help="HOST:PORT of the switch (loopback)")
    p.add_argument("--source", default="127.0.0.66", help="loopback address to send from")
    p.add_argument("--domain", default="127.0.0.1")
    p.add_argument("--rate", type=int, default=5000, help="requests per second")
    p.add_argument("--seconds", type=float, default=20.0, help="how long (bounded)")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not port.isdigit():
        p.error(f"not HOST:PORT: {args.target}")
    result = flood((host.strip("[]"), int(port)), args.source, args.domain, args.rate, args.seconds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

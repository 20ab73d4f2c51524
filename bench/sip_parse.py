"""SIP message layer throughput: parse, parse + serialise, and what a B2BUA reads.

Run as ``python -m bench.sip_parse`` (or through ``python -m bench``).  Each
figure is the best of several timed rounds, in messages per second of *CPU*
time on one core (``time.process_time``: other processes on a shared machine
do not count against it), with the wall-clock rate beside it.  The results go
to ``bench/results/sip_parse.json``.

Budget (DESIGN.md, control daemon): at least 20,000 INVITEs parsed per second
on one core, so that parsing stays a small part of the 300-1,000 call
attempts per second the control daemon must sustain (each attempt parses
about ten messages).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from softswitch.sip.message import Message, Request, make_response, parse

BUDGET_INVITES_PER_S = 20_000
RESULTS = Path(__file__).resolve().parent / "results" / "sip_parse.json"

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 9 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

# A typical desk-phone INVITE: one Via, the usual headers, ~250 bytes of SDP.
INVITE = (
    b"INVITE sip:2001@pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1786385212;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:2001@pbx.example.com>\r\n"
    b'From: "Alice Liddell" <sip:1001@pbx.example.com>;tag=2946135532\r\n'
    b"Call-ID: 3461234771-5060-1@192.0.2.10\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:1001@192.0.2.10:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, SUBSCRIBE, UPDATE\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(SDP)
) + SDP

# The 200 OK a phone sends back (two Vias: the switch's and the caller's).
OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-b2b-4f1a9c;rport=5060\r\n"
    b"From: <sip:1001@pbx.example.com>;tag=as61b7e2a1\r\n"
    b"To: <sip:2001@192.0.2.20:5060>;tag=1337468402\r\n"
    b"Call-ID: 5b2f0ae24a7c1d3e@192.0.2.1\r\n"
    b"CSeq: 102 INVITE\r\n"
    b"Contact: <sip:2001@192.0.2.20:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, SUBSCRIBE, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(SDP)
) + SDP


def _read(m: Message) -> None:
    """Read what the B2BUA reads on every message."""
    _ = (m.via.branch, m.from_.tag, m.to.tag, m.call_id, m.cseq, m.cseq_method)


def _touch(data: bytes) -> None:
    """Parse, then read what the B2BUA reads."""
    _read(parse(data))


def _rate(fn: Callable[[], object], rounds: int, seconds: float) -> tuple[float, float]:
    """Best (CPU, wall) calls per second over ``rounds`` rounds of about ``seconds``."""
    n = 1
    while True:  # calibrate: grow n until one batch takes a tenth of a round
        t = time.process_time()
        for _ in range(n):
            fn()
        if time.process_time() - t > seconds / 10 or n >= 1 << 20:
            break
        n *= 2
    batches = 10
    best_cpu = best_wall = 0.0
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(batches * n):
            fn()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        best_cpu = max(best_cpu, batches * n / max(cpu, 1e-9))
        best_wall = max(best_wall, batches * n / max(wall, 1e-9))
    return best_cpu, best_wall


def measure(rounds: int = 3, seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """Every figure, in operations per second (CPU and wall) and µs per operation (CPU).

    ``*_touch_only`` reads the B2BUA's headers from an already parsed
    message: parse() validates and caches them eagerly, so this is the full
    cost of reading them, first time or not.
    """
    invite = parse(INVITE)
    assert isinstance(invite, Request)
    ok200 = parse(OK_200)
    cases: dict[str, Callable[[], object]] = {
        "invite_parse": lambda: parse(INVITE),
        "invite_parse_serialise": lambda: bytes(parse(INVITE)),
        "invite_parse_touch": lambda: _touch(INVITE),
        "invite_touch_only": lambda: _read(invite),
        "invite_make_100_trying": lambda: bytes(make_response(invite, 100)),
        "ok200_parse": lambda: parse(OK_200),
        "ok200_parse_serialise": lambda: bytes(parse(OK_200)),
        "ok200_parse_touch": lambda: _touch(OK_200),
        "ok200_touch_only": lambda: _read(ok200),
    }
    out: dict[str, dict[str, float]] = {}
    for name, fn in cases.items():
        cpu, wall = _rate(fn, rounds, seconds)
        out[name] = {
            "per_s_cpu": round(cpu),
            "per_s_wall": round(wall),
            "us_cpu": round(1e6 / cpu, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table, write bench/results/sip_parse.json."""
    ap = argparse.ArgumentParser(prog="python -m bench.sip_parse", description=__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per figure (best kept)")
    ap.add_argument("--seconds", type=float, default=1.0, help="approximate length of a round")
    args = ap.parse_args(argv)

    results = measure(args.rounds, args.seconds)
    impl = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"SIP message layer, one core ({impl})")
    print(f"  INVITE {len(INVITE)} bytes, 200 OK {len(OK_200)} bytes")
    for name, r in results.items():
        print(
            f"  {name:26} {r['per_s_cpu']:>10,.0f}/s cpu {r['per_s_wall']:>10,.0f}/s wall"
            f" {r['us_cpu']:>8.2f} µs"
        )
    ok = results["invite_parse"]["per_s_cpu"] >= BUDGET_INVITES_PER_S
    print(f"  budget: >= {BUDGET_INVITES_PER_S:,} INVITEs parsed/s: {'met' if ok else 'MISSED'}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "sip_parse",
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "invite_bytes": len(INVITE),
                "ok200_bytes": len(OK_200),
                "budget": {"invite_parse_per_s_cpu": BUDGET_INVITES_PER_S},
                "budget_met": ok,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

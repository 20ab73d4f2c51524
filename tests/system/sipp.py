"""SIPp for the system tests: their scenarios (``tests/system/sipp/``) and defaults.

The runner is ``bench.harness.sipp.Sipp`` (shared with the benchmarks);
``uac()`` and ``uas()`` give it what these tests always want: a call count
(one), a rate and a hold time, a 10 s receive timeout, at most three
retransmissions, and every log (messages, screen, ``<log>`` actions) for the
assertion messages.

RTP: scenarios stream a raw G.711 file with ``<exec rtp_stream=...>``
(SIPp 3.6 "RTPSTREAM" build) — ``write_tone_file`` makes one from a tone —
or echo with ``-rtp_echo``.  ``rport_responder`` stands in for a switch
where SIPp cannot (the NAT equipment tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness.sipp import Sipp, SippError, SippResult, wait_listening
from tests.audio import alaw_encode, tone, ulaw_encode

__all__ = [
    "Sipp",
    "SippError",
    "SippResult",
    "rport_responder",
    "uac",
    "uas",
    "wait_listening",
    "write_tone_file",
]

SCENARIOS = Path(__file__).resolve().parent / "sipp"

#: What every system test's SIPp gets unless it says otherwise.
DEFAULTS: dict[str, Any] = {
    "scenarios": SCENARIOS,
    "calls": 1,
    "rate": 10.0,
    "duration_ms": 1000,
    "recv_timeout_ms": 10000,
    "max_retrans": 3,
}


def write_tone_file(path: str | Path, freq: float, codec: str = "PCMU", seconds=2.0) -> Path:
    """A raw G.711 file of a tone for ``rtp_stream`` (160 bytes per 20 ms)."""
    samples = tone(freq, seconds)
    enc = {"PCMU": ulaw_encode, "PCMA": alaw_encode}[codec.upper()]
    path = Path(path)
    path.write_bytes(enc(samples))
    return path


RPORT_RESPONDER = r"""
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
s.settimeout(float(sys.argv[4]))
for _ in range(count):
    data, src = s.recvfrom(65535)
    head = data.decode(errors="replace").split("\r\n\r\n", 1)[0].split("\r\n")
    out = ["SIP/2.0 200 OK"]
    top_via = True
    for line in head[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "v") and top_via:
            top_via = False
            line = line.replace(";rport", ";rport=%d" % src[1], 1) + ";received=" + src[0]
        if name in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"):
            out.append(line + (";tag=rr1" if name in ("to", "t") and "tag=" not in line else ""))
    out += ["X-Seen-From: %s:%d" % src, "Content-Length: 0", "", ""]
    s.sendto("\r\n".join(out).encode(), src)
    print("%s:%d" % src, flush=True)
"""


def rport_responder(
    host: str, port: int, netns: str | None = None, count: int = 1, timeout: float = 10.0
) -> subprocess.Popen:
    """A minimal UDP SIP server that answers ``count`` requests with 200 OK.

    It does what RFC 3581 asks of a server (``received``/``rport`` on the top
    Via, answer to the packet's source) and adds ``X-Seen-From``; it prints
    each source on stdout.  SIPp's own UAS cannot tell the source address,
    so this stands in for the switch when proving the NAT equipment.
    """
    argv = [sys.executable, "-c", RPORT_RESPONDER, host, str(port), str(count), str(timeout)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def uas(scenario: str = "uas_answer.xml", **kw: Any) -> Sipp:
    """A SIPp UAS (not started); see ``Sipp`` for the options."""
    return Sipp(scenario, None, **{**DEFAULTS, **kw})


def uac(remote: str, scenario: str = "uac_call.xml", **kw: Any) -> Sipp:
    """A SIPp UAC towards ``remote`` ("host:port"); not started."""
    return Sipp(scenario, remote, **{**DEFAULTS, **kw})

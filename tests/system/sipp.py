"""SIPp (Debian package ``sip-tester``) as a bounded test tool.

``Sipp`` runs one SIPp process with a scenario from ``tests/system/sipp/``,
a call count (``-m``), a global timeout and a per-message receive timeout,
so it always ends; its result carries the exit code, the final counters
from the statistics CSV, and the error and message logs for assertion
messages.  ``uac()`` and ``uas()`` fill in the usual options.

SIPp's exit codes: 0 every call succeeded, 1 at least one failed, 97 an
internal command stopped it, 99 no call was processed, 255 (-1) fatal
error, 254 (-2) could not bind.

RTP: scenarios stream a raw G.711 file with ``<exec rtp_stream=...>``
(SIPp 3.6 "RTPSTREAM" build) — ``write_tone_file`` makes one from a tone —
or echo with ``-rtp_echo``.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.audio import alaw_encode, tone, ulaw_encode

SCENARIOS = Path(__file__).resolve().parent / "sipp"
EXIT_CODES = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}


class SippError(AssertionError):
    """SIPp did not do what the test needed; the message has its logs."""


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise SippError("sipp not found: apt-get install sip-tester")
    return path


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free right now on ``host`` (the usual small race applies)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_udp_pair(host: str = "127.0.0.1", tries: int = 50) -> int:
    """An even port P with P and P+1 both free (RTP and RTCP)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(tries):
        base = free_udp_port(host) & ~1
        socks = []
        try:
            for p in (base, base + 1):
                s = socket.socket(fam, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SippError(f"no free even UDP port pair on {host} after {tries} tries")


def write_tone_file(path: str | Path, freq: float, codec: str = "PCMU", seconds=2.0) -> Path:
    """A raw G.711 file of a tone for ``rtp_stream`` (160 bytes per 20 ms)."""
    samples = tone(freq, seconds)
    enc = {"PCMU": ulaw_encode, "PCMA": alaw_encode}[codec.upper()]
    path = Path(path)
    path.write_bytes(enc(samples))
    return path


@dataclass
class SippResult:
    """How a SIPp run ended, with everything needed to explain a failure."""

    name: str
    returncode: int
    stats: dict[str, str]
    argv: list[str]
    workdir: Path
    errors: str = ""
    screen: str = ""
    logs: str = ""
    messages_path: Path | None = None
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def count(self, column: str) -> int:
        """A cumulative counter from the stats CSV, e.g. 'SuccessfulCall'."""
        value = self.stats.get(f"{column}(C)", self.stats.get(column, "0"))
        try:
            return int(float(value or 0))
        except ValueError:
            return 0

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall")

    @property
    def failed(self) -> int:
        return self.count("FailedCall")

    @property
    def messages(self) -> str:
        if self.messages_path and self.messages_path.exists():
            return self.messages_path.read_text(errors="replace")
        return ""

    def explain(self) -> str:
        code = EXIT_CODES.get(self.returncode, "?")
        return (
            f"sipp {self.name}: exit {self.returncode} ({code})"
            + (" after the test's timeout" if self.timed_out else "")
            + f", {self.successful} successful / {self.failed} failed calls\n"
            f"command: {' '.join(self.argv)}\n"
            f"--- errors ---\n{self.errors[-3000:]}\n--- screen ---\n{self.screen[-3000:]}"
        )

    def check(self, calls: int | None = None) -> SippResult:
        """Raise unless SIPp exited 0 (and completed ``calls`` calls, if given)."""
        if self.returncode != 0 or (calls is not None and self.successful != calls):
            raise SippError(self.explain())
        return self


class Sipp:
    """One SIPp process: start, wait (bounded), collect the result."""

    def __init__(
        self,
        scenario: str | Path,
        remote: str | None = None,
        *,
        name: str | None = None,
        local_ip: str = "127.0.0.1",
        local_port: int | None = None,
        media_ip: str | None = None,
        media_port: int | None = None,
        calls: int = 1,
        rate: float = 10.0,
        limit: int | None = None,
        duration_ms: int = 1000,
        timeout: float = 30.0,
        recv_timeout_ms: int = 10000,
        keys: dict[str, Any] | None = None,
        service: str | None = None,
        auth: tuple[str, str] | None = None,
        rtp_echo: bool = False,
        netns: str | None = None,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.scenario = Path(scenario)
        if not self.scenario.is_absolute():
            self.scenario = SCENARIOS / self.scenario
        if not self.scenario.exists():
            raise SippError(f"no scenario {self.scenario}")
        self.name = name or self.scenario.stem
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"sipp-{self.name}-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.local_ip = local_ip
        # Ports are chosen here, in the test's namespace; in another namespace
        # they are free anyway, as nothing else runs there.
        self.local_port = local_port or free_udp_port(local_ip if netns is None else "0.0.0.0")
        self.media_port = media_port or free_udp_pair(local_ip if netns is None else "0.0.0.0")
        self.timeout = timeout
        w = self.workdir
        self.stat_path = w / f"{self.name}_stats.csv"
        self.messages_path = w / f"{self.name}_messages.log"
        self.errors_path = w / f"{self.name}_errors.log"
        self.screen_path = w / f"{self.name}_screen.log"
        self.logs_path = w / f"{self.name}_logs.log"
        self.stdout_path = w / f"{self.name}_stdout.log"
        argv = [sipp_binary()]
        if remote:
            argv.append(remote)
        # -key must come before -sf: SIPp expands keys while loading the scenario.
        for k, v in (keys or {}).items():
            argv += ["-key", k, str(v)]
        # No -cp: left alone, SIPp searches upwards from 8888 for a free control
        # port, while an explicit one that is taken is a fatal error.
        argv += [
            "-sf", str(self.scenario),
            "-i", local_ip,
            "-p", str(self.local_port),
            "-mi", media_ip or local_ip,
            "-mp", str(self.media_port),
            "-m", str(calls),
            "-r", str(rate),
            "-l", str(limit or calls),
            "-d", str(duration_ms),
            "-timeout", f"{int(timeout)}s",
            "-timeout_error",
            "-recv_timeout", f"{recv_timeout_ms}ms",
            "-max_retrans", "3",
            "-nostdin",
            "-trace_stat", "-stf", str(self.stat_path), "-fd", "1",
            "-trace_msg", "-message_file", str(self.messages_path),
            "-trace_err", "-error_file", str(self.errors_path),
            "-trace_screen", "-screen_file", str(self.screen_path),
            "-trace_logs", "-log_file", str(self.logs_path),
        ]  # fmt: skip
        if service:
            argv += ["-s", service]
        if auth:
            argv += ["-au", auth[0], "-ap", auth[1]]
        if rtp_echo:
            argv.append("-rtp_echo")
        argv += list(extra_args)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.argv = argv
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sipp:
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish; kill it after ``timeout`` (default: its own + 10 s)."""
        assert self.proc is not None, "start() first"
        timed_out = False
        try:
            code = self.proc.wait(timeout if timeout is not None else self.timeout + 10)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
            code = self.proc.returncode
        self._out.close()
        return self.result(code, timed_out)

    def stop(self) -> SippResult:
        """End a SIPp that serves for ever (e.g. uas_registrar.xml) and collect it."""
        assert self.proc is not None, "start() first"
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(5)
        self._out.close()
        return self.result(code)

    def kill(self) -> None:
        """Soft stop (SIGUSR1), then SIGKILL if SIPp has not gone within 2 s."""
        if self.proc is not None and self.proc.poll() is None:
            # SIGUSR1 is SIPp's soft stop; give it a moment before SIGKILL.
            try:
                self.proc.send_signal(signal.SIGUSR1)
                self.proc.wait(2)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait(5)

    def result(self, code: int, timed_out: bool = False) -> SippResult:
        def read(p: Path) -> str:
            return p.read_text(errors="replace") if p.exists() else ""

        screen = read(self.screen_path) or read(self.stdout_path)
        return SippResult(
            name=self.name,
            returncode=code,
            stats=read_stats(self.stat_path),
            argv=self.argv,
            workdir=self.workdir,
            errors=read(self.errors_path),
            screen=screen,
            logs=read(self.logs_path),
            messages_path=self.messages_path,
            timed_out=timed_out,
        )

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        out = getattr(self, "_out", None)
        if out is not None:
            out.close()


def read_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's ``-trace_stat`` CSV (';'-separated), as a dict."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {h.strip(): v.strip() for h, v in zip(header, last, strict=False) if h.strip()}


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
    return Sipp(scenario, None, **kw)


def uac(remote: str, scenario: str = "uac_call.xml", **kw: Any) -> Sipp:
    """A SIPp UAC towards ``remote`` ("host:port"); not started."""
    return Sipp(scenario, remote, **kw)


def wait_listening(port: int, timeout: float = 5.0, netns: str | None = None) -> bool:
    """True once a UDP socket is bound to ``port`` (reads /proc/net/udp{,6}).

    SIPp has no "ready" signal; a UAC started before its UAS has bound
    would see its first INVITE refused.
    """
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        if netns is None:
            text = "".join(
                Path(p).read_text()
                for p in ("/proc/net/udp", "/proc/net/udp6")
                if os.path.exists(p)
            )
        else:
            text = subprocess.run(
                ["ip", "netns", "exec", netns, "cat", "/proc/net/udp", "/proc/net/udp6"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1].endswith(want):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)

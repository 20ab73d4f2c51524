"""SIPp (Debian package ``sip-tester``) as a bounded tool, for tests and benchmarks.

``Sipp`` runs one SIPp process with a scenario file, a global timeout and,
as asked, a call count (``-m``), a rate, a per-message receive timeout, so
it always ends.  ``wait()``/``stop()`` reap it with ``os.wait4``, so the
result carries its CPU time as well as the exit code, the final counters
from the statistics CSV, and the error, screen and message logs for
assertion messages.

The two users want different things and get them by option, not by
subclass: the system tests run SIPp inside a network namespace
(``netns``), stream RTP (``keys``, ``rtp_echo``) and keep every log; the
benchmarks run it on loopback with a large socket buffer (``buff_size``)
and the per-call response times (``rtt=True``: ``SippResult.rtt()``), and
only the logs they read (``trace_msg`` for the set-up delay).  Options left
``None`` are not passed, so SIPp's own defaults apply.

SIPp's exit codes: 0 every call succeeded, 1 at least one failed, 97 an
internal command stopped it, 99 no call was processed, 255 (-1) fatal
error, 254 (-2) could not bind.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EXIT_CODES = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}


class SippError(AssertionError):
    """SIPp did not do what the caller needed; the message has its logs."""


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
        port: int = s.getsockname()[1]
        return port


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


def wait_listening(port: int, timeout: float = 5.0, netns: str | None = None) -> bool:
    """True once a UDP socket is bound to ``port`` (reads /proc/net/udp{,6}).

    SIPp has no "ready" signal; a UAC started before its UAS has bound
    would see its first INVITE refused.
    """
    want = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
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
        time.sleep(0.02)


def read_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's ``-trace_stat`` CSV (';'-separated), as a dict."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {h.strip(): v.strip() for h, v in zip(header, last, strict=False) if h.strip()}


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
    rtt_paths: list[Path] = field(default_factory=list)
    timed_out: bool = False
    cpu_seconds: float = 0.0
    wall: float = 0.0
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
    def cpu_percent(self) -> float:
        """SIPp's CPU time (user + system, from rusage) over its wall time."""
        return round(100 * self.cpu_seconds / max(self.wall, 1e-9), 1)

    def failures(self) -> dict[str, int]:
        """Every non-zero cumulative Failed* counter."""
        out = {}
        for k, v in self.stats.items():
            if k.startswith("Failed") and k.endswith("(C)"):
                try:
                    n = int(float(v or 0))
                except ValueError:
                    continue
                if n:
                    out[k[: -len("(C)")]] = n
        return out

    def rtt(self) -> list[tuple[float, float]]:
        """(ms since SIPp started, response time ms) per call, from the rtt CSV
        (``Sipp(rtt=True)``)."""
        out = []
        for path in self.rtt_paths:
            for line in path.read_text(errors="replace").splitlines()[1:]:
                parts = line.split(";")
                if len(parts) >= 2:
                    try:
                        out.append((float(parts[0]), float(parts[1])))
                    except ValueError:
                        continue
        return out

    @property
    def messages(self) -> str:
        if self.messages_path and self.messages_path.exists():
            return self.messages_path.read_text(errors="replace")
        return ""

    def explain(self) -> str:
        code = EXIT_CODES.get(self.returncode, "?")
        return (
            f"sipp {self.name}: exit {self.returncode} ({code})"
            + (" after the caller's timeout" if self.timed_out else "")
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
    """One SIPp process: start, wait (bounded), collect the result.

    ``scenario`` is a path (a relative one is under ``scenarios``); the
    logs go to ``workdir`` (a temporary directory if none), named after
    ``name``.  In another namespace (``netns``) ports are chosen here, in
    the caller's: there they are free anyway, as nothing else runs there.
    """

    def __init__(
        self,
        scenario: str | Path,
        remote: str | None = None,
        *,
        scenarios: Path | None = None,
        name: str | None = None,
        workdir: str | Path | None = None,
        local_ip: str = "127.0.0.1",
        local_port: int | None = None,
        media_ip: str | None = None,
        media_port: int | None = None,
        calls: int | None = None,
        rate: float | None = None,
        limit: int | None = None,
        duration_ms: int | None = None,
        timeout: float = 30.0,
        recv_timeout_ms: int | None = None,
        max_retrans: int | None = None,
        keys: dict[str, Any] | None = None,
        service: str | None = None,
        auth: tuple[str, str] | None = None,
        inf: Path | None = None,
        rtp_echo: bool = False,
        netns: str | None = None,
        buff_size: int | None = None,
        trace_msg: bool = True,
        trace_screen: bool = True,
        trace_logs: bool = True,
        rtt: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.scenario = Path(scenario)
        if not self.scenario.is_absolute() and scenarios is not None:
            self.scenario = scenarios / self.scenario
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
        self.netns = netns
        bind_host = local_ip if netns is None else "0.0.0.0"
        self.local_port = local_port or free_udp_port(bind_host)
        self.media_port = media_port or free_udp_pair(bind_host)
        self.timeout = timeout
        w = self.workdir
        self.stat_path = w / f"{self.name}_stats.csv"
        self.messages_path = w / f"{self.name}_messages.log" if trace_msg else None
        self.errors_path = w / f"{self.name}_errors.log"
        self.screen_path = w / f"{self.name}_screen.log"
        self.logs_path = w / f"{self.name}_logs.log"
        self.stdout_path = w / f"{self.name}_stdout.log"
        self.rtt = rtt
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
        ]  # fmt: skip
        for option, value in (
            ("-m", calls),
            ("-r", rate),
            ("-l", limit or calls),
            ("-d", duration_ms),
            ("-recv_timeout", None if recv_timeout_ms is None else f"{recv_timeout_ms}ms"),
            ("-max_retrans", max_retrans),
            ("-buff_size", buff_size),
            ("-s", service),
            ("-inf", inf),
        ):
            if value is not None:
                argv += [option, str(value)]
        argv += [
            "-timeout", f"{int(timeout)}s",
            "-timeout_error",
            "-nostdin",
            "-trace_stat", "-stf", str(self.stat_path), "-fd", "1",
            "-trace_err", "-error_file", str(self.errors_path),
        ]  # fmt: skip
        if self.messages_path:
            argv += ["-trace_msg", "-message_file", str(self.messages_path)]
        if trace_screen:
            argv += ["-trace_screen", "-screen_file", str(self.screen_path)]
        if trace_logs:
            argv += ["-trace_logs", "-log_file", str(self.logs_path)]
        if rtt:
            argv += ["-trace_rtt", "-rtt_freq", "1"]
        if auth:
            argv += ["-au", auth[0], "-ap", auth[1]]
        if rtp_echo:
            argv.append("-rtp_echo")
        argv += list(extra_args)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.cpu_seconds = 0.0
        self.wall = 0.0
        self._out: IO[bytes] | None = None

    def start(self) -> Sipp:
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in _reap
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        return self

    def _reap(self, deadline: float) -> bool:
        """Wait (bounded) for the process, collecting its rusage; True if it ended."""
        assert self.proc is not None, "start() first"
        if self.returncode is not None:
            return True
        while True:  # bounded by the deadline
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.returncode
                self.cpu_seconds = usage.ru_utime + usage.ru_stime
                self.wall = time.monotonic() - self._t0
                if self._out is not None:
                    self._out.close()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish; stop it after ``timeout`` (default: its own + 15 s)."""
        limit = timeout if timeout is not None else self.timeout + 15
        if self._reap(time.monotonic() + limit):
            return self.result()
        self.kill()
        return self.result(timed_out=True)

    def stop(self, grace: float = 5.0) -> SippResult:
        """End a SIPp that serves for ever (a UAS, a registrar) and collect it."""
        self.kill(grace)
        return self.result()

    def kill(self, grace: float = 2.0) -> None:
        """SIGUSR1 (SIPp's soft stop: finish the calls in progress), then
        SIGKILL if SIPp has not gone within ``grace`` seconds."""
        if self.proc is None or self._reap(time.monotonic()):
            return
        try:
            self.proc.send_signal(signal.SIGUSR1)
        except ProcessLookupError:
            pass
        if not self._reap(time.monotonic() + grace):
            self.proc.kill()
            self._reap(time.monotonic() + 5)

    def listening(self, timeout: float = 5.0) -> Sipp:
        """Return once SIPp has bound its SIP port; raise (with its output) if not."""
        if not wait_listening(self.local_port, timeout, self.netns):
            where = f"sipp {self.name} not listening on {self.local_port}"
            raise SippError(f"{where}:\n{self.output()}")
        return self

    def output(self) -> str:
        """The end of what SIPp printed (its screen, or why it would not start)."""
        try:
            return self.stdout_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def result(self, timed_out: bool = False) -> SippResult:
        def read(p: Path) -> str:
            return p.read_text(errors="replace") if p.exists() else ""

        rtt_paths = []
        if self.rtt and self.proc is not None:
            rtt_paths = sorted(self.workdir.glob(f"*_{self.proc.pid}_rtt.csv"))
        return SippResult(
            name=self.name,
            returncode=self.returncode if self.returncode is not None else -9,
            stats=read_stats(self.stat_path),
            argv=self.argv,
            workdir=self.workdir,
            errors=read(self.errors_path),
            screen=read(self.screen_path) or read(self.stdout_path),
            logs=read(self.logs_path),
            messages_path=self.messages_path,
            rtt_paths=rtt_paths,
            timed_out=timed_out,
            cpu_seconds=self.cpu_seconds,
            wall=self.wall,
        )

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self._out is not None:
            self._out.close()

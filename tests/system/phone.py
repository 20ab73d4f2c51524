"""Real SIP phones for end-to-end tests: pjsua2 in one process per phone.

``Phone`` is the test's handle; the phone itself runs in
``tests/system/phone_worker.py`` (pjsua2 allows one Endpoint per process,
and a process can be started inside a network namespace).  The two talk
JSON lines over the worker's stdin/stdout: one request, one reply, each
with a deadline, so a wedged phone fails the test instead of hanging it.

Each phone plays its own tone (``tone_hz``) with a delay marker every
second, and records what it receives; see ``tests/audio.py`` for the
analysis (``assert_hears``, ``measure_delay``).

Processes are never left behind: ``Phone`` is a context manager, every live
worker is also killed at interpreter exit, workers die with their parent
(PR_SET_PDEATHSIG) and on EOF of their stdin.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.audio import MARKER_BAND, Recording

ROOT = Path(__file__).resolve().parents[2]
STATES = ("CALLING", "EARLY", "CONNECTING", "CONFIRMED", "DISCONNECTED")

# Phones' RTP ports: clear of the bearer's (30000-37999 by default, and in the
# benchmarks, which bind the whole pool) and of the bearer integration tests'
# (20000-27999), and below the kernel's ephemeral range.  Once a bearer held
# every pair pjsua tried, and calls failed locally with 500.
RTP_PORTS = (16000, 20000)

_live: weakref.WeakSet[Phone] = weakref.WeakSet()


class PhoneError(AssertionError):
    """A phone request failed or timed out; carries the phone's log tail."""


def _kill_all() -> None:
    for phone in list(_live):
        phone.kill()


atexit.register(_kill_all)


class Phone:
    """A pjsua2 softphone in its own process, driven synchronously.

    ``codecs`` restricts and orders the phone's codecs (e.g. ``("PCMA",)``);
    ``netns`` starts it inside that network namespace; ``auto_answer`` (in
    seconds) answers every incoming call after ringing that long, and
    ``auto_reject`` refuses every incoming call with that status.
    ``nat_rewrite`` enables pjsua's Contact/Via/SDP fix-ups from
    received/rport; off by default so phones behave like simple devices
    that leave NAT traversal to the switch.  ``tls_ca`` (a PEM file) gives
    the phone a SIP over TLS transport, verifying the server against it,
    which its registration (and the calls it makes) then use.  ``srtp`` is
    pjsua's SRTP use: "off" (the default), "optional" (RTP/AVP with a=crypto)
    or "mandatory" (RTP/SAVP); SDES without requiring TLS (srtpSecureSignaling
    0), so UDP works.
    """

    def __init__(
        self,
        name: str,
        *,
        tone_hz: float,
        codecs: Sequence[str] = ("PCMU", "PCMA"),
        bind: str = "127.0.0.1",
        sip_port: int = 0,
        rtp_port: int = 0,
        netns: str | None = None,
        workdir: str | Path | None = None,
        auto_answer: float | None = None,
        auto_reject: int | None = None,
        ring: bool = True,
        markers: bool = True,
        amplitude: float = 0.3,
        nat_rewrite: bool = False,
        srtp: str = "off",
        log_level: int = 3,
        rpc_timeout: float = 10.0,
        tls_ca: str | None = None,
    ) -> None:
        if ":" in bind:
            # pjsua_acc_add asserts ipv6_media_use == DISABLED in this build.
            raise ValueError("IPv6 phones: the pjsua2-python wheel is built without IPv6 media")
        if markers and MARKER_BAND[0] - 200 <= tone_hz <= MARKER_BAND[1] + 200:
            raise ValueError(f"tone_hz {tone_hz} is too close to the delay markers {MARKER_BAND}")
        self.name = name
        self.tone_hz = tone_hz
        self.codecs = tuple(codecs)
        self.netns = netns
        self.rpc_timeout = rpc_timeout
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"phone-{name}-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if rtp_port == 0:
            # pjsua counts up from its base (within RTP_PORTS); a random base
            # keeps parallel phones from racing for the same pairs.
            lo, hi = RTP_PORTS
            rtp_port = lo + 2 * random.randrange((hi - lo) // 4)
        self.config = {
            "name": name,
            "tone_hz": tone_hz,
            "codecs": list(self.codecs),
            "bind": bind,
            "sip_port": sip_port,
            "rtp_port": rtp_port,
            "rtp_port_range": RTP_PORTS[1] - rtp_port,
            "workdir": str(self.workdir),
            "auto_answer": auto_answer,
            "auto_reject": auto_reject,
            "ring": ring,
            "markers": markers,
            "amplitude": amplitude,
            "nat_rewrite": nat_rewrite,
            "srtp": srtp,
            "log_level": log_level,
            "tls_ca": tls_ca,
        }
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = bind
        self.port = 0
        self._next_id = 1
        self._buf = b""

    # life cycle --------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Phone:
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (see ``wait_ready``)."""
        argv = [sys.executable, "-m", "tests.system.phone_worker", json.dumps(self.config)]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the phone
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env=env,
        )
        _live.add(self)

    def wait_ready(self, timeout: float = 10.0) -> Phone:
        ready = self._read_reply(0, timeout)
        self.host, self.port = ready["host"], ready["port"]
        self.pid = ready["pid"]
        return self

    def close(self, timeout: float = 5.0) -> int | None:
        """Hang up, unregister, destroy the library, wait for the exit code."""
        self.begin_close()
        return self.end_close(timeout)

    def begin_close(self) -> None:
        """Ask the phone to quit without waiting (close many phones at once)."""
        if self.alive:
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(b'{"id": -1, "op": "quit"}\n')
                self.proc.stdin.flush()
            except OSError:
                pass

    def end_close(self, timeout: float = 5.0) -> int | None:
        """Wait for a phone told to quit; kill it if it takes longer than ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._finish()
        return proc.returncode

    def kill(self) -> None:
        """Stop the process now (test failed or timed out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._finish()

    def _finish(self) -> None:
        _live.discard(self)
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def __enter__(self) -> Phone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # RPC ---------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> PhoneError:
        return PhoneError(f"phone {self.name}: {what}\n--- log tail ---\n{self.log_tail()}")

    def _read_reply(self, want_id: int, timeout: float) -> Any:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg["id"] != want_id:
                    continue  # a reply to a request we gave up on
                if not msg["ok"]:
                    raise self._fail(msg["error"])
                return msg["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise self._fail(f"no reply within {timeout:g} s (killed)")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait(5)
                    raise self._fail(f"process exited with {code}")
                self._buf += chunk

    def _request(self, op: str, args: dict[str, Any], timeout: float) -> Any:
        if not self.alive:
            raise self._fail(f"{op}: process is not running")
        assert self.proc is not None and self.proc.stdin is not None
        rid = self._next_id
        self._next_id += 1
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, "args": args}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_reply(rid, timeout)

    def _rpc(self, op: str, wait: float = 0.0, **args: Any) -> Any:
        """A request whose own wait inside the phone is ``wait`` seconds."""
        return self._request(op, args, wait + self.rpc_timeout)

    # the phone's buttons ---------------------------------------------------------

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def uri(self, user: str | None = None) -> str:
        """Where to call this phone directly (no registrar)."""
        return f"sip:{user or self.name}@{self.hostport}"

    def register(
        self,
        registrar: str,
        user: str,
        password: str,
        domain: str,
        expires: int = 300,
        timeout: float = 5.0,
    ) -> int:
        """REGISTER (answering digest challenges); returns the final status code."""
        r = self._rpc(
            "register",
            timeout,
            registrar=registrar,
            user=user,
            password=password,
            domain=domain,
            expires=expires,
            timeout=timeout,
        )
        self.last_reason = r["reason"]
        return int(r["code"])

    def unregister(self, timeout: float = 5.0) -> int:
        """REGISTER with Expires: 0; returns the final status code."""
        return int(self._rpc("unregister", timeout, timeout=timeout)["code"])

    def call(self, uri: str) -> int:
        """Send an INVITE; returns the phone's call id (does not wait)."""
        return int(self._rpc("call", uri=uri))

    def wait_state(self, state: str, timeout: float = 5.0, call: int | None = None) -> dict:
        """Wait until the call has been in ``state``; returns the call's info.

        A call that ends first returns early (its info says DISCONNECTED
        with the last status, e.g. 486), so ``assert info["state"] == ...``
        reads naturally in tests.
        """
        if state.upper() not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {STATES}")
        return self._rpc("wait_state", timeout, state=state, timeout=timeout, call=call)

    def info(self, call: int | None = None) -> dict:
        return self._rpc("info", call=call)

    def calls(self) -> list[dict]:
        return self._rpc("calls")

    def incoming(self, timeout: float = 5.0) -> int:
        """Wait for an incoming call; returns its id."""
        return int(self._rpc("incoming", timeout, timeout=timeout))

    def answer(self, code: int = 200, call: int | None = None, delay: float = 0.0) -> int:
        return int(self._rpc("answer", code=code, call=call, delay=delay))

    def reject(self, code: int = 486, call: int | None = None) -> int:
        return int(self._rpc("answer", code=code, call=call))

    def ring_then_answer(self, ring: float = 1.0, call: int | None = None) -> int:
        """180 now, 200 after ``ring`` seconds (the phone keeps working meanwhile)."""
        key = self.answer(180, call)
        return int(self._rpc("answer", code=200, call=key, delay=ring))

    def hangup(self, call: int | None = None) -> int:
        return int(self._rpc("hangup", call=call))

    def hold(self, call: int | None = None) -> int:
        """re-INVITE with a=sendonly."""
        return int(self._rpc("hold", call=call))

    def unhold(self, call: int | None = None) -> int:
        """re-INVITE with a=sendrecv."""
        return int(self._rpc("unhold", call=call))

    def send_dtmf(self, digits: str, method: str = "rfc2833", call: int | None = None) -> int:
        """DTMF as RFC 4733 telephone-events ('rfc2833') or SIP INFO ('info')."""
        return int(self._rpc("send_dtmf", digits=digits, method=method, call=call))

    def received_dtmf(self, call: int | None = None) -> str:
        """Digits received as RFC 4733 telephone-events, in order."""
        return self._rpc("received_dtmf", call=call)

    def wait_dtmf(self, count: int, timeout: float = 5.0, call: int | None = None) -> str:
        """Wait until ``count`` digits have arrived (or ``timeout``); returns all so far."""
        return self._rpc("wait_dtmf", timeout, count=count, timeout=timeout, call=call)

    def stats(self, call: int | None = None) -> dict:
        """Codec in use, RTP packets sent/received, media direction, RTP addresses."""
        return self._rpc("stats", call=call)

    def recording(self, call: int | None = None) -> Recording:
        """What the phone received on the call (so far, if it is still up)."""
        return Recording.load(self._rpc("recording", call=call))

    def sent_markers(self, call: int | None = None) -> list[float]:
        """Monotonic times at which this phone's delay markers entered its encoder."""
        return self._rpc("sent_markers", call=call)

    def pump(self, seconds: float) -> None:
        """Let the phone run for a while (it runs anyway; this just waits in it)."""
        self._rpc("pump", seconds, seconds=seconds)


@contextmanager
def phones(*specs: dict[str, Any], **common: Any) -> Iterator[list[Phone]]:
    """Start several phones at once; all are closed (or killed) on the way out.

    Starting in parallel matters: pjsua2's start-up costs ~0.3 s of CPU.
    """
    with ExitStack() as stack:
        started: list[Phone] = []
        try:
            for spec in specs:
                p = Phone(**{**common, **spec})
                stack.callback(p.kill)
                started.append(p)
                p.spawn()
            for p in started:
                p.wait_ready()
            yield started
            codes = close_all(started)
            for p in started:
                if codes[p.name] not in (0, None):
                    raise PhoneError(f"phone {p.name} exited {codes[p.name]}\n{p.log_tail()}")
        finally:
            for p in started:
                p.kill()


def close_all(phones: Sequence[Phone], timeout: float = 5.0) -> dict[str, int | None]:
    """Close phones in parallel; returns each one's exit code by name."""
    for p in phones:
        p.begin_close()
    return {p.name: p.end_close(timeout) for p in phones}


@pytest.fixture
def make_phone(tmp_path: Path) -> Iterator[Callable[..., Phone]]:
    """Fixture: ``make_phone(name, **Phone kwargs)`` starts a phone.

    Every phone is closed after the test (in parallel), and killed if it
    does not quit in time; a phone that exits uncleanly fails the test.
    Import it into a conftest.py or test module to use it.
    """
    made: list[Phone] = []

    def make(name: str, **kw: Any) -> Phone:
        kw.setdefault("workdir", tmp_path / name)
        p = Phone(name, **kw)
        made.append(p)
        return p.start()

    try:
        yield make
    finally:
        codes = close_all(made)
        for p in made:
            p.kill()
    bad = {n: c for n, c in codes.items() if c not in (0, None)}
    assert not bad, f"phones exited uncleanly: {bad}\n" + "\n".join(
        f"--- {p.name} ---\n{p.log_tail(15)}" for p in made if p.name in bad
    )

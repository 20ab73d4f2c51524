"""Real softswitch-control + two real bearers on loopback, and a SIP client.

The control daemon runs as its console script with a configuration written
into a temporary directory (SQLite database, admin and bearer sockets there,
a SIP port free for both UDP and TCP); the bearers are started with the
bearer suite's own harness.  The SIP client is this project's stack used
the other way round: it builds requests with ``softswitch.sip.message``,
answers challenges with ``DigestClient`` and parses what comes back.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softswitch.daemon.admin import AdminClient, AdminError
from softswitch.daemonkit.config import dumps
from softswitch.db.schema import create_schema, make_engine
from softswitch.db.users import add_user
from softswitch.sip.digest import DigestClient, ha1
from softswitch.sip.framing import StreamFramer
from softswitch.sip.message import Response, parse
from tests.integration.bearer.harness import BearerProcess, die_with_parent, start_bearer

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CONTROL_EXE = BIN / "softswitch-control"
CTL_EXE = BIN / "softswitchctl"
DOMAIN = "127.0.0.1"


def free_sip_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):  # bounded retries
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free SIP port")


def write_control_config(
    tmp: Path, port: int, bearer_procs: list[BearerProcess], **sections: dict[str, Any]
) -> Path:
    """softswitch.conf (TOML) for a test: everything under ``tmp``; extra keys per section,
    as TOML values (``sip={"listen": ["127.0.0.1", "::1"]}``)."""
    etc = tmp / "etc"
    run = tmp / "run"
    etc.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    values: dict[str, dict[str, Any]] = {
        "sip": {"listen": ["127.0.0.1"], "port": port},
        "database": {
            "url": f"sqlite:///{tmp / 'softswitch.db'}",
            "sync_interval": 0.5,
            "spool_dir": str(tmp / "spool"),
        },
        "bearers": {
            "endpoints": [f"unix:{b.control}" for b in bearer_procs]
            or [f"unix:{run}/no-bearer.sock"],
            "local": f"unix:{run}/control.sock",
            "key_file": str(etc / "control.key"),
        },
        "admin": {"socket": str(run / "admin.sock")},
        "recording": {"dir": str(tmp / "recordings")},
        # Off unless a test asks: daemons running side by side would all want :9464.
        "metrics": {"listen": ""},
    }
    for section, extra in sections.items():
        values.setdefault(section, {}).update(extra)
    (etc / "softswitch.conf").write_text(dumps(values))
    return etc


def add_users(tmp: Path, users: dict[str, str], realm: str = DOMAIN) -> None:
    """Users straight into the SQLite database (what `softswitchctl user add` does)."""
    engine = make_engine(f"sqlite:///{tmp / 'softswitch.db'}")
    try:
        create_schema(engine)
        with engine.begin() as conn:
            for name, password in users.items():
                ha1s = (ha1(name, realm, password, "MD5"), ha1(name, realm, password, "SHA-256"))
                add_user(conn, name, DOMAIN, ha1s)
    finally:
        engine.dispose()


@dataclass
class ControlProcess:
    """A running softswitch-control and where to reach it."""

    tmp: Path
    etc: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    runs: int = 0

    def __post_init__(self) -> None:
        self.log_path = self.tmp / "control.log"

    def start(self, timeout: float = 20.0, keep_notify: bool = False) -> None:
        env = dict(os.environ)
        if not keep_notify:
            env.pop("NOTIFY_SOCKET", None)
        env.pop(CONFIG_ENV, None)
        self.runs += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"--- run {self.runs}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                [str(CONTROL_EXE), "--config-dir", str(self.etc)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                preexec_fn=die_with_parent(os.getpid()),
            )
        if all(p is not self for p in _RUNNING):
            _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded
            if self.proc.poll() is not None:
                raise RuntimeError(f"control exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.admin("status")["state"] == "serving":
                    return
            except AdminError:
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"control not serving within {timeout} s:\n{self.log()}")

    def admin(self, cmd: str) -> Any:
        return AdminClient(self.tmp / "run" / "admin.sock", timeout=5).call(cmd)

    def ctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop(CONFIG_ENV, None)
        return subprocess.run(
            [str(CTL_EXE), "--config-dir", str(self.etc), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=ROOT,
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        _RUNNING[:] = [p for p in _RUNNING if p is not self]
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded
            if text in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the log:\n{self.log()}")


CONFIG_ENV = "SOFTSWITCH_CONFIG_DIR"

_RUNNING: list[ControlProcess] = []
"""Control daemons started and not stopped yet: what ``stop_leftovers`` stops."""


def stop_leftovers() -> list[ControlProcess]:
    """Stop every control daemon started here and not stopped yet (a test that
    failed before its ``stop``); tests/integration/conftest.py calls it after
    every test, before stopping leftover bearers."""
    leftovers = list(_RUNNING)
    for control in leftovers:
        control.stop(timeout=10.0)
    return leftovers


def start_switch(
    tmp: Path, users: dict[str, str] | None = None, bearers: int = 2, **sections: dict[str, Any]
) -> tuple[ControlProcess, list[BearerProcess]]:
    """Two bearers, users in the DB, then the control daemon; returns both."""
    bps = [start_bearer(tmp / f"b{i}") for i in range(bearers)]
    port = free_sip_port()
    etc = write_control_config(tmp, port, bps, **sections)
    add_users(tmp, users if users is not None else {"alice": "secret", "bob": "hunter2"})
    control = ControlProcess(tmp, etc, port)
    try:
        control.start()
    except Exception:
        for b in bps:
            b.stop()
        raise
    return control, bps


# --------------------------------------------------------------------------- SIP client

_ids = itertools.count(1)


class SipClient:
    """A phone on loopback, UDP or TCP, using the project's own SIP stack."""

    def __init__(
        self,
        port: int,
        user: str = "alice",
        password: str = "secret",
        *,
        transport: str = "udp",
        timeout: float = 5.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.server = (host, port)
        self.user = user
        self.transport = transport
        self.digest = DigestClient(user, password=password)
        self.call_id = f"{secrets.token_hex(6)}@127.0.0.1"
        self.cseq = 0
        self.timeout = timeout
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, kind)
        self.sock.settimeout(timeout)
        if transport == "udp":
            self.sock.bind((host, 0))
        else:
            self.sock.connect(self.server)
        self.local = self.sock.getsockname()[:2]
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def contact(self) -> str:
        host = f"[{self.local[0]}]" if ":" in self.local[0] else self.local[0]
        return f"<sip:{self.user}@{host}:{self.local[1]};transport={self.transport}>"

    def build(
        self,
        method: str,
        *,
        uri: str | None = None,
        headers: list[str] | None = None,
        to: str | None = None,
    ) -> bytes:
        self.cseq += 1
        host, port = self.local
        if ":" in host:
            host = f"[{host}]"
        lines = [
            f"{method} {uri or f'sip:{DOMAIN}'} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {host}:{port};rport;branch=z9hG4bK"
            f"{secrets.token_hex(8)}",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{DOMAIN}>;tag={secrets.token_hex(4)}",
            f"To: {to or f'<sip:{self.user}@{DOMAIN}>'}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {method}",
            "User-Agent: sipclient-test",
            *(headers or []),
        ]
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def receive(self) -> bytes:
        if self.transport == "udp":
            data, _ = self.sock.recvfrom(65535)
            return data
        for _ in range(1000):  # bounded: each round reads or returns
            if self.pending:
                return self.pending.pop(0)
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.pending += self.framer.feed(chunk)
        raise RuntimeError("no message")

    def final(self) -> Response:
        """The next final response (1xx skipped)."""
        for _ in range(20):  # bounded
            msg = parse(self.receive())
            assert isinstance(msg, Response)
            if msg.status >= 200:
                return msg
        raise RuntimeError("no final response")

    def request(self, method: str, **kw: Any) -> Response:
        self.send(self.build(method, **kw))
        return self.final()

    def register(self, expires: int | None = 3600, contact: str | None = None) -> Response:
        """REGISTER, answering one challenge if there is one (nonce reused after)."""
        headers = [f"Contact: {contact or self.contact()}"]
        if expires is not None:
            headers.append(f"Expires: {expires}")
        for _ in range(3):  # at most: no credentials, stale nonce, answered
            auth = self.digest.authorization("REGISTER", f"sip:{DOMAIN}")
            extra = headers + ([f"Authorization: {auth}"] if auth else [])
            response = self.request("REGISTER", headers=extra)
            if response.status != 401:
                return response
            self.digest.challenged(response.get_all("WWW-Authenticate"))
        return response

"""Real softswitch-control + real bearers on loopback.

The control daemon runs as its console script with a configuration written
into a temporary directory (SQLite database, admin and bearer sockets there,
a SIP port free for both UDP and TCP); the bearers are started with
``bench.harness.bearer``.  Phones to drive it are in ``bench.harness.sip``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.bearer import BearerProcess, start_bearer
from bench.harness.process import terminate
from softswitch.daemon.admin import AdminClient, AdminError
from softswitch.daemonkit.config import dumps
from softswitch.daemonkit.runtime import die_with_parent
from softswitch.db.schema import create_schema, make_engine
from softswitch.db.users import add_user
from softswitch.sip.digest import ha1

ROOT = Path(__file__).resolve().parents[2]
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
        # Load from one address (127.0.0.1) at thousands of requests/s, and tests
        # of wrong passwords, are the point of a test switch: loopback is exempt
        # from the rate limit and from bans unless a test asks (security={"allow": []}).
        # Never nftables: a test must not touch the host's ruleset.
        "security": {"allow": ["127.0.0.0/8", "::1"], "nftables": "off"},
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
        return terminate(self.proc, sig, timeout)

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
    tmp: Path,
    users: dict[str, str] | None = None,
    bearers: int = 2,
    bearer_options: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> tuple[ControlProcess, list[BearerProcess]]:
    """Two bearers (``start_bearer`` options), users in the DB (alice/secret and
    bob/hunter2 unless given), then the control daemon; returns both."""
    bps = [start_bearer(tmp / f"b{i}", **(bearer_options or {})) for i in range(bearers)]
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


def wait_cdrs(switch: ControlProcess, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The CDRs ``softswitchctl cdr --json`` lists, once there are any (or [])."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded: CDRs are batched within a second
        out = switch.ctl("cdr", "--json")
        if out.returncode == 0 and json.loads(out.stdout):
            return list(json.loads(out.stdout))
        time.sleep(0.2)
    return []

"""The switch under test: control (pinned to its core) and two bearers,
started with bench.harness, users inserted in bulk, GC pauses traced."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import softswitch.daemon.settings
from bench.control.machine import pin_self
from bench.harness.bearer import BearerProcess, start_bearer
from bench.harness.control import (
    DOMAIN,
    ControlProcess,
    add_users,
    free_sip_port,
    write_control_config,
)
from softswitch.db.schema import make_engine
from softswitch.db.schema import users as users_table
from softswitch.sip.digest import ha1

GCTRACE = Path(__file__).resolve().parents[1] / "gctrace"


CALLEE = ("callee", "callee-pw")


def user(i: int) -> tuple[str, str]:
    return f"u{i:06d}", f"pw{i:06d}"


def bulk_users(tmp: Path, count: int) -> float:
    """``count`` users (and the callee) into the SQLite database; seconds taken."""
    t0 = time.monotonic()
    add_users(tmp, {CALLEE[0]: CALLEE[1]})  # creates the schema too
    now = time.time()
    engine = make_engine(f"sqlite:///{tmp / 'softswitch.db'}")
    try:
        with engine.begin() as conn:
            for start in range(0, count, 10_000):
                rows = []
                for i in range(start, min(count, start + 10_000)):
                    name, pw = user(i)
                    rows.append(
                        {
                            "username": name,
                            "domain": DOMAIN,
                            "ha1_md5": ha1(name, DOMAIN, pw, "MD5"),
                            "ha1_sha256": ha1(name, DOMAIN, pw, "SHA-256"),
                            "display_name": "",
                            "enabled": True,
                            "record_calls": False,
                            "max_calls": 0,
                            "updated_at": now,
                        }
                    )
                conn.execute(sa.insert(users_table), rows)
    finally:
        engine.dispose()
    return time.monotonic() - t0


def _has_option(section: str, key: str) -> bool:
    return any(
        o.section == section and o.key == key for o in softswitch.daemon.settings.CONTROL_OPTIONS
    )


@dataclass
class Switch:
    tmp: Path
    control: ControlProcess
    bearers: list[BearerProcess]
    metrics_url: str | None
    start_seconds: float
    users_seconds: float
    gc_log: Path | None = None

    @property
    def pid(self) -> int:
        assert self.control.proc is not None
        return self.control.proc.pid

    def status(self) -> dict[str, Any]:
        return self.control.admin("status")

    def restart(self, control_cpu: int | None, load_cpu: int | None) -> float:
        """SIGTERM and start again (on the control core); seconds until serving again."""
        t0 = time.monotonic()
        code = self.control.stop(signal.SIGTERM, timeout=120)
        if code != 0:
            raise RuntimeError(f"control exited {code} at the restart:\n{self.control.log()}")
        pin_self(control_cpu)
        try:
            with gc_traced(self.gc_log):
                self.control.start(timeout=300)
        finally:
            pin_self(load_cpu)
        return time.monotonic() - t0

    def gc_pauses(self, since: float, until: float) -> dict[str, Any] | None:
        """The daemon's garbage collections in [since, until] (epoch s): those
        longer than 10 ms, and the cyclic garbage all of them found."""
        if self.gc_log is None:
            return None
        pauses = []
        collected = 0
        try:
            lines = self.gc_log.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) != 4:
                continue
            stamp, gen, ms, found = float(fields[0]), int(fields[1]), float(fields[2]), fields[3]
            if not since <= stamp <= until:
                continue
            collected += int(found)
            if ms > 10:
                pauses.append((gen, ms))
        return {
            "over_10ms": len(pauses),
            "gen2": sum(1 for g, _ in pauses if g == 2),
            "max_ms": round(max((ms for _, ms in pauses), default=0.0), 1),
            "total_ms": round(sum(ms for _, ms in pauses), 1),
            "cyclic_garbage_objects": collected,
        }

    def stop(self) -> dict[str, Any]:
        t0 = time.monotonic()
        code = self.control.stop(signal.SIGTERM, timeout=120)
        took = time.monotonic() - t0
        bearer_codes = [b.stop() for b in self.bearers]
        log = self.control.log()
        warnings = [ln for ln in log.splitlines() if ln.startswith(("WARNING", "ERROR"))]
        return {
            "control_exit_code": code,
            "control_stop_seconds": round(took, 2),
            "bearer_exit_codes": bearer_codes,
            "control_log_tracebacks": log.count("Traceback"),
            "control_log_warnings": len(warnings),
            "control_log_warnings_first": warnings[:20],
        }


@contextlib.contextmanager
def gc_traced(log: Path | None) -> Iterator[None]:
    """While starting the daemon: bench/gctrace first on its PYTHONPATH (see there)."""
    if log is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "SOFTSWITCH_BENCH_GC_LOG")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GCTRACE), saved["PYTHONPATH"]) if p)
    os.environ["SOFTSWITCH_BENCH_GC_LOG"] = str(log)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_switch(
    tmp: Path,
    users: int,
    *,
    bearers: int,
    control_cpu: int | None,
    load_cpu: int | None,
    max_sessions: int = 500,
    gc_trace: bool = False,
    config: dict[str, dict[str, Any]] | None = None,
) -> Switch:
    """Bearers (on the load core), users in the DB, then control (on its own
    core); ``config`` adds softswitch.conf keys by section."""
    bps = [
        start_bearer(tmp / f"b{i}", max_sessions=max_sessions, ports=4 * max_sessions)
        for i in range(bearers)
    ]
    port = free_sip_port()
    sections: dict[str, dict[str, Any]] = {
        "database": {"sync_interval": 2},
    }
    for section, values in (config or {}).items():
        sections.setdefault(section, {}).update(values)
    metrics_url = None
    if _has_option("metrics", "listen"):
        mport = free_sip_port()
        sections["metrics"] = {"listen": f"127.0.0.1:{mport}"}
        metrics_url = f"http://127.0.0.1:{mport}/metrics"
    etc = write_control_config(tmp, port, bps, **sections)
    took_users = bulk_users(tmp, users) if users else 0.0
    if not users:
        add_users(tmp, {})
    control = ControlProcess(tmp, etc, port)
    gc_log = tmp / "control-gc.log" if gc_trace else None
    # The daemon inherits this thread's affinity: every thread it starts runs
    # on the control core.  Back to the load core for the SIPp we start.
    pin_self(control_cpu)
    t0 = time.monotonic()
    try:
        with gc_traced(gc_log):
            control.start(timeout=300)
    except Exception:
        for b in bps:
            b.stop()
        raise
    finally:
        pin_self(load_cpu)
    return Switch(tmp, control, bps, metrics_url, time.monotonic() - t0, took_users, gc_log)

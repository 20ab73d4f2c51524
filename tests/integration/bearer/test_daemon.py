"""The softswitch-bearer process: command line, start-up errors, systemd, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness.bearer import BEARER_EXE, render_conf, start_bearer


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [str(BEARER_EXE), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_bad_argument_prints_usage_and_exits_2() -> None:
    r = _run("--instance", "zero")
    assert r.returncode == 2
    assert "usage: softswitch-bearer" in r.stderr and "Traceback" not in r.stderr
    assert _run().returncode == 2  # --instance is required


def test_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    conf = tmp_path / "bearer.conf"
    conf.write_text(render_conf({"bearer": {"max_sessions": "lots"}}))
    r = _run("--instance", "0", "--config-dir", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == (
        f"softswitch-bearer: {conf}:2: [bearer] max_sessions: "
        'expected an integer, got a string ("lots")\n'
    )
    conf.write_text("[bearer]\nmax_sessions = lots\n")  # INI: a TOML syntax error
    r = _run("--instance", "0", "--config-dir", str(tmp_path))
    assert (r.returncode, r.stderr) == (
        2,
        f"softswitch-bearer: {conf}:2: Invalid value (column 16)\n",
    )


def test_udp_control_without_key_file_refuses_to_start(tmp_path: Path) -> None:
    conf = {"control": "udp:127.0.0.1:47999", "key_file": f"{tmp_path}/missing.key"}
    (tmp_path / "bearer.conf").write_text(render_conf({"bearer": conf}))
    r = _run("--instance", "0", "--config-dir", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "missing.key" in r.stderr and "Traceback" not in r.stderr


def test_main_sets_a_1_ms_gil_switch_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder's writer thread must not hold the loop off the GIL for the
    default 5 ms (softswitch-control sets the same)."""
    from bearer import daemon

    calls: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", calls.append)
    conf = {"control": "udp:127.0.0.1:47999", "key_file": f"{tmp_path}/missing.key"}
    (tmp_path / "bearer.conf").write_text(render_conf({"bearer": conf}))
    assert daemon.main(["--instance", "0", "--config-dir", str(tmp_path)]) == 2  # after setting it
    assert calls == [0.001] == [daemon.SWITCH_INTERVAL]


def test_stale_socket_file_is_replaced_and_removed_at_exit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(run / "bearer-0.sock"))
    stale.close()  # the file stays behind, nobody listens: as after a crash
    bp = start_bearer(tmp_path)
    try:
        assert bp.client().stats()["sessions"] == 0
    finally:
        assert bp.stop() == 0, bp.log()
    assert not (run / "bearer-0.sock").exists()


def test_second_instance_on_a_live_socket_refuses(tmp_path: Path) -> None:
    bp = start_bearer(tmp_path)
    try:
        r = _run("--instance", "0", "--config-dir", str(bp.config_dir))
        assert r.returncode == 2 and "another bearer" in r.stderr
    finally:
        assert bp.stop() == 0


def test_sd_notify_ready_watchdog_status_stopping_on_abstract_socket(tmp_path: Path) -> None:
    name = f"softswitch-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"}
    bp = start_bearer(tmp_path, extra_env=env, wait=False)
    got: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "\n".join(got).count("WATCHDOG=1") < 3:
            got.append(listener.recv(4096).decode())
        text = "\n".join(got)
        ready = next(g for g in got if "READY=1" in g)
        assert "STATUS=0 calls, 0 packets/s" in ready  # then every 5 s from the loop
        assert text.count("WATCHDOG=1") >= 3  # every 100 ms (half of WATCHDOG_USEC)
        bp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "STOPPING=1" not in got[-1]:
            got.append(listener.recv(4096).decode())
        assert "STOPPING=1" in got[-1]
    finally:
        assert bp.stop() == 0
        listener.close()


def test_sighup_reopens_the_log_file_and_affinity_is_logged(tmp_path: Path) -> None:
    log = tmp_path / "bearer-file.log"
    bp = start_bearer(tmp_path, log_file=log)
    try:
        first = log.read_text()
        assert "CPU affinity [" in first
        log.rename(tmp_path / "bearer-file.log.1")  # what logrotate does
        bp.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not log.exists():
            time.sleep(0.05)
        assert log.exists()
        assert "SIGHUP" in (tmp_path / "bearer-file.log.1").read_text()
    finally:
        assert bp.stop() == 0
    assert "stopped" in log.read_text()


def test_notifier_path_socket_watchdog_rate_and_pid_check(tmp_path: Path) -> None:
    from softswitch.daemonkit.sdnotify import Notifier, watchdog_interval

    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert not Notifier({}).ready()  # no NOTIFY_SOCKET: a no-op
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(1)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    assert n.ready("up") and listener.recv(100) == b"READY=1\nSTATUS=up"
    assert n.watchdog(100.0) and not n.watchdog(100.4) and n.watchdog(100.5)
    assert [listener.recv(100), listener.recv(100)] == [b"WATCHDOG=1"] * 2
    assert n.reloading() and listener.recv(100).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    listener.close()
    assert not n.stopping() and n.failures == 1  # the manager went away: counted, not fatal
    n.close()


def test_log_reopen_is_ordered_behind_queued_records(tmp_path: Path) -> None:
    import logging

    from softswitch.daemonkit.logsetup import LogSetup

    path = tmp_path / "x.log"
    logs = LogSetup("info", str(path)).start()
    try:
        log = logging.getLogger("test.reopen")
        log.info("before")
        path.rename(tmp_path / "x.log.1")
        logs.reopen()
        log.info("after")
    finally:
        logs.stop()
    assert "before" in (tmp_path / "x.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()

"""The README's quick start, followed to the letter by a test.

A fresh clone of the repository's HEAD (committed work only, as a new user
gets it) → ``make run``'s command (``python -m softswitch.cli.devrun``) → the
README's own ``.venv/bin/softswitchctl user add ...`` lines, run from the
clone with no extra flags → two pjsua2 phones register with those
credentials and one calls the other; both hear each other; the CDR shows it;
Ctrl-C stops everything cleanly.

Two deliberate departures, both to keep the test fast and side-by-side safe:
the clone reuses this checkout's virtualenv (its interpreter, with the
clone first on PYTHONPATH so the clone's code is what runs, daemons
included) instead of building a new one with ``make``; and SIP listens on a
free port (``--sip-port``) rather than 5060, which another test or a
developer's ``make run`` may hold.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.control import free_sip_port
from tests.audio import assert_hears
from tests.system.phone import make_phone

__all__ = ["make_phone"]  # a fixture, imported to be found by pytest

ROOT = Path(__file__).resolve().parents[2]
PY = Path(sys.executable)  # the checkout's .venv interpreter
VENV_BIN = PY.parent


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of HEAD (uncommitted work in this checkout is not in it)."""
    dest = tmp_path / "softswitch"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-local", str(ROOT), str(dest)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dest


def clone_env(clone: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(clone), PYTHONUNBUFFERED="1")
    env.pop("SOFTSWITCH_CONFIG_DIR", None)  # softswitchctl must find ./var/etc itself
    env.pop("NOTIFY_SOCKET", None)
    return env


def readme_commands(clone: Path, prefix: str) -> list[list[str]]:
    """The README's shell lines starting with ``prefix``, comments dropped."""
    text = (clone / "README.md").read_text()
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    return [shlex.split(ln) for ln in lines if ln.startswith(prefix)]


@pytest.fixture
def make_run(clone: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """``make run`` in the clone: devrun in its own process group, on a free port."""
    port = free_sip_port()
    log = tmp_path / "make-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(PY), "-m", "softswitch.cli.devrun", "--sip-port", str(port)],
            cwd=clone,
            env=clone_env(clone),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a failed test can take its children down too
        )
    try:
        yield proc, port, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers, if any
        except ProcessLookupError:
            pass
        proc.wait(5)


def ctl(clone: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``.venv/bin/softswitchctl ARGV`` from the clone's directory, no flags added."""
    return subprocess.run(
        [str(VENV_BIN / "softswitchctl"), *argv],
        cwd=clone,
        env=clone_env(clone),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_readme_quick_start_make_run_user_add_and_two_phones_talk(
    clone: Path, make_run, make_phone
) -> None:
    proc, port, log = make_run
    env = clone_env(clone)
    where = subprocess.run(
        [str(PY), "-c", "import softswitch, bearer; print(softswitch.__file__, bearer.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert all(p.startswith(str(clone)) for p in where), f"not running the clone's code: {where}"

    # The switch comes up and softswitchctl, run from the clone, finds it by itself.
    deadline = time.monotonic() + 30
    status: dict = {}
    while time.monotonic() < deadline:  # bounded
        assert proc.poll() is None, f"make run exited {proc.returncode}:\n{log.read_text()}"
        done = ctl(clone, "status", "--json")
        if done.returncode == 0:
            status = json.loads(done.stdout)
            if status.get("state") == "serving":
                break
        time.sleep(0.3)
    assert status.get("state") == "serving", f"{status}\n{log.read_text()}"

    # The README's own user-add lines, verbatim but for the venv's location.
    adds = readme_commands(clone, ".venv/bin/softswitchctl user add")
    users = {}
    for argv in adds:
        assert argv[:3] == [".venv/bin/softswitchctl", "user", "add"], argv
        done = ctl(clone, *argv[1:])
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
        users[argv[3]] = argv[argv.index("--password") + 1]
    assert set(users) == {"alice", "bob"}, f"README adds {users}; the test expects alice and bob"
    listed = json.loads(ctl(clone, "user", "list", "--json").stdout)
    assert {u["username"] for u in listed} == {"alice", "bob"}, listed

    # The daemon loads new users within [database] sync_interval; a phone that
    # tried before would count as failed logins (make run bans after 5).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # bounded
        if json.loads(ctl(clone, "status", "--json").stdout).get("users") == 2:
            break
        time.sleep(0.3)

    # Phones configured as the README's table says: server and realm 127.0.0.1.
    a = make_phone("alice", tone_hz=440.0)
    b = make_phone("bob", tone_hz=1000.0, auto_answer=0.3)
    registrar = f"sip:127.0.0.1:{port}"
    for phone, user in ((a, "alice"), (b, "bob")):
        # New users reach the daemon within [database] sync_interval (2 s).
        for _ in range(4):  # bounded
            code = phone.register(registrar, user, users[user], "127.0.0.1", timeout=5)
            if code == 200:
                break
            time.sleep(1.0)
        assert code == 200, f"{user} could not register: {code}\n{log.read_text()[-3000:]}"

    ca = a.call(f"sip:bob@127.0.0.1:{port}")
    info = a.wait_state("CONFIRMED", 8, call=ca)
    assert info["state"] == "CONFIRMED", f"{info}\n{log.read_text()[-3000:]}"
    cb = b.incoming(2)
    a.pump(2.5)
    a.hangup(ca)
    assert a.wait_state("DISCONNECTED", 5, call=ca)["state"] == "DISCONNECTED"
    assert b.wait_state("DISCONNECTED", 5, call=cb)["state"] == "DISCONNECTED"
    assert_hears(b.recording(cb), 440.0, not_hz=[1000.0])
    assert_hears(a.recording(ca), 1000.0, not_hz=[440.0])

    rows: list = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not rows:  # bounded
        rows = json.loads(ctl(clone, "cdr", "--json").stdout)
        time.sleep(0.3)
    assert [(r["caller"], r["callee"], r["disposition"]) for r in rows] == [
        ("alice@127.0.0.1", "bob@127.0.0.1", "answered")
    ], rows

    # Ctrl-C stops all three daemons cleanly.
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(20) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    # No daemon died on the way (the launcher would have said so and restarted it).
    assert not re.search(r"exited with (status )?[1-9]|was killed by", output), output[-3000:]

"""softswitchctl end to end: through main([...]) and through the installed console script."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from softswitch.cli import ctl
from softswitch.db.cdrs import to_row as cdr_row
from softswitch.db.schema import (
    SCHEMA_VERSION,
    binding_row,
    cdrs,
    deleted_users,
    make_engine,
    registrations,
    users,
)
from softswitch.model.cdr import Disposition
from softswitch.sip.digest import ha1
from tests.unit.control.admin_server import serving
from tests.unit.control.dbthread_cases import DOMAIN, a_cdr, binding, write_config

SOFTSWITCHCTL = Path(sys.executable).parent / "softswitchctl"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "etc", f"sqlite:///{tmp_path / 'softswitch.db'}")


@pytest.fixture
def engine(config: Path):
    engine = make_engine(f"sqlite:///{config.parent / 'softswitch.db'}")
    yield engine
    engine.dispose()


def softswitchctl(config: Path, *argv: str) -> int:
    return ctl.main(["--config-dir", str(config), *argv])


def user_row(engine, username: str, domain: str = DOMAIN):
    with engine.connect() as conn:
        query = sa.select(users).where(users.c.username == username, users.c.domain == domain)
        return conn.execute(query).first()


# -- users --------------------------------------------------------------------------


def test_user_add_stores_both_ha1s_under_the_realm_and_never_the_password(config, engine):
    assert softswitchctl(config, "user", "add", "alice", "--password", "Pa55-w0rd!") == 0
    row = user_row(engine, "alice")
    oracle = hashlib.md5(f"alice:{DOMAIN}:Pa55-w0rd!".encode()).hexdigest()
    assert row.ha1_md5 == oracle == ha1("alice", DOMAIN, "Pa55-w0rd!", "MD5")
    assert row.ha1_sha256 == hashlib.sha256(f"alice:{DOMAIN}:Pa55-w0rd!".encode()).hexdigest()
    assert (row.enabled, row.record_calls, row.max_calls) == (True, False, 4)  # config default
    engine.dispose()
    for f in config.parent.glob("softswitch.db*"):  # the database, its WAL and SHM
        assert b"Pa55-w0rd!" not in f.read_bytes(), f


def test_user_add_uses_the_configured_realm(tmp_path):
    config = write_config(tmp_path / "etc", f"sqlite:///{tmp_path / 'db'}")
    with open(config / "softswitch.conf", "a") as f:
        f.write("\n[calls]\nmax_calls_per_user = 9\n")
    text = (config / "softswitch.conf").read_text().replace("[sip]\n", '[sip]\nrealm = "pbx"\n')
    (config / "softswitch.conf").write_text(text)
    assert softswitchctl(config, "user", "add", "bob", "--password", "pw", "--record") == 0
    row = user_row(make_engine(f"sqlite:///{tmp_path / 'db'}"), "bob")
    assert row.ha1_md5 == ha1("bob", "pbx", "pw") and row.max_calls == 9 and row.record_calls


def test_user_add_with_options_and_explicit_domain(config, engine):
    argv = ["user", "add", "+15551234@Other.Example", "--password", "pw"]
    argv += ["--display", "Front Desk", "--max-calls", "0"]
    assert softswitchctl(config, *argv) == 0
    row = user_row(engine, "+15551234", "other.example")
    assert (row.display_name, row.max_calls) == ("Front Desk", 0)
    assert row.ha1_md5 == ha1("+15551234", DOMAIN, "pw")  # one realm for the switch


def test_adding_an_existing_user_fails_with_one_line_and_status_1(config, capsys):
    assert softswitchctl(config, "user", "add", "alice", "--password", "a") == 0
    capsys.readouterr()
    assert softswitchctl(config, "user", "add", "alice", "--password", "b") == 1
    assert capsys.readouterr().err == f"softswitchctl: user exists: alice@{DOMAIN}\n"


def test_usernames_are_case_sensitive_and_checked(config, capsys):
    assert softswitchctl(config, "user", "add", "alice", "--password", "a") == 0
    assert softswitchctl(config, "user", "add", "Alice", "--password", "a") == 0
    capsys.readouterr()
    assert softswitchctl(config, "user", "add", "bad name", "--password", "a") == 1
    err = capsys.readouterr().err
    assert err.startswith("softswitchctl: invalid username 'bad name'") and err.count("\n") == 1


def test_user_list_is_an_aligned_table_or_json(config, capsys):
    softswitchctl(config, "user", "add", "alice", "--password", "a", "--display", "Alice A.")
    softswitchctl(config, "user", "add", "bob", "--password", "b", "--record", "--srtp", "off")
    capsys.readouterr()
    assert softswitchctl(config, "user", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "USER",
        "DOMAIN",
        "DISPLAY",
        "NAME",
        "ENABLED",
        "RECORD",
        "MAX",
        "CALLS",
        "SRTP",
        *("FWD", "ALWAYS", "FWD", "BUSY", "FWD", "NOANSWER", "AFTER", "DND"),
    ]
    tail = ["-", "-", "-", "20", "no"]
    assert lines[1].split() == ["alice", DOMAIN, "Alice", "A.", "yes", "no", "4", "default", *tail]
    assert lines[2].split() == ["bob", DOMAIN, "yes", "yes", "4", "off", *tail]
    assert lines[1].index(DOMAIN) == lines[2].index(DOMAIN) == lines[0].index("DOMAIN")
    assert softswitchctl(config, "user", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [u["username"] for u in listed] == ["alice", "bob"]
    assert listed[1]["record_calls"] is True and "ha1_md5" not in listed[1]
    assert listed[1]["srtp"] == "off" and listed[0]["srtp"] == "default"


def test_user_set_srtp_policy_and_back_to_the_default(config, engine, capsys):
    softswitchctl(config, "user", "add", "alice", "--password", "a")
    assert user_row(engine, "alice").srtp == ""
    assert softswitchctl(config, "user", "set", "alice", "--srtp", "mandatory") == 0
    assert user_row(engine, "alice").srtp == "mandatory"
    assert softswitchctl(config, "user", "set", "alice", "--srtp", "default") == 0
    assert user_row(engine, "alice").srtp == ""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        softswitchctl(config, "user", "set", "alice", "--srtp", "sometimes")


def test_user_set_forwarding_and_dnd_then_clear_them(config, engine, capsys):
    softswitchctl(config, "user", "add", "bob", "--password", "b")
    row = user_row(engine, "bob")
    assert (row.forward_always, row.forward_busy, row.forward_noanswer) == ("", "", "")
    assert (row.noanswer_after, bool(row.dnd)) == (20, False)
    argv = ["--forward-always", "carol", "--forward-busy", "dave", "--forward-noanswer", "erin"]
    assert softswitchctl(config, "user", "set", "bob", *argv, "--noanswer-after", "7") == 0
    assert softswitchctl(config, "user", "set", "bob", "--dnd", "on") == 0
    row = user_row(engine, "bob")
    assert (row.forward_always, row.forward_busy, row.forward_noanswer) == ("carol", "dave", "erin")
    assert (row.noanswer_after, bool(row.dnd)) == (7, True)
    capsys.readouterr()
    assert softswitchctl(config, "user", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)[0]
    assert (listed["forward_always"], listed["noanswer_after"], listed["dnd"]) == ("carol", 7, True)
    assert softswitchctl(config, "user", "set", "bob", "--forward-always", "", "--dnd", "off") == 0
    row = user_row(engine, "bob")
    assert (row.forward_always, row.forward_busy, bool(row.dnd)) == ("", "dave", False)
    for bad in (["--forward-busy", "x@other.example"], ["--noanswer-after", "0"], ["--dnd", "y"]):
        with pytest.raises(SystemExit):
            softswitchctl(config, "user", "set", "bob", *bad)


def test_user_passwd_replaces_both_ha1s(config, engine):
    softswitchctl(config, "user", "add", "alice", "--password", "old")
    before = user_row(engine, "alice")
    time.sleep(0.01)
    assert softswitchctl(config, "user", "passwd", "alice", "--password", "new") == 0
    after = user_row(engine, "alice")
    assert after.ha1_md5 == ha1("alice", DOMAIN, "new")
    assert after.ha1_sha256 == ha1("alice", DOMAIN, "new", "SHA-256")
    assert after.updated_at > before.updated_at  # so the daemon's poll sees it


def test_user_set_changes_flags_and_needs_something_to_change(config, engine, capsys):
    softswitchctl(config, "user", "add", "alice", "--password", "a")
    assert softswitchctl(config, "user", "set", "alice", "--disable", "--record") == 0
    row = user_row(engine, "alice")
    assert (row.enabled, row.record_calls) == (False, True)
    softswitchctl(config, "user", "set", "alice", "--enable", "--no-record", "--max-calls", "2")
    row = user_row(engine, "alice")
    assert (row.enabled, row.record_calls, row.max_calls) == (True, False, 2)
    capsys.readouterr()
    assert softswitchctl(config, "user", "set", "alice") == 2
    assert "nothing to change" in capsys.readouterr().err


def test_user_del_removes_user_and_registrations_and_leaves_a_tombstone(config, engine, capsys):
    softswitchctl(config, "user", "add", "user1", "--password", "a")
    with engine.begin() as conn:
        conn.execute(sa.insert(registrations), [binding_row(binding(1))])
    assert softswitchctl(config, "user", "del", "user1") == 0
    assert user_row(engine, "user1") is None
    with engine.connect() as conn:
        assert conn.execute(sa.select(registrations)).all() == []
        tomb = conn.execute(sa.select(deleted_users)).one()
    assert (tomb.username, tomb.domain) == ("user1", DOMAIN)
    capsys.readouterr()
    assert softswitchctl(config, "user", "del", "user1") == 1
    assert capsys.readouterr().err == f"softswitchctl: no such user: user1@{DOMAIN}\n"
    assert softswitchctl(config, "user", "passwd", "nobody", "--password", "x") == 1
    assert softswitchctl(config, "user", "set", "nobody", "--disable") == 1


# -- CDRs -----------------------------------------------------------------------------


def test_cdr_lists_the_most_recent_first(config, engine, capsys):
    softswitchctl(config, "user", "list")  # creates the schema
    with engine.begin() as conn:
        conn.execute(
            sa.insert(cdrs),
            [
                cdr_row(a_cdr(1)),
                cdr_row(a_cdr(2, disposition=Disposition.BUSY, sip_code=486, answer=None)),
                cdr_row(a_cdr(3, callee="sip:carol@example.com")),
            ],
        )
    capsys.readouterr()
    assert softswitchctl(config, "cdr", "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["START", "(UTC)", "CALLER"]
    assert len(lines) == 3
    assert "sip:carol@example.com" in lines[1] and "answered" in lines[1] and "60.2" in lines[1]
    assert "busy" in lines[2] and "486" in lines[2]
    assert softswitchctl(config, "cdr", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["call_id"] for d in data] == [f"call-{n}@example.com" for n in (3, 2, 1)]
    assert data[0]["start_time"] == "2023-11-14 22:13:23" and data[0]["a_lost"] == 3


def test_cdr_of_a_forwarded_call_shows_for_whom_it_was(config, engine, capsys):
    softswitchctl(config, "user", "list")  # creates the schema
    forwarded = a_cdr(1, callee=f"carol@{DOMAIN}", forwarded_from=f"bob@{DOMAIN}")
    with engine.begin() as conn:
        conn.execute(sa.insert(cdrs), [cdr_row(forwarded)])
    capsys.readouterr()
    assert softswitchctl(config, "cdr") == 0
    assert f"carol@{DOMAIN} (for bob@{DOMAIN})" in capsys.readouterr().out
    assert softswitchctl(config, "cdr", "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["callee"], row["forwarded_from"]) == (f"carol@{DOMAIN}", f"bob@{DOMAIN}")


# -- live commands --------------------------------------------------------------------


def test_live_commands_without_a_daemon_say_so_in_one_line(config, capsys):
    assert softswitchctl(config, "calls") == 1
    socket_path = config / "admin.sock"
    err = f"softswitchctl: softswitch-control is not running (no socket at {socket_path})\n"
    assert capsys.readouterr().err == err


def test_live_commands_render_what_the_daemon_answers(config, capsys):
    handlers = {
        "calls": lambda args: [
            {"call_id": "c1", "caller": "alice", "callee": "bob", "state": "confirmed"},
            {"call_id": "c22", "caller": "carol", "callee": "dave", "state": "ringing"},
        ],
        "registrations": lambda args: [],
        "status": lambda args: {"uptime": 3.5, "users": 2, "database": "ok"},
        "reload": lambda args: "configuration reloaded",
        "bearers": lambda args: [{"name": "bearer-0", "calls": 3, "up": True}],
    }
    with serving(config / "admin.sock", handlers):
        assert softswitchctl(config, "calls") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["CALL", "ID", "CALLER", "CALLEE", "STATE"]
        assert lines[2].split() == ["c22", "carol", "dave", "ringing"]
        assert lines[1].index("alice") == lines[2].index("carol")
        assert softswitchctl(config, "registrations") == 0
        assert capsys.readouterr().out == "(none)\n"
        assert softswitchctl(config, "status") == 0
        assert capsys.readouterr().out.splitlines() == [
            "uptime:   3.5",
            "users:    2",
            "database: ok",
        ]
        assert softswitchctl(config, "reload") == 0
        assert capsys.readouterr().out == "configuration reloaded\n"
        assert softswitchctl(config, "bearers", "--json") == 0
        assert json.loads(capsys.readouterr().out) == [{"name": "bearer-0", "calls": 3, "up": True}]


# -- errors ----------------------------------------------------------------------------


def test_bad_usage_prints_usage_and_exits_2(config, capsys):
    for argv in ([], ["user"], ["user", "frobnicate"], ["cdr", "--limit", "zero"]):
        with pytest.raises(SystemExit) as exit_:
            softswitchctl(config, *argv)
        assert exit_.value.code == 2
        assert "usage: softswitchctl" in capsys.readouterr().err


def test_a_bad_config_is_one_line_and_exits_2(tmp_path, capsys):
    (tmp_path / "softswitch.conf").write_text('[database]\nsync_interval = "often"\n')
    assert ctl.main(["--config-dir", str(tmp_path), "user", "list"]) == 2
    err = capsys.readouterr().err
    conf = tmp_path / "softswitch.conf"
    assert err == (
        f"softswitchctl: {conf}:2: [database] sync_interval: expected a number,"
        ' got a string ("often")\n'
    )


def test_an_explicit_config_dir_without_the_file_is_an_error(tmp_path, capsys):
    assert ctl.main(["--config-dir", str(tmp_path / "nowhere"), "user", "list"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "etc", "sqlite:////nonexistent-dir/x/softswitch.db")
    assert ctl.main(["--config-dir", str(config), "user", "list"]) == 1
    assert capsys.readouterr().err == (
        "softswitchctl: database error: unable to open database file\n"
    )


def test_an_unusable_database_url_is_a_config_error(tmp_path, capsys):
    config = write_config(tmp_path / "etc", "nosuchdb://x/y")
    assert ctl.main(["--config-dir", str(config), "user", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"softswitchctl: {config / 'softswitch.conf'}: [database] url: ")
    assert err.count("\n") == 1


def test_a_database_from_a_newer_softswitch_is_refused(config, engine, capsys):
    softswitchctl(config, "user", "list")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1})
    capsys.readouterr()
    assert softswitchctl(config, "user", "list") == 1
    assert "newer than this softswitch understands" in capsys.readouterr().err


# -- the real console script ---------------------------------------------------------------


def run_script(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOFTSWITCHCTL), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_console_script_adds_and_lists_users(config, engine):
    done = run_script("--config-dir", str(config), "user", "add", "alice", "--password", "pw")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"added alice@{DOMAIN}\n", "")
    done = run_script("--config-dir", str(config), "user", "list", "--json")
    assert json.loads(done.stdout)[0]["username"] == "alice"
    assert user_row(engine, "alice").ha1_md5 == ha1("alice", DOMAIN, "pw")


def test_console_script_errors_are_lines_not_tracebacks(config, tmp_path):
    done = run_script("--config-dir", str(config), "user", "bogus")
    assert done.returncode == 2 and "usage: softswitchctl" in done.stderr
    done = run_script("--config-dir", str(config), "user", "del", "ghost")
    assert (done.returncode, done.stderr) == (1, f"softswitchctl: no such user: ghost@{DOMAIN}\n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "softswitch.conf").write_text("[sip]\nport = 99999\n")
    done = run_script("--config-dir", str(tmp_path / "bad"), "status")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "[sip] port: 99999 is outside 1..65535" in done.stderr


def converse(
    argv: list[str], answers: list[tuple[bytes, bytes]], timeout: float = 20
) -> tuple[int, bytes]:
    """Run `argv` on a pseudo-terminal, answering each prompt; (status, transcript)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, as in a shell
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    transcript = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            transcript += chunk
            if pending and transcript.endswith(pending[0][0]):
                os.write(fd, pending.pop(0)[1])
    finally:
        os.close(fd)
    for _ in range(100):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), transcript
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"softswitchctl did not finish: {transcript!r}")


def test_console_script_prompts_twice_for_the_password_without_echo(config, engine):
    argv = [str(SOFTSWITCHCTL), "--config-dir", str(config), "user", "add", "carol"]
    answers = [(b"Password: ", b"t0p-secret\n"), (b"Retype password: ", b"t0p-secret\n")]
    status, transcript = converse(argv, answers)
    assert status == 0, transcript
    assert b"t0p-secret" not in transcript  # getpass turned echo off
    assert f"added carol@{DOMAIN}".encode() in transcript
    assert user_row(engine, "carol").ha1_md5 == ha1("carol", DOMAIN, "t0p-secret")


def test_console_script_refuses_mismatched_passwords(config, engine):
    argv = [str(SOFTSWITCHCTL), "--config-dir", str(config), "user", "add", "dan"]
    answers = [(b"Password: ", b"one\n"), (b"Retype password: ", b"two\n")]
    status, transcript = converse(argv, answers)
    assert status == 1 and b"the passwords do not match" in transcript
    assert user_row(engine, "dan") is None

"""softswitch-control killed with writes pending loses none of them (DESIGN.md 6).

The database is made unavailable the way an operator's long-running
``sqlite3`` shell or backup would: another connection holds SQLite's write
lock. A REGISTER and a whole call happen meanwhile, so a registration and a
CDR are pending in the DB thread; control is then killed with SIGKILL (no
stop, no flush), the lock released and control started again with the same
configuration: the journal under ``[database] spool_dir`` is replayed before
the users and registrations are loaded.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

from bench.harness.control import DOMAIN, ControlProcess
from bench.harness.sip import Call


def journal_records(spool: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in spool.glob("journal-*.jsonl"))


def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still false after {timeout} s"
        time.sleep(0.1)


def test_sigkill_during_a_database_outage_loses_no_registration_and_no_cdr(
    switch: ControlProcess,
) -> None:
    database, spool = switch.tmp / "softswitch.db", switch.tmp / "spool"
    lock = sqlite3.connect(database, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # writers wait out the busy timeout, then fail
    call = Call(switch)  # Bob REGISTERs: answered at once, the write is pending
    try:
        call.establish()
        call.talk()
        assert call.hang_up().status == 200  # the call is over: its CDR is pending
        wait_for(lambda: journal_records(spool) >= 2, timeout=30)  # Bob's binding, the CDR
        assert switch.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        call.close()
    with sqlite3.connect(database) as conn:  # nothing got through before the kill
        assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone() == (0,)

    switch.start()
    assert "replayed journal" in switch.log()
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT call_id, disposition FROM cdrs").fetchall()
    assert rows == [(call.alice.call_id, "answered")]  # exactly once
    result = switch.ctl("registrations", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["aor"] for r in json.loads(result.stdout)] == [f"bob@{DOMAIN}"]
    assert journal_records(spool) == 0

"""The DB thread's behaviour, written once and run against SQLite and MariaDB.

A subclass provides the fixture ``db``: an object with ``url`` and with
``down()`` / ``up()``, which make the database unusable and usable again (a
write lock held by another process for SQLite; stopping and restarting
mariadbd on the same datadir for MariaDB).
"""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import pytest
import sqlalchemy as sa

from softswitch.cli import ctl
from softswitch.daemonkit.config import dumps
from softswitch.db import journal
from softswitch.db.cdrs import from_row
from softswitch.db.cdrs import to_row as cdr_row
from softswitch.db.messages import DbFatal, DbStatus, Loaded, UpdateUser, UsersChanged
from softswitch.db.schema import (
    SCHEMA_VERSION,
    binding_row,
    cdrs,
    create_schema,
    make_engine,
    registrations,
    schema_version,
    users,
)
from softswitch.db.thread import DbThread
from softswitch.db.users import add_user
from softswitch.model.cdr import Cdr, Disposition
from softswitch.model.users import Binding, UserDirectory
from softswitch.sip.digest import ha1

ROOT = Path(__file__).resolve().parents[3]
DOMAIN = "example.com"
#: Expiry of test bindings: fixed so that two calls of binding(n) are equal.
EXPIRES = float(round(time.time()) + 7200)


class Db(Protocol):
    url: str

    def down(self) -> None: ...
    def up(self) -> None: ...


def next_message(thread: DbThread, kind: type, timeout: float = 10.0) -> Any:
    """The next result of type `kind`, skipping others; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    skipped = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = thread.results.get(timeout=remaining)
        except queue.Empty:
            break
        if isinstance(message, kind):
            return message
        skipped.append(message)
    raise AssertionError(f"no {kind.__name__} within {timeout} s; got {skipped!r}")


def next_status(thread: DbThread, ok: bool, timeout: float = 20.0) -> DbStatus:
    """The next DbStatus saying the database is `ok` (or not)."""
    deadline = time.monotonic() + timeout
    while True:
        status = next_message(thread, DbStatus, max(0.01, deadline - time.monotonic()))
        if status.ok is ok:
            return status


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something true; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(0.02)
        value = check()
    assert value, f"condition still false after {timeout} s: {value!r}"
    return value


def count(engine: sa.engine.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def binding(n: int, **overrides: Any) -> Binding:
    values: dict[str, Any] = {
        "username": f"user{n}",
        "domain": DOMAIN,
        "contact": f"sip:user{n}@192.0.2.{n % 250 + 1}:5062;transport=udp",
        "expires_at": EXPIRES,
        "source_transport": "udp",
        "source_host": "198.51.100.7",
        "source_port": 40000 + n,
        "call_id": f"reg-{n}@phone",
        "cseq": 1,
        "path": "<sip:edge.example.com;lr>",
        "received": "sip:198.51.100.7:40001",
        "user_agent": "Yealink SIP-T46S 66.86.0.15",
        "instance": "<urn:uuid:00000000-0000-1000-8000-000000000001>",
        "reg_id": 1,
    }
    values.update(overrides)
    return Binding(**values)


def a_cdr(n: int, **overrides: Any) -> Cdr:
    start = 1_700_000_000.0 + n
    values: dict[str, Any] = {
        "call_id": f"call-{n}@example.com",
        "caller": "sip:alice@example.com",
        "callee": "sip:bob@example.com",
        "start": start,
        "answer": start + 2.5,
        "end": start + 62.75,
        "disposition": Disposition.ANSWERED,
        "sip_code": 200,
        "bearer": "bearer-0",
        "recording": None,
        "a_packets": 3000,
        "a_lost": 3,
        "a_jitter_ms": 1.25,
        "b_packets": 2990,
        "b_lost": 0,
        "b_jitter_ms": 0.5,
    }
    values.update(overrides)
    return Cdr(**values)


def write_config(directory: Path, url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "softswitch.conf").write_text(
        dumps(
            {
                "sip": {"domain": DOMAIN},
                "database": {"url": url},
                "admin": {"socket": str(directory / "admin.sock")},
            }
        )
    )
    return directory


def run_ctl(config: Path, *argv: str) -> None:
    assert ctl.main(["--config-dir", str(config), *argv]) == 0


def journal_records(spool: Path) -> int:
    """Records in the journal files under `spool` (0 if there are none)."""
    return sum(len(p.read_bytes().splitlines()) for p in spool.glob("journal-*.jsonl"))


_CHILD = """
import sys
from softswitch.db.thread import DbThread
from tests.unit.control import dbthread_cases
from tests.unit.control.dbthread_cases import a_cdr, binding, DOMAIN
dbthread_cases.EXPIRES = float(sys.argv[3])  # the test's, so that bindings compare equal
thread = DbThread(sys.argv[1], lambda: None, spool_dir=sys.argv[2], batch_interval=0.05,
                  retry_initial=0.05, retry_max=0.3, timeout=0.3)
thread.start()
for line in sys.stdin:
    op, *args = line.split()
    n = int(args[0]) if args else 0
    if op == "cdr":
        thread.write_cdr(a_cdr(n))
    elif op == "save":
        thread.save_binding(binding(n, cseq=int(args[1])))
    elif op == "delete":
        thread.delete_binding(f"user{n}", DOMAIN, binding(n).contact)
"""


class ChildDbThread:
    """A DbThread in a child process, fed through stdin, that a test can SIGKILL:
    softswitch-control dying with writes pending (no stop(), no atexit)."""

    def __init__(self, url: str, spool: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(spool), repr(EXPIRES)],
            stdin=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )

    def send(self, *commands: str) -> None:
        assert self.proc.stdin is not None and self.proc.poll() is None
        self.proc.stdin.write("".join(f"{c}\n" for c in commands))
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL


class DbThreadCases:
    """Subclasses add the ``db`` fixture."""

    @pytest.fixture
    def engine(self, db: Db) -> Iterator[sa.engine.Engine]:
        engine = make_engine(db.url)
        create_schema(engine)
        yield engine
        engine.dispose()

    @pytest.fixture
    def start(self, db: Db) -> Iterator[Callable[..., DbThread]]:
        threads: list[DbThread] = []

        def start(**options: Any) -> DbThread:  # spool_dir=... to journal
            settings: dict[str, Any] = {
                "sync_interval": 0.1,
                "batch_interval": 0.05,
                "retry_initial": 0.05,
                "retry_max": 0.3,
                "timeout": 0.3,
                "reconcile_every": 1000,
            }
            settings.update(options)
            thread = DbThread(db.url, lambda: None, **settings)
            thread.start()
            threads.append(thread)
            return thread

        yield start
        for thread in threads:
            thread.stop(5)

    # -- loading ------------------------------------------------------------

    def test_loaded_snapshot_has_every_user_and_only_live_registrations(self, engine, start):
        with engine.begin() as conn:
            add_user(conn, "alice", DOMAIN, ("1" * 32, "2" * 64), display_name="Alice")
            add_user(
                conn,
                "bob",
                DOMAIN,
                ("3" * 32, "4" * 64),
                record_calls=True,
                max_calls=2,
                srtp="off",
            )
            conn.execute(sa.insert(registrations), [binding_row(binding(1))])
            expired = binding(2, expires_at=time.time() - 10)
            conn.execute(sa.insert(registrations), [binding_row(expired)])
        loaded = next_message(start(), Loaded)
        assert set(loaded.users) == {("alice", DOMAIN), ("bob", DOMAIN)}
        alice = loaded.users[("alice", DOMAIN)]
        assert (alice.ha1_md5, alice.ha1_sha256, alice.display_name) == (
            "1" * 32,
            "2" * 64,
            "Alice",
        )
        bob = loaded.users[("bob", DOMAIN)]
        assert (bob.record_calls, bob.max_calls, bob.enabled) == (True, 2, True)
        assert (bob.srtp, alice.srtp) == ("off", "")
        assert loaded.registrations == [binding(1)]

    def test_notify_wakes_an_asyncio_main_loop(self, db):
        async def main() -> object:
            loop = asyncio.get_running_loop()
            arrived: asyncio.Queue[object] = asyncio.Queue()

            def drain() -> None:  # runs on the loop, never blocks
                while True:
                    try:
                        arrived.put_nowait(thread.results.get_nowait())
                    except queue.Empty:
                        return

            thread = DbThread(db.url, lambda: loop.call_soon_threadsafe(drain))
            thread.start()
            try:
                return await asyncio.wait_for(arrived.get(), 10)
            finally:
                await asyncio.to_thread(thread.stop, 5)

        assert isinstance(asyncio.run(main()), Loaded)

    def test_database_down_at_start_reports_status_then_loads_when_it_returns(self, db, start):
        db.down()
        thread = start()
        status = next_message(thread, DbStatus)
        assert status.ok is False and status.error
        db.up()
        assert next_message(thread, Loaded).users == {}

    def test_database_with_a_newer_schema_is_fatal(self, engine, start):
        with engine.begin() as conn:
            conn.execute(sa.update(schema_version).values(version=99))
        thread = start()
        fatal = next_message(thread, DbFatal)
        assert "newer" in fatal.error and "99" in fatal.error
        assert thread.stop(5) is True and thread.results.empty()  # one report, then gone

    # -- user changes -----------------------------------------------------------

    def test_user_added_by_softswitchctl_arrives_within_sync_interval(self, db, start, tmp_path):
        config = write_config(tmp_path / "etc", db.url)
        thread = start(sync_interval=0.5)
        directory = UserDirectory()
        directory.load(next_message(thread, Loaded).users)
        run_ctl(config, "user", "add", "carol", "--password", "s3cret", "--display", "Carol")
        added = time.monotonic()
        changed = next_message(thread, UsersChanged, timeout=5)
        waited = time.monotonic() - added
        assert waited < 0.5 + 0.5, f"UsersChanged {waited:.2f} s after the add"
        directory.apply(changed.users, changed.deleted)
        carol = directory.lookup("carol", "EXAMPLE.com")
        assert carol is not None and carol.display_name == "Carol"
        assert carol.ha1("MD5") == ha1("carol", DOMAIN, "s3cret", "MD5")
        assert carol.ha1("SHA-256") == ha1("carol", DOMAIN, "s3cret", "SHA-256")

        run_ctl(config, "user", "set", "carol", "--disable", "--max-calls", "1")
        changed = next_message(thread, UsersChanged, timeout=5)
        directory.apply(changed.users, changed.deleted)
        carol = directory.lookup("carol", DOMAIN)
        assert (carol.enabled, carol.max_calls) == (False, 1)
        run_ctl(config, "user", "passwd", "carol", "--password", "n3w")
        changed = next_message(thread, UsersChanged, timeout=5)
        directory.apply(changed.users, changed.deleted)
        assert directory.lookup("carol", DOMAIN).ha1_md5 == ha1("carol", DOMAIN, "n3w")

    def test_user_deleted_by_softswitchctl_is_removed(self, db, engine, start, tmp_path):
        config = write_config(tmp_path / "etc", db.url)
        run_ctl(config, "user", "add", "dave", "--password", "pw")
        thread = start()
        directory = UserDirectory()
        directory.load(next_message(thread, Loaded).users)
        assert directory.lookup("dave", DOMAIN) is not None
        run_ctl(config, "user", "del", "dave")
        changed = next_message(thread, UsersChanged)
        assert [(d.username, d.domain) for d in changed.deleted] == [("dave", DOMAIN)]
        directory.apply(changed.users, changed.deleted)
        assert directory.lookup("dave", DOMAIN) is None and len(directory) == 0

    def test_user_deleted_and_added_again_between_two_polls_ends_present(
        self, db, engine, start, tmp_path
    ):
        config = write_config(tmp_path / "etc", db.url)
        run_ctl(config, "user", "add", "erin", "--password", "old")
        thread = start(sync_interval=1.0)
        directory = UserDirectory()
        directory.load(next_message(thread, Loaded).users)
        run_ctl(config, "user", "del", "erin")
        run_ctl(config, "user", "add", "erin", "--password", "new")
        deadline = time.monotonic() + 4  # a late tombstone must not remove the new erin
        while time.monotonic() < deadline:
            try:
                changed = thread.results.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(changed, UsersChanged):
                directory.apply(changed.users, changed.deleted)
        erin = directory.lookup("erin", DOMAIN)
        assert erin is not None and erin.ha1_md5 == ha1("erin", DOMAIN, "new")

    def test_user_deleted_with_plain_sql_is_found_by_the_count_check(self, engine, start):
        with engine.begin() as conn:
            add_user(conn, "frank", DOMAIN, ("5" * 32, "6" * 64))
            add_user(conn, "grace", DOMAIN, ("7" * 32, "8" * 64))
        thread = start(reconcile_every=2)
        next_message(thread, Loaded)
        with engine.begin() as conn:  # no tombstone, no updated_at: an operator's shortcut
            conn.execute(sa.delete(users).where(users.c.username == "frank"))
        changed = next_message(thread, UsersChanged)
        assert [d.username for d in changed.deleted] == ["frank"] and changed.users == ()

    # -- registrations --------------------------------------------------------------

    def test_bindings_are_saved_and_loaded_again_after_a_restart(self, engine, start):
        thread = start()
        next_message(thread, Loaded)
        for n in range(3):
            thread.save_binding(binding(n))
        thread.delete_binding("user1", DOMAIN, binding(1).contact)
        for cseq in range(2, 52):  # re-REGISTERs coalesce: the last one wins
            thread.save_binding(binding(2, cseq=cseq))
        assert thread.stop(5) is True
        assert count(engine, registrations) == 2
        again = next_message(start(), Loaded)
        assert sorted(again.registrations, key=lambda b: b.username) == [
            binding(0),
            binding(2, cseq=51),
        ]

    def test_a_binding_that_cannot_be_stored_is_refused_to_the_caller(self, start):
        thread = start()
        with pytest.raises(ValueError, match="contact is longer than 512"):
            thread.save_binding(binding(1, contact="sip:" + "x" * 600 + "@example.com"))

    # -- CDRs --------------------------------------------------------------------------

    def test_cdrs_wait_for_a_full_batch_or_a_flush(self, engine, start):
        thread = start(batch_max=100, batch_interval=60)
        next_message(thread, Loaded)
        for n in range(99):
            thread.write_cdr(a_cdr(n))
        time.sleep(0.5)
        assert count(engine, cdrs) == 0  # 99 < batch_max and the deadline is a minute away
        thread.write_cdr(a_cdr(99))
        eventually(lambda: count(engine, cdrs) == 100)
        for n in range(100, 130):
            thread.write_cdr(a_cdr(n))
        time.sleep(0.3)
        assert count(engine, cdrs) == 100
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 130)

    def test_cdrs_are_written_after_batch_interval(self, engine, start):
        thread = start(batch_max=100, batch_interval=0.5)
        next_message(thread, Loaded)
        thread.write_cdr(a_cdr(1))
        written = time.monotonic()
        eventually(lambda: count(engine, cdrs) == 1)
        assert 0.4 < time.monotonic() - written < 3

    def test_cdr_columns_round_trip(self, engine, start):
        thread = start()
        next_message(thread, Loaded)
        sent = [
            a_cdr(1),
            a_cdr(2, answer=None, disposition=Disposition.BUSY, sip_code=486, recording="/r/2.wav"),
            a_cdr(3, end=None, answer=None, disposition=Disposition.CANCELLED, sip_code=487),
        ]
        for c in sent:
            thread.write_cdr(c)
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 3)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(cdrs).order_by(cdrs.c.id)).all()
        assert [from_row(r) for r in rows] == sent
        assert [r.duration for r in rows] == [60.25, 0.0, 0.0]

    def test_a_cdr_the_database_refuses_is_dropped_and_counted_not_blocking(self, engine, start):
        thread = start()
        next_message(thread, Loaded)
        thread.write_cdr(a_cdr(1))
        thread.write_cdr(a_cdr(2, disposition="no-such-disposition"))
        thread.write_cdr(a_cdr(3))
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 2)
        eventually(lambda: thread.dropped == 1)

    def test_stop_writes_every_pending_cdr(self, engine, start):
        thread = start(batch_max=1000, batch_interval=60)
        next_message(thread, Loaded)
        for n in range(37):
            thread.write_cdr(a_cdr(n))
        assert thread.stop(10) is True
        assert count(engine, cdrs) == 37

    # -- outages -------------------------------------------------------------------------

    def test_outage_queues_writes_and_delivers_them_when_the_database_returns(
        self, db, engine, start
    ):
        thread = start(batch_max=10)
        next_message(thread, Loaded)
        db.down()
        for n in range(50):
            thread.write_cdr(a_cdr(n))
        thread.save_binding(binding(7))
        down = next_message(thread, DbStatus)
        assert down.ok is False and down.error
        for n in range(50, 80):  # calls go on while the database is away
            thread.write_cdr(a_cdr(n))
        db.up()
        assert next_status(thread, ok=True).dropped == 0
        eventually(lambda: count(engine, cdrs) == 80)
        assert count(engine, registrations) == 1
        with engine.connect() as conn:
            ids = conn.execute(sa.select(cdrs.c.call_id)).scalars().all()
        assert sorted(ids) == sorted(f"call-{n}@example.com" for n in range(80))

    def test_overflow_during_an_outage_is_dropped_and_counted(self, db, engine, start):
        thread = start(write_queue_max=100, batch_max=10)
        next_message(thread, Loaded)
        db.down()
        thread.write_cdr(a_cdr(0))
        thread.flush()
        assert next_message(thread, DbStatus).ok is False
        for n in range(1, 150):
            thread.write_cdr(a_cdr(n))
        # 100 fit (the command queue's own bound may also hold the flush
        # request, so one or two fewer); the rest are dropped, and counted.
        eventually(lambda: thread.dropped >= 50)
        db.up()
        up = next_status(thread, ok=True)
        eventually(lambda: count(engine, cdrs) + thread.dropped == 150)
        assert 98 <= count(engine, cdrs) <= 100
        assert up.dropped == thread.dropped

    def test_stop_during_an_outage_says_writes_were_lost(self, db, start):
        thread = start()
        next_message(thread, Loaded)
        db.down()
        thread.write_cdr(a_cdr(1))
        try:
            assert thread.stop(1.5) is False
        finally:
            db.up()

    # -- the journal: a crash loses nothing ---------------------------------------------

    def test_a_crash_while_the_database_is_down_loses_no_cdr_and_no_registration(
        self, db, engine, start, tmp_path
    ):
        spool = tmp_path / "spool"
        db.down()
        child = ChildDbThread(db.url, spool)
        try:
            child.send(*(f"cdr {n}" for n in range(20)))
            child.send("save 1 1", "save 2 1", "save 3 1", "save 2 7", "delete 3")
            eventually(lambda: journal_records(spool) == 25)  # journaled before any commit
        finally:
            child.kill()
        db.up()
        thread = start(spool_dir=spool)
        loaded = next_message(thread, Loaded)
        assert sorted(loaded.registrations, key=lambda b: b.username) == [
            binding(1),
            binding(2, cseq=7),
        ]
        with engine.connect() as conn:
            ids = conn.execute(sa.select(cdrs.c.call_id)).scalars().all()
        assert sorted(ids) == sorted(f"call-{n}@example.com" for n in range(20))
        assert journal_records(spool) == 0 and thread.spool_errors == 0

    def test_a_journal_replayed_after_its_writes_were_committed_writes_no_cdr_twice(
        self, db, engine, start, tmp_path
    ):
        spool = tmp_path / "spool"
        db.down()
        child = ChildDbThread(db.url, spool)
        try:
            child.send(*(f"cdr {n}" for n in range(10)), "save 1 1")
            eventually(lambda: journal_records(spool) == 11)
            [journal] = spool.glob("journal-*.jsonl")
            before = journal.read_bytes()  # as the journal was when the batch committed
            db.up()
            eventually(lambda: count(engine, cdrs) == 10)
            eventually(lambda: journal_records(spool) == 0)  # committed: emptied
            db.down()
            child.send("cdr 10", "cdr 11", "save 1 2")  # pending when control dies
            eventually(lambda: journal_records(spool) == 3)
        finally:
            child.kill()
        # The crash came between the commit and the emptying (or a compaction
        # left its old file behind): the committed records are in a journal too.
        (spool / "journal-00000000000000000001-1.jsonl").write_bytes(before)
        db.up()
        thread = start(spool_dir=spool)
        assert next_message(thread, Loaded).registrations == [binding(1, cseq=2)]
        with engine.connect() as conn:
            ids = conn.execute(sa.select(cdrs.c.call_id)).scalars().all()
        assert sorted(ids) == sorted(f"call-{n}@example.com" for n in range(12))
        assert journal_records(spool) == 0

    def test_a_stop_with_the_database_down_keeps_the_writes_for_the_next_start_which_waits(
        self, db, engine, start, tmp_path
    ):
        spool = tmp_path / "spool"
        thread = start(spool_dir=spool)
        next_message(thread, Loaded)
        db.down()
        thread.write_cdr(a_cdr(1))
        thread.save_binding(binding(4))
        try:
            assert thread.stop(1.5) is False
            assert journal_records(spool) == 2
            again = start(spool_dir=spool)  # still down: the replay waits, like the load
            assert next_message(again, DbStatus).ok is False
        finally:
            db.up()
        assert next_message(again, Loaded).registrations == [binding(4)]
        assert count(engine, cdrs) == 1 and journal_records(spool) == 0

    def test_the_journal_is_emptied_once_the_database_has_everything(self, engine, start, tmp_path):
        spool = tmp_path / "spool"
        thread = start(spool_dir=spool, batch_interval=60)
        next_message(thread, Loaded)
        for n in range(5):
            thread.write_cdr(a_cdr(n))
        eventually(lambda: journal_records(spool) == 5)
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 5)
        eventually(lambda: journal_records(spool) == 0)
        assert thread.stop(5) is True
        assert list(spool.iterdir()) == []  # a clean stop leaves no file

    def test_a_journal_growing_during_an_outage_is_compacted(
        self, db, engine, start, tmp_path, monkeypatch
    ):
        monkeypatch.setattr(journal, "COMPACT_MIN", 20)
        spool = tmp_path / "spool"
        thread = start(spool_dir=spool)
        next_message(thread, Loaded)
        db.down()
        for cseq in range(1, 201):  # one phone re-registering: one pending write
            thread.save_binding(binding(1, cseq=cseq))
            if cseq % 10 == 0:
                eventually(lambda: thread.backlog == 1)
        assert journal_records(spool) <= 20 + 10
        db.up()
        eventually(lambda: count(engine, registrations) == 1)
        with engine.connect() as conn:
            assert conn.execute(sa.select(registrations.c.cseq)).scalar() == 200

    def test_an_unusable_spool_dir_is_logged_and_counted_and_writes_go_on(
        self, engine, start, tmp_path, caplog
    ):
        (tmp_path / "spool").write_text("a file where the directory should be")
        with caplog.at_level("ERROR", logger="softswitch.db"):
            thread = start(spool_dir=tmp_path / "spool")
            status = next_message(thread, DbStatus)
        assert status.spool_errors == 1 and thread.spool_errors == 1
        assert "journal off: " in caplog.text and "File exists" in caplog.text
        next_message(thread, Loaded)
        thread.write_cdr(a_cdr(1))
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 1)
        assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1

    def test_a_database_of_schema_version_1_gets_cdr_uids_and_keeps_its_cdrs(
        self, engine, start, tmp_path
    ):
        with engine.begin() as conn:  # what softswitch with schema version 1 left
            conn.execute(sa.insert(cdrs), [cdr_row(a_cdr(1))])
            conn.execute(sa.text("DROP INDEX uq_cdrs_uid" + (" ON cdrs" if _mysql(conn) else "")))
            conn.execute(sa.text("ALTER TABLE cdrs DROP COLUMN uid"))
            conn.execute(sa.update(schema_version).values(version=1))
        thread = start(spool_dir=tmp_path / "spool")
        next_message(thread, Loaded)
        thread.write_cdr(a_cdr(2))
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 2)
        with engine.connect() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar() == SCHEMA_VERSION
            rows = conn.execute(sa.select(cdrs.c.call_id, cdrs.c.uid).order_by(cdrs.c.id)).all()
        assert rows[0] == ("call-1@example.com", None) and len(rows[1].uid) == 32
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(cdrs), [{**cdr_row(a_cdr(3)), "uid": rows[1].uid}])

    def test_a_database_of_schema_version_2_gets_users_srtp_and_keeps_its_users(
        self, engine, start
    ):
        with engine.begin() as conn:  # what softswitch with schema version 2 left
            add_user(conn, "alice", DOMAIN, ("1" * 32, "2" * 64))
            conn.execute(sa.text("ALTER TABLE users DROP COLUMN srtp"))
            conn.execute(sa.update(schema_version).values(version=2))
        loaded = next_message(start(), Loaded)
        assert loaded.users[("alice", DOMAIN)].srtp == ""
        with engine.connect() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar() == SCHEMA_VERSION
            assert conn.execute(sa.select(users.c.srtp)).scalar() is None

    def test_a_database_of_schema_version_3_gets_forwarding_columns_and_keeps_its_users(
        self, engine, start
    ):
        with engine.begin() as conn:  # what softswitch with schema version 3 left
            add_user(conn, "alice", DOMAIN, ("1" * 32, "2" * 64), srtp="off")
            for name in ("forward_always", "forward_busy", "forward_noanswer"):
                conn.execute(sa.text(f"ALTER TABLE users DROP COLUMN {name}"))
            conn.execute(sa.text("ALTER TABLE users DROP COLUMN noanswer_after"))
            conn.execute(sa.text("ALTER TABLE users DROP COLUMN dnd"))
            conn.execute(sa.text("ALTER TABLE cdrs DROP COLUMN forwarded_from"))
            conn.execute(sa.update(schema_version).values(version=3))
        thread = start()
        loaded = next_message(thread, Loaded)
        alice = loaded.users[("alice", DOMAIN)]
        assert (alice.srtp, alice.forward_always, alice.forward_busy) == ("off", "", "")
        assert (alice.forward_noanswer, alice.noanswer_after, alice.dnd) == ("", 20, False)
        with engine.connect() as conn:
            assert conn.execute(sa.select(schema_version.c.version)).scalar() == SCHEMA_VERSION
            assert conn.execute(sa.select(users.c.forward_always, users.c.dnd)).one() == (
                None,
                None,
            )
        forwarded = replace(a_cdr(1), callee=f"carol@{DOMAIN}", forwarded_from=f"bob@{DOMAIN}")
        thread.write_cdr(forwarded)
        thread.flush()
        eventually(lambda: count(engine, cdrs) == 1)
        with engine.connect() as conn:
            row = conn.execute(sa.select(cdrs)).one()
        assert (from_row(row).callee, from_row(row).forwarded_from) == (
            f"carol@{DOMAIN}",
            f"bob@{DOMAIN}",
        )

    def test_forwarding_set_by_softswitchctl_arrives_within_sync_interval(
        self, db, engine, start, tmp_path
    ):
        with engine.begin() as conn:
            add_user(conn, "bob", DOMAIN, ("1" * 32, "2" * 64))
        config = write_config(tmp_path / "etc", db.url)
        thread = start(sync_interval=0.5)
        next_message(thread, Loaded)
        argv = ["--forward-always", "carol", "--dnd", "on", "--noanswer-after", "9"]
        run_ctl(config, "user", "set", "bob", *argv)
        bob = next_message(thread, UsersChanged, timeout=5).users[0]
        assert (bob.forward_always, bob.dnd, bob.noanswer_after) == ("carol", True, 9)

    def test_update_user_from_the_main_thread_is_written_and_synced_back(self, engine, start):
        with engine.begin() as conn:
            add_user(conn, "bob", DOMAIN, ("1" * 32, "2" * 64))
        thread = start()
        next_message(thread, Loaded)
        values = (("forward_always", "carol"), ("dnd", True))
        assert thread.update_user(UpdateUser("bob", DOMAIN, values))
        bob = next_message(thread, UsersChanged, timeout=5).users[0]
        assert (bob.forward_always, bob.dnd, bob.forward_busy) == ("carol", True, "")
        with pytest.raises(ValueError, match="not a user setting: ha1_md5"):
            thread.update_user(UpdateUser("bob", DOMAIN, (("ha1_md5", "0" * 32),)))


def _mysql(conn: Any) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")

"""The DB thread on SQLite (the default database). Cases in dbthread_cases.py.

An "outage" here is another process holding SQLite's write lock: what a
long-running `sqlite3` shell or backup looks like to the daemon.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from softswitch.db.messages import DbFatal
from softswitch.db.thread import DbThread
from tests.unit.control.dbthread_cases import DbThreadCases, next_message


class SqliteDb:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._lock: sqlite3.Connection | None = None

    def down(self) -> None:
        self._lock = sqlite3.connect(self.path, isolation_level=None)
        self._lock.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None


class TestDbThreadOnSqlite(DbThreadCases):
    @pytest.fixture
    def db(self, tmp_path):
        db = SqliteDb(tmp_path / "softswitch.db")
        yield db
        db.up()


def test_an_unusable_database_url_is_fatal_with_a_clear_message():
    thread = DbThread("nosuchdb://x/y", lambda: None)
    thread.start()
    fatal = next_message(thread, DbFatal)
    assert fatal.error.startswith("[database] url: ") and "nosuchdb" in fatal.error
    assert thread.stop(5) is True

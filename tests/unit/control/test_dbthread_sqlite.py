"""The DB thread on SQLite (the default database). Cases in dbthread_cases.py.

An "outage" here is another process holding SQLite's write lock: what a
long-running `sqlite3` shell or backup looks like to the daemon.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.unit.control.dbthread_cases import DbThreadCases


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

"""The DB thread against a real MariaDB (cases in tests/unit/control/dbthread_cases.py).

An "outage" here is the server going away: mariadbd is shut down and later
started again on the same datadir, so pooled connections die and must be
replaced, and everything queued meanwhile must land afterwards.
"""

from __future__ import annotations

import pytest

from tests.mariadb import MariaDB
from tests.unit.control.dbthread_cases import DbThreadCases


class MariaDb:
    def __init__(self, server: MariaDB, url: str) -> None:
        self.server = server
        self.url = url

    def down(self) -> None:
        self.server.stop()

    def up(self) -> None:
        if not self.server.running:
            self.server.start()


class TestDbThreadOnMariaDB(DbThreadCases):
    @pytest.fixture
    def db(self, mariadb_server, mariadb_url):
        db = MariaDb(mariadb_server, mariadb_url)
        yield db
        db.up()

"""The phone suite's core scenarios once more, with the control daemon on MariaDB.

The scenarios are the very functions of test_calls_phones.py (imported, so
pytest runs them here against this module's ``e2e_switch``): basic call both
ways, busy, cancel, no answer. Each already checks its CDR through
SQLAlchemy on the switch's database URL, which here is a throwaway MariaDB
(tests/mariadb.py); the last test reads the whole ``cdrs`` table back from
MariaDB and checks every scenario left its row with the right disposition.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from softswitch.db.schema import cdrs
from tests.mariadb import MariaDB, mariadb_server  # noqa: F401 - session fixture
from tests.system.loopback_switch import E2eSwitch
from tests.system.test_calls_phones import (  # noqa: F401 - collected here too
    test_basic_call_both_sides_hear_each_other_and_cdr_says_answered,
    test_callee_busy_caller_gets_486_and_cdr_says_busy,
    test_callee_does_not_answer_caller_gets_480_after_no_answer_timeout_cdr_no_answer,
    test_caller_cancels_while_ringing_gets_487_callee_stops_ringing_cdr_cancelled,
)


@pytest.fixture(scope="module")
def e2e_switch(
    mariadb_server: MariaDB,  # noqa: F811 - the fixture imported above
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[E2eSwitch]:
    """The switch of conftest.py, with [database] url on a fresh MariaDB database."""
    name = f"e2e_{os.getpid()}"
    url = mariadb_server.create_database(name)
    sw = E2eSwitch(tmp_path_factory.mktemp("switch-mariadb"), db_url=url).start()
    try:
        yield sw
    finally:
        problems = sw.stop()
        if mariadb_server.running:
            mariadb_server.sql(f"DROP DATABASE IF EXISTS `{name}`")
    assert not problems, f"{problems}\n{sw.logs()}"


def test_every_scenario_left_its_cdr_in_mariadb_with_the_right_disposition(
    e2e_switch: E2eSwitch,
) -> None:
    assert e2e_switch.db_url.startswith("mysql+pymysql://"), e2e_switch.db_url
    engine = sa.create_engine(e2e_switch.db_url)
    try:
        with engine.connect() as conn:
            assert conn.dialect.name == "mysql"
            rows = [dict(r._mapping) for r in conn.execute(sa.select(cdrs).order_by(cdrs.c.id))]
    finally:
        engine.dispose()
    got = sorted(
        (r["caller"].split("@")[0], r["callee"].split("@")[0], r["disposition"], r["sip_code"])
        for r in rows
    )
    assert got == sorted(
        [
            ("alice", "bob", "answered", 200),
            ("bob", "alice", "answered", 200),
            ("alice", "bob", "busy", 486),
            ("alice", "bob", "cancelled", 487),
            ("alice", "bob", "no-answer", 480),
        ]
    ), rows
    for r in rows:
        assert r["start_time"] is not None and r["end_time"] is not None, r
        if r["disposition"] == "answered":
            assert r["duration"] > 1 and r["a_packets"] > 50 and r["b_packets"] > 50, r

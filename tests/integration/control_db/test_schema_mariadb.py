"""The schema and softswitchctl on a real MariaDB: InnoDB, utf8mb4, exact types."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from softswitch.cli import ctl
from softswitch.db.cdrs import from_row
from softswitch.db.cdrs import to_row as cdr_row
from softswitch.db.schema import (
    SCHEMA_VERSION,
    SchemaError,
    cdrs,
    create_schema,
    make_engine,
    schema_version,
    users,
)
from softswitch.db.users import add_user
from softswitch.sip.digest import ha1
from tests.unit.control.dbthread_cases import DOMAIN, a_cdr, write_config


@pytest.fixture
def engine(mariadb_url):
    engine = make_engine(mariadb_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def test_tables_are_innodb_utf8mb4_with_binary_collation(engine):
    assert create_schema(engine) == SCHEMA_VERSION  # twice: idempotent
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE()"
            )
        ).all()
        versions = conn.execute(sa.select(schema_version.c.version)).scalars().all()
    assert {r[0] for r in rows} == {
        "users",
        "deleted_users",
        "registrations",
        "cdrs",
        "schema_version",
    }
    assert {(r[1], r[2]) for r in rows} == {("InnoDB", "utf8mb4_bin")}
    assert versions == [SCHEMA_VERSION]


def test_epoch_seconds_and_cdr_milliseconds_survive_exactly(engine):
    stamp = 1_795_246_165.9209356
    with engine.begin() as conn:
        conn.execute(
            sa.insert(users).values(
                username="a", domain=DOMAIN, ha1_md5="", ha1_sha256="", updated_at=stamp
            )
        )
        conn.execute(sa.insert(cdrs), [cdr_row(a_cdr(1, start=1_700_000_000.123))])
    with engine.connect() as conn:
        assert conn.execute(sa.select(users.c.updated_at)).scalar() == stamp  # DOUBLE, not FLOAT
        row = conn.execute(sa.select(cdrs)).one()
    assert from_row(row).start == 1_700_000_000.123


def test_usernames_are_case_sensitive_and_text_is_full_unicode(engine):
    with engine.begin() as conn:
        add_user(conn, "alice", DOMAIN, ("0" * 32, "1" * 64), display_name="Zoë 📞")
        add_user(conn, "Alice", DOMAIN, ("0" * 32, "1" * 64))
    with engine.connect() as conn:
        names = conn.execute(sa.select(users.c.username, users.c.display_name)).all()
    assert sorted(names) == [("Alice", ""), ("alice", "Zoë 📞")]


def test_a_newer_schema_is_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 5))
    with pytest.raises(SchemaError, match="newer than this softswitch"):
        create_schema(engine)


def test_softswitchctl_manages_users_on_mariadb(mariadb_url, tmp_path, capsys):
    config = write_config(tmp_path / "etc", mariadb_url)

    def run(*argv: str) -> int:
        return ctl.main(["--config-dir", str(config), *argv])

    assert run("user", "add", "alice", "--password", "pw", "--display", "Zoë") == 0
    assert run("user", "add", "alice", "--password", "pw") == 1
    assert run("user", "set", "alice", "--record", "--srtp", "mandatory") == 0
    assert run("user", "set", "alice", "--forward-busy", "bob", "--dnd", "on") == 0
    capsys.readouterr()
    assert run("user", "list") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == [
        "alice",
        DOMAIN,
        "Zoë",
        "yes",
        "yes",
        "4",
        "mandatory",
        *("-", "bob", "-", "20", "yes"),  # forward always/busy/noanswer, after, DND
    ]
    engine = make_engine(mariadb_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(users.c.ha1_md5)).scalar() == ha1("alice", DOMAIN, "pw")
    assert run("user", "del", "alice") == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(users)).all() == []
    engine.dispose()

"""The user database schema, the in-memory directory and the CDR record (SQLite)."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from softswitch.db.cdrs import to_row
from softswitch.db.schema import (
    SCHEMA_VERSION,
    SchemaError,
    UserError,
    create_schema,
    make_engine,
    schema_version,
    users,
)
from softswitch.db.users import add_user
from softswitch.model.cdr import Cdr, Disposition
from softswitch.model.users import Binding, Deleted, User, UserDirectory, check_binding
from tests.unit.control.dbthread_cases import a_cdr, binding

TABLES = {"users", "deleted_users", "registrations", "cdrs", "schema_version"}


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'softswitch.db'}")
    yield engine
    engine.dispose()


def user(n: int, name: str = "alice", **overrides: Any) -> User:
    """Account ``n``, enabled, no call limit; ``overrides`` replace any field."""
    u = User(
        id=n,
        username=name,
        domain="example.com",
        ha1_md5="0" * 32,
        ha1_sha256="1" * 64,
        display_name="",
        enabled=True,
        record_calls=False,
        max_calls=0,
    )
    return replace(u, **overrides)


# -- schema -------------------------------------------------------------------------


def test_create_schema_makes_every_table_once_and_records_the_version(engine):
    assert create_schema(engine) == SCHEMA_VERSION
    assert create_schema(engine) == SCHEMA_VERSION  # idempotent
    assert set(sa.inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema_version)).all()
    assert [(r.id, r.version) for r in rows] == [(1, SCHEMA_VERSION)]


def test_create_schema_adds_a_missing_table_and_keeps_the_data(engine):
    create_schema(engine)
    with engine.begin() as conn:
        add_user(conn, "alice", "example.com", ("0" * 32, "1" * 64))
        conn.execute(sa.text("DROP TABLE cdrs"))
    create_schema(engine)
    assert "cdrs" in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(sa.select(users.c.username)).scalars().all() == ["alice"]


def test_a_database_from_a_newer_softswitch_is_refused(engine):
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(SchemaError) as err:
        create_schema(engine)
    assert str(err.value) == (
        f"database schema version {SCHEMA_VERSION + 1} is newer than this softswitch "
        f"understands ({SCHEMA_VERSION}); upgrade softswitch"
    )


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", timeout=2.5)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500


def test_username_and_domain_are_unique_together(engine):
    create_schema(engine)
    with engine.begin() as conn:
        add_user(conn, "alice", "example.com", ("0" * 32, "1" * 64))
        add_user(conn, "alice", "other.example", ("0" * 32, "1" * 64))
        add_user(conn, "Alice", "example.com", ("0" * 32, "1" * 64))  # RFC 3261: case matters
    with pytest.raises(UserError, match=r"user exists: alice@example\.com"), engine.begin() as conn:
        add_user(conn, "alice", "EXAMPLE.COM", ("0" * 32, "1" * 64))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # the constraint itself
        conn.execute(
            sa.insert(users).values(
                username="alice",
                domain="example.com",
                ha1_md5="",
                ha1_sha256="",
                updated_at=0.0,
            )
        )


# -- in memory ------------------------------------------------------------------------


def test_lookup_compares_the_domain_case_insensitively_and_the_user_exactly():
    directory = UserDirectory()
    directory.load({("alice", "example.com"): user(1)})
    assert directory.lookup("alice", "Example.COM") == user(1)
    assert directory.lookup("Alice", "example.com") is None
    assert len(directory) == 1


def test_apply_deletes_first_and_only_the_user_with_that_id():
    directory = UserDirectory()
    directory.load({("alice", "example.com"): user(1), ("bob", "example.com"): user(2, "bob")})
    directory.apply([user(3)], [Deleted("alice", "example.com", 1)])  # deleted and re-added
    assert directory.lookup("alice", "example.com").id == 3
    directory.apply([], [Deleted("alice", "example.com", 1)])  # a late, stale tombstone
    assert directory.lookup("alice", "example.com").id == 3
    directory.apply([], [Deleted("bob", "example.com", 2)])
    assert directory.lookup("bob", "example.com") is None


def test_user_gives_the_ha1_for_each_algorithm():
    u = user(1)
    assert (u.ha1("MD5"), u.ha1("md5"), u.ha1("SHA-256")) == ("0" * 32, "0" * 32, "1" * 64)
    assert u.ha1("SHA-512-256") is None


def test_in_memory_records_are_slotted_and_small():
    # 100,000 users and their bindings must fit in 300 MB with the rest of the
    # daemon: no per-instance __dict__.
    for obj in (user(1), binding(1), a_cdr(1)):
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    assert sys.getsizeof(user(1)) <= 120
    assert sys.getsizeof(binding(1)) <= 160


def test_a_binding_too_long_to_store_is_refused_up_front():
    check_binding(binding(1))
    with pytest.raises(ValueError, match=r"^contact is longer than 512 characters$"):
        check_binding(binding(1, contact="sip:" + "a" * 509))
    with pytest.raises(ValueError, match=r"^user_agent is longer than 255 characters$"):
        check_binding(binding(1, user_agent="x" * 256))
    assert isinstance(binding(1), Binding)


# -- CDR record --------------------------------------------------------------------------


def test_cdr_duration_counts_from_answer_and_is_zero_if_unanswered():
    assert a_cdr(1).duration == 60.25
    assert a_cdr(1, answer=None, disposition=Disposition.NO_ANSWER).duration == 0.0
    assert a_cdr(1, end=None).duration == 0.0


def test_cdr_row_cuts_overlong_text_instead_of_failing_the_batch():
    row = to_row(a_cdr(1, caller="sip:" + "x" * 400 + "@example.com"))
    assert len(row["caller"]) == 255
    assert row["disposition"] == "answered" and row["start_time"].tzinfo is None


def test_cdr_row_refuses_an_unknown_disposition() -> None:
    with pytest.raises(ValueError):
        to_row(Cdr("c", "a", "b", 0.0, None, 1.0, "lunch", 200))  # type: ignore[arg-type]

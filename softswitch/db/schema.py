"""The database schema: tables, engine, migrations and row mapping.

Theory of operation
-------------------
The database (SQLite by default, MariaDB/MySQL for bigger sites) is the
durable copy; the control daemon serves from memory (DESIGN.md principle 4).
Its DB thread (softswitch/db/thread.py) loads every user and live registration
at start and then polls for changes; the main thread keeps the users in a
`UserDirectory` (a dict of frozen, slotted `User` objects) and never runs SQL.

Change detection is part of the schema's contract, so it is written here next
to the tables, and every writer (`softswitchctl`, or an operator with SQL)
must keep it:

- every INSERT or UPDATE of `users` sets ``updated_at`` to the current epoch
  time; the DB thread polls ``updated_at >= last poll - OVERLAP`` (the
  overlap covers transactions that commit a little after they stamped the row,
  and small clock differences between hosts);
- every DELETE of `users` inserts a tombstone into `deleted_users` in the same
  transaction, so the daemon drops the user at its next poll;
- as a safety net for rows deleted or inserted by hand without following the
  rules above, the DB thread compares ``COUNT(*)`` with what it holds every
  few polls and re-reads the id list when they differ.

Users are keyed by (username, domain). SIP compares the user part of a URI
case-sensitively and the host case-insensitively (RFC 3261 §19.1.4), so
domains are stored lower-case and usernames as given (MariaDB tables use the
binary collation so that "Alice" and "alice" are two users there as well).
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from softswitch.model.users import (
    DEFAULT_NOANSWER_AFTER,
    MAX_CONTACT,
    MAX_DOMAIN,
    MAX_USERNAME,
    Binding,
    Forwarding,
    User,
)

#: Bumped whenever a table changes; `create_schema` refuses a newer database.
#: 2: ``cdrs.uid``, so a CDR replayed from the DB thread's journal is not written twice.
#: 3: ``users.srtp``, the per-user SRTP policy ("" = the configured default).
#: 4: ``users.forward_always/_busy/_noanswer``, ``noanswer_after`` and ``dnd`` (call
#:    forwarding), ``cdrs.forwarded_from``.
SCHEMA_VERSION = 4

#: Seconds of re-read overlap for ``updated_at`` polling (see module doc).
OVERLAP = 5.0


_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _double() -> sa.types.TypeEngine[Any]:
    # Plain FLOAT is single precision on MySQL: 1.7e9 would round to ~128 s.
    double = mysql.DOUBLE(asdecimal=False)
    return sa.Float(precision=53).with_variant(double, "mysql").with_variant(double, "mariadb")


def _datetime_type() -> sa.types.TypeEngine[Any]:
    # MySQL's DATETIME drops fractions unless asked; milliseconds matter for CDRs.
    ms = mysql.DATETIME(fsp=3)
    return sa.DateTime().with_variant(ms, "mysql").with_variant(ms, "mariadb")


metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(MAX_USERNAME), nullable=False),
    sa.Column("domain", sa.String(MAX_DOMAIN), nullable=False),
    sa.Column("ha1_md5", sa.String(32), nullable=False),
    sa.Column("ha1_sha256", sa.String(64), nullable=False),
    sa.Column("display_name", sa.String(128), nullable=False, default=""),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("record_calls", sa.Boolean, nullable=False, default=False),
    sa.Column("max_calls", sa.Integer, nullable=False, default=0),  # 0 = unlimited
    # SRTP policy: optional | mandatory | off; "" (or NULL, rows from before) = [calls] srtp
    sa.Column("srtp", sa.String(16), nullable=True, default=""),
    # Call forwarding (softswitch.calls.forward): a username in the user's domain, "" = off;
    # NULL in rows from before version 4 means off / the default / DND off.
    sa.Column("forward_always", sa.String(MAX_USERNAME), nullable=True, default=""),
    sa.Column("forward_busy", sa.String(MAX_USERNAME), nullable=True, default=""),
    sa.Column("forward_noanswer", sa.String(MAX_USERNAME), nullable=True, default=""),
    sa.Column("noanswer_after", sa.Integer, nullable=True, default=DEFAULT_NOANSWER_AFTER),
    sa.Column("dnd", sa.Boolean, nullable=True, default=False),
    sa.Column("updated_at", _double(), nullable=False, index=True),
    sa.UniqueConstraint("username", "domain", name="uq_users_username_domain"),
    **_MYSQL,
)

deleted_users = sa.Table(
    "deleted_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("username", sa.String(MAX_USERNAME), nullable=False),
    sa.Column("domain", sa.String(MAX_DOMAIN), nullable=False),
    sa.Column("deleted_at", _double(), nullable=False, index=True),
    **_MYSQL,
)

registrations = sa.Table(
    "registrations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(MAX_USERNAME), nullable=False),
    sa.Column("domain", sa.String(MAX_DOMAIN), nullable=False),
    sa.Column("contact", sa.String(MAX_CONTACT), nullable=False),
    sa.Column("expires_at", _double(), nullable=False, index=True),
    sa.Column("source_transport", sa.String(8), nullable=False),  # udp / tcp / tls
    sa.Column("source_host", sa.String(64), nullable=False),  # the NAT source address
    sa.Column("source_port", sa.Integer, nullable=False),
    sa.Column("path", sa.String(1024), nullable=True),  # RFC 3327 Path header value
    sa.Column("received", sa.String(255), nullable=True),  # RFC 5626 / 3581 received info
    sa.Column("call_id", sa.String(255), nullable=False),
    sa.Column("cseq", sa.Integer, nullable=False),
    sa.Column("user_agent", sa.String(255), nullable=True),
    sa.Column("instance", sa.String(255), nullable=True),  # RFC 5626 +sip.instance
    sa.Column("reg_id", sa.Integer, nullable=True),  # RFC 5626 reg-id
    sa.UniqueConstraint("username", "domain", "contact", name="uq_registrations_aor_contact"),
    **_MYSQL,
)

cdrs = sa.Table(
    "cdrs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(255), nullable=False, index=True),
    sa.Column("caller", sa.String(255), nullable=False),
    sa.Column("callee", sa.String(255), nullable=False),
    sa.Column("start_time", _datetime_type(), nullable=False, index=True),  # UTC
    sa.Column("answer_time", _datetime_type(), nullable=True),
    sa.Column("end_time", _datetime_type(), nullable=True),
    sa.Column("duration", _double(), nullable=False),  # seconds, answer to end
    sa.Column("disposition", sa.String(16), nullable=False),
    sa.Column("sip_code", sa.Integer, nullable=False),
    sa.Column("bearer", sa.String(64), nullable=True),
    sa.Column("recording", sa.String(512), nullable=True),
    sa.Column("a_packets", sa.Integer, nullable=False, default=0),
    sa.Column("a_lost", sa.Integer, nullable=False, default=0),
    sa.Column("a_jitter_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("b_packets", sa.Integer, nullable=False, default=0),
    sa.Column("b_lost", sa.Integer, nullable=False, default=0),
    sa.Column("b_jitter_ms", sa.Float, nullable=False, default=0.0),
    # Set by the DB thread (softswitch/db/spool.py); NULL in rows written before version 2.
    sa.Column("uid", sa.String(32), nullable=True),
    # The dialled user@domain of a forwarded call (callee is then who it went to); version 4.
    sa.Column("forwarded_from", sa.String(255), nullable=True),
    sa.Index("uq_cdrs_uid", "uid", unique=True),
    **_MYSQL,
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", _double(), nullable=False),
    **_MYSQL,
)


class SchemaError(Exception):
    """The database cannot be used by this version of softswitch (one-line text)."""


class UserError(Exception):
    """A user-management request that cannot be done (exists, not found, bad name)."""


def make_engine(url: str, *, timeout: float = 5.0) -> Engine:
    """An engine for `url` with the settings the appliance relies on.

    SQLite: WAL journal (readers never wait for the writer, so softswitchctl
    can read while the daemon writes) and a busy timeout of `timeout` seconds.
    MySQL/MariaDB: utf8mb4, connection checks before use (a restarted server
    invalidates pooled connections), and socket timeouts so a dead server
    cannot hang the DB thread forever.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, future=True, connect_args={"timeout": timeout})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        connect_args = {
            "connect_timeout": max(1, int(timeout)),
            "read_timeout": max(30, int(timeout)),
            "write_timeout": max(30, int(timeout)),
        }
        if "charset" not in parsed.query:
            connect_args["charset"] = "utf8mb4"
    return sa.create_engine(
        url, future=True, pool_pre_ping=True, pool_recycle=3600, connect_args=connect_args
    )


def _stored_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table("schema_version"):
        return None
    return conn.execute(sa.select(schema_version.c.version)).scalar()


def create_schema(engine: Engine) -> int:
    """Create whatever tables are missing and record the schema version.

    Idempotent: safe to call from every softswitchctl run and every daemon
    start. Refuses a database written by a newer softswitch (its tables may
    mean something this code does not know) with a SchemaError. Returns the
    version now recorded.
    """
    with engine.begin() as conn:
        found = _stored_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaError(
                f"database schema version {found} is newer than this softswitch "
                f"understands ({SCHEMA_VERSION}); upgrade softswitch"
            )
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        found = _stored_version(conn)
        now = time.time()
        if found is None:
            conn.execute(
                sa.insert(schema_version).values(id=1, version=SCHEMA_VERSION, updated_at=now)
            )
        elif found < SCHEMA_VERSION:
            if found < 2:
                _add_cdr_uid(conn)
            if found < 3:
                _add_user_srtp(conn)
            if found < 4:
                _add_user_forwarding(conn)
            conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION, updated_at=now))
    return SCHEMA_VERSION


def _add_cdr_uid(conn: Connection) -> None:
    """Migration 1 -> 2: ``cdrs.uid`` and its unique index (NULL for the old rows)."""
    if "uid" in {c["name"] for c in sa.inspect(conn).get_columns("cdrs")}:
        return
    column = cdrs.c.uid
    kind = column.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE cdrs ADD COLUMN {column.name} {kind} NULL"))
    for index in cdrs.indexes:
        if index.name == "uq_cdrs_uid":
            index.create(conn)


def _add_user_srtp(conn: Connection) -> None:
    """Migration 2 -> 3: ``users.srtp`` (NULL for the old rows: the configured default)."""
    if "srtp" in {c["name"] for c in sa.inspect(conn).get_columns("users")}:
        return
    kind = users.c.srtp.type.compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE users ADD COLUMN srtp {kind} NULL"))


_FORWARDING_COLUMNS = (
    "forward_always",
    "forward_busy",
    "forward_noanswer",
    "noanswer_after",
    "dnd",
)


def _add_user_forwarding(conn: Connection) -> None:
    """Migration 3 -> 4: the forwarding columns of users and cdrs (NULL in old rows: none)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("users")}
    for name in _FORWARDING_COLUMNS:
        if name not in have:
            kind = users.c[name].type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE users ADD COLUMN {name} {kind} NULL"))
    if "forwarded_from" not in {c["name"] for c in sa.inspect(conn).get_columns("cdrs")}:
        kind = cdrs.c.forwarded_from.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE cdrs ADD COLUMN forwarded_from {kind} NULL"))


#: users columns in `User` field order, then updated_at: what the DB thread selects.
USER_COLUMNS = (
    *(users.c[f.name] for f in fields(User) if f.name != "forwarding"),
    *(users.c[name] for name in _FORWARDING_COLUMNS),  # -> User.forwarding
    users.c.updated_at,
)
#: registrations columns in `Binding` field order.
BINDING_COLUMNS = tuple(registrations.c[f.name] for f in fields(Binding))


def user_from_row(row: Any) -> User:
    """A `User` from a row selected as USER_COLUMNS (positional: 100,000 at start)."""
    return User(
        row[0],
        row[1],
        sys.intern(row[2]),  # a few distinct domains, 100,000 references
        row[3],
        row[4],
        row[5],
        bool(row[6]),
        bool(row[7]),
        row[8],
        row[9] or "",
        Forwarding.of(
            row[10] or "",
            row[11] or "",
            row[12] or "",
            DEFAULT_NOANSWER_AFTER if row[13] is None else row[13],
            bool(row[14]),
        ),
    )


def binding_from_row(row: Any) -> Binding:
    """A `Binding` from a row selected as BINDING_COLUMNS; repeated texts interned."""
    ua = row[11]
    return Binding(
        row[0],
        sys.intern(row[1]),
        row[2],
        row[3],
        sys.intern(row[4]),
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        sys.intern(ua) if ua is not None else None,
        row[12],
        row[13],
    )


def binding_row(b: Binding) -> dict[str, Any]:
    """The registrations row for a binding."""
    return {
        "username": b.username,
        "domain": b.domain,
        "contact": b.contact,
        "expires_at": float(b.expires_at),
        "source_transport": b.source_transport,
        "source_host": b.source_host,
        "source_port": int(b.source_port),
        "path": b.path,
        "received": b.received,
        "call_id": b.call_id,
        "cseq": int(b.cseq),
        "user_agent": b.user_agent,
        "instance": b.instance,
        "reg_id": b.reg_id,
    }

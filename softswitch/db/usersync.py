"""Loading users and live registrations, then following changes to the users.

Theory of operation
-------------------
At start the DB thread creates missing tables, loads every user and every
live registration and sends one `Loaded`; the daemon waits for it before
serving. Then every `sync_interval` it polls for changed users (``updated_at``
with an overlap, tombstones in ``deleted_users``, and a ``COUNT(*)`` check
every `reconcile_every` polls; see softswitch/db/schema.py) and sends
`UsersChanged` when something changed. Every `purge_every` polls it deletes
expired registrations.

This is the read side of the DB thread, apart from its writes and its
journal: `UserSync` remembers which users it has handed over (ids and the
``updated_at`` values inside the overlap) so that a poll reports each change
once. It runs only on the DB thread; its methods take the engine, raise
SQLAlchemyError like any statement (the thread retries), and return the
message to send.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa

from softswitch.db.messages import Loaded, UsersChanged
from softswitch.db.schema import (
    BINDING_COLUMNS,
    OVERLAP,
    USER_COLUMNS,
    binding_from_row,
    deleted_users,
    registrations,
    user_from_row,
    users,
)
from softswitch.model.users import Binding, Deleted, User, UserKey

log = logging.getLogger("softswitch.db")

# Built once, like the thread's other statements (see writer.py for why).
_COUNT_USERS = sa.select(sa.func.count()).select_from(users)
_USER_IDS = sa.select(users.c.id)
_USERS_BY_ID = sa.select(*USER_COLUMNS).where(users.c.id.in_(sa.bindparam("ids", expanding=True)))
_PURGE_BINDINGS = sa.delete(registrations).where(
    registrations.c.expires_at < sa.bindparam("now", type_=registrations.c.expires_at.type)
)


class UserSync:
    """The users the main thread has been given, and how to find what changed since."""

    def __init__(self, *, reconcile_every: int = 15, purge_every: int = 30) -> None:
        self._reconcile_every = max(1, reconcile_every)
        self._purge_every = max(1, purge_every)
        self._polls = 0
        self._last_poll_wall = 0.0
        self._known: dict[int, UserKey] = {}  # user id -> key, for deletions
        self._seen: dict[int, float] = {}  # user id -> updated_at sent, within OVERLAP
        self._seen_tombs: dict[int, float] = {}  # tombstone id -> deleted_at, within OVERLAP

    def load(self, engine: sa.engine.Engine) -> Loaded:
        """Every user and every live registration (the schema exists)."""
        started = time.time()
        since = started - OVERLAP
        loaded: dict[UserKey, User] = {}
        known: dict[int, UserKey] = {}
        seen: dict[int, float] = {}
        bindings: list[Binding] = []
        with engine.connect() as conn:
            stream = conn.execution_options(stream_results=True)
            result = stream.execute(sa.select(*USER_COLUMNS))
            for part in result.partitions(5000):
                for row in part:
                    user = user_from_row(row)
                    key = (user.username, user.domain)
                    loaded[key] = user
                    known[user.id] = key
                    if row[-1] >= since:
                        seen[user.id] = row[-1]
            query = sa.select(*BINDING_COLUMNS).where(registrations.c.expires_at > started)
            for part in stream.execute(query).partitions(5000):
                bindings.extend(binding_from_row(row) for row in part)
        self._known, self._seen = known, seen
        self._last_poll_wall = started
        log.info("loaded %d users and %d registrations", len(loaded), len(bindings))
        return Loaded(loaded, bindings)

    def poll(self, engine: sa.engine.Engine) -> UsersChanged | None:
        """The users changed or deleted since the last poll (None: nothing);
        every `purge_every` polls, expired registrations are deleted too."""
        started = time.time()
        since = self._last_poll_wall - OVERLAP
        self._polls += 1
        changed: list[User] = []
        deleted: list[Deleted] = []
        with engine.connect() as conn:
            tombs = conn.execute(
                sa.select(deleted_users).where(deleted_users.c.deleted_at >= since)
            ).all()
            rows = conn.execute(sa.select(*USER_COLUMNS).where(users.c.updated_at >= since)).all()
            for t in tombs:
                if t.id in self._seen_tombs:
                    continue
                self._seen_tombs[t.id] = t.deleted_at
                if self._known.pop(t.user_id, None) is not None:
                    deleted.append(Deleted(t.username, t.domain, t.user_id))
            for row in rows:
                if self._seen.get(row[0]) == row[-1]:
                    continue
                self._seen[row[0]] = row[-1]
                changed.append(self._remember(user_from_row(row), deleted))
            if self._polls % self._reconcile_every == 0:
                self._reconcile(conn, changed, deleted)
        if self._polls % self._purge_every == 0:
            with engine.begin() as conn:
                conn.execute(_PURGE_BINDINGS, {"now": started})
        self._last_poll_wall = started
        horizon = started - OVERLAP
        for seen in (self._seen, self._seen_tombs):
            for key in [k for k, v in seen.items() if v < horizon]:
                del seen[key]
        if changed or deleted:
            return UsersChanged(tuple(changed), tuple(deleted))
        return None

    def _remember(self, user: User, deleted: list[Deleted]) -> User:
        key = (user.username, user.domain)
        old = self._known.get(user.id)
        if old is not None and old != key:  # renamed with SQL: the old name is gone
            deleted.append(Deleted(old[0], old[1], user.id))
        self._known[user.id] = key
        return user

    def _reconcile(self, conn: Any, changed: list[User], deleted: list[Deleted]) -> None:
        """Catch rows inserted or deleted by hand without the change contract."""
        count = conn.execute(_COUNT_USERS).scalar()
        if count == len(self._known):
            return
        ids = set(conn.execute(_USER_IDS).scalars())
        for gone in [i for i in self._known if i not in ids]:
            username, domain = self._known.pop(gone)
            deleted.append(Deleted(username, domain, gone))
        missing = sorted(ids.difference(self._known))
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            for row in conn.execute(_USERS_BY_ID, {"ids": chunk}):
                changed.append(self._remember(user_from_row(row), deleted))
        log.warning("user table changed without updated_at/tombstones; resynchronised")

"""The writers softswitchctl uses: add, change and delete users, list CDRs.

They keep the change-detection contract of softswitch/db/schema.py (every
write stamps ``updated_at``; every delete leaves a tombstone) so a running
daemon's DB thread sees them at its next poll.
"""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from softswitch.db.schema import UserError, cdrs, deleted_users, registrations, users
from softswitch.model.users import MAX_DOMAIN, MAX_USERNAME

# Writers used by softswitchctl. They keep the change-detection contract above.

# RFC 3261 §25.1 user = 1*( unreserved / escaped / user-unreserved ); escapes
# are left out so that one account has exactly one spelling.
_USERNAME = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]+")
_DOMAIN = re.compile(r"[A-Za-z0-9.\-:\[\]]+")


def check_name(username: str, domain: str) -> tuple[str, str]:
    """Validate and normalise (username, domain); raise UserError if unusable."""
    if len(username) > MAX_USERNAME or not _USERNAME.fullmatch(username):
        raise UserError(
            f"invalid username {username!r}: 1-{MAX_USERNAME} characters of "
            "letters, digits and -_.!~*'()&=+$,;?/"
        )
    if len(domain) > MAX_DOMAIN or not _DOMAIN.fullmatch(domain):
        raise UserError(f"invalid domain {domain!r}")
    return username, domain.lower()


def find_user(conn: Connection, username: str, domain: str) -> Any:
    """The users row for (username, domain); UserError if there is none."""
    username, domain = check_name(username, domain)
    row = conn.execute(
        sa.select(users).where(users.c.username == username, users.c.domain == domain)
    ).first()
    if row is None:
        raise UserError(f"no such user: {username}@{domain}")
    return row


def add_user(
    conn: Connection,
    username: str,
    domain: str,
    ha1s: tuple[str, str],
    *,
    display_name: str = "",
    record_calls: bool = False,
    max_calls: int = 0,
    enabled: bool = True,
    srtp: str = "",
) -> int:
    """Insert a user (HA1 for MD5 and SHA-256, never the password); return its id."""
    username, domain = check_name(username, domain)
    exists = conn.execute(
        sa.select(users.c.id).where(users.c.username == username, users.c.domain == domain)
    ).first()
    if exists is not None:
        raise UserError(f"user exists: {username}@{domain}")
    result = conn.execute(
        sa.insert(users).values(
            username=username,
            domain=domain,
            ha1_md5=ha1s[0],
            ha1_sha256=ha1s[1],
            display_name=display_name,
            enabled=enabled,
            record_calls=record_calls,
            max_calls=max_calls,
            srtp=srtp,
            updated_at=time.time(),
        )
    )
    return int(result.inserted_primary_key[0])


def delete_user(conn: Connection, username: str, domain: str) -> None:
    """Delete a user, its registrations, and leave the tombstone the daemon polls."""
    username, domain = check_name(username, domain)
    row = find_user(conn, username, domain)
    conn.execute(sa.delete(users).where(users.c.id == row.id))
    conn.execute(
        sa.delete(registrations).where(
            registrations.c.username == username, registrations.c.domain == domain
        )
    )
    conn.execute(
        sa.insert(deleted_users).values(
            user_id=row.id, username=username, domain=domain, deleted_at=time.time()
        )
    )


def update_user(conn: Connection, username: str, domain: str, **values: Any) -> None:
    """Change columns of a user (ha1_md5, ha1_sha256, enabled, record_calls, ...)."""
    username, domain = check_name(username, domain)
    row = find_user(conn, username, domain)
    allowed = {
        "ha1_md5",
        "ha1_sha256",
        "display_name",
        "enabled",
        "record_calls",
        "max_calls",
        "srtp",
        "forward_always",
        "forward_busy",
        "forward_noanswer",
        "noanswer_after",
        "dnd",
    }
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not a user setting: {', '.join(sorted(unknown))}")
    conn.execute(
        sa.update(users).where(users.c.id == row.id).values(updated_at=time.time(), **values)
    )


def list_users(conn: Connection) -> list[Any]:
    """Every user row, ordered by domain then username."""
    return list(conn.execute(sa.select(users).order_by(users.c.domain, users.c.username)))


def recent_cdrs(conn: Connection, limit: int) -> list[Any]:
    """The `limit` most recent CDR rows, newest first."""
    query = sa.select(cdrs).order_by(cdrs.c.start_time.desc(), cdrs.c.id.desc()).limit(limit)
    return list(conn.execute(query))

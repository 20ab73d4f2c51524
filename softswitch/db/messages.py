"""What the main thread and the DB thread say to each other, and nothing else.

DESIGN principle 3: the DB thread shares no mutable state with the main
thread and talks to it only through queues. These frozen, slotted values are
everything that crosses: commands the sans-I/O core emits (`db_commands()`)
and the daemon hands to `DbThread`, and the results the DB thread sends back
for `Switch.apply_db_result`. No database library is imported here, so the
core can use them without loading SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass

from softswitch.model.cdr import Cdr
from softswitch.model.users import Binding, Deleted, User, UserKey

# -- commands (main thread -> DB thread) ------------------------------------


@dataclass(frozen=True, slots=True)
class SaveBinding:
    """Persist a binding (insert or replace): ``DbThread.save_binding``."""

    binding: Binding


@dataclass(frozen=True, slots=True)
class DeleteBinding:
    """Forget a binding: ``DbThread.delete_binding``."""

    username: str
    domain: str
    contact: str


@dataclass(frozen=True, slots=True)
class WriteCdr:
    """Queue a CDR: ``DbThread.write_cdr``."""

    cdr: Cdr


#: The users columns a phone may change (feature codes, softswitch.calls.features).
USER_SETTINGS = frozenset(
    ("forward_always", "forward_busy", "forward_noanswer", "noanswer_after", "dnd")
)


@dataclass(frozen=True, slots=True)
class UpdateUser:
    """Change settings of a user (USER_SETTINGS only): ``DbThread.update_user``.

    Written like any ``softswitchctl user set`` (``updated_at`` stamped), so
    the change comes back to every daemon by the ordinary user sync.
    """

    username: str
    domain: str
    values: tuple[tuple[str, str | int | bool], ...]


DbCommand = SaveBinding | DeleteBinding | WriteCdr | UpdateUser


# -- results (DB thread -> main thread) -------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything at start: users by (username, domain), unexpired bindings."""

    users: dict[UserKey, User]
    registrations: list[Binding]


@dataclass(frozen=True, slots=True)
class UsersChanged:
    """One poll's changes; apply `deleted` first, then `users` (UserDirectory.apply)."""

    users: tuple[User, ...]
    deleted: tuple[Deleted, ...]


@dataclass(frozen=True, slots=True)
class DbStatus:
    """The database went down or came back, or writes started being dropped."""

    ok: bool
    queued: int
    dropped: int
    error: str | None
    spool_errors: int = 0


@dataclass(frozen=True, slots=True)
class DbFatal:
    """The thread gave up for good (e.g. newer schema); the daemon should exit."""

    error: str

"""When softswitchctl acts as the owner of a SQLite database (softswitch/cli/ctl.py).

Only as root, on a SQLite file (or, before it exists, its directory) owned by
another user; the real run as root is tests/system/test_ctl_db_owner.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from softswitch.cli import ctl


def test_no_change_of_user_unless_root_on_someone_elses_sqlite_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine = tmp_path / "softswitch.db"
    monkeypatch.setattr(ctl.os, "geteuid", lambda: 1000)
    assert ctl.sqlite_owner(f"sqlite:///{mine}") is None  # not root
    monkeypatch.setattr(ctl.os, "geteuid", lambda: 0)
    assert ctl.sqlite_owner("sqlite://") is None  # in memory
    assert ctl.sqlite_owner("mysql+pymysql://u:p@db/softswitch") is None
    assert ctl.sqlite_owner("sqlite:////nonexistent/dir/softswitch.db") is None


def test_the_owner_of_the_file_if_it_exists_else_of_its_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its uid and primary group (the file's group without a passwd entry); root's: stay root."""
    monkeypatch.setattr(ctl.os, "geteuid", lambda: 0)
    stats = {tmp_path: (1234, 50)}

    class St:
        def __init__(self, uid: int, gid: int) -> None:
            self.st_uid, self.st_gid = uid, gid

    def stat(self: Path) -> St:
        if self not in stats:
            raise FileNotFoundError(self)
        return St(*stats[self])

    monkeypatch.setattr(ctl.Path, "stat", stat)
    groups = {1234: 70}  # uid -> primary gid, as in /etc/passwd

    def getpwuid(uid: int) -> Any:
        return SimpleNamespace(pw_gid=groups[uid])  # KeyError: no such user

    monkeypatch.setattr(ctl.pwd, "getpwuid", getpwuid)
    db = tmp_path / "softswitch.db"
    assert ctl.sqlite_owner(f"sqlite:///{db}") == (1234, 70)  # the directory's owner
    stats[db] = (4321, 60)
    assert ctl.sqlite_owner(f"sqlite:///{db}") == (4321, 60)  # the file's (no passwd entry)
    stats[db] = (0, 0)
    assert ctl.sqlite_owner(f"sqlite:///{db}") is None  # root's file: stay root

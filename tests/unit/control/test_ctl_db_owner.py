"""softswitchctl run as root on a SQLite database another user owns (softswitch/ctl.py).

Used to break: `softswitchctl user add` as root before the daemon's first start
created /var/lib/softswitch/softswitch.db owned by root, which the daemon
(User=softswitch) could then read but never write.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from softswitch import ctl
from tests.unit.control.dbthread_cases import write_config

NOBODY = 65534  # nobody:nogroup on Debian

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as another user needs root (CI runs as root)"
)


@pytest.fixture
def nobodys_dir() -> Iterator[Path]:
    """A directory owned by nobody, as /var/lib/softswitch is owned by softswitch.

    Under /tmp itself: pytest's tmp_path sits in a root-only (0700) directory
    that nobody could not even pass through.
    """
    path = Path(tempfile.mkdtemp(prefix="softswitch-owner-", dir="/tmp"))
    try:
        os.chown(path, NOBODY, NOBODY)
        yield path
    finally:
        shutil.rmtree(path)


@needs_root
def test_root_creates_the_database_as_the_owner_of_its_directory(
    nobodys_dir: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "etc", f"sqlite:///{nobodys_dir / 'softswitch.db'}")
    assert ctl.main(["--config-dir", str(config), "user", "add", "alice", "--password", "x"]) == 0
    assert (os.geteuid(), os.getegid()) == (0, 0)  # ourselves again afterwards
    files = sorted(nobodys_dir.iterdir())
    assert nobodys_dir / "softswitch.db" in files
    owners = {f.name: (f.stat().st_uid, f.stat().st_gid) for f in files}
    assert set(owners.values()) == {(NOBODY, NOBODY)}, owners
    # Again, now that the file exists (its -wal/-shm are created anew on open).
    assert ctl.main(["--config-dir", str(config), "user", "add", "bob", "--password", "y"]) == 0
    owners = {f.name: (f.stat().st_uid, f.stat().st_gid) for f in nobodys_dir.iterdir()}
    assert set(owners.values()) == {(NOBODY, NOBODY)}, owners


def test_no_change_of_user_unless_root_on_someone_elses_sqlite_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mine = tmp_path / "softswitch.db"
    monkeypatch.setattr(ctl.os, "geteuid", lambda: 1000)
    assert ctl.sqlite_owner(f"sqlite:///{mine}") is None  # not root
    monkeypatch.setattr(ctl.os, "geteuid", lambda: 0)
    assert ctl.sqlite_owner("sqlite://") is None  # in memory
    assert ctl.sqlite_owner("mysql+pymysql://u:p@db/softswitch") is None
    if tmp_path.stat().st_uid == 0:
        assert ctl.sqlite_owner(f"sqlite:///{mine}") is None  # root's own directory
    assert ctl.sqlite_owner("sqlite:////nonexistent/dir/softswitch.db") is None

"""softswitchctl run as root on a SQLite database another user owns (softswitch/cli/ctl.py).

Used to break: `softswitchctl user add` as root before the daemon's first start
created /var/lib/softswitch/softswitch.db owned by root, which the daemon
(User=softswitch) could then read but never write.  Here nobody plays
softswitch.  Root is needed to act as another user: this is a system test
(the rule of tests/unit/control/test_ctl_db_owner.py is tested there).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from softswitch.cli import ctl
from tests.unit.control.dbthread_cases import write_config

pytestmark = [pytest.mark.root]

NOBODY = 65534  # nobody:nogroup on Debian


@pytest.fixture
def nobodys_dir() -> Iterator[Path]:
    """A directory owned by nobody, as /var/lib/softswitch is owned by softswitch.

    Under /tmp itself: pytest's tmp_path sits in a root-only (0700) directory
    that nobody could not even pass through.
    """
    if os.geteuid() != 0:  # fail, not skip: see tests/system/netns.py require_root
        pytest.fail("this test needs root (it acts as user nobody); run it as root, as CI does")
    path = Path(tempfile.mkdtemp(prefix="softswitch-owner-", dir="/tmp"))
    try:
        os.chown(path, NOBODY, NOBODY)
        yield path
    finally:
        shutil.rmtree(path)


def owners(directory: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_uid, f.stat().st_gid) for f in directory.iterdir()}


def test_root_creates_the_database_as_the_owner_of_its_directory(
    nobodys_dir: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "etc", f"sqlite:///{nobodys_dir / 'softswitch.db'}")
    assert ctl.main(["--config-dir", str(config), "user", "add", "alice", "--password", "x"]) == 0
    assert (os.geteuid(), os.getegid()) == (0, 0)  # ourselves again afterwards
    found = owners(nobodys_dir)
    assert "softswitch.db" in found and set(found.values()) == {(NOBODY, NOBODY)}, found
    # Again, now that the file exists (its -wal/-shm are created anew on open).
    assert ctl.main(["--config-dir", str(config), "user", "add", "bob", "--password", "y"]) == 0
    found = owners(nobodys_dir)
    assert set(found.values()) == {(NOBODY, NOBODY)}, found

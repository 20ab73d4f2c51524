"""A throwaway MariaDB server for tests: real mysqld, private datadir, UNIX socket only.

Any suite can use it by importing the fixtures into its conftest.py::

    from tests.mariadb import mariadb_server, mariadb_url, private_mariadb  # noqa: F401

- ``mariadb_server`` (session): one server shared by the session's tests.
- ``mariadb_url`` (function): a fresh, empty database on that server, as a
  SQLAlchemy URL (``mysql+pymysql://root@localhost/NAME?unix_socket=...``),
  dropped afterwards.
- ``private_mariadb`` (function): a server of the test's own, for tests that
  stop and restart it (outages) without disturbing the shared one.

The datadir is initialised once per session with mariadb-install-db and
copied for each server (4-5 s saved per server). The server listens on a
UNIX socket only (--skip-networking), so tests never open a TCP port, and
runs with durability off (flush at commit disabled): a test database is
never worth an fsync.

Needs Debian's ``mariadb-server`` package. Without it the fixtures FAIL with
that package name rather than skipping: a green run that quietly left out the
MariaDB path would be a lie.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_HINT = "install Debian's mariadb-server package: apt-get install -y mariadb-server"
SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")

_SERVER_OPTIONS = (
    "--skip-networking",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=0",
    "--loose-innodb-doublewrite=0",
    "--performance-schema=OFF",
    "--skip-log-bin",
    "--skip-name-resolve",
    "--max-connections=100",
    "--character-set-server=utf8mb4",
)

_running: set[MariaDB] = set()
_template: Path | None = None
_counter = itertools.count()


def find_binary(name: str) -> str | None:
    """Path of a MariaDB program; /usr/sbin is searched even when not on PATH."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SEARCH_PATH))


def _root_options() -> list[str]:
    # mariadbd refuses to run as root unless told to; as any other user it
    # runs as that user, which is what a developer's machine wants.
    return ["--user=root"] if os.geteuid() == 0 else []


def _need(name: str) -> str:
    path = find_binary(name)
    if path is None:
        pytest.fail(f"{name} not found: {PACKAGE_HINT}", pytrace=False)
    return path


def make_template() -> Path:
    """An initialised datadir (system tables, root without password), made once."""
    global _template
    if _template is not None:
        return _template
    install = _need("mariadb-install-db")
    _need("mariadbd")
    base = Path(tempfile.mkdtemp(prefix="ssmdb-tpl-"))
    atexit.register(shutil.rmtree, base, True)
    datadir = base / "data"
    cmd = [
        install,
        "--no-defaults",
        f"--datadir={datadir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--innodb-log-file-size=16M",
        *_root_options(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        pytest.fail(f"mariadb-install-db failed: {' | '.join(tail)}", pytrace=False)
    _template = datadir
    return datadir


class MariaDB:
    """One mariadbd process on a private datadir and socket. Restartable."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = base / "mysqld.sock"  # short path: sun_path holds 108 bytes
        self.errlog = base / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this server."""
        return (
            f"mysql+pymysql://root@localhost/{database}?unix_socket={self.socket}&charset=utf8mb4"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start mariadbd and wait until it accepts connections."""
        assert not self.running
        cmd = [
            _need("mariadbd"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.errlog}",
            f"--tmpdir={self.base}",
            *_SERVER_OPTIONS,
            *_root_options(),
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._failed(f"mariadbd exited with status {self.proc.returncode}")
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        self._failed(f"mariadbd not accepting connections after {timeout:g} s")

    def _failed(self, why: str) -> None:
        lines = []
        if self.errlog.exists():
            lines = self.errlog.read_text(errors="replace").strip().splitlines()[-5:]
        pytest.fail(f"{why}; {self.errlog}: {' | '.join(lines)}", pytrace=False)

    def _ping(self) -> bool:
        import pymysql

        try:
            conn = pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=1)
        except pymysql.err.MySQLError:
            return False
        conn.close()
        return True

    def sql(self, statement: str) -> None:
        """Run one administrative statement as root."""
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create an empty utf8mb4 database; return its URL."""
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        return self.url(name)

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down cleanly (SIGTERM), killing it if it does not stop in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        _running.discard(self)

    def kill(self) -> None:
        """Crash it (SIGKILL): what a power cut looks like to a client."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        _running.discard(self)

    def remove(self) -> None:
        """Stop and delete the datadir."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def new_server() -> MariaDB:
    """A started server on a fresh copy of the template datadir."""
    template = make_template()
    base = Path(tempfile.mkdtemp(prefix="ssmdb-"))
    shutil.copytree(template, base / "data")
    server = MariaDB(base)
    server.start()
    return server


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        server.kill()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDB]:
    """One MariaDB server for the whole session."""
    server = new_server()
    yield server
    server.remove()


@pytest.fixture
def mariadb_url(mariadb_server: MariaDB) -> Iterator[str]:
    """A fresh, empty database on the session's server (URL), dropped afterwards."""
    if not mariadb_server.running:  # a test stopped it and did not restart it
        mariadb_server.start()
    name = f"test_{os.getpid()}_{next(_counter)}"
    yield mariadb_server.create_database(name)
    if mariadb_server.running:
        mariadb_server.sql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def private_mariadb() -> Iterator[MariaDB]:
    """A server of this test's own (stop/start it freely), with a database 'softswitch'."""
    server = new_server()
    server.create_database("softswitch")
    yield server
    server.remove()

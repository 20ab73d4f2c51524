"""Run-time helpers shared by the daemons (softswitch-control, softswitch-bearer).

``remove_stale_socket`` is what every daemon does before binding a UNIX socket
file (control's bearer socket and admin socket, each bearer's control socket):
a file left behind by a process that died is removed, a socket somebody still
serves is never taken over, and any other file is never deleted.

``release_transport`` is what softswitch-control does with every closed
asyncio connection (SIP over TCP, the admin socket): see there.

``die_with_parent`` ties a child daemon to the process that started it (the
`make run` launcher, a test or benchmark harness), so a launcher killed by
SIGKILL or a timeout leaves no daemon holding the SIP port or the sockets.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["SocketFileError", "die_with_parent", "release_transport", "remove_stale_socket"]


class SocketFileError(Exception):
    """The socket file cannot be taken; the text is one line naming the path."""


def remove_stale_socket(
    path: Path, *, kind: int = socket.SOCK_DGRAM, owner: str = "another daemon"
) -> None:
    """Make ``path`` free to bind: remove a stale UNIX socket file, refuse a live one.

    * nothing there: nothing to do;
    * not a socket (a file, a directory, a symbolic link): refused, never deleted;
    * ``connect`` (with a socket of ``kind``) is refused (ECONNREFUSED: nobody
      is bound to it) or the file went meanwhile (ENOENT): stale, removed;
    * ``connect`` succeeds: ``owner`` is serving it: refused;
    * anything else (EACCES, a timeout, a socket of another type): refused
      with the reason, the file left alone; better a clear start-up error
      than stealing a socket from a process that is alive.

    Raises SocketFileError.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise SocketFileError(f"{path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketFileError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)  # a stream listener with a full backlog: alive
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketFileError(f"{path}: {e.strerror or e}") from None
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketFileError(f"{path}: {owner} is serving this socket")


def release_transport(transport: object) -> None:
    """Break the reference cycle a closed asyncio socket transport keeps.

    CPython's selector transports (3.8 to 3.13 at least) hold a bound method
    of themselves, ``_read_ready_cb``: each connection is a reference cycle,
    which only the cyclic collector frees.  softswitch-control freezes its
    heap (softswitch/daemonkit/gctune.py), and a frozen cycle is never collected, so a
    TCP connection that lived through a re-freeze would leak its transport
    and socket when it closed.  Call this once the transport is closed (its
    reader is removed then, so the callback can never run again); a
    transport without the attribute (uvloop's) is left alone.
    """
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[attr-defined]


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when
    ``parent`` (the caller's pid) dies, even by SIGKILL (PR_SET_PDEATHSIG)."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return preexec

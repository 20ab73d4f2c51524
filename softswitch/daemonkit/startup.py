"""What both daemons do at start-up that can fail: one error, one socket opener.

``StartupError`` is the one start-up failure both daemons report: its text is
the one line printed on stderr (and logged), never a traceback.  Each daemon
maps it to its documented exit status.

``open_control_socket`` opens the end of the control protocol each daemon
binds: control's bearer socket (``[bearers] local``) and each bearer's control
socket (``[bearer] control``).  Both are the same kind of socket, so they are
opened by the same code: a UNIX datagram socket at a path (its directory
created, a stale file left by a crash replaced, a live one never taken over,
mode 0660 so the other daemon's group can send to it), or a UDP socket
(whose datagrams the protocol HMAC-tags).  The receive buffer is raised to
absorb bursts (thousands of set-ups after a restart) while the loop is busy.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from softswitch.daemonkit.runtime import SocketFileError, remove_stale_socket

__all__ = ["CONTROL_RCVBUF", "StartupError", "open_control_socket"]

#: SO_RCVBUF asked for on a control socket (the kernel caps it at rmem_max).
CONTROL_RCVBUF = 1 << 20


class StartupError(Exception):
    """The daemon cannot start; the text is the one line to print."""


def open_control_socket(
    kind: str, address: str, port: int, *, what: str, owner: str
) -> socket.socket:
    """A bound, non-blocking datagram socket for ``unix:PATH`` or ``udp:HOST:PORT``.

    ``what`` names the socket in error messages ("bearer control socket");
    ``owner`` is who would be serving a live socket file at ``PATH``
    ("another bearer").  Raises StartupError with one line such as
    ``bearer control socket /run/softswitch/control.sock: cannot bind:
    Permission denied``.
    """
    if kind == "unix":
        sock = _bind_unix(Path(address), what, owner)
    else:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            raise StartupError(
                f"{what} udp:{address}:{port}: cannot bind: {exc.strerror or exc}"
            ) from None
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CONTROL_RCVBUF)
    return sock


def _bind_unix(path: Path, what: str, owner: str) -> socket.socket:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{what} {path}: cannot create {path.parent}: {exc.strerror}") from None
    try:
        remove_stale_socket(path, owner=owner)
    except SocketFileError as exc:
        raise StartupError(f"{what} {exc}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
    except OSError as exc:
        sock.close()
        raise StartupError(f"{what} {path}: cannot bind: {exc.strerror}") from None
    return sock

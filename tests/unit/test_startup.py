"""softswitch.daemonkit.startup: the control socket both daemons open the same way."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from softswitch.daemonkit.startup import StartupError, open_control_socket


def test_unix_socket_is_bound_group_writable_and_replaces_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "bearer-0.sock"  # the directory is created
    first = open_control_socket("unix", str(path), 0, what="control socket", owner="x")
    assert first.getblocking() is False and first.type == socket.SOCK_DGRAM
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    first.close()  # the file stays behind, as after kill -9
    second = open_control_socket("unix", str(path), 0, what="control socket", owner="x")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.sendto(b"hello", str(path))
    assert second.recv(16) == b"hello"
    second.close()


def test_a_live_socket_is_never_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "bearer-0.sock"
    live = open_control_socket("unix", str(path), 0, what="control socket", owner="another bearer")
    with live, pytest.raises(StartupError, match=r"^control socket .*: another bearer is serving"):
        open_control_socket("unix", str(path), 0, what="control socket", owner="another bearer")


def test_errors_are_one_line_naming_the_socket(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the directory should be
    with pytest.raises(StartupError, match=r"^bearer control socket .*file/c\.sock: cannot create"):
        open_control_socket(
            "unix", str(blocker / "c.sock"), 0, what="bearer control socket", owner="x"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(
            StartupError, match=rf"^control socket udp:127\.0\.0\.1:{port}: cannot bind: "
        ):
            open_control_socket("udp", "127.0.0.1", port, what="control socket", owner="x")
    udp = open_control_socket("udp", "127.0.0.1", 0, what="control socket", owner="x")
    assert udp.getsockname()[0] == "127.0.0.1" and udp.getblocking() is False
    udp.close()

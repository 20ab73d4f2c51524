"""softswitch.daemonkit.runtime: what both daemons do before binding a UNIX socket file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from softswitch.daemonkit.runtime import SocketFileError, remove_stale_socket


def _bound(path: Path, kind: int) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(str(path))
    return s


def test_stale_socket_files_go_live_ones_and_other_files_stay(tmp_path: Path) -> None:
    remove_stale_socket(tmp_path / "nothing.sock")  # nothing there: fine

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        path = tmp_path / f"stale-{kind}.sock"
        _bound(path, kind).close()  # the file stays behind, as after a crash
        remove_stale_socket(path, kind=kind)
        assert not path.exists()

    live = tmp_path / "live.sock"
    with _bound(live, socket.SOCK_DGRAM):
        with pytest.raises(SocketFileError, match=r"live\.sock: another bearer is serving"):
            remove_stale_socket(live, owner="another bearer")
        assert live.exists()
    listening = tmp_path / "listening.sock"
    with _bound(listening, socket.SOCK_STREAM) as s:
        s.listen()
        with pytest.raises(SocketFileError, match="another daemon is serving this socket"):
            remove_stale_socket(listening, kind=socket.SOCK_STREAM)
        # A live socket of another type is never taken for a stale one.
        with pytest.raises(SocketFileError, match=r"listening\.sock: "):
            remove_stale_socket(listening, kind=socket.SOCK_DGRAM)
        assert listening.exists()

    plain = tmp_path / "plain"
    plain.write_text("an operator's file")
    link = tmp_path / "link.sock"
    link.symlink_to(live)
    for path in (plain, link, tmp_path):
        with pytest.raises(SocketFileError, match="exists and is not a socket"):
            remove_stale_socket(path)
    assert plain.read_text() == "an operator's file" and link.is_symlink()

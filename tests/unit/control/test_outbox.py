"""Bearer datagrams survive a full UNIX socket queue (softswitch/daemonkit/outbox.py and
the control daemon's bearer-socket edge): nothing dropped, order kept."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from softswitch.daemon import main as daemon
from softswitch.daemonkit.outbox import Outbox


def _over_the_queue() -> int:
    """More datagrams than a UNIX socket's queue holds on this host.

    The queue length is ``net.unix.max_dgram_qlen``: 10 on a stock host, 512
    where the .deb's sysctl file or the control benchmark set it.  A fixed
    burst would stop testing anything on the second kind of host.
    """
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    return 2 * qlen + 100


def _reader(path: Path) -> socket.socket:
    """A bearer endpoint that reads only when the test says so."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def _sender(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def test_outbox_keeps_what_would_block_and_sends_it_in_order(tmp_path: Path) -> None:
    reader = _reader(tmp_path / "bearer.sock")
    drops: Counter[str] = Counter()
    box = Outbox(_sender(tmp_path / "control.sock"), drops, "bearer_send_")
    sent = [b"msg-%05d" % i for i in range(_over_the_queue())]
    for data in sent:
        box.send(data, str(tmp_path / "bearer.sock"))
    assert len(box) > 0 and box.deferred == len(box)
    got: list[bytes] = []
    for _ in range(1000):
        got += _drain(reader)
        if not box.flush():
            break
    got += _drain(reader)
    assert got == sent
    assert not drops and len(box) == 0


def test_outbox_counts_a_gone_peer_and_a_full_queue(tmp_path: Path) -> None:
    reader = _reader(tmp_path / "bearer.sock")
    drops: Counter[str] = Counter()
    box = Outbox(_sender(tmp_path / "control.sock"), drops, "bearer_send_", limit=5)
    box.send(b"x", str(tmp_path / "nobody.sock"))  # no such file
    gone = _reader(tmp_path / "gone.sock")
    gone.close()  # the file stays, nobody listens
    box.send(b"x", str(tmp_path / "gone.sock"))
    assert drops == Counter({"bearer_send_ENOENT": 1, "bearer_send_ECONNREFUSED": 1})
    assert len(box) == 0
    n = 0
    while not len(box):
        box.send(b"%d" % n, str(tmp_path / "bearer.sock"))
        n += 1
    for _ in range(10):
        box.send(b"%d" % n, str(tmp_path / "bearer.sock"))
        n += 1
    assert len(box) == 5 and drops["bearer_send_queue_full"] == 6
    reader.close()  # the bearer died: what waited is counted, not kept
    assert box.flush() == 0
    assert drops["bearer_send_ECONNREFUSED"] == 1 + 5


class _FakeSwitch:
    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.out: list[tuple[bytes, str]] = []

    def sip_datagrams_to_send(self) -> list:
        return []

    def receive_bearer(self, data: bytes, source: object, now: float) -> None:
        raise AssertionError("the bearer sends nothing in this test")

    def bearer_datagrams_to_send(self) -> list[tuple[bytes, str]]:
        out, self.out = self.out, []
        return out


def test_control_daemon_delivers_a_burst_once_the_bearer_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst after a pause (bench/control.py): control's sendto() meets EAGAIN
    past the bearer's queue length; every datagram still arrives, in order,
    once the bearer reads -- none counted as dropped."""
    bearer_path = str(tmp_path / "bearer.sock")
    reader = _reader(tmp_path / "bearer.sock")
    cfg = SimpleNamespace(bearers=SimpleNamespace(local=("unix", str(tmp_path / "c.sock"), 0)))
    d = daemon.ControlDaemon(cfg, tmp_path / "softswitch.conf", required=False, key=None)
    monkeypatch.setattr(d, "_hand_to_db", lambda: None)
    monkeypatch.setattr(d, "_rearm", lambda: None)
    sw = _FakeSwitch()
    d.switch = sw  # type: ignore[assignment]
    half = _over_the_queue()
    sent = [b"req-%05d" % i for i in range(2 * half)]

    async def scenario() -> list[bytes]:
        d.loop = asyncio.get_running_loop()
        d._open_bearer_socket()
        try:
            sw.out = [(data, bearer_path) for data in sent[:half]]
            d._flush()
            outbox = d._bearers.outbox  # type: ignore[union-attr]
            assert outbox is not None and len(outbox) > 0
            await asyncio.sleep(0.1)  # the bearer is paused: retries find it full
            sw.out = [(data, bearer_path) for data in sent[half:]]
            d._kick()  # more while some still wait: after them
            await asyncio.sleep(0)
            got: list[bytes] = []
            for _ in range(2000):  # bounded: 4 s at most
                got += _drain(reader)
                if len(got) == len(sent):
                    break
                await asyncio.sleep(0.002)
            assert len(outbox) == 0
            return got
        finally:
            d._bearers.close()  # type: ignore[union-attr]

    got = asyncio.run(scenario())
    assert got == sent
    assert not sw.drops

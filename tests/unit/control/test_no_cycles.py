"""A call leaves no reference cycles behind.

softswitch-control freezes its heap (softswitch/daemonkit/gctune.py): whatever is alive
at a re-freeze is never visited by the cyclic collector again, so a cycle
that dies after being frozen is never reclaimed.  Reference counting frees
everything else, which is why the call path must create no cycles at all:
each one would be a leak of a few kilobytes per call.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from softswitch.daemon.admin import AdminClient
from softswitch.daemon.transports import SipTcp
from softswitch.db.messages import Loaded
from softswitch.db.schema import create_schema, make_engine
from softswitch.db.thread import DbThread
from softswitch.db.users import add_user
from softswitch.sip.digest import ha1
from softswitch.sip.sdp import SessionDescription
from tests.unit.control.admin_server import serving
from tests.unit.control.calls_harness import Switch
from tests.unit.control.dbthread_cases import DOMAIN, a_cdr, binding, next_message


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Automatic collection off and garbage kept, so gc.collect() reports
    exactly the cycles the code under test made."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def _cyclic_garbage() -> list[str]:
    gc.collect()
    kinds = sorted({type(o).__name__ for o in gc.garbage})
    gc.garbage.clear()
    return kinds


def _call(sw: Switch, n: int) -> None:
    """Register, call, answer, ACK, talk, hang up: the whole B2BUA path."""
    alice = sw.phone("alice", "198.51.100.10", 5060 + n)
    bob = sw.phone("bob", "198.51.100.20")
    sw.register(bob)
    call = sw.establish(alice, bob)
    bob.take("ACK")
    sw.now += 30
    alice.send(call.dialog_a.create_request("BYE", via=alice.via()))
    alice.take(200)
    bob.send(bob.answer(bob.take("BYE"), 200))


def test_parsed_sdp_is_not_a_cycle(collector_off: None) -> None:
    body = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"a=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n"
    )
    for _ in range(10):
        sd = SessionDescription.parse(body)
        copy = sd.copy()
        assert copy.media[0].direction == "sendonly"
        del sd, copy
    assert _cyclic_garbage() == []


def test_a_temporary_description_still_lends_its_media_the_session_level() -> None:
    body = (
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
        b"a=inactive\r\nm=audio 4000 RTP/AVP 0\r\n"
    )
    md = SessionDescription.parse(body).media[0]
    gc.collect()
    assert md.direction == "inactive" and md.effective_address == "192.0.2.7"


def test_calls_leave_no_cyclic_garbage(collector_off: None) -> None:
    sw = Switch()
    _call(sw, 0)  # first-use caches (digest, routing) out of the way
    sw.advance(60)  # every transaction of it finished and gone
    _cyclic_garbage()
    for n in range(1, 4):
        _call(sw, n)
    sw.advance(60)
    assert _cyclic_garbage() == []


def _db_round(thread: DbThread, n: int) -> None:
    """A batch of registrations saved and deleted, CDRs written, polls run."""
    for i in range(n, n + 20):
        thread.save_binding(binding(i))
        thread.write_cdr(a_cdr(i))
    thread.delete_binding(f"user{n}", DOMAIN, binding(n).contact)
    thread.flush()
    deadline = time.monotonic() + 10
    while thread.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.backlog == 0
    time.sleep(0.1)  # a few polls, with reconcile and purge (every poll here)


def test_the_db_thread_leaves_no_cyclic_garbage(tmp_path: Path, collector_off: None) -> None:
    """Its objects are frozen too; statements are built once (db/writer.py)."""
    url = f"sqlite:///{tmp_path / 'softswitch.db'}"
    engine = make_engine(url)
    create_schema(engine)
    with engine.begin() as conn:
        add_user(conn, "alice", DOMAIN, (ha1("alice", DOMAIN, "pw", "MD5"), ""))
    engine.dispose()
    thread = DbThread(
        url,
        lambda: None,
        sync_interval=0.02,
        batch_interval=0.02,
        reconcile_every=1,
        purge_every=1,
    )
    thread.start()
    try:
        next_message(thread, Loaded)
        _db_round(thread, 0)  # first use: SQLAlchemy's caches, the connection pool
        _cyclic_garbage()
        for n in range(100, 400, 100):
            _db_round(thread, n)
        assert _cyclic_garbage() == []
    finally:
        thread.stop(5)


def test_admin_connections_leave_no_cyclic_garbage(tmp_path: Path, collector_off: None) -> None:
    """softswitchctl's connections: asyncio transports are cycles until released."""
    client = AdminClient(tmp_path / "admin.sock")
    with serving(tmp_path / "admin.sock"):
        assert client.call("echo", {"n": 0}) == {"n": 0}
        time.sleep(0.1)
        _cyclic_garbage()
        for n in range(1, 6):
            assert client.call("echo", {"n": n}) == {"n": n}
        time.sleep(0.2)  # the server's side of each connection closed and lost
        assert _cyclic_garbage() == []


def test_sip_tcp_connections_leave_no_cyclic_garbage(collector_off: None) -> None:
    """Phones on TCP come and go; each closed connection must free itself."""
    transports = SimpleNamespace(tcp={}, drops=Counter(), refuse=lambda host: False)

    def ping(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\r\n\r\n")  # RFC 5626 keepalive: the switch pongs
            assert sock.recv(16) == b"\r\n"

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SipTcp(transports), "127.0.0.1", 0)  # type: ignore[arg-type]
        port = server.sockets[0].getsockname()[1]
        await asyncio.to_thread(ping, port)
        await asyncio.sleep(0.1)
        _cyclic_garbage()
        for _ in range(5):
            await asyncio.to_thread(ping, port)
        await asyncio.sleep(0.2)
        found = _cyclic_garbage()
        server.close()
        await server.wait_closed()
        return found

    assert asyncio.run(main()) == []
    assert transports.tcp == {}

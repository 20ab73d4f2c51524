"""An admin socket server on its own loop, as the daemon runs it, with test handlers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import threading
from collections.abc import Iterator
from pathlib import Path

from softswitch.daemon.admin import (
    AdminServer,
)


class Leg(enum.Enum):
    A = "a"


@dataclasses.dataclass(frozen=True, slots=True)
class FakeCall:
    """Something the admin socket must turn into JSON (an enum, a dataclass)."""

    call_id: str
    leg: Leg
    codecs: tuple[str, ...]


async def slow(args: dict) -> str:
    await asyncio.sleep(float(args.get("seconds", 5)))
    return "late"


def fail(args: dict) -> None:
    raise RuntimeError("boom")


def refuse(args: dict) -> None:
    raise ValueError("no such call: x")


HANDLERS = {
    "calls": lambda args: [FakeCall("c1@host", Leg.A, ("PCMU", "PCMA"))],
    "echo": lambda args: args,
    "status": lambda args: {"uptime": 12.5, "db": "ok"},
    "slow": slow,
    "fail": fail,
    "refuse": refuse,
}


@contextlib.contextmanager
def serving(path: Path, handlers: dict = HANDLERS) -> Iterator[AdminServer]:
    """An AdminServer on its own event loop in a thread, as the daemon would run it."""
    loop = asyncio.new_event_loop()
    server = AdminServer(path, handlers)
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    if errors:
        thread.join(5)
        raise errors[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

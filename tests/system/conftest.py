"""Fixtures for the end-to-end phone suites: a running switch, registered phones.

- ``e2e_switch`` (module): control + two bearers on loopback with the users of
  ``tests/system/loopback_switch.USERS`` (SQLite). A suite that needs another
  database overrides it (see test_calls_mariadb.py).
- ``e2e_phones`` (function): ``start(*specs)`` starts pjsua2 phones in
  parallel and registers those whose spec names a ``user``.

Nothing outlives its fixture: phones are closed (killed if they hang) after
each test and must exit cleanly; the daemons are stopped after the module and
must exit 0 without a traceback; everything left is killed at interpreter
exit (phone.py and loopback_switch.py register atexit hooks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.loopback_switch import USERS, E2eSwitch, register, start_phones
from tests.system.phone import Phone, close_all


@pytest.fixture(scope="module")
def e2e_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eSwitch]:
    sw = E2eSwitch(tmp_path_factory.mktemp("switch")).start()
    try:
        yield sw
    finally:
        problems = sw.stop()
    assert not problems, f"{problems}\n{sw.logs()}"


@pytest.fixture
def e2e_phones(e2e_switch: E2eSwitch, tmp_path: Path) -> Iterator[Callable[..., list[Phone]]]:
    """``start(*specs)``: each spec is Phone keyword arguments plus ``name`` and
    optionally ``user`` (register as that user; tone defaults to the user's)."""
    made: list[Phone] = []

    def start(*specs: dict[str, Any]) -> list[Phone]:
        prepared = []
        for spec in specs:
            spec = dict(spec)
            user = spec.pop("user", None)
            if user is not None:
                spec.setdefault("tone_hz", USERS[user]["tone"])
            prepared.append((spec, user))
        phones = start_phones([s for s, _ in prepared], tmp_path)
        made.extend(phones)
        for phone, (_, user) in zip(phones, prepared, strict=True):
            if user is not None:
                code = register(phone, e2e_switch, user)
                assert code == 200, (
                    f"{phone.name} could not register as {user}: {code} "
                    f"{getattr(phone, 'last_reason', '')}\n{e2e_switch.logs()}"
                )
        return phones

    try:
        yield start
    finally:
        codes = close_all(made)
        for p in made:
            p.kill()
    bad = {n: c for n, c in codes.items() if c not in (0, None)}
    assert not bad, f"phones exited uncleanly: {bad}\n" + "\n".join(
        f"--- {p.name} ---\n{p.log_tail(15)}" for p in made if p.name in bad
    )

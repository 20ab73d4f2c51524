"""The memory budget: 100,000 users with registrations in < 300 MB RSS (DESIGN.md).

``populate(url, n)`` fills a database with `n` users and one realistic binding
each; ``python -m tests.integration.control_db.scale URL`` then loads them the
way the daemon does (DbThread -> Loaded -> UserDirectory, bindings kept) in a
fresh process and prints one JSON object: load seconds, RSS before and after,
peak RSS. A fresh process, because RSS of a pytest process says nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from softswitch.db.schema import create_schema, make_engine, registrations, users

AGENTS = [
    "Yealink SIP-T46S 66.86.0.15",
    "Grandstream GXP2170 1.0.11.23",
    "PolycomVVX-VVX_411-UA/6.4.3.5018",
    "Linphone/5.2.0 (belle-sip/5.2.0)",
    "Zoiper rv2.10.19.5",
]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def populate(url: str, n: int, chunk: int = 10_000) -> None:
    """`n` users (HA1s, display names) and one binding each, expiring in an hour."""
    engine = make_engine(url)
    create_schema(engine)
    now = time.time()
    with engine.begin() as conn:
        for start in range(0, n, chunk):
            ids = range(start, min(n, start + chunk))
            conn.execute(
                sa.insert(users),
                [
                    {
                        "username": f"{2_000_000 + i}",
                        "domain": "example.com",
                        "ha1_md5": f"{i:032x}",
                        "ha1_sha256": f"{i:064x}",
                        "display_name": f"Extension {i}",
                        "enabled": True,
                        "record_calls": i % 10 == 0,
                        "max_calls": 4,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                sa.insert(registrations),
                [
                    {
                        "username": f"{2_000_000 + i}",
                        "domain": "example.com",
                        "contact": f"sip:{2_000_000 + i}@10.{i >> 16 & 255}.{i >> 8 & 255}."
                        f"{i & 255}:5060;transport=udp;rinstance={i:016x}",
                        "expires_at": now + 3600,
                        "source_transport": "udp",
                        "source_host": f"198.51.{i >> 8 & 255}.{i & 255}",
                        "source_port": 1024 + i % 60000,
                        "path": None,
                        "received": None,
                        "call_id": f"{i:032x}@10.0.0.1",
                        "cseq": 1 + i % 1000,
                        "user_agent": AGENTS[i % len(AGENTS)],
                        "instance": f"<urn:uuid:00000000-0000-1000-8000-{i:012x}>",
                        "reg_id": 1,
                    }
                    for i in ids
                ],
            )
    engine.dispose()


def measure(url: str) -> dict[str, float]:
    """Load like the daemon does; the figures for the report."""
    import softswitch.db.thread as dbthread
    from softswitch.db.messages import Loaded
    from softswitch.model.users import UserDirectory

    baseline = _status_kb("VmRSS")
    started = time.monotonic()
    thread = dbthread.DbThread(url, lambda: None, sync_interval=3600)
    thread.start()
    loaded = thread.results.get(timeout=300)
    assert isinstance(loaded, Loaded), loaded
    directory = UserDirectory()
    directory.load(loaded.users)
    bindings = loaded.registrations
    seconds = time.monotonic() - started
    thread.stop(10)
    return {
        "users": len(directory),
        "registrations": len(bindings),
        "load_seconds": round(seconds, 2),
        "rss_before_mb": round(baseline / 1024, 1),
        "rss_after_mb": round(_status_kb("VmRSS") / 1024, 1),
        "rss_peak_mb": round(_status_kb("VmHWM") / 1024, 1),
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))

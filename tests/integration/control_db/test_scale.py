"""DESIGN.md budget: 100,000 users held in memory, registrations included, in < 300 MB RSS.

Loaded the way the daemon loads them, in a fresh process (see scale.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.control_db.scale import populate

USERS = 100_000
BUDGET_MB = 300


def load_in_a_fresh_process(url: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.control_db.scale", url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_100k_users_and_registrations_fit_the_memory_budget_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'softswitch.db'}"
    populate(url, USERS)
    figures = load_in_a_fresh_process(url)
    print(f"SQLite: {figures}")
    assert (figures["users"], figures["registrations"]) == (USERS, USERS)
    assert figures["rss_peak_mb"] < BUDGET_MB


@pytest.mark.slow
def test_100k_users_and_registrations_fit_the_memory_budget_on_mariadb(mariadb_url):
    populate(mariadb_url, USERS)
    figures = load_in_a_fresh_process(mariadb_url)
    print(f"MariaDB: {figures}")
    assert (figures["users"], figures["registrations"]) == (USERS, USERS)
    assert figures["rss_peak_mb"] < BUDGET_MB

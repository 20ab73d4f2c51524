"""The Prometheus endpoint of the real control daemon, scraped over HTTP.

Control + two real bearers (the harness), ``[metrics] listen`` on a free
loopback port; the checks follow what an operator's dashboard reads:
registrations after a REGISTER, SIP requests by method, both bearers up,
the set-up delay histogram and the answered-calls counter after a call.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness.control import (
    CONTROL_EXE,
    ControlProcess,
    free_sip_port,
    start_switch,
    write_control_config,
)
from bench.harness.sip import Call, SipClient


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def wait_for(url: str, check: Callable[[Samples], bool], timeout: float = 5.0) -> Samples:
    """Scrape until ``check(samples)`` holds (counters follow the messages by a loop turn)."""
    deadline = time.monotonic() + timeout
    samples = scrape(url)
    while not check(samples) and time.monotonic() < deadline:  # bounded
        time.sleep(0.05)
        samples = scrape(url)
    return samples


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[ControlProcess, str]]:
    port = free_tcp_port()
    control, bearers = start_switch(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
    yield control, f"http://127.0.0.1:{port}/metrics"
    code = control.stop(signal.SIGTERM)
    for b in bearers:
        assert b.stop() == 0, b.log()
    assert code == 0, f"control exited {code}:\n{control.log()}"
    assert "Traceback" not in control.log(), control.log()


def test_scrape_after_a_register_and_after_a_call(metered: tuple[ControlProcess, str]) -> None:
    switch, url = metered
    assert f"Prometheus metrics on {url}" in switch.log()
    # Both bearers up (their first heartbeats may still be on the way).
    s = wait_for(url, lambda s: sum(labelled(s, "softswitch_bearer_up").values()) == 2)
    up = labelled(s, "softswitch_bearer_up")
    assert len(up) == 2 and sum(up.values()) == 2, up
    assert all(v > 0 for v in labelled(s, "softswitch_bearer_capacity").values())
    assert get(s, "softswitch_serving") == 1
    assert get(s, "softswitch_users") == 2
    assert get(s, "softswitch_registrations") == 0
    assert get(s, "softswitch_db_up") == 1
    assert get(s, "process_resident_memory_bytes") > 0

    phone = SipClient(switch.port)
    assert phone.register().status == 200  # 401, then 200
    phone.close()
    s = wait_for(url, lambda s: get(s, "softswitch_registrations") == 1)
    assert get(s, "softswitch_registrations") == 1
    assert get(s, "softswitch_registers_accepted_total") == 1
    assert get(s, "softswitch_sip_requests_total", direction="received", method="REGISTER") == 2
    assert get(s, "softswitch_sip_responses_total", direction="sent", code="401") == 1
    assert get(s, "softswitch_sip_responses_total", direction="sent", code="200") == 1
    delay_before = get(s, "softswitch_call_setup_delay_seconds_count")

    call = Call(switch)  # registers Bob: one more registration
    try:
        call.establish()
        s = scrape(url)
        assert get(s, "softswitch_calls_active") == 1
        assert get(s, "softswitch_calls_by_state", state="confirmed") == 1
        assert get(s, "softswitch_call_setup_delay_seconds_count") == delay_before + 1
        assert 0 < get(s, "softswitch_call_setup_delay_seconds_sum") < 1.0
        assert call.hang_up().status == 200
    finally:
        call.close()
    s = wait_for(url, lambda s: get(s, "softswitch_calls_total", disposition="answered") == 1)
    assert get(s, "softswitch_calls_total", disposition="answered") == 1
    assert get(s, "softswitch_calls_active") == 0
    assert get(s, "softswitch_registrations") == 2
    received = {
        dict(k)["method"]: v
        for k, v in labelled(s, "softswitch_sip_requests_total").items()
        if dict(k)["direction"] == "received"
    }
    assert received["INVITE"] == 2 and received["ACK"] >= 2 and received["BYE"] == 1, received
    assert get(s, "softswitch_sip_requests_total", direction="sent", method="INVITE") == 1
    assert get(s, "softswitch_sip_requests_total", direction="sent", method="BYE") == 1
    assert get(s, "softswitch_sip_responses_total", direction="sent", code="407") == 1
    assert get(s, "softswitch_sip_responses_total", direction="received", code="180") == 1


def test_sighup_keeps_the_endpoint_and_says_a_new_listen_needs_a_restart(
    metered: tuple[ControlProcess, str],
) -> None:
    switch, url = metered
    conf = switch.etc / "softswitch.conf"
    moved = free_tcp_port()
    text = conf.read_text()
    conf.write_text(text.replace(url.split("/")[2], f"127.0.0.1:{moved}"))
    assert conf.read_text() != text
    switch.send_signal(signal.SIGHUP)
    switch.wait_log("needs a restart to change: metrics.listen")
    assert get(scrape(url), "softswitch_serving") == 1  # still where it was


def test_metrics_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    etc = write_control_config(
        tmp_path, free_sip_port(), [], metrics={"listen": f"127.0.0.1:{port}"}
    )
    try:
        r = subprocess.run(
            [str(CONTROL_EXE), "--config-dir", str(etc)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        busy.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"softswitch-control: [metrics] listen 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in r.stderr

"""The load the switch is measured under, driven with SIPp (bench/sipp/):
(a) REGISTER ramp, (b) call ramp, (c) set-up delay at a fixed rate with
its SIPp-to-SIPp baseline, (d) RSS and the leak check."""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.control.machine import mem_kib
from bench.control.measure import (
    CALL_ID,
    CPU_SATURATED_PERCENT,
    FROM_USER,
    Probe,
    achieved_rate,
    delays_ms,
    fits,
    histogram_quantile,
    largest_burst,
    message_stamps,
    percentile,
    rounded,
    scrape_histogram,
    summary,
)
from bench.control.switch import CALLEE, Switch, start_switch, user
from bench.harness.control import DOMAIN
from bench.harness.sipp import Sipp, SippResult, free_udp_port
from bench.loadgen import rss_kib_of

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp"


def sipp(name: str, scenario: str, workdir: Path, **options: Any) -> Sipp:
    """SIPp as the benchmark runs it: a scenario of bench/sipp/, its files in
    ``workdir/name``, a 4 MiB socket buffer, and no logs but the statistics
    and errors unless asked (``trace_msg``): a log line per message would
    cost SIPp, on the core it shares with the bearers, more than the switch's
    work."""
    options.setdefault("trace_msg", False)
    return Sipp(
        scenario,
        options.pop("remote", None),
        scenarios=SCENARIOS,
        name=name,
        workdir=workdir / name,
        buff_size=4 << 20,
        trace_screen=False,
        trace_logs=False,
        **options,
    )


def write_inf(path: Path, first: int, count: int, users: int) -> Path:
    """A SEQUENTIAL injection file: user; its [authentication] keyword."""
    lines = ["SEQUENTIAL"]
    for k in range(count):
        name, pw = user((first + k) % users)
        lines.append(f"{name};[authentication username={name} password={pw}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def register_step(
    sw: Switch, rate: int, count: int, first: int, users: int, workdir: Path
) -> dict[str, Any]:
    inf = write_inf(workdir / f"reg-{rate}-{first}.csv", first, count, users)
    reg = sipp(
        f"register-{rate}-{first}",
        "register.xml",
        workdir,
        remote=f"127.0.0.1:{sw.control.port}",
        inf=inf,
        keys={"domain": DOMAIN, "expires": 3600},
        calls=count,
        rate=rate,
        limit=max(100, rate),
        recv_timeout_ms=5000,
        timeout=count / rate * 3 + 30,
        rtt=True,
    )
    with Probe(sw) as probe:
        result = reg.start().wait()
    rtt = result.rtt()
    times = [t for _, t in rtt]
    ok = result.count("SuccessfulCall")
    achieved = achieved_rate(rtt)
    row = {
        "target_per_second": rate,
        "registrations": count,
        "achieved_per_second": rounded(achieved, 1),
        "successful": ok,
        "failed": result.count("FailedCall"),
        "failures": result.failures(),
        "retransmissions": result.count("Retransmissions"),
        "response_p50_ms": percentile(times, 50),
        "response_p99_ms": percentile(times, 99),
        "response_max_ms": max(times) if times else None,
        "sipp_exit_code": result.returncode,
        "sipp_cpu_percent": result.cpu_percent,
        **probe.row(),
    }
    row["fits"] = fits(row, ok == count)
    row["control_saturated"] = row["control_cpu_percent"] >= CPU_SATURATED_PERCENT
    if not row["fits"] and result.errors:
        row["sipp_errors_tail"] = result.errors[-600:]
    return row


def register_ramp(
    sw: Switch, steps: list[int], window: float, users: int, workdir: Path
) -> tuple[dict[str, Any], int]:
    rows: list[dict[str, Any]] = []
    first = 0
    for rate in steps:
        count = int(rate * window)
        row = register_step(sw, rate, count, first, users, workdir)
        first += count
        rows.append(row)
        print(json.dumps({"step": "register", **row}), flush=True)
        if not row["fits"] or row["control_saturated"]:
            break
        time.sleep(1.0)  # let the DB write-back catch up between steps
    fitting = [r["target_per_second"] for r in rows if r["fits"]]
    return {
        "unit": "registrations/s (REGISTER -> 401 -> REGISTER with digest -> 200)",
        "window_seconds": window,
        "steps": rows,
        "max_sustained_per_second": max(fitting) if fitting else 0,
    }, first


def register_everyone(
    sw: Switch, users: int, done: int, rate: int, workdir: Path
) -> dict[str, Any] | None:
    """Register the users the ramp did not reach (at a rate that fitted)."""
    left = users - min(done, users)
    if left <= 0:
        return None
    row = register_step(sw, rate, left, done, users, workdir)
    print(json.dumps({"step": "register-rest", **row}), flush=True)
    return row


def wait_db_drained(sw: Switch, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:  # bounded
        if sw.status().get("db_queued", 0) == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - t0


@dataclass
class Callee:
    """A SIPp UAS registered as the callee (a SIPp REGISTER from its port first)."""

    sw: Switch
    workdir: Path
    port: int = 0

    def register(self) -> None:
        self.port = free_udp_port()
        inf = self.workdir / "callee.csv"
        name, pw = CALLEE
        inf.write_text(f"SEQUENTIAL\n{name};[authentication username={name} password={pw}]\n")
        reg = sipp(
            "callee-register",
            "register.xml",
            self.workdir,
            remote=f"127.0.0.1:{self.sw.control.port}",
            local_port=self.port,
            inf=inf,
            keys={"domain": DOMAIN, "expires": 3600},
            calls=1,
            timeout=10,
        )
        if reg.start().wait().returncode != 0:
            raise RuntimeError(f"the callee did not register:\n{reg.output()}")

    def answering(self, name: str, trace_msg: bool = False) -> Sipp:
        uas = sipp(
            name,
            "uas_answer.xml",
            self.workdir,
            local_port=self.port,
            service=CALLEE[0],
            timeout=600,
            trace_msg=trace_msg,
        )
        return uas.start().listening()


def call_step(
    sw: Switch,
    callee: Callee,
    rate: int,
    count: int,
    first: int,
    users: int,
    hold_ms: int,
    workdir: Path,
    *,
    trace_msg: bool = False,
    name: str | None = None,
) -> tuple[dict[str, Any], SippResult, SippResult]:
    name = name or f"calls-{rate}"
    inf = write_inf(workdir / f"{name}.csv", first, count, users)
    callee_sipp = callee.answering(f"{name}-uas", trace_msg=trace_msg)
    caller = sipp(
        f"{name}-uac",
        "uac_call.xml",
        workdir,
        remote=f"127.0.0.1:{sw.control.port}",
        inf=inf,
        service=CALLEE[0],
        keys={"domain": DOMAIN},
        calls=count,
        rate=rate,
        limit=max(100, int(rate * (hold_ms / 1000 + 1) * 2)),
        duration_ms=hold_ms,
        recv_timeout_ms=5000,
        timeout=count / rate * 3 + 30,
        rtt=True,
        trace_msg=trace_msg,
    )
    with Probe(sw) as probe:
        uac = caller.start().wait()
        time.sleep(0.5)  # the UAS answers the last BYEs
        uas = callee_sipp.stop()
    rtt = uac.rtt()
    times = [t for _, t in rtt]
    ok = uac.count("SuccessfulCall")
    live = sw.status().get("calls", 0)
    row = {
        "target_per_second": rate,
        "calls": count,
        "hold_ms": hold_ms,
        "achieved_per_second": rounded(achieved_rate(rtt), 1),
        "successful": ok,
        "failed": uac.count("FailedCall"),
        "failures": uac.failures(),
        "retransmissions": uac.count("Retransmissions"),
        "callee_answered": uas.count("SuccessfulCall"),
        "callee_failed": uas.count("FailedCall"),
        "callee_retransmissions": uas.count("Retransmissions"),
        "calls_left_in_switch": live,
        "response_p50_ms": percentile(times, 50),
        "response_p99_ms": percentile(times, 99),
        "response_max_ms": max(times) if times else None,
        "sipp_exit_code": uac.returncode,
        "sipp_uac_cpu_percent": uac.cpu_percent,
        "sipp_uas_cpu_percent": uas.cpu_percent,
        **probe.row(),
    }
    row["fits"] = fits(row, ok == count) and row["callee_failed"] == 0
    row["control_saturated"] = row["control_cpu_percent"] >= CPU_SATURATED_PERCENT
    if not row["fits"] and uac.errors:
        row["sipp_errors_tail"] = uac.errors[-600:]
    return row, uac, uas


def wait_calls_gone(sw: Switch, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    calls = sw.status().get("calls", 0)
    while calls and time.monotonic() < deadline:  # bounded
        time.sleep(0.2)
        calls = sw.status().get("calls", 0)
    return calls


def call_ramp(
    sw: Switch,
    callee: Callee,
    steps: list[int],
    window: float,
    users: int,
    hold_ms: int,
    workdir: Path,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    first = 0
    for rate in steps:
        count = int(rate * window)
        row, _, _ = call_step(sw, callee, rate, count, first, users, hold_ms, workdir)
        first += count
        row["calls_left_after_30s"] = wait_calls_gone(sw)
        rows.append(row)
        print(json.dumps({"step": "calls", **row}), flush=True)
        if not row["fits"] or row["control_saturated"]:
            break
    fitting = [r["target_per_second"] for r in rows if r["fits"]]
    return {
        "unit": "call attempts/s (INVITE -> 407 -> INVITE with digest -> 180/200 -> ACK "
        "-> hold -> BYE, bearer session allocated and freed)",
        "window_seconds": window,
        "hold_ms": hold_ms,
        "steps": rows,
        "max_sustained_per_second": max(fitting) if fitting else 0,
    }


METRIC = "softswitch_call_setup_delay_seconds"


def setup_delay(
    sw: Switch,
    callee: Callee,
    seconds: float,
    first: int,
    users: int,
    hold_ms: int,
    workdir: Path,
    rate: int = 100,
) -> dict[str, Any]:
    count = int(rate * seconds)
    name = "setup-delay"
    h0 = scrape_histogram(sw.metrics_url, METRIC) if sw.metrics_url else None
    row, uac, uas = call_step(
        sw, callee, rate, count, first, users, hold_ms, workdir, trace_msg=True, name=name
    )
    h1 = scrape_histogram(sw.metrics_url, METRIC) if sw.metrics_url else None
    assert uac.messages_path and uas.messages_path
    sent = message_stamps(uac.messages_path, "sent", "INVITE", FROM_USER, cseq="2 INVITE")
    got = message_stamps(uas.messages_path, "received", "INVITE", FROM_USER)
    delays = delays_ms(sent, got)
    # The first INVITE (CSeq 1) goes out on SIPp's own schedule; the authorised
    # one waits for the switch's 407, so its gaps would be the switch's.
    unchallenged = message_stamps(uac.messages_path, "sent", "INVITE", FROM_USER, cseq="1 INVITE")
    stamps = sorted(unchallenged.values())
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    base = baseline(rate, seconds, workdir)
    out: dict[str, Any] = {
        "rate_cps": rate,
        "calls": count,
        "step": row,
        "sipp_message_logs": {
            "what": "UAC's authorised INVITE sent -> UAS's INVITE received, SIPp wall-clock "
            "stamps (us); switch work + 2 loopback hops + wake-ups of switch and UAS",
            **summary(delays),
        },
        "baseline_sipp_to_sipp": base,
        # SIPp itself held up shows as a gap in its first INVITEs, then a burst of
        # them sent at once, which the switch then has to absorb together.
        "generator": {
            "invite_gap_max_ms": rounded(max(gaps) if gaps else None),
            "largest_burst_within_1ms": largest_burst(stamps, 0.001),
        },
    }
    added = {}
    for p in ("p50", "p99"):
        a, b = out["sipp_message_logs"][f"{p}_ms"], base.get(f"{p}_ms")
        if a is not None and b is not None:
            added[f"{p}_ms"] = round(a - b, 3)
    out["added_by_switch_sipp"] = added
    out["control_gc_pauses"] = row.get("control_gc_pauses")
    if h0 is not None and h1 is not None:
        b0 = dict(h0[0])
        delta = [(le, cum - b0.get(le, 0.0)) for le, cum in h1[0]]
        q50, q99 = histogram_quantile(0.5, delta), histogram_quantile(0.99, delta)
        out["daemon_histogram"] = {
            "what": f"{METRIC}: authenticated INVITE read -> INVITEs to the callee sent, "
            "by the daemon's clock; bucket resolution",
            "samples": int(h1[1] - h0[1]),
            "p50_ms": rounded(None if q50 is None else q50 * 1000),
            "p99_ms": rounded(None if q99 is None else q99 * 1000),
            "buckets_ms": {
                ("+Inf" if math.isinf(le) else f"{le * 1000:g}"): int(n) for le, n in delta
            },
        }
    return out


def baseline(rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """SIPp UAC -> SIPp UAS directly, same rate, same stamping: the floor of the method."""
    count = int(rate * seconds)
    server = sipp("baseline-uas", "direct_uas.xml", workdir, timeout=600, trace_msg=True)
    server.start().listening()
    uac = (
        sipp(
            "baseline-uac",
            "direct_uac.xml",
            workdir,
            remote=f"127.0.0.1:{server.local_port}",
            calls=count,
            rate=rate,
            recv_timeout_ms=5000,
            timeout=seconds * 3 + 30,
            trace_msg=True,
        )
        .start()
        .wait()
    )
    time.sleep(0.2)
    uas = server.stop()
    assert uac.messages_path and uas.messages_path
    sent = message_stamps(uac.messages_path, "sent", "OPTIONS", CALL_ID)
    got = message_stamps(uas.messages_path, "received", "OPTIONS", CALL_ID)
    return {
        "what": "SIPp UAC OPTIONS sent -> SIPp UAS received, no switch: 1 loopback hop + "
        "the UAS's wake-up + SIPp's stamping",
        "failed": uac.count("FailedCall"),
        **summary(delays_ms(sent, got)),
    }


#: Seconds for finished transactions to go (Timer J, 64*T1 = 32 s) and a margin.
LINGER_SECONDS = 35


def empty_rss(tmp: Path, control_cpu: int | None, load_cpu: int | None) -> dict[str, Any]:
    """RSS of a control daemon with no users and no bearers: the fixed cost."""
    sw = start_switch(tmp, 0, bearers=0, control_cpu=control_cpu, load_cpu=load_cpu)
    try:
        time.sleep(1.0)
        rss = rss_kib_of(sw.pid)
    finally:
        stopped = sw.stop()
    return {"rss_mib": round(rss / 1024, 1), **stopped}


def rss_row(sw: Switch, what: str) -> dict[str, Any]:
    st = sw.status()
    return {
        "what": what,
        "users": st.get("users"),
        "registrations": st.get("registrations"),
        "sip_transactions": st.get("transactions"),
        "rss_mib": round(rss_kib_of(sw.pid) / 1024, 1),
        "peak_rss_mib": round(mem_kib(sw.pid, "VmHWM") / 1024, 1),
    }


def leak_check(
    sw: Switch,
    callee: Callee,
    rounds: int,
    count: int,
    users: int,
    hold_ms: int,
    workdir: Path,
    rate: int = 100,
) -> dict[str, Any]:
    """RSS across rounds of ``count`` calls at ``rate``, each round followed
    by Timer J's wait, so that only what calls leave behind can remain.

    softswitch-control freezes its heap (softswitch/daemonkit/gctune.py): a reference
    cycle made by a call would never be reclaimed, and this is the
    end-to-end check that calls leak nothing.  RSS alone is not: after a
    load peak it stays at the peak's high-water mark (the allocator keeps
    freed memory for reuse), so the rounds run below the ramp's peak and
    the figure is the growth from one round to the next; a leak grows it
    with every round, by its size times ``count``.
    """
    time.sleep(LINGER_SECONDS)
    rows = [rss_row(sw, "before the rounds: the call ramp's transactions gone")]
    for n in range(rounds):
        row, _, _ = call_step(sw, callee, rate, count, 0, users, hold_ms, workdir, name=f"leak-{n}")
        wait_calls_gone(sw)
        time.sleep(LINGER_SECONDS)
        rss = rss_row(sw, f"after round {n + 1}: {count} calls at {rate}/s, Timer J over")
        rss["successful"] = row["successful"]
        rows.append(rss)
        print(json.dumps({"step": "leak", **rss}), flush=True)
    grew = [b["rss_mib"] - a["rss_mib"] for a, b in itertools.pairwise(rows)]
    return {
        "rounds": rows,
        "grew_mib": [round(g, 1) for g in grew],
        "grew_bytes_per_call_last_round": round(grew[-1] * 1024 * 1024 / count),
    }

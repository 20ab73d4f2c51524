"""Defence benchmark: legitimate traffic beside a flood, and goodput under overload.

Usage: python -m bench defence [--quick] [--capacity N] [--users N] [--window S]
                               [--output PATH] [--keep DIR]

The switch is the control benchmark's (bench/control: a real control daemon
alone on core 0, two bearers and every load generator on core 1, SQLite,
users inserted in bulk), and so is the legitimate load: SIPp's
REGISTER-with-digest (``register.xml``) and call (``uac_call.xml`` to a
registered SIPp UAS) scenarios.

(0) Capacity: the REGISTER ramp of bench/control, short steps; the largest
    rate that fits (every registration done, no retransmission, p99 under
    100 ms) is *capacity* (or ``--capacity`` skips this).
(1) Baseline: registrations at 45 % of capacity and calls at a small fixed
    rate (about 5 % more), together, for ``--window`` seconds.
(2) The same beside a flood: ``bench.flood`` sends 5,000 requests/s from
    127.0.0.66 (INVITEs and REGISTERs with made-up credentials, each a new
    transaction).  Reported: the legitimate success rate and p99 response
    time with and without the flood (budget: >= 99.9 % and p99 < 50 ms),
    what the flood got back, and whether its source ended up banned.
(3) Overload: REGISTERs offered at 3x capacity from six addresses
    (127.0.0.11-16, one SIPp each sending its share).  Reported: goodput
    (registrations completed per second from 2 s into the load to its end,
    by SIPp's stamps; budget: >= 90 % of capacity), and the completions
    over the whole run including its tail, what the switch shed and
    dropped, control's peak RSS against its RSS before, and that it still
    serves afterwards.

The legitimate and overload sources are in ``[security] allow`` (they stand
for many phones behind a few addresses, as an office NAT or an SBC would
be): the per-source rate limit must not be what is measured in (3), and
(1)-(2) ask how the *other* phones fare.  The flood source is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.control.machine import (
    QLEN_PATH,
    appliance_qlen,
    cpu_pressure,
    loadavg,
    mem_kib,
    pin_self,
)
from bench.control.measure import Probe, rounded
from bench.control.scenarios import (
    Callee,
    call_step,
    register_ramp,
    register_step,
    sipp,
    wait_calls_gone,
    wait_db_drained,
    write_inf,
)
from bench.control.switch import Switch, start_switch
from bench.harness.control import DOMAIN

RESULTS = Path(__file__).resolve().parent / "results" / "defence.json"

FLOOD_SOURCE = "127.0.0.66"
OVERLOAD_SOURCES = [f"127.0.0.{11 + i}" for i in range(6)]
#: What the benchmark's own (legitimate) load generators send from.
ALLOWED = ["127.0.0.1/32", *[f"{a}/32" for a in OVERLOAD_SOURCES]]

#: Seconds into the overload before goodput is counted (SIPp ramps up).
STEADY_FROM = 2.0

BUDGET = {
    "legitimate_success_percent_at_least": 99.9,
    "legitimate_p99_ms_below": 50.0,
    "overload_goodput_fraction_of_capacity_at_least": 0.9,
}

FULL: dict[str, Any] = {
    "users": 30_000,
    "reg_steps": [500, 1000, 1500, 2000, 2500, 3000, 4000, 5000],
    "capacity_window": 5.0,
    "window": 20.0,
    "flood_rate": 5000,
    "call_rate": 20,
    "overload_factor": 3.0,
}
QUICK: dict[str, Any] = {
    "users": 5_000,
    "reg_steps": [200, 400],
    "capacity_window": 3.0,
    "window": 5.0,
    "flood_rate": 2000,
    "call_rate": 5,
    "overload_factor": 3.0,
}


def security_config() -> dict[str, dict[str, Any]]:
    """The allow-list above, under the key the daemon's schema has for it."""
    import softswitch.daemon.settings as settings

    for o in settings.CONTROL_OPTIONS:
        if o.key == "allow" and o.section in ("security", "guard"):
            return {o.section: {"allow": ALLOWED}}
    return {}


class Users:
    """Hands out fresh user ranges so every SIPp run registers its own users."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.next = 0

    def take(self, n: int) -> int:
        first = self.next
        self.next += n
        return first


def legitimate(
    sw: Switch,
    callee: Callee,
    reg_rate: int,
    call_rate: int,
    window: float,
    users: Users,
    workdir: Path,
    name: str,
) -> dict[str, Any]:
    """Registrations and calls together for ``window`` seconds."""
    rows: dict[str, Any] = {}
    reg_count, call_count = int(reg_rate * window), int(call_rate * window)
    reg_first, call_first = users.take(reg_count), users.take(call_count)

    def registrations() -> None:
        rows["registrations"] = register_step(
            sw, reg_rate, reg_count, reg_first, users.count, workdir
        )

    def calls() -> None:
        row, _, _ = call_step(
            sw, callee, call_rate, call_count, call_first, users.count, 250, workdir, name=name
        )
        rows["calls"] = row

    threads = [threading.Thread(target=f) for f in (registrations, calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reg, call = rows["registrations"], rows["calls"]
    ok = reg["successful"] + call["successful"]
    total = reg_count + call_count
    p99s = [p for p in (reg["response_p99_ms"], call["response_p99_ms"]) if p is not None]
    return {
        "success_percent": rounded(100 * ok / total if total else 0, 3),
        "p99_ms": max(p99s) if p99s else None,
        "registrations": reg,
        "calls": call,
    }


def flooded(
    sw: Switch,
    callee: Callee,
    reg_rate: int,
    call_rate: int,
    window: float,
    flood_rate: int,
    users: Users,
    workdir: Path,
) -> dict[str, Any]:
    """The legitimate load beside ``bench.flood`` from FLOOD_SOURCE."""
    flood = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.flood",
            f"127.0.0.1:{sw.control.port}",
            "--source",
            FLOOD_SOURCE,
            "--domain",
            DOMAIN,
            "--rate",
            str(flood_rate),
            "--seconds",
            str(window + 4),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the flood is on before the phones start
        row = legitimate(sw, callee, reg_rate, call_rate, window, users, workdir, "flooded")
        out, _ = flood.communicate(timeout=window + 60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    row["flood"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    bans = sw.control.ctl("bans")  # None: this softswitchctl has no bans
    row["flood_source_banned"] = FLOOD_SOURCE in bans.stdout if bans.returncode == 0 else None
    return row


def overload(
    sw: Switch, capacity: int, factor: float, window: float, users: Users, workdir: Path
) -> dict[str, Any]:
    """REGISTERs at ``factor`` x capacity from OVERLOAD_SOURCES for ``window`` s."""
    per_source = capacity * factor / len(OVERLOAD_SOURCES)
    count = int(per_source * window)
    rss_before = mem_kib(sw.pid, "VmRSS")
    runs = []
    for i, source in enumerate(OVERLOAD_SOURCES):
        first = users.take(count)
        inf = write_inf(workdir / f"overload-{i}.csv", first, count, users.count)
        runs.append(
            sipp(
                f"overload-{i}",
                "register.xml",
                workdir,
                remote=f"127.0.0.1:{sw.control.port}",
                local_ip=source,
                inf=inf,
                keys={"domain": DOMAIN, "expires": 3600},
                calls=count,
                rate=round(per_source, 1),
                limit=max(200, int(per_source * 6)),
                recv_timeout_ms=5000,
                timeout=window * 3 + 40,
                rtt=True,
            )
        )
    peaks = [rss_before]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.5):  # bounded: the runs below end by their timeout
            peaks.append(mem_kib(sw.pid, "VmRSS"))

    sampler = threading.Thread(target=sample_rss)
    with Probe(sw) as probe:
        t0 = time.monotonic()
        sampler.start()
        try:
            for r in runs:
                r.start()
            results = [r.wait() for r in runs]
        finally:
            done.set()
            sampler.join()
        took = time.monotonic() - t0
    peak = max(peaks)
    ok = sum(r.count("SuccessfulCall") for r in results)
    failed = sum(r.count("FailedCall") for r in results)
    alive = sw.control.proc is not None and sw.control.proc.poll() is None
    row = probe.row()
    status = probe.status1
    # Steady state: registrations completed from 2 s into the load to its
    # end (the SIPp rtt stamps, ms since each SIPp started), per second.
    steady = [t for r in results for t, _ in r.rtt() if STEADY_FROM * 1000 <= t < window * 1000]
    goodput = len(steady) / (window - STEADY_FROM)
    return {
        "offered_per_second": round(capacity * factor, 1),
        "sources": len(OVERLOAD_SOURCES),
        "registrations_offered": count * len(runs),
        "successful": ok,
        "failed": failed,
        "run_seconds": round(took, 1),
        "goodput_per_second": round(goodput, 1),
        "completed_per_second_whole_run": round(ok / took, 1),
        "goodput_fraction_of_capacity": round(goodput / capacity, 3) if capacity else None,
        "shed_503": status.get("overload_shed", 0) - probe.status0.get("overload_shed", 0),
        "dropped_late": status.get("drop_overload_dropped", 0)
        - probe.status0.get("drop_overload_dropped", 0),
        "control_rss_mib_before": round(rss_before / 1024, 1),
        "control_rss_mib_peak": round(peak / 1024, 1),
        "control_alive": alive,
        "sipp_exit_codes": [r.returncode for r in results],
        **row,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench defence", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--capacity", type=int, help="REGISTERs/s capacity (skips measuring it)")
    p.add_argument("--users", type=int, help="users in the database")
    p.add_argument("--window", type=float, help="seconds of each load")
    p.add_argument("--output", default=str(RESULTS), help="where to write the JSON results")
    p.add_argument("--keep", metavar="DIR", help="keep SIPp's files in DIR")
    args = p.parse_args(argv)
    if shutil.which("sipp") is None:
        print("bench.defence: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    plan = dict(QUICK if args.quick else FULL)
    cores = os.cpu_count() or 1
    control_cpu, load_cpu = (0, 1) if cores >= 2 else (None, None)
    affinity = os.sched_getaffinity(0)
    pin_self(load_cpu)
    qlen = appliance_qlen()
    try:
        return _run(args, plan, control_cpu, load_cpu)
    finally:
        os.sched_setaffinity(0, affinity)
        if qlen is not None:
            QLEN_PATH.write_text(f"{qlen}\n")


def _run(
    args: argparse.Namespace, plan: dict[str, Any], control_cpu: int | None, load_cpu: int | None
) -> int:
    users = Users(args.users or int(plan["users"]))
    window = args.window or float(plan["window"])
    out: dict[str, Any] = {
        "benchmark": "defence",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "budget": BUDGET,
        "load_average_before": loadavg(),
        "cpu_pressure_avg60_before": cpu_pressure(),
        "allow_list": ALLOWED,
    }
    with tempfile.TemporaryDirectory(prefix="bench-defence-") as tmpdir:
        tmp = Path(tmpdir)
        workdir = Path(args.keep) if args.keep else tmp / "sipp"
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"-- starting control with {users.count} users and 2 bearers", flush=True)
        sw = start_switch(
            tmp / "switch",
            users.count,
            bearers=2,
            control_cpu=control_cpu,
            load_cpu=load_cpu,
            config=security_config(),
        )
        try:
            time.sleep(2.0)
            if args.capacity:
                capacity = args.capacity
                out["capacity"] = {"given": capacity}
            else:
                steps = [int(x) for x in plan["reg_steps"]]
                print(f"-- (0) capacity: REGISTER steps {steps}/s", flush=True)
                ramp, done = register_ramp(
                    sw, steps, float(plan["capacity_window"]), users.count, workdir
                )
                users.take(done)
                capacity = int(ramp["max_sustained_per_second"]) or steps[0]
                out["capacity"] = {"registrations_per_second": capacity, "ramp": ramp}
            wait_db_drained(sw)
            callee = Callee(sw, workdir)
            callee.register()
            reg_rate = max(1, int(capacity * 0.45))
            call_rate = int(plan["call_rate"])
            print(f"-- (1) baseline: {reg_rate} REGISTER/s + {call_rate} calls/s", flush=True)
            base = legitimate(sw, callee, reg_rate, call_rate, window, users, workdir, "base")
            out["baseline"] = base
            print(json.dumps(_brief(base)), flush=True)
            wait_calls_gone(sw)
            wait_db_drained(sw)
            print(f"-- (2) the same beside a flood of {plan['flood_rate']}/s", flush=True)
            flood = flooded(
                sw, callee, reg_rate, call_rate, window, int(plan["flood_rate"]), users, workdir
            )
            out["flooded"] = flood
            print(json.dumps(_brief(flood)), flush=True)
            wait_calls_gone(sw)
            wait_db_drained(sw)
            factor = float(plan["overload_factor"])
            print(f"-- (3) overload: {factor}x capacity ({capacity}/s)", flush=True)
            over = overload(sw, capacity, factor, window, users, workdir)
            out["overload"] = over
            print(json.dumps({k: v for k, v in over.items() if "goodput" in k}), flush=True)
            wait_db_drained(sw)
            time.sleep(2.0)
            after = register_step(
                sw, max(1, capacity // 4), 200, users.take(200), users.count, workdir
            )
            out["overload"]["serves_afterwards"] = after["successful"] == 200
        finally:
            out["stop"] = sw.stop()
    out["load_average_after"] = loadavg()
    out["figures"] = figures(out)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["figures"], indent=2))
    print(f"results: {path}")
    stopped = out["stop"]
    return (
        0
        if stopped.get("control_exit_code") == 0 and not stopped.get("control_log_tracebacks")
        else 1
    )


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "success_percent": row["success_percent"],
        "p99_ms": row["p99_ms"],
        **({"flood": row["flood"]} if row.get("flood") else {}),
    }


def figures(out: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers beside their budgets."""
    base, flood, over = out.get("baseline", {}), out.get("flooded", {}), out.get("overload", {})
    capacity = out.get("capacity", {})
    fig = {
        "capacity_registrations_per_second": capacity.get("registrations_per_second")
        or capacity.get("given"),
        "legitimate_success_percent": {
            "without_flood": base.get("success_percent"),
            "with_flood": flood.get("success_percent"),
        },
        "legitimate_p99_ms": {
            "without_flood": base.get("p99_ms"),
            "with_flood": flood.get("p99_ms"),
        },
        "flood_source_banned": flood.get("flood_source_banned"),
        "overload_goodput_fraction_of_capacity": over.get("goodput_fraction_of_capacity"),
        "overload_rss_mib_before_peak": [
            over.get("control_rss_mib_before"),
            over.get("control_rss_mib_peak"),
        ],
        "overload_control_alive": over.get("control_alive"),
    }
    fw = flood.get("success_percent")
    fp = flood.get("p99_ms")
    fig["within_budget"] = {
        "flood_success": fw is not None and fw >= BUDGET["legitimate_success_percent_at_least"],
        "flood_p99": fp is not None and fp < BUDGET["legitimate_p99_ms_below"],
        "overload_goodput": (over.get("goodput_fraction_of_capacity") or 0)
        >= BUDGET["overload_goodput_fraction_of_capacity_at_least"],
    }
    return fig


if __name__ == "__main__":
    raise SystemExit(main())

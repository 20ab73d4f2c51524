"""``python -m bench.control``: the plan (full or quick), the machine set-up,
the four measurements in order, and the JSON results."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.control.machine import (
    BUSY_LOAD,
    LOADS,
    QLEN_PATH,
    affinity_of,
    appliance_qlen,
    cpu_pressure,
    loadavg,
    pin_self,
)
from bench.control.measure import ACHIEVED_FRACTION, CPU_SATURATED_PERCENT, RESPONSE_P99_LIMIT_MS
from bench.control.report import BUDGETS, figures
from bench.control.scenarios import (
    Callee,
    call_ramp,
    empty_rss,
    leak_check,
    register_everyone,
    register_ramp,
    rss_row,
    setup_delay,
    wait_calls_gone,
    wait_db_drained,
)
from bench.control.switch import start_switch

RESULTS = Path(__file__).resolve().parents[1] / "results" / "control.json"


FULL: dict[str, Any] = {
    "users": 100_000,
    "reg_steps": [250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000],
    "call_steps": [25, 50, 100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500],
    "window": 10.0,
    "delay_seconds": 20.0,
    "leak_rounds": 2,
    "leak_calls": 2000,
}


QUICK: dict[str, Any] = {
    "users": 5_000,
    "reg_steps": [200, 500],
    "call_steps": [50, 100],
    "window": 3.0,
    "delay_seconds": 3.0,
    "leak_rounds": 2,
    "leak_calls": 300,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.control", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run (fewer users, steps)")
    p.add_argument("--users", type=int, help="users in the database (default 100,000)")
    p.add_argument("--reg-steps", help="comma-separated REGISTER rates per second")
    p.add_argument("--call-steps", help="comma-separated call rates per second")
    p.add_argument("--window", type=float, help="seconds of load per step")
    p.add_argument("--hold-ms", type=int, default=250, help="call hold time (default 250 ms)")
    p.add_argument("--output", default=str(RESULTS), help="where to write the JSON results")
    p.add_argument("--no-renice", action="store_true", help="do not run at nice -20 as root")
    p.add_argument("--keep", metavar="DIR", help="keep SIPp's files (logs, CSVs) in DIR")
    p.add_argument(
        "--no-gc-trace",
        action="store_true",
        help="do not time the daemon's garbage collections (bench/gctrace)",
    )
    args = p.parse_args(argv)
    if shutil.which("sipp") is None:
        print("bench.control: sipp not found (apt-get install sip-tester)", file=sys.stderr)
        return 2
    plan = dict(QUICK if args.quick else FULL)
    users = args.users or int(plan["users"])
    reg_steps = [int(x) for x in args.reg_steps.split(",")] if args.reg_steps else plan["reg_steps"]
    call_steps = (
        [int(x) for x in args.call_steps.split(",")] if args.call_steps else plan["call_steps"]
    )
    window = args.window or float(plan["window"])
    cores = os.cpu_count() or 1
    load_cpu = 1 if cores >= 2 else None
    nice = -20 if os.geteuid() == 0 and not args.no_renice else 0
    affinity, priority = os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, 0)
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # inherited by every daemon and SIPp
    pin_self(load_cpu)
    qlen = appliance_qlen()
    try:
        return _run(args, users, reg_steps, call_steps, window, plan, cores, nice)
    finally:  # `make bench` runs the next benchmark in this process
        os.sched_setaffinity(0, affinity)
        os.setpriority(os.PRIO_PROCESS, 0, priority)
        if qlen is not None:
            QLEN_PATH.write_text(f"{qlen}\n")


def _run(
    args: argparse.Namespace,
    users: int,
    reg_steps: list[int],
    call_steps: list[int],
    window: float,
    plan: dict[str, Any],
    cores: int,
    nice: int,
) -> int:
    control_cpu, load_cpu = (0, 1) if cores >= 2 else (None, None)
    LOADS.clear()
    out: dict[str, Any] = {
        "benchmark": "control",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {
            "cores": cores,
            "control_cpu": control_cpu,
            "bearers_and_sipp_cpu": load_cpu,
            "nice": nice,
            "unix_max_dgram_qlen": int(QLEN_PATH.read_text()),
            "sipp": subprocess.run(
                ["sipp", "-v"], capture_output=True, text=True, timeout=10
            ).stdout.strip(),
        },
        "budgets": BUDGETS,
        "criteria": {
            "failed": 0,
            "retransmissions": 0,
            "achieved_rate_at_least": f"{ACHIEVED_FRACTION:.0%} of target",
            "response_p99_ms_below": RESPONSE_P99_LIMIT_MS,
            "ramp_stops_when_control_cpu_percent_at_least": CPU_SATURATED_PERCENT,
        },
        "users": users,
        "load_average_before": loadavg(),
        "cpu_pressure_avg60_before": cpu_pressure(),
    }
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmpdir:
        tmp = Path(tmpdir)
        workdir = Path(args.keep) if args.keep else tmp / "sipp"
        workdir.mkdir(parents=True, exist_ok=True)
        empty = empty_rss(tmp / "empty", control_cpu, load_cpu)
        print(f"-- control with no users: {empty['rss_mib']} MiB", flush=True)
        print(f"-- starting control with {users} users and 2 bearers", flush=True)
        sw = start_switch(
            tmp / "switch",
            users,
            bearers=2,
            control_cpu=control_cpu,
            load_cpu=load_cpu,
            gc_trace=not args.no_gc_trace,
        )
        out["switch"] = {
            "users_inserted_seconds": round(sw.users_seconds, 2),
            "control_start_seconds": round(sw.start_seconds, 2),
            "control_threads_cpus": affinity_of(sw.pid),
            "bearer_cpus": [affinity_of(b.proc.pid) for b in sw.bearers],
            "metrics": sw.metrics_url is not None,
        }
        stopped: dict[str, Any] = {}
        try:
            time.sleep(2.0)  # bearers' first heartbeats, DB thread idle
            rss = {"no_users": empty, "users_loaded": rss_row(sw, "users loaded, 0 registrations")}
            print(json.dumps(rss["users_loaded"]), flush=True)

            print(f"-- (a) REGISTER with digest: steps {reg_steps}/s, {window} s each", flush=True)
            reg, done = register_ramp(sw, reg_steps, window, users, workdir)
            out["registrations"] = reg
            rest_rate = reg["max_sustained_per_second"] or reg_steps[0]
            rest = register_everyone(sw, users, done, rest_rate, workdir)
            if rest is not None:
                reg["rest_of_the_users"] = rest
            drained = wait_db_drained(sw)
            time.sleep(1.0)
            rss["just_registered"] = rss_row(
                sw,
                "users loaded, every user registered over SIP a moment ago (completed "
                "transactions still held for Timer J, 64*T1 = 32 s)",
            )
            rss["just_registered"]["db_drain_wait_seconds"] = round(drained, 1)
            print(json.dumps(rss["just_registered"]), flush=True)
            # What is held: a restarted daemon loads users and registrations from the
            # database, with none of the registration traffic's transient state.
            took = sw.restart(control_cpu, load_cpu)
            time.sleep(2.0)
            rss["users_registered"] = rss_row(
                sw, "after a restart: users and registrations restored from the database"
            )
            rss["users_registered"]["restart_seconds"] = round(took, 2)
            print(json.dumps(rss["users_registered"]), flush=True)
            out["rss"] = rss

            callee = Callee(sw, workdir)
            callee.register()
            print(
                f"-- (b) calls: steps {call_steps}/s, {window} s each, hold {args.hold_ms} ms",
                flush=True,
            )
            out["calls"] = call_ramp(sw, callee, call_steps, window, users, args.hold_ms, workdir)
            print("-- (c) set-up delay at 100 calls/s", flush=True)
            out["setup_delay"] = setup_delay(
                sw, callee, float(plan["delay_seconds"]), 0, users, args.hold_ms, workdir
            )
            wait_calls_gone(sw)
            print(f"-- (d) leak check: {plan['leak_rounds']} rounds of calls", flush=True)
            rss["leak_check"] = leak_check(
                sw,
                callee,
                int(plan["leak_rounds"]),
                int(plan["leak_calls"]),
                users,
                args.hold_ms,
                workdir,
            )
        finally:
            stopped = sw.stop()
            out["stop"] = stopped
        ok = (
            stopped.get("control_exit_code") == 0
            and stopped.get("control_log_tracebacks") == 0
            and all(c == 0 for c in stopped.get("bearer_exit_codes", []))
        )
    out["load_average_after"] = loadavg()
    out["cpu_pressure_avg60_after"] = cpu_pressure()
    loads = [out["load_average_before"][0], *LOADS, out["load_average_after"][0]]
    out["load_average_1m_max"] = max(loads)
    out["machine_busy"] = max(loads) > BUSY_LOAD
    out["figures"] = figures(out)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["figures"], indent=2))
    print(f"results: {path}")
    return 0 if ok else 1

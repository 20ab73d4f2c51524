"""The headline figures of a run, beside their budgets."""

from __future__ import annotations

from typing import Any

BUDGETS = {
    "registrations_per_second": 2000,
    "registrations_per_second_target": 5000,
    "calls_per_second": 300,
    "calls_per_second_target": 1000,
    "setup_delay_p99_ms_below": 5.0,
    "setup_delay_p99_ms_target_below": 2.0,
    "setup_delay_rate_cps": 100,
    "users_for_rss": 100_000,
    "rss_mib_below": 300,
}


def figures(out: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers beside their budgets."""
    reg = out.get("registrations", {}).get("max_sustained_per_second")
    calls = out.get("calls", {}).get("max_sustained_per_second")
    delay = out.get("setup_delay", {})
    sipp_p = delay.get("sipp_message_logs", {})
    daemon = delay.get("daemon_histogram", {})
    rss = out.get("rss", {}).get("users_registered", {})
    fig: dict[str, Any] = {
        "registrations_per_second": reg,
        "calls_per_second": calls,
        "setup_delay_sipp_p50_ms": sipp_p.get("p50_ms"),
        "setup_delay_sipp_p99_ms": sipp_p.get("p99_ms"),
        "setup_delay_added_p50_ms": delay.get("added_by_switch_sipp", {}).get("p50_ms"),
        "setup_delay_added_p99_ms": delay.get("added_by_switch_sipp", {}).get("p99_ms"),
        "setup_delay_daemon_p50_ms": daemon.get("p50_ms"),
        "setup_delay_daemon_p99_ms": daemon.get("p99_ms"),
        "users": rss.get("users"),
        "registrations": rss.get("registrations"),
        "rss_mib": rss.get("rss_mib"),
        "rss_mib_just_registered": out.get("rss", {}).get("just_registered", {}).get("rss_mib"),
    }
    leak = out.get("rss", {}).get("leak_check", {})
    fig["leak_bytes_per_call"] = leak.get("grew_bytes_per_call_last_round")
    # Both measurements must meet the budget: the daemon's clock misses the
    # kernel's share, SIPp's stamps carry their own noise.
    both = [fig["setup_delay_daemon_p99_ms"], fig["setup_delay_added_p99_ms"]]
    p99 = max((p for p in both if p is not None), default=None)
    fig["within_budget"] = {
        "registrations": reg is not None and reg >= BUDGETS["registrations_per_second"],
        "calls": calls is not None and calls >= BUDGETS["calls_per_second"],
        "setup_delay": p99 is not None and p99 < BUDGETS["setup_delay_p99_ms_below"],
        "rss": (
            fig["rss_mib"] is not None
            and (fig["users"] or 0) >= BUDGETS["users_for_rss"]
            and fig["rss_mib"] < BUDGETS["rss_mib_below"]
        ),
    }
    fig["machine_busy"] = out.get("machine_busy")
    return fig

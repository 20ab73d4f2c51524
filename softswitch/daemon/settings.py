"""The control daemon's options (softswitch.conf), declared once.

etc/softswitch/softswitch.conf is rendered from this list (see
`python -m softswitch.daemon.settings`), and a unit test keeps the two identical.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from types import SimpleNamespace

from softswitch.daemonkit.config import (
    STRING,
    Invalid,
    Option,
    Value,
    boolean,
    choice,
    either,
    endpoint,
    integer,
    ip_address,
    listof,
    load,
    number,
    optional,
    render_defaults,
    string,
    toml_literal,
)


def _host_port(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (an IPv6 address in brackets) as (address, port)."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise Invalid(f"an IPv6 address needs brackets, [ADDRESS]:PORT: {toml_literal(text)}")
    if not colon or not port.isdigit():
        raise Invalid(f"not ADDRESS:PORT: {toml_literal(text)}")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise Invalid(f"not an IP address: {toml_literal(host)}") from None
    if not 0 < int(port) < 65536:
        raise Invalid(f"port {int(port)} is outside 1..65535")
    return host, int(port)


#: ``"127.0.0.1:9464"``, ``"[::1]:9464"`` as (address, port).
host_port = Value(STRING, _host_port)


CONTROL_OPTIONS: list[Option] = [
    # [sip]
    Option(
        "sip",
        "listen",
        listof(ip_address),
        ["127.0.0.1"],
        "Addresses to listen on for SIP (IPv4 and/or IPv6).",
    ),
    Option("sip", "port", integer(1, 65535), 5060, "SIP port (UDP and TCP)."),
    Option(
        "sip",
        "transports",
        listof(choice("udp", "tcp")),
        ["udp", "tcp"],
        "SIP transports to serve.",
    ),
    Option(
        "sip",
        "domain",
        optional(string),
        "",
        "SIP domain of the users; empty means the first listen address.",
    ),
    Option(
        "sip", "realm", optional(string), "", "Digest authentication realm; empty means the domain."
    ),
    Option("sip", "t1", number(0.01, 10), 0.5, "RFC 3261 timer T1 (RTT estimate), seconds."),
    Option(
        "sip",
        "t2",
        number(0.1, 60),
        4.0,
        "RFC 3261 timer T2 (max non-INVITE retransmit interval), seconds.",
    ),
    Option(
        "sip",
        "t4",
        number(0.1, 60),
        5.0,
        "RFC 3261 timer T4 (max time a message stays in the network), seconds.",
    ),
    Option(
        "sip",
        "min_expires",
        integer(1, 86400),
        60,
        "Shortest registration accepted; shorter gets 423 Interval Too Brief.",
    ),
    Option(
        "sip",
        "max_expires",
        integer(1, 604800),
        3600,
        "Longest registration granted; longer requests are cut down to this.",
    ),
    Option(
        "sip",
        "default_expires",
        integer(1, 604800),
        3600,
        "Registration lifetime when the phone asks for none.",
    ),
    Option(
        "sip",
        "nonce_ttl",
        integer(10, 86400),
        300,
        "Seconds a digest nonce stays valid before the phone is told stale=true.",
    ),
    Option("sip", "user_agent", string, "softswitch", "Server / User-Agent header value."),
    Option(
        "sip",
        "digest_algorithms",
        listof(choice("SHA-256", "MD5")),
        ["SHA-256", "MD5"],
        "Digest algorithms challenged, most preferred first (RFC 8760). Clients that read "
        'only the first challenge and know only MD5 (SIPp 3.6) need ["MD5", "SHA-256"].',
    ),
    # [calls]
    Option(
        "calls",
        "no_answer_timeout",
        integer(1, 3600),
        60,
        "Seconds a call may ring before the caller gets 480.",
    ),
    Option(
        "calls",
        "conference_prefix",
        string,
        "conf",
        "Dialled user parts starting with this prefix join a conference room.",
    ),
    Option(
        "calls",
        "max_calls_per_user",
        integer(0, 1000),
        4,
        "Default concurrent-call limit for new users (0 = unlimited).",
    ),
    Option(
        "calls",
        "codecs",
        listof(string),
        ["PCMU", "PCMA", "telephone-event"],
        "Codecs the switch offers and can transcode between, in preference order.",
    ),
    Option(
        "calls",
        "srtp",
        choice("optional", "mandatory", "off"),
        "optional",
        "SRTP (SDES) policy for users without their own (softswitchctl user set --srtp): "
        '"optional" = SRTP with phones that offer it, plain RTP otherwise and in calls to '
        'the user; "mandatory" = the user\'s leg must be SRTP (plain offers get 488, calls '
        'to it offer RTP/SAVP); "off" = never (RTP/SAVP offers get 488).',
    ),
    # [database]
    Option(
        "database",
        "url",
        string,
        "sqlite:////var/lib/softswitch/softswitch.db",
        "SQLAlchemy URL: sqlite:////path or mysql+pymysql://user:pw@host/db.",
    ),
    Option(
        "database",
        "sync_interval",
        number(0.1, 3600),
        2,
        "Seconds between polls of the database for changed users.",
    ),
    Option(
        "database",
        "write_queue_max",
        integer(100, 10_000_000),
        100000,
        "Writes (registrations, CDRs) held in memory while the database is down.",
    ),
    Option(
        "database",
        "spool_dir",
        optional(string),
        "auto",
        "Journal of writes not yet in the database, replayed at start: a directory; "
        '"auto" = spool/ beside an SQLite database file, else /var/lib/softswitch/spool; '
        "empty: no journal.",
    ),
    # [bearers]
    Option(
        "bearers",
        "endpoints",
        either(choice("auto"), listof(endpoint)),
        "auto",
        'Bearer control endpoints: "auto" (the bearers this host runs, per bearer.conf '
        "beside this file) or a list of unix:/path (same host) and udp:host:port (HMAC).",
    ),
    Option(
        "bearers",
        "local",
        endpoint,
        "unix:/run/softswitch/control.sock",
        "Control's own endpoint for the bearer protocol: unix:/path or udp:addr:port.",
    ),
    Option(
        "bearers",
        "key_file",
        string,
        "/etc/softswitch/control.key",
        "Shared HMAC key for udp: endpoints (generated at install, mode 0640).",
    ),
    Option(
        "bearers",
        "heartbeat_interval",
        number(0.1, 60),
        1.0,
        "Seconds between heartbeats; three missed mark a bearer down.",
    ),
    # [admin]
    Option(
        "admin",
        "socket",
        string,
        "/run/softswitch/admin.sock",
        "UNIX socket softswitchctl uses for live state (calls, registrations).",
    ),
    # [recording]
    Option(
        "recording",
        "dir",
        string,
        "/var/spool/softswitch/recordings",
        "Directory the bearers write call recordings to.",
    ),
    # [log]
    Option("log", "level", choice("debug", "info", "warning", "error"), "info", "Log level."),
    Option(
        "log",
        "file",
        optional(string),
        "",
        "Log file; empty logs to stderr (the journal under systemd).",
    ),
    Option("log", "sip_trace", boolean, False, "Log every SIP message sent and received."),
    # [metrics]
    Option(
        "metrics",
        "listen",
        optional(host_port),
        "127.0.0.1:9464",
        "Prometheus endpoint, ADDRESS:PORT ([ADDRESS]:PORT for IPv6), served at /metrics; "
        "empty disables it. It exposes call and registration counts: keep it on a local "
        "or management address. Needs a restart to change.",
    ),
]

HEADER = """\
# /etc/softswitch/softswitch.conf: the control daemon (softswitch-control).
# TOML (https://toml.io): strings in "quotes", lists in [brackets].
# Every option is shown with its default. After editing:
#     systemctl reload softswitch-control
"""


def load_control_config(path: str | Path, **kwargs: object) -> SimpleNamespace:
    """softswitch.conf as attribute namespaces, with defaults filled in
    (``[bearers] endpoints = "auto"`` resolved to a list: see there)."""
    cfg = load(path, CONTROL_OPTIONS, **kwargs)  # type: ignore[arg-type]
    if cfg.bearers.endpoints == "auto":
        cfg.bearers.endpoints = local_bearer_endpoints(Path(path).parent / "bearer.conf")
    if cfg.database.spool_dir == "auto":
        cfg.database.spool_dir = auto_spool_dir(cfg.database.url)
    return cfg


def auto_spool_dir(url: str) -> str:
    """Where the journal of pending writes goes when not configured: beside
    the database file for SQLite (a checkout's ./var/, the package's
    /var/lib/softswitch/), else the package's state directory.  So a
    configuration written before the option existed still gets a journal
    where its user can write."""
    if url.startswith("sqlite:///"):
        database = url[len("sqlite:///") :].partition("?")[0]
        if database and database != ":memory:":
            return str(Path(database).parent / "spool")
    return "/var/lib/softswitch/spool"


#: Bearer instances "auto" means at most (softswitch-generator's max_auto).
MAX_AUTO_INSTANCES = 2


def local_bearer_endpoints(bearer_conf: Path) -> list[tuple[str, str, int]]:
    """The control endpoints of the bearers this host runs, by the rule
    systemd/softswitch-generator applies to the same file: [bearer]
    instances "auto" is one per online core, at most MAX_AUTO_INSTANCES;
    "none" is none; a list is those instances.  Each one's endpoint is its
    [bearer] control with %i (or the UDP port offset) for the instance.

    Why not a fixed pair: a one-core host runs only bearer@0, and a fixed
    bearer-1 would show as down forever.  A missing bearer.conf means its
    defaults (a control-only install keeps the file, with "none").
    """
    from softswitch.daemonkit.bearerconf import load_bearer_config  # the bearer's own schema

    instances = load_bearer_config(bearer_conf, 0).bearer.instances
    if instances == "auto":
        instances = range(min(os.cpu_count() or 1, MAX_AUTO_INSTANCES))
    elif instances == "none":
        instances = []
    return [load_bearer_config(bearer_conf, n).bearer.control for n in instances]


if __name__ == "__main__":
    print(render_defaults(CONTROL_OPTIONS, HEADER), end="")

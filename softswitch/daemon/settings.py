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


def _network(text: str) -> str:
    """A CIDR or a single address (``"10.0.0.0/8"``, ``"2001:db8::/32"``), normalised."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise Invalid(f"not an address or CIDR: {toml_literal(text)}") from None


network = Value(STRING, _network)


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
        "tls_port",
        integer(1, 65535),
        5061,
        "SIP over TLS port (RFC 3261 §26), served on every listen address when "
        "tls_certificate is set.",
    ),
    Option(
        "sip",
        "tls_certificate",
        optional(string),
        "auto",
        "PEM certificate chain (server certificate first) for SIP over TLS. "
        '"auto": tls.crt beside this file if it exists (the package and make run '
        "generate a self-signed one), else no TLS; empty: no TLS. Phones must trust it "
        "(a self-signed one: import it on the phone as a trusted CA). systemctl reload "
        "re-reads it and its key for new connections; established ones stay up.",
    ),
    Option(
        "sip",
        "tls_key",
        optional(string),
        "auto",
        'PEM private key of tls_certificate, mode 0640 or 0600. "auto": tls.key beside '
        "this file; empty: the key is in the certificate file.",
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
        ["MD5"],
        # Measured against the switch (tests/system/test_softphones_default_config.py and
        # test_sipp_interop.py); see DigestServer.trouble for the log line a refused
        # phone leaves.
        "Digest algorithms challenged, most preferred first (RFC 8760): one WWW-/Proxy-"
        "Authenticate header each. Users keep an MD5 and a SHA-256 hash, so this can change "
        "without new passwords. Measured (Debian 12 clients; pjsua2 2.15.1 wheel):\n"
        '["MD5"] (default): every client tested registers: baresip 1.0.0 (libre 1.1.0), '
        "SIPp 3.6.1, pjsua2 2.15.1, linphonec 5.1.65.\n"
        '["MD5", "SHA-256"]: baresip 1.0.0 fails ("Register: Function not implemented"): '
        "libre gives up on a 401 if any challenge is not MD5. SIPp, pjsua2 and linphonec "
        "answer MD5, the first.\n"
        '["SHA-256", "MD5"]: pjsua2 and linphonec answer SHA-256; baresip 1.0.0 fails as '
        'above and SIPp 3.6.1 too ("authentication must use MD5"): it reads only the first.\n'
        '["SHA-256"]: only SHA-256 phones register (pjsua2 2.15, linphonec 5.1); baresip 1.0.0 '
        "and SIPp 3.6.1 cannot. Use it, or SHA-256 first, when every phone does SHA-256.",
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
    Option(
        "calls",
        "feature_forward_on",
        string,
        "*72",
        'Feature code + a username (e.g. *72carol): forward all my calls there. "" = off.',
    ),
    Option(
        "calls",
        "feature_forward_off",
        string,
        "*73",
        'Feature code: stop forwarding all my calls. "" = off.',
    ),
    Option(
        "calls",
        "feature_dnd_on",
        string,
        "*78",
        'Feature code: do-not-disturb on (callers get 486, or my busy forward). "" = off.',
    ),
    Option(
        "calls",
        "feature_dnd_off",
        string,
        "*79",
        'Feature code: do-not-disturb off. "" = off.',
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
    # [overload]
    Option(
        "overload",
        "shed_delay",
        number(0.001, 30),
        0.1,
        "Seconds a new request (out-of-dialog INVITE, REGISTER ...) may have waited in the "
        "UDP queue and still be served; older ones get 503 with Retry-After. Requests "
        "within calls (BYE, ACK, re-INVITE) and responses are always served, and first; "
        "requests answering a challenge are served up to drop_delay.",
    ),
    Option(
        "overload",
        "drop_delay",
        number(0.001, 30),
        0.3,
        "Seconds after which a waiting new request is dropped unread instead (the phone "
        "retransmits); this keeps goodput near capacity under heavy overload.",
    ),
    Option(
        "overload",
        "shed_rate",
        number(0, 100000),
        200,
        "503s sent at most per second for late requests; the other late requests are "
        "dropped (a 503 costs about what serving the first step of a request does).",
    ),
    Option(
        "overload",
        "retry_after",
        integer(1, 3600),
        5,
        "Retry-After of the 503s, in seconds; each 503 says a random value from this to "
        "twice this, so the phones refused together do not come back together.",
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
    # [security]
    Option(
        "security",
        "max_auth_failures",
        integer(1, 1000),
        5,
        "Wrong passwords or unknown users from one address within failure_window that ban "
        "it. Challenges, stale nonces and malformed credentials never count.",
    ),
    Option(
        "security",
        "failure_window",
        number(1, 86400),
        60,
        "Seconds over which authentication failures are counted.",
    ),
    Option(
        "security",
        "ban_time",
        number(1, 31_536_000),
        900,
        "Seconds a first ban lasts; each repeat ban of the same address doubles it.",
    ),
    Option(
        "security",
        "ban_time_max",
        number(1, 31_536_000),
        86400,
        "Longest ban, in seconds; an address unbanned this long starts again at ban_time.",
    ),
    Option(
        "security",
        "allow",
        listof(network),
        [],
        'Addresses and CIDRs never banned nor rate-limited, e.g. ["10.0.0.0/8", "::1"]. '
        "Empty: nobody is exempt (loopback included).",
    ),
    Option(
        "security",
        "rate_limit",
        number(0, 1_000_000),
        100,
        "SIP messages per second accepted from one address (0: no limit); the excess is "
        "dropped, never banned. Sized for a few hundred phones behind one NAT address.",
    ),
    Option(
        "security",
        "rate_burst",
        number(1, 10_000_000),
        400,
        "Messages one address may send at once before rate_limit holds it back (all its "
        "phones re-registering after a power cut).",
    ),
    Option(
        "security",
        "nftables",
        choice("auto", "on", "off"),
        "auto",
        'Also drop banned addresses in the kernel (table inet softswitch): "auto" when '
        "started by systemd and permitted (the packaged unit grants CAP_NET_ADMIN), "
        '"on" to refuse to start without it, "off". Needs a restart to change.',
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
    cfg.sip.tls_certificate, cfg.sip.tls_key = auto_tls_files(
        Path(path).parent, cfg.sip.tls_certificate, cfg.sip.tls_key
    )
    return cfg


#: The certificate and key "auto" means, beside softswitch.conf.
TLS_CERTIFICATE_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"


def auto_tls_files(config_dir: Path, certificate: str, key: str) -> tuple[str, str]:
    """``[sip] tls_certificate`` and ``tls_key`` with "auto" resolved.

    "auto" is tls.crt / tls.key beside softswitch.conf: the package's
    postinst and ``make run`` create them, so TLS works out of the box,
    while a test's or an upgraded install's configuration directory without
    them simply serves no TLS.  The certificate's absence turns TLS off
    (returned as ""); a missing key is left for the loader to report.
    """
    if certificate == "auto":
        auto = config_dir / TLS_CERTIFICATE_FILE
        certificate = str(auto) if auto.exists() else ""
    if key == "auto":
        key = str(config_dir / TLS_KEY_FILE) if certificate else ""
    return certificate, key


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

"""The bearer daemon's options (bearer.conf), declared once.

One file serves every instance on a host; `%i` in a value is replaced by the
instance number (as in a systemd template unit), and each instance takes its
own slice of the RTP port range so instances never collide.
etc/softswitch/bearer.conf is rendered from this list
(`python -m softswitch.daemonkit.bearerconf`) and a unit test keeps the two identical.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from softswitch.daemonkit.config import (
    Option,
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
)

#: "auto", "none", or an array of core numbers (also read by the systemd
#: generator, systemd/softswitch-generator, which accepts the same spellings).
_instances = either(choice("auto", "none"), listof(integer(0, 4095)))


BEARER_OPTIONS: list[Option] = [
    Option(
        "bearer",
        "instances",
        _instances,
        "auto",
        "Instances softswitch.target starts on this host (read at boot and daemon-reload): "
        '"auto" = one per core, at most two; "none"; or core numbers, e.g. [0, 1].',
    ),
    Option(
        "bearer",
        "control",
        endpoint,
        "unix:/run/softswitch/bearer-%i.sock",
        "Where this instance takes orders: unix:/path or udp:addr:port (port + instance).",
    ),
    Option(
        "bearer",
        "key_file",
        string,
        "/etc/softswitch/control.key",
        "Shared HMAC key; required for udp: control endpoints.",
    ),
    Option("bearer", "media_address", ip_address, "127.0.0.1", "Address RTP sockets are bound to."),
    Option(
        "bearer",
        "advertised_address",
        optional(ip_address),
        "",
        "Address given to phones in SDP; empty means media_address (set it behind 1:1 NAT).",
    ),
    Option("bearer", "port_min", integer(1024, 65534), 30000, "First RTP port of instance 0."),
    Option(
        "bearer",
        "ports_per_instance",
        integer(4, 32768),
        4000,
        "RTP+RTCP ports per instance; instance N starts at port_min + N * this.",
    ),
    Option(
        "bearer",
        "max_sessions",
        integer(1, 100000),
        1000,
        "Calls this instance accepts before answering NO_CAPACITY.",
    ),
    Option(
        "bearer",
        "media_timeout",
        number(1, 3600),
        30,
        "Seconds without RTP on an answered call before control is told to hang up.",
    ),
    Option(
        "bearer",
        "recordings_dir",
        string,
        "/var/spool/softswitch/recordings",
        "Where recordings are written (by the writer thread, never the main loop).",
    ),
    Option(
        "bearer",
        "heartbeat_interval",
        number(0.1, 60),
        1.0,
        "Seconds between heartbeats to control.",
    ),
    Option("log", "level", choice("debug", "info", "warning", "error"), "info", "Log level."),
    Option(
        "log",
        "file",
        optional(string),
        "",
        "Log file; empty logs to stderr (the journal under systemd).",
    ),
]

HEADER = """\
# /etc/softswitch/bearer.conf: the media bearers (softswitch-bearer@N).
# Shared by every instance on this host; %i stands for the instance number.
# TOML (https://toml.io): strings in "quotes", lists in [brackets].
# Every option is shown with its default.
"""


def load_bearer_config(path: str | Path, instance: int, **kwargs: object) -> SimpleNamespace:
    """bearer.conf for one instance: %i substituted, its port slice computed."""
    cfg = load(path, BEARER_OPTIONS, **kwargs)  # type: ignore[arg-type]
    b = cfg.bearer
    kind, addr, port = b.control
    if kind == "unix":
        b.control = (kind, addr.replace("%i", str(instance)), 0)
    else:
        b.control = (kind, addr, port + instance)
    b.recordings_dir = b.recordings_dir.replace("%i", str(instance))
    b.port_first = b.port_min + instance * b.ports_per_instance
    b.port_last = b.port_first + b.ports_per_instance - 1
    if b.port_last > 65535:
        from softswitch.daemonkit.config import ConfigError

        raise ConfigError(
            f"{path}: [bearer] ports_per_instance: instance {instance} would need ports "
            f"up to {b.port_last} (> 65535)"
        )
    b.advertised_address = b.advertised_address or b.media_address
    b.instance = instance
    return cfg


if __name__ == "__main__":
    print(render_defaults(BEARER_OPTIONS, HEADER), end="")

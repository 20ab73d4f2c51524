"""softswitchctl: manage users, read CDRs, and ask the running daemon for live state.

User and CDR commands talk to the database directly (the daemon need not be
running; it picks changes up within [database] sync_interval). Live commands
(registrations, calls, bearers, status, reload, bans) go through the daemon's admin
socket (softswitch/daemon/admin.py).

Every failure is one line on stderr and a non-zero exit, never a traceback:
2 for bad usage or a bad configuration, 1 for everything else (user exists,
no such user, database unreachable, daemon not running).

Run as root against a SQLite database, it works on the file as the user who
owns it (or owns its directory, when it does not exist yet: softswitch owns
/var/lib/softswitch), so that the database and its -wal/-shm files stay
writable for the daemon, which runs as that user.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import ipaddress
import json
import os
import pwd
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from softswitch.daemon.admin import AdminClient, AdminError
from softswitch.daemon.settings import load_control_config
from softswitch.daemonkit.config import CONFIG_DIR_ENV, ConfigError, resolve_config_dir
from softswitch.db.schema import SchemaError, UserError, create_schema, make_engine, users
from softswitch.db.users import (
    add_user,
    check_name,
    delete_user,
    find_user,
    list_users,
    recent_cdrs,
    update_user,
)
from softswitch.model.users import DEFAULT_NOANSWER_AFTER, MAX_USERNAME

LIVE_COMMANDS = {
    "registrations": "registered contacts (live, from the daemon)",
    "calls": "calls in progress (live)",
    "bearers": "bearer daemons and their load (live)",
    "status": "daemon status: uptime, counters, database state (live)",
    "reload": "make the daemon re-read its configuration",
}


class CtlError(Exception):
    """A failure to report as one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the command: `softswitchctl user list --json`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config-dir",
        default=argparse.SUPPRESS,
        help=f"configuration directory (default: ${CONFIG_DIR_ENV}, ./var/etc, /etc/softswitch)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and man-page generation)."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="softswitchctl", description="Manage the softswitch.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    user = commands.add_parser("user", help="add, delete, list and change users", parents=[common])
    actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    pw_help = "the password (visible to other local users in ps; omit to be prompted)"

    add = actions.add_parser("add", help="add a user", parents=[common])
    add.add_argument("name", metavar="NAME", help="username, or username@domain")
    add.add_argument("--password", help=pw_help)
    add.add_argument("--display", default="", metavar="NAME", help="display name")
    add.add_argument("--record", action="store_true", help="record this user's calls")
    add.add_argument(
        "--max-calls",
        type=_count,
        metavar="N",
        help="concurrent-call limit (0 = unlimited; default [calls] max_calls_per_user)",
    )
    add.add_argument("--srtp", choices=_SRTP_CHOICES, help=_SRTP_HELP)

    rm = actions.add_parser("del", help="delete a user and its registrations", parents=[common])
    rm.add_argument("name", metavar="NAME")

    actions.add_parser("list", help="list users", parents=[common])

    pw = actions.add_parser("passwd", help="set a user's password", parents=[common])
    pw.add_argument("name", metavar="NAME")
    pw.add_argument("--password", help=pw_help)

    st = actions.add_parser("set", help="change a user's settings", parents=[common])
    st.add_argument("name", metavar="NAME")
    st.add_argument("--enable", dest="enabled", action="store_true", default=None, help="allow")
    st.add_argument("--disable", dest="enabled", action="store_false", help="refuse its calls")
    st.add_argument("--record", dest="record", action="store_true", default=None, help="record")
    st.add_argument("--no-record", dest="record", action="store_false", help="stop recording")
    st.add_argument(
        "--max-calls", type=_count, metavar="N", help="concurrent-call limit (0 = unlimited)"
    )
    st.add_argument("--display", metavar="NAME", help="display name")
    st.add_argument("--srtp", choices=_SRTP_CHOICES, help=_SRTP_HELP)
    for flag, when in (
        ("always", "every call"),
        ("busy", "busy or DND"),
        ("noanswer", "no answer"),
    ):
        st.add_argument(
            f"--forward-{flag}",
            type=_forward_target,
            metavar="USER",
            help=f"forward on {when} to USER of the same domain ('' = off)",
        )
    st.add_argument(
        "--noanswer-after",
        type=_noanswer_after,
        metavar="S",
        help="seconds of ringing before --forward-noanswer applies",
    )
    st.add_argument("--dnd", choices=("on", "off"), help="do-not-disturb: 486, or forward-busy")

    cdr = commands.add_parser("cdr", help="recent call detail records", parents=[common])
    cdr.add_argument(
        "--limit", type=_positive, default=20, metavar="N", help="how many (default 20)"
    )

    for name, text in LIVE_COMMANDS.items():
        commands.add_parser(name, help=text, parents=[common])

    bans = commands.add_parser(
        "bans",
        help="addresses banned for failed authentications (live); `bans del ADDR` lifts one",
        parents=[common],
    )
    bans_actions = bans.add_subparsers(dest="action", metavar="ACTION")
    lift = bans_actions.add_parser("del", help="lift the ban of an address", parents=[common])
    lift.add_argument(
        "address", type=_address, metavar="ADDR", help="IPv4 address, IPv6 address or its /64"
    )
    return parser


def _address(text: str) -> str:
    """An address, or an IPv6 /64 as ``bans`` lists it."""
    text = text.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        net = None
    if net is None or net.version != 6:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None
    return str(net)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


# -- output -------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns left-aligned to their widest cell, two spaces apart."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render(result: Any) -> str:
    """A live result for people: list of objects -> table, object -> key: value."""
    if result is None:
        return ""
    if isinstance(result, list):
        if not result:
            return "(none)"
        if all(isinstance(r, dict) for r in result):
            columns: list[str] = []
            for r in result:
                columns.extend(k for k in r if k not in columns)
            rows = [[r.get(c) for c in columns] for r in result]
            return format_table([c.upper().replace("_", " ") for c in columns], rows)
        return "\n".join(_cell(r) for r in result)
    if isinstance(result, dict):
        width = max((len(str(k)) for k in result), default=0)
        return "\n".join(f"{str(k) + ':':<{width + 1}} {_cell(v)}" for k, v in result.items())
    return _cell(result)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    elif text:
        print(text)


# -- commands -------------------------------------------------------------------


class Context:
    """What every command needs: the configuration and the names derived from it."""

    def __init__(self, args: argparse.Namespace) -> None:
        explicit = getattr(args, "config_dir", None)
        config_dir = resolve_config_dir(explicit)
        required = bool(explicit or os.environ.get(CONFIG_DIR_ENV))
        self.config_file = config_dir / "softswitch.conf"
        self.cfg = load_control_config(self.config_file, required=required)
        self.domain: str = self.cfg.sip.domain or self.cfg.sip.listen[0]
        self.realm: str = self.cfg.sip.realm or self.domain
        self._engine: sa.engine.Engine | None = None
        self._as: _EffectiveIds | None = None

    @property
    def engine(self) -> sa.engine.Engine:
        if self._engine is None:
            try:
                self._engine = make_engine(self.cfg.database.url)
            except (sa.exc.ArgumentError, ImportError) as exc:  # bad URL or missing driver
                first = str(exc).strip().splitlines()[0]
                raise ConfigError(f"{self.config_file}: [database] url: {first}") from None
            owner = sqlite_owner(self.cfg.database.url)
            if owner is not None:  # until close(): every file SQLite creates is theirs
                self._as = _EffectiveIds(*owner)
            create_schema(self._engine)
        return self._engine

    def split(self, name: str) -> tuple[str, str]:
        """NAME or NAME@DOMAIN -> (username, domain)."""
        if "@" in name:
            username, _, domain = name.rpartition("@")
            return username, domain.lower()
        return name, self.domain.lower()

    def close(self) -> None:
        try:
            if self._engine is not None:
                self._engine.dispose()
        finally:
            if self._as is not None:
                self._as.restore()
                self._as = None


def sqlite_owner(url: str) -> tuple[int, int] | None:
    """(uid, gid) to work on a SQLite database as, or None to stay who we are.

    Only when running as root on a database file (or, before it exists, its
    directory) that another user owns: root-owned files there would be
    read-only for the daemon.  The group is the owner's primary group.
    """
    if os.geteuid() != 0:
        return None
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    name = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or name in ("", ":memory:")
        or name.startswith("file:")
    ):
        return None
    path = Path(name).absolute()
    for candidate in (path, path.parent):
        try:
            st = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if st.st_uid == 0:
            return None
        try:
            gid = pwd.getpwuid(st.st_uid).pw_gid
        except KeyError:
            gid = st.st_gid
        return st.st_uid, gid
    return None


class _EffectiveIds:
    """Act as (uid, gid) from now until ``restore()`` (root only: seteuid/setegid)."""

    def __init__(self, uid: int, gid: int) -> None:
        self._saved = (os.geteuid(), os.getegid(), os.getgroups())
        os.setgroups([gid])
        os.setegid(gid)
        os.seteuid(uid)

    def restore(self) -> None:
        uid, gid, groups = self._saved
        os.seteuid(uid)
        os.setegid(gid)
        os.setgroups(groups)


def _ha1s(username: str, realm: str, password: str) -> tuple[str, str]:
    from softswitch.sip.digest import ha1

    return (ha1(username, realm, password, "MD5"), ha1(username, realm, password, "SHA-256"))


def _password(given: str | None) -> str:
    if given is not None:
        if not given:
            raise CtlError("the password must not be empty")
        return given
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Retype password: ")
    except (EOFError, KeyboardInterrupt):
        raise CtlError("cancelled") from None
    if first != second:
        raise CtlError("the passwords do not match")
    if not first:
        raise CtlError("the password must not be empty")
    return first


_SRTP_CHOICES = ("optional", "mandatory", "off", "default")
_SRTP_HELP = "SRTP policy: optional, mandatory, off, or default ([calls] srtp)"


def _srtp_value(choice: str | None) -> str:
    """The users.srtp column for a --srtp choice ("" = the configured default)."""
    return "" if choice in (None, "default") else str(choice)


def _forward_target(text: str) -> str:
    """A --forward-* value: a username of the same domain, or "" to switch it off."""
    if text and ("@" in text or len(text) > MAX_USERNAME or not text.isprintable() or " " in text):
        raise argparse.ArgumentTypeError(f"not a username of the same domain: {text!r}")
    return text


def _noanswer_after(text: str) -> int:
    """--noanswer-after: whole seconds, 1 to 600."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 1 <= value <= 600:
        raise argparse.ArgumentTypeError(f"must be 1 to 600 seconds: {value}")
    return value


def cmd_user(ctx: Context, args: argparse.Namespace) -> None:
    """user add/del/list/passwd/set."""
    if args.action == "list":
        with ctx.engine.connect() as conn:
            rows = list_users(conn)
        data = [
            {
                "username": r.username,
                "domain": r.domain,
                "display_name": r.display_name,
                "enabled": bool(r.enabled),
                "record_calls": bool(r.record_calls),
                "max_calls": r.max_calls,
                "srtp": r.srtp or "default",
                "forward_always": r.forward_always or "",
                "forward_busy": r.forward_busy or "",
                "forward_noanswer": r.forward_noanswer or "",
                "noanswer_after": (
                    DEFAULT_NOANSWER_AFTER if r.noanswer_after is None else r.noanswer_after
                ),
                "dnd": bool(r.dnd),
            }
            for r in rows
        ]
        table = format_table(
            [
                "USER",
                "DOMAIN",
                "DISPLAY NAME",
                "ENABLED",
                "RECORD",
                "MAX CALLS",
                "SRTP",
                "FWD ALWAYS",
                "FWD BUSY",
                "FWD NOANSWER",
                "AFTER",
                "DND",
            ],
            [[v or "-" if k.startswith("forward_") else v for k, v in d.items()] for d in data],
        )
        _emit(args, data, table if data else "(no users)")
        return
    username, domain = ctx.split(args.name)
    if args.action == "add":
        with ctx.engine.connect() as conn:  # refuse a bad or taken name before prompting
            check_name(username, domain)
            if (
                conn.execute(
                    sa.select(users.c.id).where(
                        users.c.username == username, users.c.domain == domain
                    )
                ).first()
                is not None
            ):
                raise UserError(f"user exists: {username}@{domain}")
        password = _password(args.password)
        max_calls = ctx.cfg.calls.max_calls_per_user if args.max_calls is None else args.max_calls
        with ctx.engine.begin() as conn:
            add_user(
                conn,
                username,
                domain,
                _ha1s(username, ctx.realm, password),
                display_name=args.display,
                record_calls=args.record,
                max_calls=max_calls,
                srtp=_srtp_value(args.srtp),
            )
        _emit(args, {"added": f"{username}@{domain}"}, f"added {username}@{domain}")
    elif args.action == "del":
        with ctx.engine.begin() as conn:
            delete_user(conn, username, domain)
        _emit(args, {"deleted": f"{username}@{domain}"}, f"deleted {username}@{domain}")
    elif args.action == "passwd":
        with ctx.engine.connect() as conn:  # fail on an unknown user before prompting
            find_user(conn, username, domain)
        password = _password(args.password)
        md5, sha256 = _ha1s(username, ctx.realm, password)
        with ctx.engine.begin() as conn:
            update_user(conn, username, domain, ha1_md5=md5, ha1_sha256=sha256)
        _emit(args, {"changed": f"{username}@{domain}"}, f"password of {username}@{domain} set")
    elif args.action == "set":
        values: dict[str, Any] = {}
        if args.enabled is not None:
            values["enabled"] = args.enabled
        if args.record is not None:
            values["record_calls"] = args.record
        if args.max_calls is not None:
            values["max_calls"] = args.max_calls
        if args.display is not None:
            values["display_name"] = args.display
        if args.srtp is not None:
            values["srtp"] = _srtp_value(args.srtp)
        for name in ("forward_always", "forward_busy", "forward_noanswer", "noanswer_after"):
            if getattr(args, name) is not None:
                values[name] = getattr(args, name)
        if args.dnd is not None:
            values["dnd"] = args.dnd == "on"
        if not values:
            raise CtlError(
                "nothing to change: give --enable/--disable, --record/--no-record, "
                "--max-calls, --display, --srtp, --forward-*, --noanswer-after or --dnd",
                code=2,
            )
        with ctx.engine.begin() as conn:
            update_user(conn, username, domain, **values)
        _emit(args, {"changed": f"{username}@{domain}", **values}, f"{username}@{domain} updated")


def _utc(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def cmd_cdr(ctx: Context, args: argparse.Namespace) -> None:
    """The most recent CDRs, newest first."""
    with ctx.engine.connect() as conn:
        rows = recent_cdrs(conn, args.limit)
    data = []
    for r in rows:
        m = dict(r._mapping)
        for key in ("start_time", "answer_time", "end_time"):
            m[key] = _utc(m[key])
        data.append(m)
    table = format_table(
        ["START (UTC)", "CALLER", "CALLEE", "RESULT", "CODE", "SECONDS", "A LOST", "B LOST"],
        [
            [
                m["start_time"],
                m["caller"],
                # a forwarded call: who got it, and whom it was dialled for
                f"{m['callee']} (for {m['forwarded_from']})"
                if m.get("forwarded_from")
                else m["callee"],
                m["disposition"],
                m["sip_code"],
                round(m["duration"], 1),
                f"{m['a_lost']}/{m['a_packets']}",
                f"{m['b_lost']}/{m['b_packets']}",
            ]
            for m in data
        ],
    )
    _emit(args, data, table if data else "(no CDRs)")


def cmd_live(ctx: Context, args: argparse.Namespace) -> None:
    """A command answered by the running daemon over the admin socket."""
    result = AdminClient(ctx.cfg.admin.socket).call(args.command)
    _emit(args, result, render(result))


def cmd_bans(ctx: Context, args: argparse.Namespace) -> None:
    """List bans, or lift one (the daemon also removes it from its nftables set)."""
    client = AdminClient(ctx.cfg.admin.socket)
    if getattr(args, "action", None) == "del":
        result = client.call("bans_del", {"address": args.address})
        _emit(args, result, str(result))
        return
    result = client.call("bans")
    _emit(args, result, render(result) if result else "(no bans)")


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run; raises CtlError and friends (main() turns them into lines)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(args)
    try:
        if args.command == "user":
            cmd_user(ctx, args)
        elif args.command == "cdr":
            cmd_cdr(ctx, args)
        elif args.command == "bans":
            cmd_bans(ctx, args)
        else:
            cmd_live(ctx, args)
    finally:
        ctx.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: one line on stderr and an exit status on error."""
    try:
        return run(argv)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except CtlError as exc:
        return _fail(str(exc), exc.code)
    except (UserError, SchemaError, AdminError) as exc:
        return _fail(str(exc), 1)
    except sa.exc.SQLAlchemyError as exc:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return _fail(f"database error: {text[0] if text else type(exc).__name__}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # `softswitchctl cdr | head`
        return 0


def _fail(message: str, code: int) -> int:
    print(f"softswitchctl: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

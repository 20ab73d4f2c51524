"""Configuration files: a declared schema, one-line errors, nothing guessed.

Theory of operation: each daemon declares its options once, as a list of
`Option` (section, key, parser, default, one-line doc). `load()` reads an INI
file with the standard library's configparser, checks every key against the
schema and converts every value; anything wrong becomes one `ConfigError` whose
text names the file, the line and the key, e.g.::

    /etc/softswitch/softswitch.conf:12: [sip] port: not an integer: 'fivethousand'

Unknown sections and keys are errors too: a typo in an appliance's config must
not silently fall back to a default. The files in etc/softswitch/ document
every option with its default; `render_defaults()` produces that text from the
schema so the two cannot drift apart (a unit test compares them).

The same loader serves the control daemon (softswitch.conf) and the bearers
(bearer.conf); it lives here, once, and imports nothing but the standard
library so the bearer can use it without pulling in the SIP stack.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: Where an installed appliance keeps its configuration.
SYSTEM_CONFIG_DIR = Path("/etc/softswitch")
#: Environment variable that overrides the configuration directory.
CONFIG_DIR_ENV = "SOFTSWITCH_CONFIG_DIR"
#: A checkout running `make run` keeps its generated configuration here.
DEV_CONFIG_DIR = Path("var/etc")


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line to print."""


def _ident(text: str) -> str:
    return text


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """Parser for an integer within [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"not an integer: {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{value} is outside {lo}..{hi}")
        return value

    return parse


def number(lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    """Parser for a decimal number (seconds, ratios) within [lo, hi]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{text} is outside {lo}..{hi}")
        return value

    return parse


_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}


def boolean(text: str) -> bool:
    """Parser for yes/no, true/false, on/off, 1/0."""
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError(f"not yes/no: {text!r}") from None


def choice(*allowed: str) -> Callable[[str], str]:
    """Parser for one word out of a fixed set."""

    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text.lower()

    return parse


def ip_address(text: str) -> str:
    """Parser for one IPv4 or IPv6 address (no brackets)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An empty value means "not set" (None); anything else goes to `parse`."""

    def wrapper(text: str) -> Any:
        return None if text == "" else parse(text)

    return wrapper


def listof(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A comma-separated list, each item parsed by `parse`."""

    def wrapper(text: str) -> list[Any]:
        return [parse(item.strip()) for item in text.split(",") if item.strip()]

    return wrapper


_ENDPOINT = re.compile(r"^(unix):(/.+)$|^(udp):(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d+)$")


def endpoint(text: str) -> tuple[str, str, int]:
    """A control-channel endpoint: ``unix:/path`` or ``udp:HOST:PORT``.

    Returns (kind, address, port); port is 0 for UNIX sockets. IPv6 hosts are
    written in brackets, ``udp:[2001:db8::2]:7700``.
    """
    m = _ENDPOINT.match(text)
    if not m:
        raise ValueError(f"not unix:/path or udp:host:port: {text!r}")
    if m.group(1):
        return ("unix", m.group(2), 0)
    host = m.group(4).strip("[]")
    port = int(m.group(5))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1..65535")
    return ("udp", host, port)


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: where it lives, how it is parsed, what it means."""

    section: str
    key: str
    parse: Callable[[str], Any]
    default: str
    doc: str


def resolve_config_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where to read configuration from.

    Order: an explicit --config-dir, then $SOFTSWITCH_CONFIG_DIR, then
    ./var/etc when the current directory is a checkout running `make run`
    (so `softswitchctl` in a second terminal needs no flags), then
    /etc/softswitch.
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    if (DEV_CONFIG_DIR / "softswitch.conf").is_file():
        return DEV_CONFIG_DIR.resolve()
    return SYSTEM_CONFIG_DIR


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """Map (section, key) to the line it is set on, for error messages."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number_, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and "]" in line:
            section = line[1 : line.index("]")].strip().lower()
            lines[(section, "")] = number_
            continue
        if raw[:1].isspace():
            continue  # continuation of the previous value
        key = re.split(r"[=:]", line, maxsplit=1)[0].strip().lower()
        lines.setdefault((section, key), number_)
    return lines


def load(
    path: str | os.PathLike[str],
    schema: Sequence[Option],
    *,
    required: bool = False,
    overrides: dict[tuple[str, str], str] | None = None,
) -> SimpleNamespace:
    """Read `path` against `schema`; return sections as attribute namespaces.

    A missing file gives every default unless `required`. `overrides` (from
    command-line flags) win over the file. Raises ConfigError with a one-line,
    file:line-naming message for anything wrong.
    """
    path = Path(path)
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
    elif required:
        raise ConfigError(f"{path}: no such file")

    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), empty_lines_in_values=False
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        line = getattr(exc, "lineno", None)
        first = str(exc).splitlines()[0]
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {first}") from None

    lines = _key_lines(text)
    known: dict[tuple[str, str], Option] = {(o.section, o.key): o for o in schema}
    sections = {o.section for o in schema}

    for section in parser.sections():
        if section.lower() not in sections:
            line = lines.get((section.lower(), ""), 0)
            raise ConfigError(f"{path}:{line}: unknown section [{section}]")
        for key in parser[section]:
            if (section.lower(), key) not in known:
                line = lines.get((section.lower(), key), 0)
                raise ConfigError(f"{path}:{line}: [{section}] {key}: unknown key")

    values: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for option in schema:
        raw = option.default
        line = 0
        if parser.has_option(option.section, option.key):
            raw = parser.get(option.section, option.key).strip()
            line = lines.get((option.section, option.key), 0)
        if overrides and (option.section, option.key) in overrides:
            raw = overrides[(option.section, option.key)]
        try:
            values[option.section][option.key] = option.parse(raw)
        except ValueError as exc:
            where = f"{path}:{line}" if line else f"{path} (default)"
            raise ConfigError(f"{where}: [{option.section}] {option.key}: {exc}") from None
    return SimpleNamespace(**{s: SimpleNamespace(**v) for s, v in values.items()})


def render_defaults(schema: Iterable[Option], header: str) -> str:
    """The documented default file for `schema` (what etc/softswitch/ ships)."""
    out = [header.rstrip(), ""]
    section = None
    for option in schema:
        if option.section != section:
            if section is not None:
                out.append("")
            out.append(f"[{option.section}]")
            section = option.section
        out.append(f"# {option.doc}")
        out.append(f"{option.key} = {option.default}".rstrip())
    return "\n".join(out) + "\n"

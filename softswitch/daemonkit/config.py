"""Configuration files: TOML read against a declared schema, one-line errors, nothing guessed.

Theory of operation: each daemon declares its options once, as a list of
`Option` (section, key, value checker, default, one-line doc). The checker (a
`Value`) names the TOML type the key takes (a string, an integer, a number, a
boolean, an array of strings or of integers, or a documented union such as
``"auto"`` or an array of core numbers) and then validates and converts what
the file holds. `load()` parses the file with the standard library's tomllib,
checks every section and key against the schema and converts every value;
anything wrong becomes one `ConfigError` whose text names the file, the line
and the key, e.g.::

    softswitch.conf:12: [sip] port: expected an integer, got a string ("fivethousand")
    softswitch.conf:3: [sip] prot: unknown key
    softswitch.conf:5: [sip] listen[1]: not an IP address: "10.0.0"
    softswitch.conf:7: Cannot overwrite a value (column 6)

tomllib reports no positions for what it parsed, so `_key_lines()` scans the
text for ``[section]`` headers and ``key = value`` lines (skipping comments,
strings and multi-line arrays) to put a line number on a key.

Unknown sections and keys are errors too: a typo in an appliance's config must
not silently fall back to a default. The files in etc/softswitch/ document
every option with its default; `render_defaults()` produces that text from the
schema so the two cannot drift apart (a unit test compares them). `dumps()`
writes sections of values as TOML for the programs that generate a
configuration (``make run``, the test harnesses, the benchmarks).

The same loader serves the control daemon (softswitch.conf) and the bearers
(bearer.conf); it lives here, once, and imports nothing but the standard
library so the bearer can use it without pulling in the SIP stack.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
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


class Invalid(ValueError):
    """A value the schema refuses. `where` locates it inside the key's value ("[1]")."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where


# --- TOML values as text ----------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _string_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key_literal(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string_literal(key)


def toml_literal(value: Any) -> str:
    """`value` written as TOML: ``"text"``, ``5060``, ``0.5``, ``true``, ``["a", "b"]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string_literal(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key_literal(k)} = {toml_literal(v)}" for k, v in value.items())
        return "{" + items + "}" if items else "{}"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    raise TypeError(f"no TOML spelling for {type(value).__name__}: {value!r}")


def dumps(sections: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """``[section]`` tables of ``key = value`` lines, for programs that write a config.

    Values are Python values with a TOML spelling (str, int, float, bool, lists);
    TOML has no null, so "not set" is written as the empty string.
    """
    out = [header.rstrip(), ""] if header else []
    for section, values in sections.items():
        out.append(f"[{_key_literal(section)}]")
        out.extend(f"{_key_literal(k)} = {toml_literal(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


def describe(value: Any) -> str:
    """What a value from the file is, as error messages say it: ``a string ("x")``."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a float"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "an array"
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, dt.datetime):
        kind = "a date-time"
    elif isinstance(value, dt.date):
        kind = "a date"
    elif isinstance(value, dt.time):
        kind = "a time"
    else:  # pragma: no cover - tomllib produces nothing else
        return type(value).__name__
    text = toml_literal(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} ({text})"


# --- Types and value checkers -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TomlType:
    """A TOML type an option takes, named as error messages name it ("an integer")."""

    name: str
    test: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STRING = TomlType("a string", lambda v: isinstance(v, str))
INTEGER = TomlType("an integer", _is_int)
NUMBER = TomlType("a number", lambda v: _is_int(v) or isinstance(v, float))
BOOLEAN = TomlType("a boolean", lambda v: isinstance(v, bool))


def array_of(item: TomlType) -> TomlType:
    """An array whose elements are `item` ("an array of strings"); elements are checked
    one by one by the `Value` so the message can say which one is wrong."""
    plural = item.name.split(" ", 1)[1] + "s"
    return TomlType(f"an array of {plural}", lambda v: isinstance(v, list))


def union(*types: TomlType) -> TomlType:
    """Any one of `types` ("a string or an array of integers")."""
    return TomlType(" or ".join(t.name for t in types), lambda v: any(t.test(v) for t in types))


@dataclass(frozen=True, slots=True)
class Value:
    """How one option's TOML value is checked and converted.

    `expects` is the TOML type the key takes; `check` receives a value of that
    type and returns what the daemon uses, or raises `Invalid`.
    """

    expects: TomlType
    check: Callable[[Any], Any]

    def __call__(self, value: Any) -> Any:
        if not self.expects.test(value):
            raise Invalid(f"expected {self.expects.name}, got {describe(value)}")
        return self.check(value)


def _bounds(lo: float | None, hi: float | None) -> str:
    return f"{'' if lo is None else lo}..{'' if hi is None else hi}"


def integer(lo: int | None = None, hi: int | None = None) -> Value:
    """An integer within [lo, hi]."""

    def check(value: int) -> int:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise Invalid(f"{value} is outside {_bounds(lo, hi)}")
        return value

    return Value(INTEGER, check)


def number(lo: float | None = None, hi: float | None = None) -> Value:
    """A number (TOML integer or float: seconds, ratios) within [lo, hi], as a float."""

    def check(value: float) -> float:
        result = float(value)
        if (
            math.isnan(result)
            or (lo is not None and result < lo)
            or (hi is not None and result > hi)
        ):
            raise Invalid(f"{toml_literal(value)} is outside {_bounds(lo, hi)}")
        return result

    return Value(NUMBER, check)


#: true or false.
boolean = Value(BOOLEAN, lambda value: value)

#: Any string.
string = Value(STRING, lambda value: value)


def choice(*allowed: str) -> Value:
    """One word out of a fixed set, any case; returns the word as `allowed` spells it."""
    words = {word.lower(): word for word in allowed}

    def check(text: str) -> str:
        try:
            return words[text.lower()]
        except KeyError:
            names = ", ".join(_string_literal(word) for word in allowed)
            raise Invalid(f"{_string_literal(text)} is not one of {names}") from None

    return Value(STRING, check)


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise Invalid(f"not an IP address: {_string_literal(text)}") from None


#: One IPv4 or IPv6 address (no brackets), as a string.
ip_address = Value(STRING, _ip_address)


def optional(value: Value) -> Value:
    """An empty string means "not set" (None); anything else goes to `value`."""
    return Value(value.expects, lambda v: None if v == "" else value.check(v))


def listof(item: Value) -> Value:
    """An array, each element checked by `item`; errors name the element (``key[2]``)."""

    def check(items: list[Any]) -> list[Any]:
        out = []
        for index, element in enumerate(items):
            try:
                out.append(item(element))
            except Invalid as exc:
                raise Invalid(exc.message, f"[{index}]{exc.where}") from None
        return out

    return Value(array_of(item.expects), check)


def either(*alternatives: Value) -> Value:
    """A union: the first alternative whose TOML type the value has decides."""

    def check(value: Any) -> Any:
        for alternative in alternatives:
            if alternative.expects.test(value):
                return alternative(value)
        raise AssertionError("unreachable: the union's type test passed")  # pragma: no cover

    return Value(union(*(a.expects for a in alternatives)), check)


_ENDPOINT = re.compile(r"^(unix):(/.+)$|^(udp):(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d+)$")


def _endpoint(text: str) -> tuple[str, str, int]:
    m = _ENDPOINT.match(text)
    if not m:
        raise Invalid(f"not unix:/path or udp:host:port: {_string_literal(text)}")
    if m.group(1):
        return ("unix", m.group(2), 0)
    host = m.group(4).strip("[]")
    port = int(m.group(5))
    if not 0 < port < 65536:
        raise Invalid(f"port {port} is outside 1..65535")
    return ("udp", host, port)


#: A control-channel endpoint string, ``unix:/path`` or ``udp:HOST:PORT``, as
#: (kind, address, port); port is 0 for UNIX sockets. IPv6 hosts are written
#: in brackets, ``udp:[2001:db8::2]:7700``.
endpoint = Value(STRING, _endpoint)


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: where it lives, its type and checks, what it means.

    `default` is a TOML value (a Python str, int, float, bool or list), checked
    by `parse` like a value from the file.
    """

    section: str
    key: str
    parse: Value
    default: Any
    doc: str

    @property
    def expects(self) -> TomlType:
        """The TOML type this key takes."""
        return self.parse.expects


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


# --- Line numbers -----------------------------------------------------------------


def _skip_string(text: str, i: int) -> tuple[int, str | None]:
    """From a quote at `i`: the index after the string, or (len, delimiter) when a
    multi-line string continues past the end of `text`."""
    for delim in ('"""', "'''", '"', "'"):
        if text.startswith(delim, i):
            break
    return _string_end(text, i + len(delim), delim)


def _string_end(text: str, i: int, delim: str) -> tuple[int, str | None]:
    """Index after the `delim` closing a string whose body starts at `i`."""
    while i < len(text):
        if delim[0] == '"' and text[i] == "\\":
            i += 2
            continue
        if text.startswith(delim, i):
            i += len(delim)
            while len(delim) == 3 and i < len(text) and text[i] == delim[0]:
                i += 1  # """a"""" ends with a quote inside
            return i, None
        i += 1
    return len(text), delim if len(delim) == 3 else None


def _scan_value(text: str, i: int, depth: int) -> tuple[int, str | None]:
    """Bracket depth after a (piece of a) value; and an unclosed multi-line string."""
    while i < len(text):
        ch = text[i]
        if ch == "#":
            break
        if ch in "\"'":
            i, open_string = _skip_string(text, i)
            if open_string:
                return depth, open_string
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, None


def _outside_quotes(text: str, stop: str) -> int:
    """Index of the first `stop` character not inside a quoted key, or -1."""
    i = 0
    while i < len(text):
        if text[i] in "\"'":
            i, _ = _skip_string(text, i)
            continue
        if text[i] in stop:
            return i
        i += 1
    return -1


def _path_of(toml_text: str) -> tuple[str, ...] | None:
    """The key path a header or a ``key = 0`` line declares, decoded by tomllib."""
    try:
        node: Any = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, (dict, list)) and node:
        if isinstance(node, list):
            node = node[-1]
            continue
        key = next(iter(node))
        path.append(key)
        node = node[key]
    return tuple(path)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each table header's and key's full path to the line it is on.

    ``[sip]`` gives ("sip",), ``port = 5060`` under it ("sip", "port"), a
    dotted ``sip.port = 5060`` at the top the same. Lines inside multi-line
    arrays and strings are skipped; keys inside inline tables are not listed
    (errors about them name the line of the key holding the table).
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth = 0  # open [ and { of a value continuing on the next line
    open_string: str | None = None  # the delimiter of an unclosed multi-line string
    for number_, line in enumerate(text.splitlines(), start=1):
        i = 0
        if open_string:
            i, open_string = _string_end(line, 0, open_string)
            if open_string:
                continue
        if depth or i:
            depth, open_string = _scan_value(line, i, depth)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            end = _outside_quotes(stripped, "]")
            closing = "]]" if stripped.startswith("[[") else "]"
            path = _path_of(stripped[: end + len(closing)] if end >= 0 else stripped)
            if path is not None:
                table = path
                lines.setdefault(path, number_)
            continue
        eq = _outside_quotes(line, "=")
        if eq < 0:
            continue
        path = _path_of(line[:eq] + "= 0")
        if path is not None:
            lines.setdefault(table + path, number_)
        depth, open_string = _scan_value(line, eq + 1, 0)
    return lines


def _line_of(lines: Mapping[tuple[str, ...], int], *path: str) -> int:
    """The line of `path`, else of its nearest enclosing key or table; 0 if unknown."""
    while path:
        if path in lines:
            return lines[path]
        inside = [n for p, n in lines.items() if p[: len(path)] == path]
        if inside:  # a dotted key, sip.port = 5060, sets the table sip
            return min(inside)
        path = path[:-1]
    return 0


_TOML_WHERE = re.compile(
    r"^(?P<msg>.*) \((?:at line (?P<line>\d+), column (?P<col>\d+)|at end of document)\)$"
)


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's message as FILE:LINE: message (column M)."""
    message = str(exc).splitlines()[0] if str(exc) else "invalid TOML"
    m = _TOML_WHERE.match(message)
    if not m:
        return f"{path}: {message}"
    if m.group("line"):
        return f"{path}:{m.group('line')}: {m.group('msg')} (column {m.group('col')})"
    last = max(len(text.splitlines()), 1)
    return f"{path}:{last}: {m.group('msg')} (at end of document)"


# --- Loading ------------------------------------------------------------------------


def load(
    path: str | os.PathLike[str],
    schema: Sequence[Option],
    *,
    required: bool = False,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> SimpleNamespace:
    """Read the TOML file `path` against `schema`; return sections as attribute namespaces.

    A missing file gives every default unless `required`. `overrides` (TOML
    values keyed by (section, key), e.g. from command-line flags) win over the
    file. Raises ConfigError with a one-line, file:line-naming message for
    anything wrong.
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

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_error(path, text, exc)) from None

    lines = _key_lines(text)
    known: dict[tuple[str, str], Option] = {(o.section, o.key): o for o in schema}
    sections = {o.section for o in schema}

    for section, table in document.items():
        line = _line_of(lines, section)
        if isinstance(table, list) and all(isinstance(t, dict) for t in table):
            raise ConfigError(
                f"{path}:{line}: [[{section}]]: expected [{section}], not an array of tables"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}:{line}: {_key_literal(section)}: key outside any [section]")
        if section not in sections:
            raise ConfigError(f"{path}:{line}: unknown section [{_key_literal(section)}]")
        for key in table:
            if (section, key) not in known:
                line = _line_of(lines, section, key)
                raise ConfigError(f"{path}:{line}: [{section}] {_key_literal(key)}: unknown key")

    values: dict[str, dict[str, Any]] = {o.section: {} for o in schema}
    for option in schema:
        value, where = option.default, f"{path} (default)"
        table = document.get(option.section, {})
        if option.key in table:
            value = table[option.key]
            where = f"{path}:{_line_of(lines, option.section, option.key)}"
        if overrides and (option.section, option.key) in overrides:
            value, where = overrides[(option.section, option.key)], f"{path} (override)"
        try:
            values[option.section][option.key] = option.parse(value)
        except Invalid as exc:
            raise ConfigError(
                f"{where}: [{option.section}] {option.key}{exc.where}: {exc.message}"
            ) from None
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
        out.extend(f"# {line}" for line in option.doc.split("\n"))
        out.append(f"{option.key} = {toml_literal(option.default)}")
    return "\n".join(out) + "\n"

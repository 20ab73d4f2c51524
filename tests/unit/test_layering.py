"""The architecture's seams, checked (DESIGN.md "Repository layout", STYLE.md 13).

Two rules the layout promises and nothing else would keep true:

1. **The sans-I/O core loads no I/O.** The SIP stack, the registrar and
   location table, the B2BUA, the data model, the control<->bearer protocol
   and the composed ``Switch`` are fed bytes and time and return messages;
   only the daemon edge may bring in asyncio, sockets, selectors, threads or
   SQLAlchemy. Checked twice: by importing the core in a fresh interpreter and
   looking at ``sys.modules`` (catches an indirect import, e.g. a stdlib module
   that pulls in ``socket``), and by reading each core module's own import
   statements (``threading`` cannot be caught the first way: ``logging``
   imports it, and every module logs).
2. **Dependencies point one way.** ``bearer`` imports only the shared
   packages (``softswitch.protocol``, ``softswitch.daemonkit``); each shared
   package imports nothing else of the project; control (the rest of
   ``softswitch``) never imports ``bearer``; ``bench`` never imports ``tests``.

Each rule is a function over module sources, so the last tests here feed it a
forbidden import and check it is reported: a rule test that cannot fail would
prove nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The sans-I/O core: packages (every module in them) and single modules.
CORE_PACKAGES = ("softswitch.sip", "softswitch.calls", "softswitch.model", "softswitch.protocol")
CORE_MODULES = (
    "softswitch.registrar",
    "softswitch.location",
    "softswitch.bearerpool",
    "softswitch.switch",
    "softswitch.guard",
    "softswitch.db.messages",
)
#: Top-level modules the core must not load, directly or through another module.
IO_MODULES = frozenset({"asyncio", "socket", "selectors", "select", "threading", "sqlalchemy"})

#: Shared packages: each may import itself only (and the standard library).
SHARED = ("softswitch.protocol", "softswitch.daemonkit")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module in a package, or of one module."""
    path = ROOT.joinpath(*package.split("."))
    if path.is_dir():
        for file in sorted(path.rglob("*.py")):
            yield _module_name(file), file
    else:
        yield package, path.with_suffix(".py")


def imported_names(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every module name an import statement in `source` names, relative ones resolved.

    Imports inside functions count too: a lazy import still crosses the seam.
    ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (c may be a submodule).
    """
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def dependency_violations(module: str, imports: set[str]) -> list[str]:
    """The imports of `module` that break the one-way rule, as readable lines."""
    project = [n for n in imports if _within(n, ("softswitch", "bearer", "tests", "bench"))]
    allowed: tuple[str, ...]
    if _within(module, ("bearer",)):
        allowed = ("bearer", *SHARED)
    elif _within(module, SHARED):
        allowed = next((s,) for s in SHARED if _within(module, (s,)))
    elif _within(module, ("softswitch",)):
        allowed = ("softswitch",)
    elif _within(module, ("bench",)):
        allowed = ("softswitch", "bearer", "bench")
    else:
        return []
    # "from softswitch import x" names the bare package: allowed only where
    # the whole of softswitch is (control), not from bearer or a shared package.
    return sorted(
        f"{module} imports {name}"
        for name in project
        if not _within(name, allowed) and not (name == "softswitch" and "softswitch" in allowed)
    )


def io_violations(module: str, imports: set[str]) -> list[str]:
    """Direct imports of I/O modules by a core module."""
    return sorted(f"{module} imports {n}" for n in imports if n.split(".")[0] in IO_MODULES)


def _sources(packages: tuple[str, ...]) -> Iterator[tuple[str, str, bool]]:
    for package in packages:
        for name, path in _modules(package):
            yield name, path.read_text(), path.name == "__init__.py"


def test_the_sans_io_core_imports_no_io_module_itself() -> None:
    found = [
        line
        for name, source, is_pkg in _sources(CORE_PACKAGES + CORE_MODULES)
        for line in io_violations(name, imported_names(name, source, is_pkg))
    ]
    assert found == []


def test_importing_the_sans_io_core_loads_no_io_module() -> None:
    """In a fresh interpreter: what the core brings in beyond logging's own imports."""
    modules = [n for p in CORE_PACKAGES + CORE_MODULES for n, _ in _modules(p)]
    code = (
        "import sys, importlib, logging\n"
        "before = set(sys.modules)\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"io = {sorted(IO_MODULES)!r}\n"
        "print(sorted(n for n in set(sys.modules) - before if n.split('.')[0] in io))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_dependencies_point_one_way() -> None:
    found = [
        line
        for name, source, is_pkg in _sources(("softswitch", "bearer", "bench"))
        for line in dependency_violations(name, imported_names(name, source, is_pkg))
    ]
    assert found == []


def test_the_core_list_names_modules_that_exist() -> None:
    """A renamed module must not silently drop out of the checks above."""
    for name in CORE_PACKAGES + CORE_MODULES + SHARED:
        path = ROOT.joinpath(*name.split("."))
        assert path.is_dir() or path.with_suffix(".py").is_file(), name


# -- the rules themselves can fail -------------------------------------------------


def test_a_forbidden_import_is_reported() -> None:
    cases = {
        ("bearer.relay", "from softswitch.calls import manager"): True,
        ("bearer.relay", "import softswitch.db.schema"): True,
        ("bearer.relay", "from softswitch.protocol import codec"): False,
        ("softswitch.protocol.codec", "from softswitch.daemonkit import config"): True,
        ("softswitch.protocol.codec", "from . import constants"): False,
        ("softswitch.daemonkit.config", "from softswitch.sip.message import parse"): True,
        ("softswitch.switch", "import bearer.relay"): True,
        ("softswitch.switch", "from softswitch.calls import manager"): False,
        ("bench.control", "from tests.audio import tone"): True,
    }
    for (module, line), expected in cases.items():
        found = dependency_violations(module, imported_names(module, line))
        assert bool(found) == expected, (module, line, found)


def test_a_direct_io_import_in_the_core_is_reported() -> None:
    source = "def later():\n    import threading\nfrom asyncio import Queue\n"
    found = io_violations("softswitch.calls.manager", imported_names("x.y", source))
    assert found == [
        "softswitch.calls.manager imports asyncio",
        "softswitch.calls.manager imports asyncio.Queue",
        "softswitch.calls.manager imports threading",
    ]


def test_relative_imports_are_resolved_against_their_package() -> None:
    assert "softswitch.sip.errors" in imported_names(
        "softswitch.sip.grammar", "from .errors import SipError"
    )
    assert "softswitch.sip.errors" in imported_names(
        "softswitch.sip.digest", "from ..errors import SipError", is_package=True
    )

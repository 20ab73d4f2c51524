"""The modules of softswitch/calls import each other one way (issue 10).

The B2BUA used to be one class over mixins whose five files imported each
other in a circle; this keeps the handlers, the table and the outputs a
layered graph: nothing imports ``manager``, and the state, table and
outputs modules import no handler.
"""

from __future__ import annotations

import ast
from pathlib import Path

import softswitch.calls

PACKAGE = Path(softswitch.calls.__file__).parent
HANDLERS = {"setup", "midcall", "failover"}


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "softswitch.calls":
                    names |= {a.name for a in node.names}
                elif node.module.startswith("softswitch.calls."):
                    names.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = names
    return graph


def test_no_module_of_the_calls_package_is_in_an_import_cycle() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*path, name))
        done.add(name)

    for module in graph:
        visit(module, ())


def test_only_the_manager_knows_the_handlers() -> None:
    graph = _imports()
    assert not any("manager" in deps for deps in graph.values())
    for base in ("state", "table", "outputs", "steps", "routes"):
        assert not graph[base] & HANDLERS, f"{base} imports a handler"

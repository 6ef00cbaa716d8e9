"""The package's import graph, read from the source (nothing is imported): no module
imports itself back through any chain, no package either, arrows between packages point
one way, and no production module imports the test helpers in `axchat.testing`.

Every import counts, module-level or inside a function: a function-level import still
ties the two modules together, and a circle of them is one refactor away from failing
at start-up."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import axchat

ROOT = Path(axchat.__file__).resolve().parent
PACKAGE = "axchat"
TEST_HELPERS = "axchat.testing"
PROTOCOL = "axchat.protocol"
# Which packages a package must not reach through any chain of imports. The layers, from
# the bottom: the protocol; the model store (`models`, plain data and files); the actors,
# which load models and speak the protocol; the daemon, which builds the actors. The
# frontends sit beside the daemon and speak only the protocol, through the shared
# top-level modules (client, connection, endpoint). Arrows down are the design: the
# actors read the model store, the daemon builds the actors, and `doctor` (not limited
# here) runs an engine in its self-test as the daemon would.
UNREACHABLE = {
    "axchat.models": {"axchat.actors", "axchat.daemon", "axchat.frontends"},
    "axchat.actors": {"axchat.daemon", "axchat.frontends"},
    "axchat.frontends": {"axchat.actors", "axchat.daemon"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The axchat modules `name` imports: a `from X import Y` names module X.Y where
    that is a module, else X; relative imports are resolved against `name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith(PACKAGE):
                yield target


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def unit(module: str) -> str:
    """The package-level part a module belongs to: its subpackage (`axchat.actors`) or,
    at the top, the module itself (`axchat.endpoint`)."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        graph.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))
    return graph


def path_to(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """One chain of imports from `start` to `goal` (breadth first: a shortest one), or None."""
    came_from: dict[str, str] = {start: start}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt in came_from:
                    continue
                came_from[nxt] = node
                if nxt == goal:
                    chain = [goal]
                    while chain[-1] != start:
                        chain.append(came_from[chain[-1]])
                    return chain[::-1]
                following.append(nxt)
        frontier = following
    return None


def outside_imports(path: Path) -> set[str]:
    """The top-level names of what a file imports from outside `axchat`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found - {PACKAGE}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_should() -> None:
    """The reader itself: a known edge, a function-level one, and a known absence."""
    graph = import_graph()
    assert "axchat.actors.backends.base" in graph["axchat.actors.backends.registry"]
    assert "axchat.actors.backends.aipu.emulator" in graph["axchat.actors.backends.aipu.runtime"]  # in a function
    assert "axchat.actors.backends.torch_engine.load" not in graph["axchat.actors.backends.registry"]  # by name only
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    packages = package_graph()
    assert "axchat.models" in packages["axchat.actors"]
    assert "axchat.endpoint" in packages["axchat.daemon"]  # a top-level module is its own part
    assert path_to({"a": {"b"}, "b": {"c"}, "c": set()}, "a", "c") == ["a", "b", "c"]
    assert path_to({"a": {"b"}, "b": set(), "c": {"a"}}, "a", "c") is None


def test_no_module_in_axchat_imports_itself_back() -> None:
    assert circles(import_graph()) == []


def test_no_production_module_imports_the_test_helpers() -> None:
    offenders = {
        name: sorted(t for t in targets if t == TEST_HELPERS or t.startswith(TEST_HELPERS + "."))
        for name, targets in import_graph().items()
        if not (name == TEST_HELPERS or name.startswith(TEST_HELPERS + "."))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_package_in_axchat_imports_itself_back() -> None:
    assert circles(package_graph()) == []


def test_arrows_between_packages_point_down() -> None:
    graph = package_graph()
    upward = {
        f"{start} -> {goal}": " -> ".join(chain)
        for start, goals in UNREACHABLE.items()
        for goal in sorted(goals)
        if (chain := path_to(graph, start, goal)) is not None
    }
    assert upward == {}


def test_the_protocol_imports_only_msgspec_and_the_standard_library() -> None:
    """`axchat ask` imports it and must start in milliseconds."""
    graph = package_graph()
    assert graph.get(PROTOCOL, set()) == set()
    allowed = set(sys.stdlib_module_names) | {"msgspec"}
    files = sorted(ROOT.joinpath("protocol").rglob("*.py"))
    assert files
    assert {str(f.relative_to(ROOT)): sorted(outside_imports(f) - allowed) for f in files if outside_imports(f) - allowed} == {}

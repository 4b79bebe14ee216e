"""List the import cycles of ``src/wiremesh`` and check the arrows between its folders.

Run ``python tools/import_cycles.py`` (``make lint`` does). It reads every module with
:mod:`ast`, imports none, and builds the graph of ``wiremesh.*`` imports, each edge of one
of three kinds:

- ``module``: run when the importing module is imported (top level, a class body, a
  ``try`` at top level). A cycle of these alone is one Python must resolve at import time.
- ``type-checking``: under ``if TYPE_CHECKING:``, read by mypy only.
- ``function``: inside a function body, run when the function first runs.

The last two are how a cycle hides: the import that would fail at import time is moved
where Python does not see it, and the two modules still know each other. So a cycle here is
a strongly connected component of more than one module in the graph of *all* edges; each is
printed with a shortest cycle through it (every step marked with its kind, file and line)
and the hidden imports inside it, the ones to remove.

The exit status is 1 when a cycle is not covered by :data:`ALLOWED` (a cycle is covered when
all its modules are in one entry: a cycle that shrinks stays covered, one that grows is new),
when an entry of :data:`ALLOWED` covers no cycle any more (remove it: the list only
shrinks), or when an import breaks one of the :data:`RULES` between folders (the arrows that
``ARCHITECTURE.md`` draws). Parent packages are not edges: ``from wiremesh.a.b import c``
points to ``wiremesh.a.b`` (or to ``wiremesh.a.b.c`` when that is a module), not to
``wiremesh.a``, whose ``__init__`` Python also runs; a package's own ``__init__`` imports
are edges like any other module's.

``--folders`` prints, for each folder, the folders it imports and through which kinds.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "wiremesh"

#: the kinds of an edge, from the strongest (run at import time) to the weakest (never run)
KINDS = ("module", "function", "type-checking")

#: the cycles known today, each with why it is still there and what removes it; a cycle is
#: allowed when all its modules are in one entry. The list only shrinks: an entry that
#: covers no cycle any more fails the check until it is removed.
ALLOWED: dict[frozenset[str], str] = {}

#: what each folder may import of wiremesh besides itself, as module or folder names
#: (module-level, TYPE_CHECKING and function imports alike): the arrows of ARCHITECTURE.md
#: that hold today. A folder is ``wiremesh.x`` for ``src/wiremesh/x/``; one not named here
#: is not checked.
RULES: dict[str, frozenset[str]] = {
    "wiremesh.errors": frozenset(),
    "wiremesh.proto": frozenset(),
    "wiremesh.core": frozenset({"wiremesh.errors"}),
    "wiremesh.observability": frozenset({"wiremesh.core", "wiremesh.errors"}),
    "wiremesh.registry": frozenset(
        {
            "wiremesh.core",
            "wiremesh.errors",
            "wiremesh.observability",
            "wiremesh.proto",
            # the gRPC plumbing of every adapter: channel options, credentials
            "wiremesh.transport.grpc_core",
            "wiremesh.transport.tls",
            # the embedded registry's process also serves the embedded channel engine
            "wiremesh.channels.channel_server",
        }
    ),
    "wiremesh.transport": frozenset(
        {
            "wiremesh.context",
            "wiremesh.core",
            "wiremesh.errors",
            "wiremesh.observability",
            "wiremesh.proto",
            "wiremesh.registry",
            "wiremesh.service",
            "wiremesh.middleware",
        }
    ),
}


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    kind: str
    #: the importing file, relative to the repository root, and the line of the import
    path: str
    line: int


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``src/wiremesh/a/b.py`` -> ``wiremesh.a.b``; ``src/wiremesh/a/__init__.py`` ->
    ``wiremesh.a``."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by name (``.py`` files; generated ``.pyi`` are not
    modules)."""
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with its kind."""

    def visit(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            # the else branch of ``if TYPE_CHECKING:`` is the one that runs
            for statement in node.body:
                yield from visit(statement, "type-checking")
            for statement in node.orelse:
                yield from visit(statement, kind)
        else:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and kind == "module":
                # run when the function first runs (and so for a class defined inside it)
                kind = "function"
            for child in ast.iter_child_nodes(node):
                yield from visit(child, kind)

    return visit(tree, "module")


def _targets(
    node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: Mapping[str, Path]
) -> Iterator[str]:
    """The wiremesh modules one import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "wiremesh" or alias.name.startswith("wiremesh."):
                yield _nearest_module(alias.name, modules)
        return
    if node.level:
        # relative: ``from . import x`` in a.b (a module) or in a.b.__init__ (a package)
        base = importer.split(".")
        drop = node.level - 1 if is_package else node.level
        base = base[: len(base) - drop] if drop else base
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    if source != "wiremesh" and not source.startswith("wiremesh."):
        return
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        yield submodule if submodule in modules else _nearest_module(source, modules)


def _nearest_module(name: str, modules: Mapping[str, Path]) -> str:
    """``name`` if it is a module, else its nearest parent that is (``import a.b.c`` where
    ``c`` is an attribute)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def read_edges(modules: Mapping[str, Path], root: Path = ROOT) -> list[Edge]:
    """Every import of one wiremesh module by another (self-imports left out)."""
    edges = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, kind in _imports(tree):
            for imported in _targets(node, importer, is_package, modules):
                if imported != importer:
                    relative = path.relative_to(root).as_posix()
                    edges.append(Edge(importer, imported, kind, relative, node.lineno))
    return edges


def strongest(edges: Iterable[Edge]) -> dict[tuple[str, str], Edge]:
    """One edge per (importer, imported): the strongest kind, then the first line."""
    best: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        key = (edge.importer, edge.imported)
        held = best.get(key)
        if held is None or (KINDS.index(edge.kind), edge.line) < (
            KINDS.index(held.kind),
            held.line,
        ):
            best[key] = edge
    return best


def components(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node, each sorted, in order
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def shortest_cycle(members: Sequence[str], graph: Mapping[str, Iterable[str]]) -> list[str]:
    """A shortest cycle through the component (first module repeated at the end), the
    first in name order among the shortest."""
    inside = set(members)
    best: list[str] = []
    for start in sorted(members):
        parent: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if start in graph.get(node, ()):
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                cycle = [*reversed(path), start]
                if not best or len(cycle) < len(best):
                    best = cycle
                break
            for child in sorted(graph.get(node, ())):
                if child in inside and child not in parent and child != start:
                    parent[child] = node
                    queue.append(child)
    return best


def folder(module: str) -> str:
    """The folder a module lives in: ``wiremesh.a`` for ``wiremesh.a.b`` and for the
    package ``wiremesh.a`` itself; top-level modules are their own (``wiremesh.errors``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def broken_rules(edges: Iterable[Edge], rules: Mapping[str, frozenset[str]] = RULES) -> list[Edge]:
    """The imports a folder's rule does not allow."""
    broken = []
    for edge in edges:
        allowed = rules.get(folder(edge.importer))
        if allowed is None or folder(edge.imported) == folder(edge.importer):
            continue
        if not any(
            edge.imported == name or edge.imported.startswith(name + ".") for name in allowed
        ):
            broken.append(edge)
    return broken


@dataclass(frozen=True, slots=True)
class Report:
    """What the check found; ``ok`` when nothing fails it."""

    #: every cycle (all kinds of edges), each a sorted list of modules
    cycles: list[list[str]]
    #: the cycles made of module-level imports alone
    import_time: list[list[str]]
    edges: dict[tuple[str, str], Edge]
    #: cycles that no entry of the allow-list covers
    new: list[list[str]]
    #: allow-list entries that cover no cycle
    stale: list[frozenset[str]]
    #: imports against the folders' rules
    broken: list[Edge]

    @property
    def ok(self) -> bool:
        return not (self.new or self.stale or self.broken)


def check(
    package: Path = PACKAGE,
    allowed: Mapping[frozenset[str], str] = ALLOWED,
    rules: Mapping[str, frozenset[str]] = RULES,
) -> Report:
    """Read the package at ``package`` (``src/wiremesh`` of some tree) and check it."""
    modules = read_modules(package)
    edges = read_edges(modules, package.parent.parent)
    best = strongest(edges)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    runtime: dict[str, set[str]] = {name: set() for name in modules}
    for (importer, imported), edge in best.items():
        graph[importer].add(imported)
        if edge.kind == "module":
            runtime[importer].add(imported)
    cycles = components(graph)
    new = [cycle for cycle in cycles if not any(set(cycle) <= entry for entry in allowed)]
    stale = [entry for entry in allowed if not any(set(cycle) <= entry for cycle in cycles)]
    return Report(
        cycles=cycles,
        import_time=components(runtime),
        edges=best,
        new=new,
        stale=stale,
        broken=broken_rules(edges, rules),
    )


def render(report: Report, allowed: Mapping[frozenset[str], str] = ALLOWED) -> str:
    graph: dict[str, set[str]] = {}
    for importer, imported in report.edges:
        graph.setdefault(importer, set()).add(imported)
    lines = []
    for number, cycle in enumerate(report.cycles, 1):
        at_import = [c for c in report.import_time if set(c) <= set(cycle)]
        how = "at import time" if at_import else "hidden (type-checking or function imports)"
        lines.append(f"cycle {number}: {len(cycle)} modules, {how}")
        for module in cycle:
            lines.append(f"    {module}")
        lines.append("  a shortest cycle:")
        path = shortest_cycle(cycle, graph)
        for importer, imported in itertools.pairwise(path):
            lines.append(_step(report.edges[(importer, imported)]))
        members = set(cycle)
        hidden = [
            edge
            for (importer, imported), edge in sorted(report.edges.items())
            if importer in members and imported in members and edge.kind != "module"
        ]
        if hidden:
            lines.append("  the hidden imports inside it:")
            lines.extend(_step(edge) for edge in hidden)
        reason = next((why for entry, why in allowed.items() if set(cycle) <= entry), None)
        lines.append(f"  allowed: {reason}" if reason else "  NOT ALLOWED: a new cycle")
        lines.append("")
    for entry in report.stale:
        lines.append(f"stale allow-list entry (no cycle left in it, remove it): {sorted(entry)}")
    for edge in report.broken:
        lines.append(
            f"{edge.path}:{edge.line}: {folder(edge.importer)} may not import "
            f"{edge.imported} ({edge.kind} import; see RULES and ARCHITECTURE.md)"
        )
    total = len(report.cycles)
    lines.append(
        f"{total} cycle{'s' * (total != 1)} ({len(report.import_time)} at import time), "
        f"{len(report.new)} not allowed, {len(report.stale)} stale allow-list "
        f"entr{'ies' if len(report.stale) != 1 else 'y'}, "
        f"{len(report.broken)} import{'s' * (len(report.broken) != 1)} against the rules"
    )
    return "\n".join(lines)


def _step(edge: Edge) -> str:
    return f"    {edge.importer} -> {edge.imported}  [{edge.kind}, {edge.path}:{edge.line}]"


def render_folders(report: Report) -> str:
    """Folder -> the folders it imports, with the kinds of the imports."""
    arrows: dict[str, dict[str, set[str]]] = {}
    for (importer, imported), edge in report.edges.items():
        source, target = folder(importer), folder(imported)
        if source != target:
            arrows.setdefault(source, {}).setdefault(target, set()).add(edge.kind)
    lines = []
    for source in sorted(arrows):
        targets = ", ".join(
            target + ("" if "module" in kinds else f" ({'/'.join(sorted(kinds))})")
            for target, kinds in sorted(arrows[source].items())
        )
        lines.append(f"{source} -> {targets}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--folders", action="store_true", help="print the arrows between folders instead"
    )
    parser.add_argument(
        "--package",
        type=Path,
        default=PACKAGE,
        help="the package to read (default: %(default)s), e.g. that of another checkout",
    )
    args = parser.parse_args(argv)
    report = check(args.package.resolve())
    if args.folders:
        print(render_folders(report))
        return 0
    print(render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

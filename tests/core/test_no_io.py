"""``core/`` does no I/O and reads no clock or random source it was not given: none of its
modules imports the modules that would let it (``tools/import_cycles.py`` checks the
other half: it imports nothing of wiremesh but ``core/`` and ``errors``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "wiremesh" / "core"

#: I/O, clocks, randomness and the transports' own libraries
FORBIDDEN = frozenset(
    {
        "asyncio",
        "grpc",
        "os",
        "prometheus_client",
        "random",
        "secrets",
        "selectors",
        "socket",
        "ssl",
        "subprocess",
        "threading",
        "time",
        "urllib",
        "uuid",
    }
)


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda path: path.name)
def test_a_core_module_imports_nothing_that_does_io(path: Path) -> None:
    found = imported(ast.parse(path.read_text(encoding="utf-8"))) & FORBIDDEN
    assert not found, f"core/{path.name} imports {sorted(found)}"


def test_the_check_sees_an_import_inside_a_function() -> None:
    tree = ast.parse("def f():\n    import time\n    from asyncio import sleep\n")
    assert imported(tree) >= {"time", "asyncio"}


def test_importing_every_core_module_loads_no_grpc_prometheus_or_asyncio() -> None:
    """What ``core/`` imports, ``wiremesh.errors`` included, brings none of them along."""
    import subprocess
    import sys

    modules = ", ".join(f"wiremesh.core.{path.stem}" for path in sorted(CORE.glob("[!_]*.py")))
    script = (
        f"import sys, {modules}\n"
        "print(sorted(m for m in ('grpc', 'prometheus_client', 'asyncio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"

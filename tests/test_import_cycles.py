"""``tools/import_cycles.py``: the package has no import cycle outside its allow-list, and
``core/`` imports nothing of wiremesh but ``core/`` and ``errors``.

When the first test fails, the script's output (in the failure) names the cycle and the
imports that close it: remove one of them, or, when a cycle goes away, its allow-list entry.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "import_cycles.py"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    name = "wiremesh_tools_import_cycles"
    spec = importlib.util.spec_from_file_location(name, TOOL)
    assert spec is not None and spec.loader is not None, f"cannot load {TOOL}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str]) -> Path:
    """A package ``wiremesh`` under ``root/src`` made of ``files`` (path: source)."""
    package = root / "src" / "wiremesh"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def test_the_package_has_no_cycle_outside_the_allow_list() -> None:
    run = subprocess.run(
        [sys.executable, str(TOOL)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_core_imports_only_core_and_errors(tool: ModuleType) -> None:
    modules = tool.read_modules()
    assert "wiremesh.core.deadline" in modules
    outside = [
        f"{edge.path}:{edge.line}: {edge.imported}"
        for edge in tool.read_edges(modules)
        if edge.importer.startswith("wiremesh.core")
        and not edge.imported.startswith("wiremesh.core")
        and edge.imported != "wiremesh.errors"
    ]
    assert outside == []


def test_a_cycle_hidden_under_type_checking_or_in_a_function_is_found(
    tool: ModuleType, tmp_path: Path
) -> None:
    package = write(
        tmp_path,
        {
            "a.py": "from wiremesh.b import B\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from wiremesh.a import A\n"
            ),
            "c.py": "def later():\n    from wiremesh import d\n",
            "d.py": "import wiremesh.c\n",
            "e.py": "from wiremesh.a import A\n",  # reaches the cycle, is not in it
        },
    )
    report = tool.check(package, allowed={}, rules={})
    assert report.cycles == [["wiremesh.a", "wiremesh.b"], ["wiremesh.c", "wiremesh.d"]]
    assert report.import_time == []
    assert report.new == report.cycles
    assert not report.ok
    kinds = {key: edge.kind for key, edge in report.edges.items()}
    assert kinds[("wiremesh.b", "wiremesh.a")] == "type-checking"
    assert kinds[("wiremesh.c", "wiremesh.d")] == "function"
    assert kinds[("wiremesh.d", "wiremesh.c")] == "module"


def test_a_cycle_at_import_time_is_one_too(tool: ModuleType, tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "x/__init__.py": "from .one import One\n",
            "x/one.py": "from wiremesh.x.two import Two\n",
            "x/two.py": "from . import one\n",
        },
    )
    report = tool.check(package, allowed={}, rules={})
    assert report.cycles == [["wiremesh.x.one", "wiremesh.x.two"]]
    assert report.import_time == report.cycles
    graph = {"wiremesh.x.one": {"wiremesh.x.two"}, "wiremesh.x.two": {"wiremesh.x.one"}}
    assert tool.shortest_cycle(report.cycles[0], graph) == [
        "wiremesh.x.one",
        "wiremesh.x.two",
        "wiremesh.x.one",
    ]


def test_the_allow_list_covers_a_cycle_that_shrinks_but_not_one_that_grows(
    tool: ModuleType, tmp_path: Path
) -> None:
    package = write(
        tmp_path,
        {
            "a.py": "from wiremesh import b\n",
            "b.py": "from wiremesh import c\n",
            "c.py": "def f():\n    from wiremesh import a\n",
        },
    )
    three = frozenset({"wiremesh.a", "wiremesh.b", "wiremesh.c"})
    assert tool.check(package, allowed={three: "why"}, rules={}).ok
    larger = frozenset({*three, "wiremesh.d"})
    assert tool.check(package, allowed={larger: "why"}, rules={}).ok
    two = frozenset({"wiremesh.a", "wiremesh.b"})
    report = tool.check(package, allowed={two: "why"}, rules={})
    assert report.new == [sorted(three)]
    assert report.stale == [two]


def test_an_allow_list_entry_with_no_cycle_left_fails_the_check(
    tool: ModuleType, tmp_path: Path
) -> None:
    package = write(tmp_path, {"a.py": "from wiremesh import b\n", "b.py": ""})
    entry = frozenset({"wiremesh.a", "wiremesh.b"})
    report = tool.check(package, allowed={entry: "fixed since"}, rules={})
    assert report.cycles == []
    assert report.stale == [entry]
    assert not report.ok


def test_an_import_against_a_folders_rule_fails_the_check(tool: ModuleType, tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "errors.py": "",
            "core/__init__.py": "",
            "core/clock.py": "from wiremesh.errors import E\nfrom wiremesh.core import names\n",
            "core/names.py": "def f():\n    import wiremesh.transport.grpc\n",
            "transport/__init__.py": "",
            "transport/grpc.py": "from wiremesh.core.clock import now\n",
        },
    )
    rules = {"wiremesh.core": frozenset({"wiremesh.errors"})}
    report = tool.check(package, allowed={}, rules=rules)
    assert [(edge.importer, edge.imported, edge.kind) for edge in report.broken] == [
        ("wiremesh.core.names", "wiremesh.transport.grpc", "function")
    ]

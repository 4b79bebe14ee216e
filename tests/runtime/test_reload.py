"""Hot reload (``wiremesh run --reload``): the decisions without I/O, then real meshes whose
service's file is edited while a client calls it."""

from __future__ import annotations

import asyncio
import doctest
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.meshes import (
    FIXTURES,
    WIREMESH,
    RunningMesh,
    eventually,
    mesh_client,
    process_exists,
    serving,
    serving_nodes,
)
from wiremesh.errors import ConfigError
from wiremesh.runtime import reload as reload_module
from wiremesh.runtime.config import config_from_text
from wiremesh.runtime.reload import (
    Burst,
    Reloader,
    SourceTree,
    imports_of,
    is_source,
    services_to_reload,
)
from wiremesh.runtime.supervisor import Supervisor

ROOT = Path("/srv/shop")


def test_the_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(reload_module).failed == 0


# ------------------------------------------------------------------------- which files


def reader(files: dict[str, str]) -> Callable[[Path], str | None]:
    """A SourceTree's ``read`` over ``files`` (paths relative to ROOT)."""
    return lambda path: (
        files.get(str(path.relative_to(ROOT))) if path.is_relative_to(ROOT) else None
    )


SHOP = {
    "pricing.py": "import json\nfrom shop import rates\n",
    "billing.py": "def charge():\n    from shop.rates import RATE\n    return RATE\n",
    "shop/__init__.py": "",
    "shop/rates.py": "from .tax import TAX\nRATE = 1\n",
    "shop/tax.py": "TAX = 0.2\n",
    "shop/unused.py": "",
    "tests/test_pricing.py": "import pricing\n",
}


def test_a_service_s_files_are_its_module_and_what_it_imports_at_any_depth() -> None:
    tree = SourceTree([ROOT], read=reader(SHOP))
    assert tree.files_of("pricing") == {
        ROOT / "pricing.py",
        ROOT / "shop/__init__.py",
        ROOT / "shop/rates.py",
        ROOT / "shop/tax.py",  # a relative import in an imported module
    }
    # an import inside a function counts; json is not under the roots
    assert ROOT / "shop/tax.py" in tree.files_of("billing")
    assert ROOT / "shop/unused.py" not in tree.files_of("billing")


def test_imports_by_a_literal_name_and_relative_ones_are_followed() -> None:
    assert imports_of("import importlib\nimportlib.import_module('plugins.fx')", "svc") >= {
        "plugins",
        "plugins.fx",
    }
    assert imports_of("from .. import money\nfrom ..tax import vat", "shop.a.b") == {
        "shop",
        "shop.money",
        "shop.tax",
        "shop.tax.vat",
    }
    assert imports_of("from . import rates", "shop", package=True) == {"shop", "shop.rates"}
    # above the top package: nothing (the import would fail)
    assert imports_of("from . import x", "toplevel") == frozenset()


def test_a_helper_shared_by_two_services_reloads_both_and_an_unknown_file_reloads_all() -> None:
    tree = SourceTree([ROOT], read=reader(SHOP))
    sources = {name: tree.files_of(name) for name in ("pricing", "billing")}
    assert services_to_reload([ROOT / "pricing.py"], sources) == (["pricing"], [])
    assert services_to_reload([ROOT / "shop/tax.py"], sources) == (["pricing", "billing"], [])
    # a test, or a module imported by a name made at run time: no service's, as far as
    # the source shows, so the caller reloads every service
    unclaimed = ROOT / "tests/test_pricing.py"
    assert services_to_reload([unclaimed], sources) == ([], [unclaimed])


def test_a_file_that_does_not_parse_is_listed_and_keeps_its_last_imports() -> None:
    files = dict(SHOP)
    tree = SourceTree([ROOT], read=reader(files))
    good = tree.files_of("pricing")
    files["shop/rates.py"] = "from .tax import TAX\nRATE = (\n"
    tree.forget([ROOT / "shop/rates.py"])
    assert tree.files_of("pricing") == good
    (message,) = tree.broken.values()
    assert message.startswith(f"{ROOT / 'shop/rates.py'}:2: ")
    files["shop/rates.py"] = "from .tax import TAX\nfrom . import unused\n"
    tree.forget([ROOT / "shop/rates.py"])
    assert tree.files_of("pricing") == good | {ROOT / "shop/unused.py"}
    assert tree.broken == {}


def test_only_python_sources_outside_tool_data_and_editor_files_count() -> None:
    data = ROOT / ".wiremesh"
    roots = [ROOT]
    assert is_source(ROOT / "pricing.py", roots, [data])
    assert is_source(ROOT / "shop" / "rates.py", roots, [data])
    for path in (
        "pricing.py~",
        "pricing.py.swp",
        ".pricing.py.swp",
        "#pricing.py#",
        ".#pricing.py",
        "__pycache__/pricing.cpython-311.pyc",
        "shop/__pycache__/rates.py",
        ".venv/lib/python3.11/site-packages/x.py",
        "venv/lib/x.py",
        "node_modules/x.py",
        ".git/hooks/x.py",
        ".wiremesh/data/pricing/x.py",
        "wiremesh.toml",
    ):
        assert not is_source(ROOT / path, roots, [data]), path
    assert not is_source(Path("/elsewhere/x.py"), roots)
    data_elsewhere = Path("/var/lib/shop")
    assert not is_source(data_elsewhere / "x.py", [Path("/var/lib")], [data_elsewhere])
    # a mesh folder inside a hidden folder is watched all the same
    assert is_source(Path("/home/ada/.work/shop/pricing.py"), [Path("/home/ada/.work/shop")])


def test_a_burst_of_changes_is_one_reload_after_a_quiet_moment() -> None:
    burst = Burst(quiet=0.3, longest=3.0)
    assert burst.due_at is None and burst.take(now=0.0) is None
    burst.changed(["a.py"], now=10.0)
    burst.changed(["b.py", "a.py"], now=10.25)
    assert burst.take(now=10.5) is None  # b.py was saved 0.25 s ago
    assert burst.take(now=10.55) == {"a.py", "b.py"}
    assert burst.due_at is None
    burst.changed([], now=11.0)  # nothing changed: no burst
    assert burst.due_at is None


def test_a_burst_that_goes_on_reloads_after_the_longest_wait() -> None:
    burst = Burst(quiet=0.3, longest=3.0)
    for step in range(20):
        burst.changed([f"{step}.py"], now=10.0 + step * 0.2)
        if burst.take(now=10.0 + step * 0.2) is not None:
            break
    assert 10.0 + step * 0.2 >= 13.0 - 1e-9  # due 3 s after its first change
    assert step < 19


# ------------------------------------------------------------------------- the reloader


class Host:
    """A supervisor as a Reloader sees it: replace() says what it is told to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.replaced: list[str] = []
        self.fail: set[str] = set()

    def echo(self, line: str) -> None:
        self.lines.append(line)

    async def replace(self, service: str) -> str | None:
        self.replaced.append(service)
        return "its new node pricing-0000 exited with code 78" if service in self.fail else None


def shop_folder(folder: Path) -> tuple[Reloader, Host]:
    for name, text in SHOP.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "wiremesh.toml").write_text("")
    host = Host()
    reloader = Reloader(
        host,
        {"pricing": "pricing", "billing": "billing"},
        roots=[folder],
        skip=[folder / ".wiremesh"],
        root=folder,
        config_file=folder / "wiremesh.toml",
    )
    return reloader, host


async def test_the_reloader_replaces_the_services_a_change_concerns(tmp_path: Path) -> None:
    reloader, host = shop_folder(tmp_path)
    sources = reloader.sources()
    sources = await reloader.reload({tmp_path / "pricing.py"}, sources)
    assert host.replaced == ["pricing"]
    assert host.lines == ["reload: pricing.py changed: reloading pricing"]
    sources = await reloader.reload({tmp_path / "shop/tax.py"}, sources)
    assert host.replaced == ["pricing", "pricing", "billing"]
    # a new import is followed at once: unused.py is billing's now
    (tmp_path / "billing.py").write_text("from shop import unused\n")
    sources = await reloader.reload({tmp_path / "billing.py"}, sources)
    host.replaced.clear()
    await reloader.reload({tmp_path / "shop/unused.py"}, sources)
    assert host.replaced == ["billing"]


async def test_a_file_that_does_not_compile_reloads_nothing_until_a_fix(tmp_path: Path) -> None:
    reloader, host = shop_folder(tmp_path)
    sources = reloader.sources()
    (tmp_path / "shop/rates.py").write_text("RATE = (\n")
    sources = await reloader.reload({tmp_path / "shop/rates.py"}, sources)
    assert host.replaced == []
    (line,) = host.lines
    assert line.startswith("reload: shop/rates.py:1: ")
    assert line.endswith(
        "not reloading pricing, billing: the nodes running go on (save a fix to reload)"
    )
    # another file changes: the broken one still holds both back
    sources = await reloader.reload({tmp_path / "pricing.py"}, sources)
    assert host.replaced == []
    # the fix reloads every service that was held back
    (tmp_path / "shop/rates.py").write_text("RATE = 2\n")
    await reloader.reload({tmp_path / "shop/rates.py"}, sources)
    assert host.replaced == ["pricing", "billing"]


async def test_a_failed_reload_is_tried_again_at_the_next_change(tmp_path: Path) -> None:
    reloader, host = shop_folder(tmp_path)
    sources = reloader.sources()
    host.fail = {"pricing"}
    sources = await reloader.reload({tmp_path / "pricing.py"}, sources)
    assert host.lines[-1] == (
        "reload of pricing failed (pricing.py changed): its new node pricing-0000 exited "
        "with code 78 (save a fix to try again)"
    )
    host.fail = set()
    await reloader.reload({tmp_path / "billing.py"}, sources)
    assert host.replaced == ["pricing", "pricing", "billing"]  # in the order of [services]
    assert reloader.pending == set()


async def test_an_unknown_file_reloads_every_service_and_the_configuration_only_says_so(
    tmp_path: Path,
) -> None:
    reloader, host = shop_folder(tmp_path)
    sources = reloader.sources()
    sources = await reloader.reload({tmp_path / "tests/test_pricing.py"}, sources)
    assert host.replaced == ["pricing", "billing"]
    host.replaced.clear()
    await reloader.reload({tmp_path / "wiremesh.toml"}, sources)
    assert host.replaced == []
    assert "restart 'wiremesh run' to apply it" in host.lines[-1]


def test_a_changed_file_s_byte_code_is_removed(tmp_path: Path) -> None:
    reloader, _ = shop_folder(tmp_path)
    cached = Path(importlib.util.cache_from_source(str(tmp_path / "pricing.py")))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"stale")
    asyncio.run(reloader.reload({tmp_path / "pricing.py"}, reloader.sources()))
    assert not cached.exists()


# ------------------------------------------------------------------------- where it runs


REDIS_MESH = f"""\
[mesh]
name = "shop"
python_path = ["{FIXTURES}"]
[registry]
backend = "redis"
url = "redis://127.0.0.1:1/0"
[broker]
url = "amqp://guest:guest@127.0.0.1:1/"
[services.echo]
target = "svc_echo:Echo"
"""


def test_reload_is_refused_with_a_redis_registry(tmp_path: Path) -> None:
    config = config_from_text(REDIS_MESH, root=tmp_path)
    with pytest.raises(ConfigError, match="--reload is for development on one machine"):
        Supervisor(config, reload=True).check()
    (tmp_path / "wiremesh.toml").write_text(REDIS_MESH)
    done = subprocess.run(
        [WIREMESH, "run", "--reload"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2
    assert "cannot be used with a Redis registry" in done.stderr


def test_without_watchfiles_reload_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles fails
    config = config_from_text(REDIS_MESH.split("[registry]")[0], root=tmp_path)
    with pytest.raises(ConfigError, match=r"pip install 'wiremesh\[reload\]'"):
        Supervisor(config, reload=True).check()


# ------------------------------------------------------------------------- real meshes

MESH = """\
[mesh]
name = "reload"
drain_grace = 2
default_timeout = 5

[restart]
initial_backoff = 0.2
max_backoff = 1

[services.pricing]
target = "pricing:Pricing"
replicas = {replicas}
"""

PRICING = """\
import asyncio

from wiremesh import Context, Service, rpc

VERSION = {version!r}


class Pricing(Service):
    name = "pricing"

    @rpc  # not idempotent: a call is never run twice, so none may be lost either
    async def quote(self, ctx: Context, sku: str) -> dict:
        await asyncio.sleep(0.02)  # in flight while its node is told to drain
        return {{"sku": sku, "version": VERSION, "node": ctx.node_id}}
{tail}"""


def pricing(version: str, tail: str = "") -> str:
    return PRICING.format(version=version, tail=tail)


def mesh_folder(folder: Path, replicas: int) -> Path:
    (folder / "wiremesh.toml").write_text(MESH.format(replicas=replicas))
    (folder / "pricing.py").write_text(pricing("v1"))
    return folder


async def test_a_changed_service_is_replaced_node_by_node_and_no_call_is_lost(
    tmp_path: Path,
) -> None:
    mesh_folder(tmp_path, replicas=2)
    with RunningMesh(tmp_path, "--reload") as mesh:
        client = await mesh_client(tmp_path)
        try:
            old = {n.node_id for n in await serving_nodes(client, "pricing", 2)}
            await mesh.line(r"^reload: watching the \.py files under \.")
            replies: list[dict[str, str]] = []
            views: list[frozenset[str]] = []  # the serving nodes, as the client sees them
            reloaded = asyncio.Event()

            async def call_on(more: int = 50) -> None:
                # until the reload is over, then some more calls
                while not reloaded.is_set() or more > 0:
                    if reloaded.is_set():
                        more -= 1
                    replies.append(await client.call("pricing.quote", "A-1"))
                    views.append(frozenset(n.node_id for n in serving(client, "pricing")))

            callers = [asyncio.create_task(call_on()) for _ in range(4)]
            await eventually(lambda: len(replies) > 20 or any(c.done() for c in callers), 10)
            (tmp_path / "pricing.py").write_text(pricing("v2"))
            await mesh.line(r"^reloaded pricing$", timeout=25)
            reloaded.set()
            await asyncio.wait_for(asyncio.gather(*callers), 20)  # each call succeeded
            new = {n.node_id for n in await serving_nodes(client, "pricing", 2)}
            started = mesh.node_pids()
            # the old nodes drain and stop; the mesh runs on
            gone = [started[node_id] for node_id in old]
            await eventually(lambda: not any(process_exists(pid) for pid in gone), 10)
        finally:
            await client.close()
        lines = mesh.output.splitlines()
    assert len(replies) >= 200
    assert replies[0]["version"] == "v1"
    assert all(reply["version"] == "v2" for reply in replies[-20:])
    assert {r["node"] for r in replies if r["version"] == "v2"} == new
    assert not new & old
    # one node at a time: never fewer serving nodes than before, and a moment with an old
    # and a new one serving side by side
    assert all(len(view) >= 2 for view in views)
    assert any(len(view & old) == 1 and len(view - old) >= 1 for view in views)
    steps = [line for line in lines if line.startswith(("reloading pricing", "pricing-"))]
    progress = [line for line in steps if line.startswith("reloading")]
    assert progress == ["reloading pricing (1/2)", "reloading pricing (2/2)"]
    replaced = [line for line in steps if ": replaced by " in line]
    assert len(replaced) == 2
    assert {line.split(":")[0] for line in replaced} == old
    # each old node was told to drain once its successor served
    for line in replaced:
        successor = line.split("replaced by ")[1].split(";")[0]
        serves = next(i for i, s in enumerate(steps) if s.startswith(f"{successor}: serving"))
        assert serves < steps.index(line)
    assert set(started) == old | new
    # drained alone: an old node waited for none of the nodes serving on beside it
    assert "still working" not in mesh.output


async def test_a_change_that_breaks_the_service_keeps_the_old_node_until_a_fix(
    tmp_path: Path,
) -> None:
    mesh_folder(tmp_path, replicas=1)
    source = tmp_path / "pricing.py"
    with RunningMesh(tmp_path, "--reload") as mesh:
        client = await mesh_client(tmp_path)
        try:
            (node,) = await serving_nodes(client, "pricing", 1)
            await mesh.line(r"^reload: watching the \.py files under \.")

            # a syntax error: no node is started, one line names the file
            source.write_text(pricing("v2").replace("VERSION = ", "VERSION = ("))
            await mesh.line(r"^reload: pricing\.py:\d+: .+; not reloading pricing: ")
            assert (await client.call("pricing.quote", "A-1"))["version"] == "v1"

            # it compiles, but importing it fails: the new node is given up
            source.write_text(pricing("v2", tail="\nraise RuntimeError('half done')\n"))
            failed = await mesh.line(
                r"^reload of pricing failed \(pricing\.py changed\): its new node "
                r"(pricing-\w+) exited with code \d+ before serving .*; "
                rf"{node.node_id} keeps serving \(save a fix to try again\)$",
                timeout=20,
            )
            assert failed.group(1) != node.node_id
            assert [n.node_id for n in serving(client, "pricing")] == [node.node_id]
            assert (await client.call("pricing.quote", "A-1"))["version"] == "v1"

            # the fix is reloaded
            source.write_text(pricing("v3"))
            await mesh.line(r"^reloaded pricing$", timeout=20)
            reply = await client.call("pricing.quote", "A-1")
            assert reply["version"] == "v3"
            assert reply["node"] not in (node.node_id, failed.group(1))
        finally:
            await client.close()
    assert len(mesh.node_pids()) == 3  # the first, the one given up, the fixed one

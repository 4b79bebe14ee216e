"""``wiremesh.pytest_plugin``: async tests with nothing configured, beside the plugins that
run async tests of their own, and the fixtures that start services.

Each case is a test file run by a pytest of its own (a subprocess, in a folder with no
configuration), as in a user's project where pytest found the plugin by its entry point.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

#: what runs everywhere, whichever plugin runs it
EVERYWHERE = """
import asyncio
import contextvars

import pytest

from wiremesh import Context, Service, rpc

seen = contextvars.ContextVar("seen", default="")
log = []
kept = {}


class Echo(Service):
    name = "echo"

    @rpc
    async def echo(self, ctx: Context, text: str) -> str:
        return text


@pytest.fixture
async def loop_of_fixture():
    seen.set("set by the fixture")
    return asyncio.get_running_loop()


@pytest.fixture
async def resource():
    loop = asyncio.get_running_loop()
    log.append("up")
    yield loop
    assert asyncio.get_running_loop() is loop
    log.append("down")


async def test_a_test_and_its_fixtures_share_a_loop_and_a_context(loop_of_fixture, resource):
    assert asyncio.get_running_loop() is loop_of_fixture is resource
    assert seen.get() == "set by the fixture"


def test_an_async_generator_fixture_is_torn_down_in_its_loop():
    assert log == ["up", "down"]


def test_a_plain_test_gets_async_fixtures(loop_of_fixture):
    assert not loop_of_fixture.is_closed()


class TestInAClass:
    @pytest.fixture
    async def mine(self):
        return self

    async def test_a_fixture_method_is_bound_to_the_test_instance(self, mine):
        assert mine is self


async def test_a_task_left_running_is_cancelled():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600))


async def test_wiremesh_mesh_starts_real_nodes(wiremesh_mesh, tmp_path):
    mesh = await wiremesh_mesh(Echo, replicas={"echo": 2})
    assert await mesh.call("echo.echo", "hi") == "hi"
    assert len(mesh.nodes_of("echo")) == 2
    assert mesh.data_dir.is_relative_to(tmp_path)
    kept["mesh"] = mesh


def test_the_mesh_is_closed_after_its_test():
    assert kept["mesh"].nodes == []


async def test_wiremesh_worker_keeps_its_store_under_tmp_path(wiremesh_worker, tmp_path):
    echo = wiremesh_worker(Echo)
    async with echo.store.transaction():
        pass
    assert echo.store.path.is_relative_to(tmp_path)
    kept["worker"] = echo


def test_the_workers_store_is_closed_after_its_test():
    assert not kept["worker"].store.opened
"""

#: what this plugin refuses, with a message that says what to do
REFUSED = """
import pytest


@pytest.fixture(scope="module")
async def wide():
    return 1


async def test_a_wide_async_fixture(wide):
    pass


@pytest.mark.asyncio
async def test_marked_for_strict_pytest_asyncio(wiremesh_mesh):
    pass
"""

#: a test that anyio runs keeps its loop, and gets this plugin's fixtures in it
ANYIO = """
import pytest

from wiremesh import Context, Service, rpc

pytestmark = pytest.mark.anyio


class Echo(Service):
    name = "echo"

    @rpc
    async def echo(self, ctx: Context, text: str) -> str:
        return text


async def test_anyio_runs_it(wiremesh_mesh):
    mesh = await wiremesh_mesh(Echo)
    assert await mesh.call("echo.echo", "hi") == "hi"
"""


def run_pytest(folder: Path, source: str, *options: str) -> subprocess.CompletedProcess[str]:
    (folder / "test_case.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *options],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def passed(done: subprocess.CompletedProcess[str], count: int) -> bool:
    return bool(re.search(rf"^=+ {count} passed in ", done.stdout, re.M))


def test_pytest_finds_the_plugin_by_its_entry_point() -> None:
    found = entry_points(group="pytest11", name="wiremesh")
    assert [e.value for e in found] == ["wiremesh.pytest_plugin"]


@pytest.mark.parametrize(
    "options",
    [
        ["-p", "no:asyncio", "-W", "error"],  # wiremesh and pytest alone
        [],  # pytest-asyncio in its default mode (strict): this plugin runs them
        # pytest-asyncio runs them all: this plugin stays out of its way
        ["--asyncio-mode=auto", "-o", "asyncio_default_fixture_loop_scope=function", "-W", "error"],
    ],
    ids=["alone", "beside-strict-pytest-asyncio", "under-auto-pytest-asyncio"],
)
def test_async_tests_and_fixtures_run_with_nothing_configured(
    options: list[str], tmp_path: Path
) -> None:
    done = run_pytest(tmp_path, EVERYWHERE, *options)
    assert done.returncode == 0, done.stdout + done.stderr
    assert passed(done, 9), done.stdout


def test_what_it_cannot_run_fails_saying_what_to_do(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, REFUSED)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "async fixture 'wide' has scope 'module': wiremesh's pytest plugin runs each test "
        "in an event loop of its own, so it runs async fixtures of function scope only"
    ) in done.stdout
    assert (
        "'test_marked_for_strict_pytest_asyncio' is marked 'asyncio', so pytest-asyncio runs "
        "it, but in its strict mode it does not run the async fixture 'wiremesh_mesh'"
    ) in done.stdout


def test_a_test_that_anyio_runs_stays_its_own(tmp_path: Path) -> None:
    pytest.importorskip("anyio")
    done = run_pytest(tmp_path, ANYIO, "-p", "no:asyncio")
    assert done.returncode == 0, done.stdout + done.stderr
    assert passed(done, 1), done.stdout

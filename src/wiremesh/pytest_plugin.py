"""wiremesh's pytest plugin: ``async def`` tests that run as written, and fixtures that
start services.

pytest loads it by itself wherever wiremesh is installed (the ``pytest11`` entry point
``wiremesh``); ``pytest -p no:wiremesh`` leaves it out.

**Async tests, nothing to configure.** An ``async def`` test that no other plugin runs
runs here, in an event loop of its own (an :class:`asyncio.Runner` per test), and so do
the ``async def`` fixtures of function scope that it uses, in the same loop and the same
:mod:`contextvars` context; the loop closes after the test's last fixture is torn down.
No ``asyncio_mode``, no mark, no pytest-asyncio needed::

    async def test_quote(wiremesh_mesh):
        mesh = await wiremesh_mesh(Pricing, Inventory)
        assert await mesh.call("pricing.quote", {"sku": "A-1", "qty": 2}) == 5.0

What another plugin runs stays its own: pytest-asyncio's tests (marked ``asyncio``, or
all of them under ``asyncio_mode = "auto"``) and their fixtures, anyio's
(``@pytest.mark.anyio``), pytest-trio's. A test that pytest-asyncio runs in its strict
mode (the default) gets no async fixture it was not told about, this plugin's included:
leave such a test unmarked, or use ``asyncio_mode = "auto"``.

**Fixtures.**

* ``wiremesh_mesh``: starts a :class:`~wiremesh.testing.TestMesh` (real nodes on
  loopback, in the test's loop) with the arguments ``TestMesh`` takes, its data under
  the test's ``tmp_path``; every mesh it started is closed after the test.
* ``wiremesh_worker``: :func:`~wiremesh.testing.worker` (one service object, its
  dependencies replaced, no network) with its store under ``tmp_path``, closed after
  the test.

As pytest starts, the plugin also calls
:func:`wiremesh.transport.grpc_core.prefer_loop_io`, before conftest files import grpc:
the tests run grpc as wiremesh's own processes do.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from collections.abc import AsyncIterator, Coroutine, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from wiremesh.service import Service
    from wiremesh.testing import TestMesh

__all__ = ["StartMesh", "StartWorker"]

S = TypeVar("S", bound="Service")
T = TypeVar("T")

#: the plugins that run async tests of their own, by the mark (and plugin name) of theirs
OTHER_RUNNERS = ("asyncio", "anyio", "trio")


class StartMesh(Protocol):
    """The ``wiremesh_mesh`` fixture: ``await wiremesh_mesh(*services, **options)``."""

    async def __call__(self, *services: type[Service], **options: Any) -> TestMesh: ...


class StartWorker(Protocol):
    """The ``wiremesh_worker`` fixture: ``wiremesh_worker(cls, **dependencies)``."""

    def __call__(self, cls: type[S], /, **dependencies: Any) -> S: ...


# ------------------------------------------------------------------------- the test's loop


class _TestLoop:
    """The event loop of one test: its async fixtures and the test itself run in it, in
    one context (a context variable that a fixture sets is seen by the test)."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()  # the loop itself is made on the first run
        self.context = contextvars.copy_context()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine, context=self.context)

    def close(self) -> None:
        self.runner.close()  # cancels what the test left running, then closes the loop


_LOOP = pytest.StashKey[_TestLoop]()


def _loop_of(item: pytest.Item) -> _TestLoop:
    if _LOOP not in item.stash:
        item.stash[_LOOP] = _TestLoop()
    return item.stash[_LOOP]


def _run_elsewhere(item: pytest.Item) -> str | None:
    """The plugin that runs ``item``'s async code instead of this one, if any."""
    for name in OTHER_RUNNERS:
        if item.get_closest_marker(name) and item.config.pluginmanager.hasplugin(name):
            return name
    return None


def _is_async(function: object) -> bool:
    function = getattr(function, "__func__", function)
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def pytest_load_initial_conftests() -> None:
    """Before conftest files run: they may import grpc, which reads its settings once."""
    from wiremesh.transport.grpc_core import prefer_loop_io

    prefer_loop_io()


@pytest.hookimpl
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    # another plugin that runs this test has replaced it by a plain function by now
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    _loop_of(pyfuncitem).run(test(**arguments))
    return True


# innermost: the other plugins' wrappers have replaced the async fixtures they run
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None]:
    function = fixturedef.func
    if not _is_async(function):
        return (yield)
    item = request.node
    if fixturedef.scope != "function" or not isinstance(item, pytest.Function):
        if item.config.pluginmanager.hasplugin("trio"):
            return (yield)  # pytest-trio runs its tests' fixtures inside the test
        pytest.fail(
            f"async fixture {request.fixturename!r} has scope {fixturedef.scope!r}: "
            "wiremesh's pytest plugin runs each test in an event loop of its own, so it "
            "runs async fixtures of function scope only",
            pytrace=False,
        )
    other = _run_elsewhere(item)
    if other == "asyncio":
        pytest.fail(
            f"{item.name!r} is marked 'asyncio', so pytest-asyncio runs it, but in its "
            f"strict mode it does not run the async fixture {request.fixturename!r} "
            "(only @pytest_asyncio.fixture): remove the mark (wiremesh's plugin runs "
            'unmarked async tests and their fixtures), or set asyncio_mode = "auto"',
            pytrace=False,
        )
    if other is not None:
        return (yield)  # pytest-trio runs its tests' fixtures inside the test
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fixturedef, "func", _in_loop(function, _loop_of(item)))
        return (yield)


def _in_loop(function: Any, loop: _TestLoop) -> Any:
    """``function``, an async fixture, as the plain fixture pytest knows how to run: its
    setup and its teardown each run in ``loop``."""
    plain = getattr(function, "__func__", function)

    if inspect.isasyncgenfunction(plain):

        @functools.wraps(plain)
        def fixture(*args: Any, **kwargs: Any) -> Generator[Any]:
            steps = plain(*args, **kwargs)
            yield loop.run(_next(steps))
            loop.run(_last(steps))

    else:

        @functools.wraps(plain)
        def fixture(*args: Any, **kwargs: Any) -> Any:
            return loop.run(plain(*args, **kwargs))

    # a fixture method of a test class: pytest binds it to the test's instance again
    bound_to = getattr(function, "__self__", None)
    return fixture if bound_to is None else types.MethodType(fixture, bound_to)


async def _next(steps: Any) -> Any:
    return await steps.__anext__()


async def _last(steps: Any) -> None:
    try:
        await steps.__anext__()
    except StopAsyncIteration:
        return
    raise RuntimeError(f"the async fixture {steps.__qualname__} yields more than once")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None]:
    # outermost: the test's fixtures are torn down (in its loop) before the loop closes
    try:
        return (yield)
    finally:
        loop = item.stash.get(_LOOP, None)
        if loop is not None:
            del item.stash[_LOOP]
            loop.close()


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
async def wiremesh_mesh(tmp_path: Path) -> AsyncIterator[StartMesh]:
    """``mesh = await wiremesh_mesh(Pricing, Inventory, replicas={"pricing": 2})``: a
    running :class:`~wiremesh.testing.TestMesh` (the arguments are ``TestMesh``'s), its
    data under the test's ``tmp_path``. Every mesh started is closed after the test."""
    from wiremesh.testing import TestMesh

    meshes: list[TestMesh] = []

    async def start(*services: type[Service], **options: Any) -> TestMesh:
        if "data_dir" not in options:
            options["data_dir"] = tmp_path / f"wiremesh-mesh-{len(meshes)}"
            options["data_dir"].mkdir()
        mesh = TestMesh(*services, **options)
        await mesh.__aenter__()  # a mesh that fails to start closes itself
        meshes.append(mesh)
        return mesh

    yield start
    failed: list[Exception] = []
    for mesh in reversed(meshes):
        try:
            await mesh.close()
        except Exception as exc:  # the others still have to close
            failed.append(exc)
    if failed:
        raise failed[0]


@pytest.fixture
async def wiremesh_worker(tmp_path: Path) -> AsyncIterator[StartWorker]:
    """``pricing = wiremesh_worker(Pricing, inventory=FakeInventory())``:
    :func:`wiremesh.testing.worker`, its store under the test's ``tmp_path`` and closed
    after the test. Call ``on_start`` (and ``on_stop``) yourself when the test needs them."""
    from wiremesh.testing import worker

    made: list[Service] = []

    def make(cls: type[S], /, **dependencies: Any) -> S:
        data_dir = tmp_path / f"wiremesh-worker-{len(made)}"
        data_dir.mkdir()
        instance = cast("S", worker(cls, data_dir=data_dir, **dependencies))
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.store.close()

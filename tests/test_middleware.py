"""Middleware around every entrypoint of a service (wiremesh/middleware.py): calls from the
mesh and from the HTTP door, published messages, durable events and commands, and browser
frames, on real nodes and a real gateway; then the order and error rules, on the hooks
alone."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from wiremesh import (
    ConfigError,
    Context,
    Invocation,
    Middleware,
    RateLimited,
    Service,
    ServiceError,
    Session,
    command,
    on_event,
    on_socket,
    rpc,
    subscribe,
)
from wiremesh.middleware import around
from wiremesh.service import ServiceSpec
from wiremesh.testing import TestMesh

in_module_loop = pytest.mark.asyncio(loop_scope="module")

#: what the audit middleware saw: (hook, kind, handler, principal, args)
AUDIT: list[tuple[str, str, str, str | None, tuple[Any, ...]]] = []
HANDLED: asyncio.Queue[str]


class Audit(Middleware):
    """The docs' audit log, writing to a list."""

    async def before(self, run: Invocation) -> None:
        run.state["started"] = time.monotonic()

    async def after(self, run: Invocation, result: Any) -> None:
        assert run.state["started"] <= time.monotonic()
        AUDIT.append(("after", run.kind, run.handler, run.principal, run.args))

    async def on_error(self, run: Invocation, error: Exception) -> None:
        AUDIT.append(("error", run.kind, run.handler, run.principal, (type(error).__name__,)))


class PerPrincipalRate(Middleware):
    """The docs' per-principal rate limit: at most ``limit`` runs per principal."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.runs: defaultdict[str | None, int] = defaultdict(int)

    async def before(self, run: Invocation) -> None:
        if run.kind in ("call", "socket"):
            self.runs[run.principal] += 1
            if self.runs[run.principal] > self.limit:
                raise RateLimited(f"{run.principal} made more than {self.limit} requests")


class Refused(ServiceError):
    pass


RATE = PerPrincipalRate(limit=3)


class Desk(Service):
    name = "desk"
    middleware = (Audit(), RATE)

    @rpc
    async def echo(self, ctx: Context, text: str) -> str:
        return text

    @rpc
    async def refuse(self, ctx: Context) -> None:
        raise Refused("no")

    @subscribe("news.*")
    async def news(self, ctx: Context, text: str) -> None:
        HANDLED.put_nowait(f"news {text}")

    @on_event("desk.noted")
    async def noted(self, ctx: Context, text: str) -> None:
        HANDLED.put_nowait(f"event {text}")

    @command
    async def file(self, ctx: Context, text: str) -> None:
        HANDLED.put_nowait(f"command {text}")

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(frame)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh() -> AsyncIterator[TestMesh]:
    global HANDLED
    HANDLED = asyncio.Queue()
    async with TestMesh(Desk, gateway=True) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh() -> None:
    AUDIT.clear()
    RATE.runs.clear()


@in_module_loop
async def test_a_call_runs_inside_the_middleware_and_errors_reach_on_error(
    mesh: TestMesh,
) -> None:
    assert await mesh.call("desk.echo", "hi") == "hi"
    with pytest.raises(Refused):
        await mesh.call("desk.refuse")
    assert AUDIT == [
        ("after", "call", "echo", None, ("hi",)),
        ("error", "call", "refuse", None, ("Refused",)),
    ]


@in_module_loop
async def test_the_http_door_s_principal_is_rate_limited_by_a_middleware(
    mesh: TestMesh,
) -> None:
    auth = {"Authorization": f"Bearer {mesh.token('ada')}"}
    async with httpx.AsyncClient(base_url=mesh.gateway.url) as http:
        answers = [await http.post("/rpc/desk/echo", json=str(n), headers=auth) for n in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "ada made more than 3 requests" in answers[3].json()["detail"]
    # the refused run never reached the handler; the audit (outer) saw its error
    assert [entry[:4] for entry in AUDIT] == [
        *[("after", "call", "echo", "ada")] * 3,
        ("error", "call", "echo", "ada"),
    ]


@in_module_loop
async def test_published_messages_events_and_commands_run_inside_the_middleware(
    mesh: TestMesh,
) -> None:
    await mesh.client.publish("news.today", "sun")
    await mesh.client.emit("desk.noted", "note")
    await mesh.client.send("desk.file", "form")
    got = {await asyncio.wait_for(HANDLED.get(), 10) for _ in range(3)}
    assert got == {"news sun", "event note", "command form"}
    for _ in range(100):  # the after hooks run just after the handlers return
        if len(AUDIT) == 3:
            break
        await asyncio.sleep(0.01)
    assert sorted((kind, handler, args) for _, kind, handler, _, args in AUDIT) == [
        ("command", "file", ("form",)),
        ("event", "noted", ("note",)),
        ("publish", "news", ("sun",)),
    ]


@in_module_loop
async def test_a_browser_frame_runs_inside_the_middleware_and_a_refusal_closes_4029(
    mesh: TestMesh,
) -> None:
    token = mesh.token("bob")
    async with websockets.connect(
        mesh.ws_url("desk"),
        subprotocols=["wiremesh.v1", f"bearer.{token}"],  # type: ignore[list-item]
    ) as ws:
        for n in range(3):
            await ws.send(f"frame {n}".encode())
            assert await asyncio.wait_for(ws.recv(), 5) == f"frame {n}".encode()
        await ws.send(b"one too many")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    sockets = [entry for entry in AUDIT if entry[1] == "socket"]
    assert [(hook, principal) for hook, _, _, principal, _ in sockets] == [
        ("after", "bob"),
        ("after", "bob"),
        ("after", "bob"),
        ("error", "bob"),
    ]


# -- the rules, on the hooks alone ---------------------------------------------------------


class Trace(Middleware):
    def __init__(self, name: str, log: list[str], fail_in: str = "") -> None:
        self.name, self.log, self.fail_in = name, log, fail_in

    async def before(self, run: Invocation) -> None:
        self.log.append(f"{self.name}.before")
        if self.fail_in == "before":
            raise RateLimited(f"{self.name} refuses")

    async def after(self, run: Invocation, result: Any) -> None:
        self.log.append(f"{self.name}.after({result})")
        if self.fail_in == "after":
            raise ValueError(f"{self.name} after failed")

    async def on_error(self, run: Invocation, error: Exception) -> None:
        self.log.append(f"{self.name}.on_error({error})")
        if self.fail_in == "on_error":
            raise KeyError(self.name)


async def run_with(*middleware: Middleware, fail: bool = False) -> Any:
    async def handler(ctx: Any, x: int) -> int:
        if fail:
            raise Refused("handler failed")
        return x * 2

    return await around(middleware, "call", "svc", "m", handler)(None, 21)


async def test_befores_run_in_order_and_afters_in_reverse() -> None:
    log: list[str] = []
    assert await run_with(Trace("a", log), Trace("b", log)) == 42
    assert log == ["a.before", "b.before", "b.after(42)", "a.after(42)"]


async def test_a_failing_handler_reaches_each_on_error_in_reverse_then_its_caller() -> None:
    log: list[str] = []
    with pytest.raises(Refused, match="handler failed"):
        await run_with(Trace("a", log), Trace("b", log), fail=True)
    assert log == [
        "a.before",
        "b.before",
        "b.on_error(handler failed)",
        "a.on_error(handler failed)",
    ]


async def test_a_before_that_raises_refuses_the_run_and_only_the_outer_ones_hear_it() -> None:
    log: list[str] = []
    with pytest.raises(RateLimited, match="b refuses"):
        await run_with(Trace("a", log), Trace("b", log, "before"), Trace("c", log))
    assert log == ["a.before", "b.before", "a.on_error(b refuses)"]


async def test_an_on_error_that_raises_replaces_the_error() -> None:
    log: list[str] = []
    with pytest.raises(KeyError) as caught:
        await run_with(Trace("a", log), Trace("b", log, "on_error"), fail=True)
    assert isinstance(caught.value.__cause__, Refused)
    assert log[-1] == "a.on_error('b')"


async def test_an_after_that_raises_fails_the_run() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="b after failed"):
        await run_with(Trace("a", log), Trace("b", log, "after"))
    assert log == [
        "a.before",
        "b.before",
        "b.after(42)",
        "b.on_error(b after failed)",
        "a.on_error(b after failed)",
    ]


async def test_no_middleware_leaves_the_handler_as_it_is() -> None:
    async def handler(ctx: Any) -> None:
        return None

    assert around((), "call", "svc", "m", handler) is handler


def test_middleware_that_is_not_a_middleware_fails_when_the_service_is_read() -> None:
    class Bad(Service):
        name = "bad"
        middleware = (Audit(), object())  # type: ignore[assignment]

    with pytest.raises(ConfigError, match=r"Bad\.middleware holds <object"):
        ServiceSpec.of(Bad)

    class Single(Service):
        name = "single"
        middleware = Audit()  # type: ignore[assignment]

    with pytest.raises(ConfigError, match="a sequence of Middleware"):
        ServiceSpec.of(Single)

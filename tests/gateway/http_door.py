"""Services and meshes for the HTTP door's tests.

A real gateway (uvicorn on a free loopback port, JWT, access rules) in front of real nodes,
both run by :class:`~wiremesh.testing.TestMesh` in the test's event loop, or in a thread of
their own for synchronous clients. Test modules import it as ``tests.gateway.http_door``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel, Field

from wiremesh import Context, Service, ServiceError, rpc
from wiremesh.gateway.auth import mint_token
from wiremesh.gateway.http_rpc import HttpDoor
from wiremesh.gateway.settings import GatewaySettings
from wiremesh.testing import TestMesh, gateway_settings

SECRET = "http-door-test-secret-of-32-bytes-or-more"


class Item(BaseModel):
    sku: str = Field(min_length=1, max_length=20)
    qty: int = Field(gt=0, le=1000)


class Quote(BaseModel):
    sku: str
    qty: int
    total: float


class OutOfStock(ServiceError):
    """A domain error: 409 with its details."""


class Shop(Service):
    """Every way a call can end, for the status tests."""

    name = "shop"

    async def on_start(self) -> None:
        self.slow_started = asyncio.Event()

    @rpc(idempotent=True)
    async def quote(self, ctx: Context, item: Item) -> Quote:
        """Price an item."""
        return Quote(sku=item.sku, qty=item.qty, total=item.qty * 2.5)

    @rpc
    async def stock(self, ctx: Context, sku: str, warehouse: str = "main") -> int:
        return len(sku) + len(warehouse)

    @rpc
    async def ping(self, ctx: Context) -> None:
        return None

    @rpc
    async def whoami(self, ctx: Context) -> dict[str, Any]:
        return {"node": ctx.node_id, "principal": ctx.metadata.get("principal")}

    @rpc
    async def sold_out(self, ctx: Context, sku: str) -> None:
        raise OutOfStock(f"no {sku} left", details={"sku": sku})

    @rpc
    async def crash(self, ctx: Context) -> None:
        raise RuntimeError("a secret the client must not see")

    @rpc
    async def slow(self, ctx: Context, seconds: float) -> float:
        self.slow_started.set()
        await asyncio.sleep(seconds)
        return seconds

    @rpc
    async def nested_deadline(self, ctx: Context) -> dict[str, float]:
        """What remains of the deadline here and in a nested call."""
        here = ctx.remaining
        there = await ctx.call("clock.remaining")
        return {"here": here, "nested": there}


class Clock(Service):
    name = "clock"

    @rpc
    async def remaining(self, ctx: Context) -> float:
        return ctx.remaining


class Vault(Service):
    """A service the access rules guard (scope ``vault:read``)."""

    name = "vault"

    @rpc
    async def open(self, ctx: Context) -> str:
        return "opened"


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Search(BaseModel):
    text: str = Field(max_length=40)
    limit: int = Field(default=3, ge=1, le=10)
    colours: list[Colour] = Field(default_factory=list, max_length=2)
    note: str | None = None


class Product(BaseModel):
    sku: str
    colour: Colour
    price: float


class Catalog(Service):
    """Well-behaved methods of every payload shape, for the schema-driven tests: a valid
    request never fails."""

    name = "catalog"

    @rpc(idempotent=True)
    async def search(self, ctx: Context, query: Search) -> list[Product]:
        """Products whose sku contains the text."""
        colours = query.colours or [Colour.RED]
        return [
            Product(sku=f"{query.text}-{i}", colour=colours[i % len(colours)], price=i * 1.5)
            for i in range(query.limit)
        ]

    @rpc
    async def price(self, ctx: Context, sku: str, qty: int = 1) -> float:
        return len(sku) * 0.5 * qty

    @rpc
    async def count(self, ctx: Context) -> int:
        return 42

    @rpc
    async def paint(self, ctx: Context, colour: Colour) -> Colour:
        return colour


def token(subject: str = "alice", **options: Any) -> str:
    return mint_token(SECRET, subject=subject, **options)


def bearer(subject: str = "alice", **options: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject, **options)}"}


def settings(**http: Any) -> GatewaySettings:
    """Gateway settings for the tests: the test secret, the vault's access rule, and the
    ``[gateway.http]`` limits sized for tests (override any)."""
    limits: dict[str, Any] = {
        "rate": 1000.0,
        "burst": 1000,
        "concurrency": 64,
        "max_body": 4096,
        "default_timeout": 5.0,
        "max_timeout": 10.0,
        "body_timeout": 5.0,
    }
    return gateway_settings(
        auth={"secret": SECRET},
        services={"vault": {"scopes": ["vault:read"]}},
        http={**limits, **http},
    )


@contextlib.asynccontextmanager
async def gateway_mesh(*services: type[Service], **http: Any) -> AsyncIterator[TestMesh]:
    """Real nodes of ``services`` and a real gateway in front of them (its base URL is
    ``mesh.gateway.url``, its door ``mesh.gateway.http``)."""
    async with TestMesh(*services, gateway=settings(**http)) as mesh:
        yield mesh


def door(mesh: TestMesh) -> HttpDoor:
    found = mesh.gateway.http
    assert found is not None
    return found


@contextlib.contextmanager
def gateway_in_thread(*services: type[Service], **http: Any) -> Iterator[str]:
    """:func:`gateway_mesh` run by an event loop in a thread of its own, for synchronous
    clients; yields the gateway's base URL."""
    ready: dict[str, Any] = {}
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        try:
            async with gateway_mesh(*services, **http) as mesh:
                ready["url"] = mesh.gateway.url
                started.set()
                await stop.wait()
        except BaseException as exc:
            ready["error"] = exc
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        started.wait(30)
        if "error" in ready:
            raise ready["error"]
        yield ready["url"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()

"""``wiremesh.testing``: the helpers users' own tests are made of."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
import pytest

from wiremesh import (
    ConfigError,
    Context,
    InvalidPayload,
    NodeNotFound,
    Service,
    ServiceProxy,
    Unavailable,
    rpc,
)
from wiremesh.proto.registry_pb2 import Method
from wiremesh.testing import TestMesh, call_handler, worker


class Quote(pydantic.BaseModel):
    sku: str
    qty: int = pydantic.Field(gt=0)


class Price(pydantic.BaseModel):
    sku: str
    total: float


class Pricing(Service):
    name = "pricing"

    @rpc(idempotent=True)
    async def unit_price(self, ctx: Context, sku: str) -> float:
        return {"A": 2.5, "B": 4.0}[sku]

    @rpc
    async def whoami(self, ctx: Context) -> str:
        return ctx.node_id


class Shop(Service):
    name = "shop"

    pricing = ServiceProxy("pricing")

    @rpc
    async def quote(self, ctx: Context, req: Quote) -> Price:
        unit = await self.pricing.unit_price(req.sku)
        return Price(sku=req.sku, total=unit * req.qty)

    @rpc
    async def context(self, ctx: Context) -> dict[str, Any]:
        return {
            "service": ctx.service,
            "method": ctx.method,
            "node": ctx.node_id,
            "caller": ctx.caller,
            "metadata": dict(ctx.metadata),
            "remaining": ctx.remaining,
        }

    @rpc
    async def add(self, ctx: Context, a: int, b: int = 1) -> int:
        return a + b

    @rpc
    async def rename(self, ctx: Context, method: Method) -> Method:
        return Method(name=method.name[::-1])

    @rpc
    async def unencodable(self, ctx: Context) -> Any:
        return object()

    @rpc
    async def pricing_nodes(self, ctx: Context) -> list[str]:
        return sorted({await ctx.call("pricing.whoami") for _ in range(6)})


class FakePricing:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def unit_price(self, sku: str) -> float:
        self.asked.append(sku)
        return 10.0


# -- worker() and call_handler() -----------------------------------------------------------


async def test_worker_replaces_a_service_proxy() -> None:
    fake = FakePricing()
    shop = worker(Shop, pricing=fake)
    assert shop.pricing is fake  # type: ignore[attr-defined]
    result = await call_handler(shop, "quote", {"sku": "A", "qty": 3})
    assert result == Price(sku="A", total=30.0)
    assert type(result) is Price  # typed, as the handler returned it
    assert fake.asked == ["A"]


async def test_call_handler_accepts_the_model_itself() -> None:
    shop = worker(Shop, pricing=FakePricing())
    assert await call_handler(shop, "quote", Quote(sku="B", qty=1)) == Price(sku="B", total=10.0)


async def test_call_handler_validates_the_payload() -> None:
    fake = FakePricing()
    shop = worker(Shop, pricing=fake)
    with pytest.raises(InvalidPayload, match=r"^qty: .*greater than 0"):
        await call_handler(shop, "quote", {"sku": "A", "qty": 0})
    with pytest.raises(InvalidPayload, match=r"^sku: Field required"):
        await call_handler(shop, "quote", {"qty": 2})
    with pytest.raises(InvalidPayload, match=r"^b: .*valid integer"):
        await call_handler(shop, "add", {"a": 1, "b": "two"})
    assert fake.asked == []  # the handler never ran


async def test_call_handler_with_several_parameters_and_codecs() -> None:
    shop = worker(Shop)
    assert await call_handler(shop, "add", {"a": 2}) == 3
    assert await call_handler(shop, "add", {"a": 2, "b": "5"}, codec="json") == 7


async def test_call_handler_with_a_protobuf_method() -> None:
    shop = worker(Shop)
    assert await call_handler(shop, "rename", Method(name="abc")) == Method(name="cba")
    bytes_in = Method(name="xy").SerializeToString()
    assert await call_handler(shop, "rename", bytes_in) == Method(name="yx")


async def test_call_handler_gives_the_handler_a_real_context() -> None:
    shop = worker(Shop)
    seen = await call_handler(
        shop, "context", timeout=3.0, metadata={"x-tenant": "acme"}, caller="front@front-1"
    )
    assert seen["service"] == "shop"
    assert seen["method"] == "context"
    assert seen["node"] == "shop-test"
    assert seen["caller"] == "front@front-1"
    assert seen["metadata"] == {"x-tenant": "acme"}
    assert 0 < seen["remaining"] <= 3.0


async def test_call_handler_refuses_a_result_that_could_not_travel() -> None:
    with pytest.raises(InvalidPayload, match="cannot encode object"):
        await call_handler(worker(Shop), "unencodable")


async def test_a_dependency_left_in_place_raises_unavailable_with_advice() -> None:
    shop = worker(Shop)
    with pytest.raises(Unavailable) as info:
        await call_handler(shop, "quote", {"sku": "A", "qty": 1})
    message = str(info.value)
    assert "'pricing.unit_price'" in message
    assert "worker(Shop, pricing=fake)" in message
    assert "TestMesh" in message


async def test_a_mesh_call_without_a_mesh_raises_unavailable() -> None:
    with pytest.raises(Unavailable, match="without a mesh"):
        await call_handler(worker(Shop), "pricing_nodes")


def test_worker_refuses_an_unknown_dependency() -> None:
    with pytest.raises(AttributeError, match="no dependency 'pricnig'"):
        worker(Shop, pricnig=FakePricing())


async def test_call_handler_refuses_an_unknown_method() -> None:
    with pytest.raises(AttributeError, match=r"no @rpc method 'qoute' \(methods: add, .*quote"):
        await call_handler(worker(Shop), "qoute")


# -- TestMesh ------------------------------------------------------------------------------


async def test_test_mesh_runs_replicas_and_replacements() -> None:
    fake = FakePricing()
    async with TestMesh(
        Pricing,
        Shop,
        replicas={"pricing": 3, "shop": 2},
        replace={"shop": {"pricing": fake}},
        drain_grace=0.1,
    ) as mesh:
        assert len(mesh.nodes_of("pricing")) == 3
        assert len(mesh.nodes_of("shop")) == 2
        assert {n.node_id for n in mesh.client.nodes("pricing")} == {
            n.node_id for n in mesh.nodes_of("pricing")
        }
        # the replacement answers instead of the real pricing service
        assert await mesh.call("shop.quote", {"sku": "A", "qty": 2}) == {"sku": "A", "total": 20.0}
        assert await mesh.call("shop.quote", {"sku": "B", "qty": 1}, returns=Price) == Price(
            sku="B", total=10.0
        )
        assert fake.asked == ["A", "B"]
        assert mesh.instance("shop", 1).pricing is fake
        # while the real one still serves its own callers, on all three nodes
        assert await mesh.call("shop.pricing_nodes") == sorted(
            n.node_id for n in mesh.nodes_of("pricing")
        )


async def test_without_replacement_the_real_dependency_answers() -> None:
    async with TestMesh(Pricing, Shop, drain_grace=0.1) as mesh:
        assert await mesh.call("shop.quote", {"sku": "B", "qty": 2}) == {"sku": "B", "total": 8.0}


async def test_stop_node_makes_the_mesh_see_it_leave() -> None:
    async with TestMesh(Pricing, Shop, replicas={"pricing": 3}, drain_grace=0.1) as mesh:
        first, second, third = mesh.nodes_of("pricing")
        await mesh.stop_node(first)
        assert mesh.nodes_of("pricing") == [second, third]
        listed = {n.node_id for n in mesh.client.nodes("pricing")}
        assert listed == {second.node_id, third.node_id}
        # callers, outside and inside the mesh, only reach the nodes left
        assert {await mesh.call("pricing.whoami") for _ in range(4)} == listed
        assert set(await mesh.call("shop.pricing_nodes")) == listed
        await mesh.stop_node(second.node_id)  # by id too
        assert await mesh.call("shop.pricing_nodes") == [third.node_id]


async def test_add_node_joins_the_mesh() -> None:
    async with TestMesh(Pricing, Shop, drain_grace=0.1) as mesh:
        added = await mesh.add_node(Pricing)
        assert added in mesh.nodes_of("pricing")
        # every node sees it at once: the shop's very next calls reach it
        assert added.node_id in await mesh.call("shop.pricing_nodes")


async def test_stop_node_refuses_an_unknown_node_id() -> None:
    async with TestMesh(Pricing, drain_grace=0.1) as mesh:
        with pytest.raises(NodeNotFound, match="no node 'pricing-0000'"):
            await mesh.stop_node("pricing-0000")
        assert len(mesh.nodes) == 1


@pytest.mark.parametrize(
    "options",
    [{"replicas": {"pricnig": 2}}, {"replace": {"shpo": {"pricing": FakePricing()}}}],
)
def test_test_mesh_refuses_options_for_services_it_does_not_run(options: Any) -> None:
    with pytest.raises(ConfigError, match="which this mesh does not run"):
        TestMesh(Pricing, Shop, **options)


async def test_test_mesh_refuses_an_unknown_dependency() -> None:
    mesh = TestMesh(Shop, replace={"shop": {"nothing": object()}}, drain_grace=0.1)
    with pytest.raises(AttributeError, match="no dependency 'nothing'"):
        async with mesh:
            pass
    assert mesh.nodes == []


async def test_test_mesh_cleans_up_after_itself() -> None:
    async with TestMesh(Pricing, replicas={"pricing": 2}, drain_grace=0.1) as mesh:
        nodes = list(mesh.nodes)
    assert mesh.nodes == []
    for node in nodes:  # every port is closed
        host, port = node.address.rsplit(":", 1)
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()


def test_the_client_of_a_mesh_that_is_not_running() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = TestMesh(Pricing).client

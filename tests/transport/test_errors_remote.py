"""Remote errors come back typed, and a node that saw one keeps serving."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

from wiremesh import (
    Context,
    InternalError,
    InvalidPayload,
    MethodNotFound,
    NodeNotFound,
    Service,
    ServiceError,
    ServiceNotFound,
    Status,
    Unavailable,
    WiremeshError,
    rpc,
)
from wiremesh.testing import TestMesh
from wiremesh.transport.wire import MAX_ERROR_TEXT, error_metadata, error_status_message


class OutOfStock(ServiceError):
    """A domain error with a constructor of its own: rebuilt without calling it."""

    def __init__(self, sku: str) -> None:
        super().__init__(f"no stock left of {sku}", details={"sku": sku})


class Gone(ServiceError):
    status = Status.NOT_FOUND


class Refused(ServiceError):
    pass


class Line(pydantic.BaseModel):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    customer: str
    items: list[Line]


class Shop(Service):
    name = "shop"

    @rpc
    async def reserve(self, ctx: Context, sku: str, qty: int) -> int:
        if sku == "sold-out":
            raise OutOfStock(sku)
        return qty

    @rpc
    async def place(self, ctx: Context, order: Order) -> int:
        return len(order.items)

    @rpc
    async def count(self, ctx: Context, items: list[int]) -> int:
        return len(items)

    @rpc
    async def lookup(self, ctx: Context, key: str) -> str:
        return {"a": "apple"}[key]

    @rpc
    async def fail_long(self, ctx: Context, text: str, size: int) -> None:
        raise ValueError(text * size)

    @rpc
    async def refuse(self, ctx: Context, size: int) -> None:
        raise Refused("too many lines", details={"lines": list(range(size))})

    @rpc
    async def forget(self, ctx: Context, what: str) -> None:
        raise Gone(f"{what} was deleted")

    @rpc
    async def ping(self, ctx: Context) -> str:
        return "pong"


class Front(Service):
    name = "front"

    @rpc
    async def reserve_via_shop(self, ctx: Context, sku: str) -> int:
        result: int = await ctx.call("shop.reserve", {"sku": sku, "qty": 1})
        return result

    @rpc
    async def lookup_via_shop(self, ctx: Context, key: str) -> str:
        result: str = await ctx.call("shop.lookup", key)
        return result


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Shop, Front, drain_grace=0.1) as mesh:
        yield mesh


def node_id(mesh: TestMesh, service: str) -> str:
    (node,) = mesh.nodes_of(service)
    return node.node_id


# -- errors raised by handlers -------------------------------------------------------------


async def test_a_service_error_subclass_is_rebuilt_as_itself(mesh: TestMesh) -> None:
    with pytest.raises(OutOfStock) as info:
        await mesh.call("shop.reserve", {"sku": "sold-out", "qty": 1})
    error = info.value
    assert type(error) is OutOfStock
    assert error.message == "no stock left of sold-out"
    assert error.node == node_id(mesh, "shop")
    assert error.details == {"sku": "sold-out"}
    assert error.remote_type is None  # the exact class: nothing to add
    assert error.status is Status.FAILED_PRECONDITION
    assert str(error) == f"no stock left of sold-out (node {node_id(mesh, 'shop')})"
    assert await mesh.call("shop.reserve", {"sku": "A", "qty": 2}) == 2


async def test_a_service_error_keeps_its_own_status(mesh: TestMesh) -> None:
    with pytest.raises(Gone, match="order-7 was deleted") as info:
        await mesh.call("shop.forget", "order-7")
    assert type(info.value) is Gone
    assert info.value.status is Status.NOT_FOUND


async def test_a_domain_error_crosses_two_hops_naming_the_node_that_raised_it(
    mesh: TestMesh,
) -> None:
    with pytest.raises(OutOfStock) as info:
        await mesh.call("front.reserve_via_shop", "sold-out")
    assert info.value.node == node_id(mesh, "shop")
    assert await mesh.call("front.reserve_via_shop", "A") == 1


async def test_an_unexpected_exception_is_an_internal_error(
    mesh: TestMesh, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="wiremesh.node"),
        pytest.raises(InternalError) as info,
    ):
        await mesh.call("shop.lookup", "zebra")
    error = info.value
    assert type(error) is InternalError
    assert error.remote_type == "KeyError"
    assert "zebra" in error.message
    assert error.node == node_id(mesh, "shop")
    assert error.status is Status.INTERNAL
    assert str(error).startswith("KeyError: ")
    assert "shop.lookup raised KeyError" in caplog.text  # the node logged the traceback
    # the node keeps serving, that method included
    assert await mesh.call("shop.lookup", "a") == "apple"
    assert await mesh.call("shop.ping") == "pong"


async def test_an_internal_error_crosses_two_hops(mesh: TestMesh) -> None:
    with pytest.raises(InternalError) as info:
        await mesh.call("front.lookup_via_shop", "zebra")
    assert info.value.remote_type == "KeyError"
    assert info.value.node == node_id(mesh, "shop")


@pytest.mark.parametrize(("text", "size"), [("é", 100), ("x", 6_000)])
async def test_a_long_error_message_arrives(mesh: TestMesh, text: str, size: int) -> None:
    with pytest.raises(InternalError) as info:
        await mesh.call("shop.fail_long", {"text": text, "size": size})
    assert info.value.remote_type == "ValueError"
    assert info.value.message.startswith(text * 10)
    assert await mesh.call("shop.ping") == "pong"


@pytest.mark.parametrize(("text", "size"), [("é", 3_000), ("x", 20_000)])
async def test_a_huge_error_message_is_cut_not_turned_into_another_error(
    mesh: TestMesh, text: str, size: int
) -> None:
    with pytest.raises(InternalError) as info:
        await mesh.call("shop.fail_long", {"text": text, "size": size})
    assert info.value.remote_type == "ValueError"
    assert info.value.message.startswith(text * 10)
    assert info.value.message.endswith("(cut)")


async def test_small_details_travel_and_huge_ones_are_dropped(mesh: TestMesh) -> None:
    with pytest.raises(Refused) as info:
        await mesh.call("shop.refuse", 3)
    assert info.value.details == {"lines": [0, 1, 2]}
    # 20 KB of details would not fit in gRPC's metadata: the error still arrives, bare
    with pytest.raises(Refused, match="too many lines") as info:
        await mesh.call("shop.refuse", 5_000)
    assert info.value.details == {}


def percent_encoded_size(text: str) -> int:
    """What gRPC's percent-encoding makes of a ``grpc-message``."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode())


@pytest.mark.parametrize("text", ["x", "%", "é", '"', "\n", "\U0001f600"])
def test_error_text_on_the_wire_stays_within_its_budget(text: str) -> None:
    error = InternalError(text * 50_000, remote_type="ValueError")
    ((key, trailer),) = error_metadata(error, "shop-1")
    assert key == "wm-error"
    assert len(trailer) <= MAX_ERROR_TEXT + 200
    body = json.loads(trailer)
    assert body["message"].startswith(text * 10)
    assert body["message"].endswith("(cut)")
    status_message = error_status_message(error)
    assert percent_encoded_size(status_message) <= MAX_ERROR_TEXT
    assert status_message.startswith(text * 10)
    # a short message is left alone
    assert error_status_message(InternalError(text * 3)) == text * 3
    assert json.loads(error_metadata(InternalError(text * 3), "n")[0][1])["message"] == text * 3


# -- invalid payloads ----------------------------------------------------------------------


async def test_an_invalid_parameter_is_named(mesh: TestMesh) -> None:
    with pytest.raises(InvalidPayload, match=r"^qty: .*valid integer") as info:
        await mesh.call("shop.reserve", {"sku": "A", "qty": "lots"})
    assert info.value.node == node_id(mesh, "shop")
    with pytest.raises(InvalidPayload, match=r"^qty: Field required"):
        await mesh.call("shop.reserve", {"sku": "A"})
    with pytest.raises(InvalidPayload, match="mapping of sku, qty, not list"):
        await mesh.call("shop.reserve", ["A", 1])
    assert await mesh.call("shop.reserve", {"sku": "A", "qty": 3}) == 3


async def test_an_invalid_nested_field_is_named(mesh: TestMesh) -> None:
    order: dict[str, Any] = {"customer": "ann", "items": [{"sku": "A", "qty": "x"}]}
    with pytest.raises(InvalidPayload, match=r"^items\.0\.qty: .*valid integer"):
        await mesh.call("shop.place", order)
    order["items"].append({"qty": 1})
    order["items"][0]["qty"] = 1
    with pytest.raises(InvalidPayload, match=r"^items\.1\.sku: Field required"):
        await mesh.call("shop.place", order)


async def test_thousands_of_invalid_items_give_a_short_message(mesh: TestMesh) -> None:
    with pytest.raises(InvalidPayload) as info:
        await mesh.call("shop.count", ["x"] * 5_000)
    message = info.value.message
    assert message.startswith("0: Input should be a valid integer")
    assert message.endswith("and 4990 more errors")
    assert len(message) < 2_000
    assert await mesh.call("shop.count", [1, 2]) == 2


# -- errors of the mesh itself -------------------------------------------------------------


async def test_an_unknown_service(mesh: TestMesh) -> None:
    with pytest.raises(ServiceNotFound, match="no service 'nope'"):
        await mesh.call("nope.ping")


async def test_an_unknown_method_lists_the_known_ones(mesh: TestMesh) -> None:
    with pytest.raises(MethodNotFound, match=r"no method 'nope' \(methods: .*ping.*\)"):
        await mesh.call("shop.nope")


async def test_an_unknown_node(mesh: TestMesh) -> None:
    with pytest.raises(NodeNotFound, match="shop-0000"):
        await mesh.call("shop@shop-0000.ping")
    with pytest.raises(NodeNotFound):
        await mesh.call("shop.ping", node="shop-0000")
    # a node of another service is not a node of this one
    with pytest.raises(NodeNotFound):
        await mesh.call("shop.ping", node=node_id(mesh, "front"))


@pytest.mark.parametrize(
    "target", ["shop", "shop.", ".ping", "Shop.ping", "shop.ping.more", "shop@.ping", "a b.c"]
)
async def test_a_malformed_target(mesh: TestMesh, target: str) -> None:
    with pytest.raises(InvalidPayload, match="bad call target"):
        await mesh.call(target)


async def test_a_service_whose_nodes_all_stopped_is_unavailable(mesh: TestMesh) -> None:
    (shop,) = mesh.nodes_of("shop")
    await mesh.stop_node(shop)
    with pytest.raises(Unavailable, match="no live node of service 'shop'"):
        await mesh.call("shop.ping")
    # and a node calling it gets the same answer, typed
    with pytest.raises(Unavailable):
        await mesh.call("front.lookup_via_shop", "a")


async def test_every_error_is_a_wiremesh_error(mesh: TestMesh) -> None:
    for target, payload in [
        ("shop.lookup", "zebra"),
        ("shop.reserve", {"sku": "sold-out", "qty": 1}),
        ("shop.nope", None),
        ("nope.nope", None),
        ("bad", None),
    ]:
        with pytest.raises(WiremeshError):
            await mesh.call(target, payload)

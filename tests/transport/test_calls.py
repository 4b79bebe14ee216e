"""Calls over real gRPC: payload shapes, codecs, metadata, callers and named nodes.

Every test runs real nodes on 127.0.0.1 inside the test's event loop (``TestMesh``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

from wiremesh import (
    ConfigError,
    Context,
    InvalidPayload,
    MethodNotFound,
    Service,
    ServiceProxy,
    rpc,
)
from wiremesh.proto.registry_pb2 import Method
from wiremesh.testing import TestMesh
from wiremesh.transport.wire import custom_metadata


class Line(pydantic.BaseModel):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    customer: str
    items: list[Line]


class Summary(pydantic.BaseModel):
    customer: str
    units: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Shop(Service):
    name = "shop"

    @rpc(idempotent=True)
    async def echo(self, ctx: Context, value: Any) -> Any:
        return value

    @rpc
    async def double(self, ctx: Context, n: int) -> int:
        assert type(n) is int
        return n * 2

    @rpc
    async def summarize(self, ctx: Context, order: Order) -> Summary:
        assert isinstance(order, Order)
        assert all(isinstance(line, Line) for line in order.items)
        return Summary(customer=order.customer, units=sum(line.qty for line in order.items))

    @rpc
    async def summary_as_dict(self, ctx: Context, order: Order) -> dict[str, Any]:
        return {"customer": order.customer, "units": str(sum(line.qty for line in order.items))}

    @rpc
    async def mirror(self, ctx: Context, point: Point) -> Point:
        assert isinstance(point, Point)
        return Point(x=-point.x, y=-point.y)

    @rpc
    async def add(self, ctx: Context, a: int, b: int = 10) -> int:
        return a + b

    @rpc
    async def ping(self, ctx: Context) -> str:
        return "pong"

    @rpc
    async def reverse(self, ctx: Context, data: bytes) -> bytes:
        assert isinstance(data, bytes)
        return data[::-1]

    @rpc
    async def rename(self, ctx: Context, method: Method) -> Method:
        assert isinstance(method, Method)
        return Method(name=method.name.upper(), idempotent=not method.idempotent)

    @rpc(idempotent=True)
    async def whoami(self, ctx: Context) -> dict[str, Any]:
        return {
            "node": ctx.node_id,
            "service": ctx.service,
            "method": ctx.method,
            "caller": ctx.caller,
            "metadata": dict(ctx.metadata),
        }


class Front(Service):
    name = "front"

    shop = ServiceProxy("shop", returns={"summarize": Summary})

    @rpc
    async def relay_whoami(self, ctx: Context) -> dict[str, Any]:
        result: dict[str, Any] = await ctx.call("shop.whoami", metadata={"x-hop": "front"})
        return result

    @rpc
    async def via_proxy(self, ctx: Context, order: Order) -> dict[str, Any]:
        summary = await self.shop.summarize(order)
        doubled = await self.shop.double(summary.units)
        return {"type": type(summary).__name__, "units": summary.units, "doubled": doubled}

    @rpc
    async def rename_remote(self, ctx: Context, name: str) -> str:
        reply = await ctx.call("shop.rename", Method(name=name), returns=Method)
        assert isinstance(reply, Method)
        return f"{reply.name}:{reply.idempotent}"


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Shop, Front, replicas={"shop": 2}, drain_grace=0.1) as mesh:
        yield mesh


# -- payload shapes ------------------------------------------------------------------------


PLAIN_VALUES: list[Any] = [
    0,
    -(2**40),
    2.5,
    "naïve text",
    "",
    True,
    None,
    b"\x00\xffbytes",
    [1, "two", None, [3.0]],
    {"nested": {"list": [1, 2], "flag": False}},
]


async def test_plain_values_travel_unchanged(mesh: TestMesh) -> None:
    for value in PLAIN_VALUES:
        assert await mesh.call("shop.echo", value) == value, value


async def test_a_plain_typed_parameter_is_validated(mesh: TestMesh) -> None:
    assert await mesh.call("shop.double", 21) == 42
    assert await mesh.call("shop.double", "21") == 42  # lax validation, as pydantic does


async def test_a_pydantic_model_goes_and_comes_back(mesh: TestMesh) -> None:
    order = Order(customer="ann", items=[Line(sku="A", qty=2), Line(sku="B", qty=3)])
    plain = await mesh.call("shop.summarize", order)
    assert plain == {"customer": "ann", "units": 5}
    typed = await mesh.call("shop.summarize", order, returns=Summary)
    assert typed == Summary(customer="ann", units=5)


async def test_a_model_parameter_accepts_the_plain_mapping(mesh: TestMesh) -> None:
    payload = {"customer": "bo", "items": [{"sku": "A", "qty": "4"}]}
    assert await mesh.call("shop.summarize", payload, returns=Summary) == Summary(
        customer="bo", units=4
    )


async def test_a_dataclass_goes_and_comes_back(mesh: TestMesh) -> None:
    assert await mesh.call("shop.mirror", Point(1, -2)) == {"x": -1, "y": 2}
    assert await mesh.call("shop.mirror", Point(3, 4), returns=Point) == Point(-3, -4)


async def test_several_parameters_take_a_mapping(mesh: TestMesh) -> None:
    assert await mesh.call("shop.add", {"a": 1, "b": 2}) == 3
    assert await mesh.call("shop.add", {"a": 1}) == 11  # the default fills in


async def test_a_method_without_parameters_takes_no_payload(mesh: TestMesh) -> None:
    assert await mesh.call("shop.ping") == "pong"


async def test_returns_validates_the_result_on_the_callers_side(mesh: TestMesh) -> None:
    order = {"customer": "cy", "items": [{"sku": "A", "qty": 7}]}
    # the handler answers a dict with a string count; the caller asks for a model
    summary = await mesh.call("shop.summary_as_dict", order, returns=Summary)
    assert summary == Summary(customer="cy", units=7)
    assert await mesh.call("shop.double", 2, returns=float) == 4.0


async def test_a_result_that_does_not_fit_returns_names_the_field(mesh: TestMesh) -> None:
    with pytest.raises(InvalidPayload, match=r"^result: .*valid integer"):
        await mesh.call("shop.ping", returns=int)
    order = {"customer": "cy", "items": []}
    with pytest.raises(InvalidPayload, match=r"result\.x: Field required"):
        await mesh.call("shop.summary_as_dict", order, returns=Point)


# -- codecs --------------------------------------------------------------------------------


async def test_the_json_codec(mesh: TestMesh) -> None:
    order = Order(customer="di", items=[Line(sku="A", qty=1)])
    assert await mesh.call("shop.summarize", order, codec="json", returns=Summary) == Summary(
        customer="di", units=1
    )
    assert await mesh.call("shop.echo", {"k": [1, "x"]}, codec="json") == {"k": [1, "x"]}
    assert await mesh.call("shop.add", {"a": 5}, codec="json") == 15


async def test_the_raw_codec_carries_bytes(mesh: TestMesh) -> None:
    data = bytes(range(256))
    assert await mesh.call("shop.reverse", data, codec="raw") == data[::-1]
    with pytest.raises(InvalidPayload, match="raw codec carries bytes"):
        await mesh.call("shop.reverse", "text", codec="raw")


async def test_a_protobuf_method_takes_and_returns_protobuf(mesh: TestMesh) -> None:
    reply = await mesh.call("shop.rename", Method(name="stock", idempotent=True), returns=Method)
    assert isinstance(reply, Method)
    assert reply == Method(name="STOCK", idempotent=False)
    raw = await mesh.call("shop.rename", Method(name="x"))
    assert Method.FromString(raw) == Method(name="X", idempotent=True)


async def test_a_protobuf_call_from_a_handler(mesh: TestMesh) -> None:
    assert await mesh.call("front.rename_remote", "quote") == "QUOTE:True"


# -- metadata and callers ------------------------------------------------------------------


async def test_custom_metadata_reaches_the_handler(mesh: TestMesh) -> None:
    seen = await mesh.call(
        "shop.whoami", metadata={"X-Tenant": "acme", "traceparent": "00-abc-01"}, codec="json"
    )
    assert seen["metadata"] == {"x-tenant": "acme", "traceparent": "00-abc-01"}
    assert seen["service"] == "shop"
    assert seen["method"] == "whoami"


async def test_custom_metadata_is_not_passed_on_to_nested_calls(mesh: TestMesh) -> None:
    seen = await mesh.call("front.relay_whoami", metadata={"x-tenant": "acme"})
    assert seen["metadata"] == {"x-hop": "front"}


def test_custom_metadata_pairs_are_lowercased_and_checked() -> None:
    assert custom_metadata({"X-Tenant": "acme", "trace.id": "a-1_b"}) == [
        ("x-tenant", "acme"),
        ("trace.id", "a-1_b"),
    ]
    with pytest.raises(InvalidPayload, match="'WM-Codec' is reserved"):
        custom_metadata({"WM-Codec": "json"})
    with pytest.raises(InvalidPayload, match="'x y' is not a valid one"):
        custom_metadata({"x y": "1"})
    with pytest.raises(InvalidPayload, match="value of metadata key 'x' must be printable"):
        custom_metadata({"x": "caf\u00e9"})


@pytest.mark.parametrize(
    "metadata",
    [
        {"wm-codec": "json"},
        {"grpc-timeout": "1S"},
        {"user-agent": "me"},
        {"content-type": "text/plain"},
        {"bad key": "v"},
        {"": "v"},
        {"x-tenant": "café"},
        {"x-tenant": "a\nb"},
        {"x-data-bin": "abc"},
    ],
)
async def test_metadata_grpc_would_refuse_is_invalid_before_sending(
    mesh: TestMesh, metadata: dict[str, str]
) -> None:
    with pytest.raises(InvalidPayload, match="metadata key"):
        await mesh.call("shop.whoami", metadata=metadata)


async def test_a_call_from_outside_has_no_caller(mesh: TestMesh) -> None:
    seen = await mesh.call("shop.whoami")
    assert seen["caller"] is None
    assert seen["metadata"] == {}


async def test_a_call_from_a_node_names_its_caller(mesh: TestMesh) -> None:
    (front,) = mesh.nodes_of("front")
    seen = await mesh.call("front.relay_whoami")
    assert seen["caller"] == f"front@{front.node_id}"
    assert seen["metadata"] == {"x-hop": "front"}
    assert seen["node"] in {n.node_id for n in mesh.nodes_of("shop")}


async def test_a_service_proxy_calls_from_a_handler(mesh: TestMesh) -> None:
    order = {"customer": "ed", "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 2}]}
    assert await mesh.call("front.via_proxy", order) == {
        "type": "Summary",
        "units": 4,
        "doubled": 8,
    }


async def test_a_service_proxy_outside_a_handler_calls_through_the_node(mesh: TestMesh) -> None:
    """E.g. from a background task: no handler context, the node's own caller is used."""
    (front,) = mesh.nodes_of("front")
    instance = mesh.instance("front")
    summary = await instance.shop.summarize({"customer": "fa", "items": []})
    assert summary == Summary(customer="fa", units=0)
    seen = await instance.shop.whoami()
    assert seen["caller"] == f"front@{front.node_id}"


# -- named nodes ---------------------------------------------------------------------------


async def test_a_named_node_answers_every_call(mesh: TestMesh) -> None:
    first, second = mesh.nodes_of("shop")
    for node in (first, second):
        by_target = [await mesh.call(f"shop@{node.node_id}.whoami") for _ in range(3)]
        by_option = [await mesh.call("shop.whoami", node=node.node_id) for _ in range(3)]
        assert {seen["node"] for seen in by_target + by_option} == {node.node_id}


async def test_unnamed_calls_reach_both_nodes(mesh: TestMesh) -> None:
    seen = {(await mesh.call("shop.whoami"))["node"] for _ in range(4)}
    assert seen == {n.node_id for n in mesh.nodes_of("shop")}


# -- what gets served ----------------------------------------------------------------------


async def test_a_method_served_under_another_name() -> None:
    class Renamed(Service):
        name = "renamed"

        @rpc(name="getValue")
        async def get_value(self, ctx: Context) -> int:
            return 7

    async with TestMesh(Renamed, drain_grace=0.1) as mesh:
        assert await mesh.call("renamed.getValue") == 7
        with pytest.raises(MethodNotFound):
            await mesh.call("renamed.get_value")


def test_two_methods_on_one_wire_name_are_refused() -> None:
    class Clash(Service):
        name = "clash"

        @rpc(name="go")
        async def first(self, ctx: Context) -> int:
            return 1

        @rpc
        async def go(self, ctx: Context) -> int:
            return 2

    with pytest.raises(ConfigError, match="'first' and 'go' are both served as 'go'"):
        TestMesh(Clash)

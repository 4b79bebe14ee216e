"""A client written from ``docs/protocol.md`` alone: plain ``grpc.aio``, ``msgpack`` and ``json``.

wiremesh is used only to run the node under test (an embedded registry and a real
:class:`~wiremesh.runtime.node.Node` on loopback). Every call below goes through a plain gRPC
channel with the paths, metadata keys, codecs and trailers the protocol document names, as a
client in another language would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import msgpack
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, Field

from wiremesh import Context, Service, ServiceError, Status, rpc
from wiremesh.proto import registry_pb2
from wiremesh.registry.embedded import RegistryServer
from wiremesh.runtime.node import Node


class Order(BaseModel):
    sku: str
    qty: int = Field(gt=0)


class Reservation(BaseModel):
    id: uuid.UUID
    sku: str
    qty: int
    at: datetime


class OutOfStock(ServiceError):
    status = Status.FAILED_PRECONDITION


class Shop(Service):
    name = "shop"

    @rpc(idempotent=True)
    async def hello(self, ctx: Context, who: str) -> str:
        return f"hello, {who}"

    @rpc
    async def reserve(self, ctx: Context, order: Order) -> Reservation:
        if order.sku == "sold-out":
            raise OutOfStock(f"no stock left of {order.sku}", details={"sku": order.sku})
        return Reservation(
            id=uuid.UUID(int=7), sku=order.sku, qty=order.qty, at=datetime(2024, 5, 1, 12, 30)
        )

    @rpc(idempotent=True)
    async def add(self, ctx: Context, a: int, b: int = 10) -> int:
        return a + b

    @rpc
    async def whoami(self, ctx: Context) -> dict[str, Any]:
        return {
            "node": ctx.node_id,
            "caller": ctx.caller,
            "metadata": dict(ctx.metadata),
            "remaining": ctx.remaining,
        }

    @rpc
    async def wait(self, ctx: Context, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


@dataclass
class Running:
    node: Node
    registry: RegistryServer
    channel: grpc.aio.Channel

    def method(self, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        # raw bytes in and out: no serializer, as docs/protocol.md prescribes
        return self.channel.unary_unary(f"/shop/{name}")


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Running]:
    registry = RegistryServer()
    await registry.start()
    node = Node(Shop, registry_address=registry.address, data_dir=tmp_path / "shop")
    await node.start()
    channel = grpc.aio.insecure_channel(node.address)
    try:
        yield Running(node, registry, channel)
    finally:
        await channel.close()
        await node.stop(0.1)
        await registry.stop(0.1)


def wm_error(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The ``wm-error`` trailing metadata of a failed call, parsed."""
    for key, value in error.trailing_metadata() or ():
        if key == "wm-error":
            assert isinstance(value, str)
            body: dict[str, Any] = json.loads(value)
            return body
    raise AssertionError(f"no wm-error trailer in {error.trailing_metadata()!r}")


async def test_call_with_msgpack(shop: Running) -> None:
    body = msgpack.packb("abc")
    assert body == bytes.fromhex("a3 61 62 63")  # the bytes docs/protocol.md shows
    reply = await shop.method("hello")(body, timeout=5)
    assert reply == bytes.fromhex("aa") + b"hello, abc"
    assert msgpack.unpackb(reply) == "hello, abc"


async def test_call_with_json_codec(shop: Running) -> None:
    reply = await shop.method("hello")(
        json.dumps("abc").encode(), metadata=(("wm-codec", "json"),), timeout=5
    )
    assert json.loads(reply) == "hello, abc"


async def test_rich_result_is_flattened_to_plain_values(shop: Running) -> None:
    reply = await shop.method("reserve")(msgpack.packb({"sku": "A-1", "qty": 2}), timeout=5)
    assert msgpack.unpackb(reply) == {
        "id": "00000000-0000-0000-0000-000000000007",
        "sku": "A-1",
        "qty": 2,
        "at": "2024-05-01T12:30:00",
    }


async def test_several_parameters_travel_as_a_map(shop: Running) -> None:
    add = shop.method("add")
    assert msgpack.unpackb(await add(msgpack.packb({"a": 2, "b": 3}), timeout=5)) == 5
    # a parameter with a default may be left out
    assert msgpack.unpackb(await add(msgpack.packb({"a": 2}), timeout=5)) == 12


async def test_no_parameter_method_takes_an_empty_body_and_sees_custom_metadata(
    shop: Running,
) -> None:
    reply = await shop.method("whoami")(
        b"",
        metadata=(("x-tenant", "acme"), ("wm-caller", "billing@billing-0001")),
        timeout=5,
    )
    seen = msgpack.unpackb(reply)
    assert seen["node"] == shop.node.node_id
    assert seen["caller"] == "billing@billing-0001"
    assert seen["metadata"] == {"x-tenant": "acme"}
    # gRPC's own clock conversion on the server may add a few milliseconds
    assert 0 < seen["remaining"] <= 5 + 0.05


async def test_a_compressed_call_shows_no_transport_header_in_the_metadata(
    shop: Running,
) -> None:
    reply = await shop.method("whoami")(
        b"",
        # what other gRPC libraries (grpc-js, grpc-go) send beside the payload's compression
        metadata=(("x-tenant", "acme"), ("accept-encoding", "identity,gzip")),
        compression=grpc.Compression.Gzip,
        timeout=5,
    )
    assert msgpack.unpackb(reply)["metadata"] == {"x-tenant": "acme"}


async def test_domain_error_arrives_in_the_wm_error_trailer(shop: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.method("reserve")(msgpack.packb({"sku": "sold-out", "qty": 1}), timeout=5)
    error = caught.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "no stock left of sold-out"
    body = wm_error(error)
    assert body["status"] == "failed_precondition"
    assert body["type"].endswith(".OutOfStock")
    assert body["message"] == "no stock left of sold-out"
    assert body["node"] == shop.node.node_id
    assert body["details"] == {"sku": "sold-out"}


async def test_invalid_payload_is_invalid_argument_naming_the_field(shop: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.method("reserve")(msgpack.packb({"sku": "A-1", "qty": "many"}), timeout=5)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("qty: ")
    body = wm_error(error)
    assert body["status"] == "invalid_payload"
    assert body["message"].startswith("qty: ")


async def test_several_parameters_missing_one_names_it(shop: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.method("add")(msgpack.packb({"b": 1}), timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("a: ")


async def test_unknown_codec_is_invalid_argument(shop: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.method("hello")(b"abc", metadata=(("wm-codec", "xml"),), timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert wm_error(caught.value)["status"] == "invalid_payload"


async def test_unknown_method_is_unimplemented(shop: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.method("nope")(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_deadline_travels_as_the_grpc_timeout(shop: Running) -> None:
    # the handler sees the caller's deadline, not the node's 10 s default
    seen = msgpack.unpackb(await shop.method("whoami")(b"", timeout=0.8))
    # gRPC's own clock conversion on the server may add a few milliseconds
    assert 0 < seen["remaining"] <= 0.8 + 0.05
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.method("wait")(msgpack.packb(5.0), timeout=0.2)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_health_check_is_serving(shop: Running) -> None:
    stub = health_pb2_grpc.HealthStub(shop.channel)
    for service in ("", "shop"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="pricing"), timeout=5)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_registry_list_finds_the_node_and_its_methods(shop: Running) -> None:
    async with grpc.aio.insecure_channel(shop.registry.address) as channel:
        list_nodes = channel.unary_unary(
            "/wiremesh.registry.v1.Registry/List",
            request_serializer=registry_pb2.WatchRequest.SerializeToString,
            response_deserializer=registry_pb2.Snapshot.FromString,
        )
        snapshot: registry_pb2.Snapshot = await list_nodes(registry_pb2.WatchRequest(), timeout=5)
    assert "shop" in snapshot.services
    (found,) = [n for n in snapshot.nodes if n.node_id == shop.node.node_id]
    assert found.service == "shop"
    assert found.address == shop.node.address
    assert found.state == "serving"
    assert {m.name: m.idempotent for m in found.methods} == {
        "hello": True,
        "reserve": False,
        "add": True,
        "whoami": False,
        "wait": False,
    }

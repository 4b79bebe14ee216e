"""Bad input from outside gets a clear, typed answer, and the node keeps serving.

The misbehaving peers here are raw sockets and raw grpcio channels (a fake only for what
is truly outside); the node under test is a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import msgpack
import pytest

from wiremesh import (
    Context,
    InvalidPayload,
    MethodNotFound,
    PayloadTooLarge,
    Service,
    rpc,
)
from wiremesh.runtime.node import Node
from wiremesh.testing import TestMesh
from wiremesh.transport.wire import error_from_rpc_error

LIMIT = 64 * 1024


class Store(Service):
    name = "store"

    @rpc(idempotent=True)
    async def put(self, ctx: Context, key: str, qty: int) -> dict[str, Any]:
        return {"key": key, "qty": qty}

    @rpc
    async def size(self, ctx: Context, data: bytes) -> int:
        return len(data)

    @rpc
    async def blob(self, ctx: Context, size: int) -> bytes:
        return b"x" * size

    @rpc
    async def ping(self, ctx: Context) -> str:
        return "pong"


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Store, max_message_bytes=LIMIT, drain_grace=0.1) as mesh:
        yield mesh


@pytest.fixture
def node(mesh: TestMesh) -> Node:
    (node,) = mesh.nodes_of("store")
    return node


@pytest.fixture
async def channel(node: Node) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        yield channel


async def still_serving(mesh: TestMesh) -> None:
    assert await mesh.call("store.put", {"key": "k", "qty": 1}, timeout=2) == {"key": "k", "qty": 1}
    assert await mesh.call("store.ping", timeout=2) == "pong"


async def raw_call(
    channel: grpc.aio.Channel,
    path: str,
    body: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    call = channel.unary_unary(path, None, None)
    result: bytes = await call(body, timeout=2, metadata=metadata or None)
    return result


def wm_error(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    for key, value in error.trailing_metadata() or ():
        if key == "wm-error":
            body: dict[str, Any] = json.loads(value)
            return body
    raise AssertionError(f"no wm-error trailer in {error.trailing_metadata()!r}")


# -- bytes that are not gRPC at all --------------------------------------------------------

JUNK = [
    pytest.param(os.urandom(4096), id="random-bytes"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http1"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512), id="h2-preface-then-junk"),
    pytest.param(b"\x00" * 65536, id="zeros"),
]


@pytest.mark.parametrize("junk", JUNK)
async def test_junk_on_the_port_is_dropped_and_the_node_keeps_serving(
    mesh: TestMesh, node: Node, junk: bytes
) -> None:
    host, port = node.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(junk)
        await writer.drain()
        # the node answers with an HTTP/2 GOAWAY or nothing, then closes: never hangs
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass  # a reset is a fine way to refuse junk too
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await still_serving(mesh)


async def test_many_junk_connections_at_once(mesh: TestMesh, node: Node) -> None:
    host, port = node.address.rsplit(":", 1)

    async def one() -> None:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(os.urandom(1024))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(20)))
    await still_serving(mesh)


# -- gRPC calls with bad bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(b"\x92\x01", id="truncated-array"),
        pytest.param(b"\x81\x90\x01", id="unhashable-map-key"),
        pytest.param(msgpack.packb({"key": "k", "qty": 1}) + b"\x00", id="trailing-bytes"),
        pytest.param(b"{not msgpack at all", id="text"),
    ],
)
async def test_a_body_that_is_not_msgpack_is_invalid_argument(
    mesh: TestMesh, channel: grpc.aio.Channel, body: bytes
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_call(channel, "/store/put", body)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = wm_error(info.value)
    assert error["type"] == "wiremesh.errors.InvalidPayload"
    assert error["status"] == "invalid_payload"
    assert isinstance(error_from_rpc_error(info.value, node=None), InvalidPayload)
    await still_serving(mesh)


async def test_a_body_that_is_not_json_under_the_json_codec(
    mesh: TestMesh, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_call(channel, "/store/put", b"{'single': quotes}", (("wm-codec", "json"),))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid json" in wm_error(info.value)["message"]
    await still_serving(mesh)


async def test_a_valid_body_with_an_invalid_field_names_it(
    mesh: TestMesh, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_call(channel, "/store/put", msgpack.packb({"key": "k", "qty": "many"}))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert wm_error(info.value)["message"].startswith("qty: ")
    await still_serving(mesh)


async def test_a_raw_call_with_a_good_body_works(channel: grpc.aio.Channel) -> None:
    reply = await raw_call(channel, "/store/put", msgpack.packb({"key": "k", "qty": 2}))
    assert msgpack.unpackb(reply) == {"key": "k", "qty": 2}


@pytest.mark.parametrize("codec", ["yaml", "", "MSGPACK", "msgpack "])
async def test_an_unknown_codec_is_invalid_argument(
    mesh: TestMesh, channel: grpc.aio.Channel, codec: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_call(channel, "/store/ping", b"", (("wm-codec", codec),))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = wm_error(info.value)
    assert error["status"] == "invalid_payload"
    assert f"unknown codec {codec!r}" in error["message"]
    await still_serving(mesh)


async def test_an_unknown_codec_is_refused_by_our_own_client(mesh: TestMesh) -> None:
    with pytest.raises(InvalidPayload, match="unknown codec 'yaml'"):
        await mesh.call("store.ping", codec="yaml")  # type: ignore[arg-type]


# -- size limits ---------------------------------------------------------------------------


async def test_an_oversized_request_is_payload_too_large(mesh: TestMesh) -> None:
    with pytest.raises(PayloadTooLarge):
        await mesh.call("store.size", b"x" * 100 * 1024, timeout=2)
    assert await mesh.call("store.size", b"x" * 1024) == 1024
    await still_serving(mesh)


async def test_an_oversized_raw_request_is_resource_exhausted(
    mesh: TestMesh, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_call(channel, "/store/size", msgpack.packb(b"x" * 100 * 1024))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    await still_serving(mesh)


async def test_an_oversized_response_is_payload_too_large(mesh: TestMesh) -> None:
    with pytest.raises(PayloadTooLarge):
        await mesh.call("store.blob", 100 * 1024, timeout=2)
    assert await mesh.call("store.blob", 10) == b"x" * 10
    await still_serving(mesh)


# -- unknown paths -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/store/nope", "/nope/ping", "/store", "/", "/store/ping/x"])
async def test_an_unknown_path_is_unimplemented(
    mesh: TestMesh, channel: grpc.aio.Channel, path: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_call(channel, path, b"")
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(error_from_rpc_error(info.value, node="store-x"), MethodNotFound)
    await still_serving(mesh)


async def test_the_health_service_answers(channel: grpc.aio.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "store"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

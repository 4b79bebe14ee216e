"""Wire rules that are easy to get wrong: default deadlines for foreign callers, the codec
of a protobuf method's answer, results that cannot travel, structured validation errors,
binary metadata and pydantic aliases."""

from __future__ import annotations

import asyncio
import json

import grpc
import msgpack
import pytest
from pydantic import BaseModel, Field

from wiremesh import Context, DeadlineExceeded, InternalError, InvalidPayload, Service, rpc
from wiremesh.proto.registry_pb2 import Method
from wiremesh.testing import TestMesh


class Line(BaseModel):
    sku: str
    qty: int


class Aliased(BaseModel):
    item_code: str = Field(alias="itemCode")


class Wire(Service):
    name = "wire"

    @rpc
    async def slow(self, ctx: Context, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @rpc
    async def describe(self, ctx: Context, method: Method) -> dict[str, object]:
        return {"name": method.name, "idempotent": method.idempotent}

    @rpc
    async def echo_method(self, ctx: Context, method: Method) -> Method:
        return Method(name=method.name.upper(), idempotent=True)

    @rpc
    async def not_utf8(self, ctx: Context) -> bytes:
        return b"\xff\xfe"

    @rpc
    async def lines(self, ctx: Context, lines: list[Line]) -> int:
        return sum(line.qty for line in lines)

    @rpc
    async def meta(self, ctx: Context) -> str:
        value = ctx.metadata.get("trace-bin")
        return type(value).__name__ + ":" + (value.hex() if isinstance(value, bytes) else "")

    @rpc
    async def aliased(self, ctx: Context, value: Aliased) -> Aliased:
        return Aliased(itemCode=value.item_code + "!")


async def test_a_foreign_call_without_a_timeout_gets_the_node_default() -> None:
    async with TestMesh(Wire, default_timeout=0.3) as mesh:
        node = mesh.nodes[0]
        async with grpc.aio.insecure_channel(node.address) as channel:
            call = channel.unary_unary("/wire/slow")(msgpack.packb(5.0))  # no timeout
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 5.0)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        trailer = dict(info.value.trailing_metadata() or ())["wm-error"]
        assert json.loads(trailer)["status"] == "deadline_exceeded"
        # the node goes on serving
        assert await mesh.call("wire.slow", 0.0) == "done"


async def test_a_protobuf_parameter_with_a_plain_result() -> None:
    async with TestMesh(Wire) as mesh:
        result = await mesh.call("wire.describe", Method(name="x", idempotent=True))
        assert result == {"name": "x", "idempotent": True}


async def test_a_protobuf_result_comes_back_as_protobuf() -> None:
    async with TestMesh(Wire) as mesh:
        raw = await mesh.call("wire.echo_method", Method(name="ab"))
        assert Method.FromString(raw) == Method(name="AB", idempotent=True)
        typed = await mesh.call("wire.echo_method", Method(name="cd"), returns=Method)
        assert typed == Method(name="CD", idempotent=True)


async def test_a_result_that_cannot_travel_is_the_methods_fault() -> None:
    async with TestMesh(Wire) as mesh:
        with pytest.raises(InternalError, match="cannot travel"):
            await mesh.call("wire.not_utf8", codec="json")
        assert await mesh.call("wire.not_utf8") == b"\xff\xfe"  # msgpack carries bytes


async def test_validation_errors_arrive_structured() -> None:
    async with TestMesh(Wire) as mesh:
        with pytest.raises(InvalidPayload) as info:
            await mesh.call("wire.lines", [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "x"}])
        errors = info.value.details["errors"]
        assert errors[0]["field"] == "1.qty"
        assert "valid integer" in errors[0]["message"]


async def test_binary_metadata_reaches_the_handler_as_bytes() -> None:
    async with TestMesh(Wire) as mesh:
        async with grpc.aio.insecure_channel(mesh.nodes[0].address) as channel:
            answer = await channel.unary_unary("/wire/meta")(
                b"", metadata=(("trace-bin", b"\x00\x01"),), timeout=5
            )
        assert msgpack.unpackb(answer) == "bytes:0001"


async def test_pydantic_aliases_travel_in_both_codecs() -> None:
    async with TestMesh(Wire) as mesh:
        for codec in ("msgpack", "json"):
            result = await mesh.call("wire.aliased", Aliased(itemCode="A"), codec=codec)
            assert result == {"itemCode": "A!"}


async def test_a_call_within_its_deadline_is_not_cut_by_the_default() -> None:
    async with TestMesh(Wire, default_timeout=0.3) as mesh:
        assert await mesh.call("wire.slow", 0.5, timeout=3.0) == "done"
        with pytest.raises(DeadlineExceeded):
            await mesh.call("wire.slow", 2.0)  # the client's own default, 0.3 s

"""Mesh links and the errors that come back over them (transport/wire.py, transport/link.py,
proto/wiremesh/link/v1/link.proto).

A peer on a link is any program that opens ``Link/Open`` (docs/protocol.md §12). What it
sends must come out as calls served, answers matched, or frames ignored: a batch that does
not parse is refused by protobuf (``DecodeError``, before wiremesh sees it); every CALL is
answered with a REPLY or a typed ERROR; an ERROR's JSON, however malformed, becomes a
:class:`~wiremesh.errors.WiremeshError` that prints and travels on. The link's reading
side runs here over an in-memory stream, with a real node's methods behind it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import msgpack
import pydantic
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import (
    Pipe,
    json_values,
    msgpack_values,
    mutated,
    peak_bytes,
    protobuf_bytes,
)
from wiremesh import Context, Service, rpc
from wiremesh.core.topics import matches
from wiremesh.errors import Status, WiremeshError
from wiremesh.proto import link_pb2 as pb
from wiremesh.proto import registry_pb2
from wiremesh.service import ServiceSpec
from wiremesh.testing import worker
from wiremesh.transport.dispatch import methods_of
from wiremesh.transport.link import Link
from wiremesh.transport.peer_links import NodeLinks
from wiremesh.transport.wire import error_body, error_from_body, error_from_rpc_error

FUZZ = settings.get_profile("wiremesh-fuzz")
SCENARIOS = settings.get_profile("wiremesh-fuzz-scenarios")

# ------------------------------------------------------------------ errors: wm-error JSON

_error_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.text(max_size=30), json_values),
        "status": st.one_of(st.sampled_from([s.value for s in Status]), json_values),
        "message": st.one_of(st.text(), json_values),
        "node": st.one_of(st.text(max_size=20), json_values),
        "details": st.one_of(st.dictionaries(st.text(max_size=8), json_values), json_values),
    },
).map(json.dumps)
_error_texts = st.one_of(
    st.text(max_size=200),
    _error_objects,
    _error_objects.flatmap(lambda t: mutated(t.encode())).map(
        lambda b: b.decode("utf-8", "replace")
    ),
    st.integers(1, 2000).map(
        lambda depth: '{"status": "internal", "details": {"a": ' + "[" * depth + "]" * depth + "}}"
    ),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
)


def assert_usable(error: WiremeshError) -> None:
    """An error rebuilt from a peer's JSON prints, is typed, and can be sent on."""
    assert isinstance(error, WiremeshError)
    assert isinstance(error.status, Status)
    assert isinstance(error.message, str)
    assert error.node is None or isinstance(error.node, str)
    assert error.remote_type is None or isinstance(error.remote_type, str)
    assert isinstance(error.details, dict)
    str(error)
    json.loads(error_body(error, "here-1"))  # a node passes it on to its own caller


@FUZZ
@given(text=_error_texts)
def test_any_error_json_becomes_a_wiremesh_error(text: str) -> None:
    assert_usable(error_from_body(text, node="peer-1"))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # RecursionError inside json.loads
        '{"status": "internal", "message": ' + "[" * 50_000,
        '{"status": "internal", "type": 5}',  # printing it raised AttributeError
        '{"status": "internal", "type": true, "node": 7}',
        '{"status": "internal", "node": {"a": 1}}',
        '{"status": "internal", "type": ["a"]}',
    ],
    ids=["deep", "deep-message", "int-type", "bool-type", "dict-node", "list-type"],
)
def test_error_json_that_once_broke_the_caller_becomes_a_wiremesh_error(text: str) -> None:
    assert_usable(error_from_body(text, node="peer-1"))


def deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def looped() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


@pytest.mark.parametrize("details", [looped(), deep(5000)], ids=["cycle", "deep"])
def test_error_details_that_cannot_be_sent_are_dropped_not_raised(
    details: dict[str, Any],
) -> None:
    error = WiremeshError("x", details=details)
    assert "details" not in json.loads(error_body(error, "here-1"))


@FUZZ
@given(
    code=st.sampled_from(list(grpc.StatusCode)),
    trailer=st.one_of(st.none(), _error_texts.map(lambda t: t.encode("ascii", "replace").decode())),
    details=st.one_of(st.none(), st.text(max_size=60)),
)
def test_any_failed_grpc_call_becomes_a_wiremesh_error(
    code: grpc.StatusCode, trailer: str | None, details: str | None
) -> None:
    trailers = grpc.aio.Metadata(("wm-error", trailer)) if trailer is not None else None
    failed = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=details)
    assert_usable(error_from_rpc_error(failed, node="peer-1"))


# ------------------------------------------------------------------ frames: the Batch message


class Line(pydantic.BaseModel):
    sku: str
    qty: int


class Echo(Service):
    name = "echo"

    @rpc
    async def echo(self, ctx: Context, value: Any) -> Any:
        return value

    @rpc
    async def order(self, ctx: Context, line: Line) -> Line:
        return line

    @rpc
    async def add(self, ctx: Context, a: int, b: int = 1) -> int:
        return a + b

    @rpc
    async def ping(self, ctx: Context) -> str:
        return "pong"

    @rpc
    async def blob(self, ctx: Context, data: bytes) -> bytes:
        return data

    @rpc
    async def method(self, ctx: Context, m: registry_pb2.Method) -> registry_pb2.Method:
        return m


ECHO = ServiceSpec.of(Echo)
_instance: list[Echo] = []


def echo_instance() -> Echo:
    if not _instance:  # one for the whole module: worker() makes a folder for its store
        instance = worker(Echo)
        assert isinstance(instance, Echo)
        _instance.append(instance)
    return _instance[0]


_payloads = st.one_of(
    st.binary(max_size=64),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.fixed_dictionaries({"sku": msgpack_values, "qty": msgpack_values}).map(msgpack.packb),
    st.fixed_dictionaries({"a": msgpack_values}, optional={"b": msgpack_values}).map(msgpack.packb),
    json_values.map(lambda v: json.dumps(v).encode()),
).flatmap(lambda p: st.one_of(st.just(p), mutated(p)))

_frames = st.builds(
    pb.Frame,
    kind=st.integers(0, 7),  # 7: a kind this side does not know
    id=st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1)),
    service=st.sampled_from(["echo", "", "other", "echo "]),
    method=st.one_of(st.sampled_from(sorted(ECHO.methods)), st.text(max_size=10)),
    payload=_payloads,
    timeout_ms=st.one_of(st.just(0), st.integers(1, 2**32 - 1)),
    codec=st.sampled_from(["", "msgpack", "json", "raw", "proto", "xml", "MSGPACK"]),
    caller=st.text(max_size=20),
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    topic=st.text(max_size=20),
    error=st.one_of(st.text(max_size=40), _error_objects),
    node_id=st.text(max_size=20),
    not_run=st.booleans(),
    trace=st.binary(max_size=30),
    tracestate=st.text(max_size=20),
)
_batches = st.lists(_frames, max_size=6).map(lambda frames: pb.Batch(frames=frames))


def test_a_batch_declaring_a_huge_payload_allocates_nothing_for_it() -> None:
    # field 1 (frames), length 4 GiB - 1, then five bytes: protobuf checks the length first
    data = b"\x0a\xff\xff\xff\xff\x0f" + b"\x2a\xff\xff\xff\x7f"
    with pytest.raises(DecodeError):
        pb.Batch.FromString(data)
    assert peak_bytes(lambda: pb.Batch.FromString(data)) < 64 * 1024


async def serve(batches: list[pb.Batch]) -> list[pb.Frame]:
    """Run a node's end of a link over ``batches``; return every frame it wrote."""
    instance = echo_instance()
    handler = NodeLinks(
        service="echo",
        node_id="echo-1",
        methods=methods_of(ECHO, instance, "echo-1", instance.mesh),  # type: ignore[arg-type]
        default_timeout=2.0,
    )
    pipe = Pipe(batches, linger=0.005)
    link = Link(pipe, local_id="echo-1", local_service="echo", handler=handler)
    await asyncio.wait_for(link.run(), 10)
    assert not link.serving, "a handler outlived its link"
    return [frame for batch in pipe.written for frame in batch.frames]


@SCENARIOS
@given(batches=st.lists(_batches, min_size=1, max_size=3))
def test_a_node_answers_every_call_and_survives_any_frames(batches: list[pb.Batch]) -> None:
    written = asyncio.run(serve(batches))
    calls = [f.id for b in batches for f in b.frames if f.kind == pb.Frame.CALL]
    cancelled = {f.id for b in batches for f in b.frames if f.kind == pb.Frame.CANCEL}
    answers = [f for f in written if f.kind in (pb.Frame.REPLY, pb.Frame.ERROR)]
    answered = {f.id for f in answers}
    for call_id in calls:
        if calls.count(call_id) == 1 and call_id not in cancelled:
            assert call_id in answered, f"call {call_id} got no answer"
    for frame in answers:
        if frame.kind == pb.Frame.ERROR:
            error = error_from_body(frame.error, node=None)
            assert not error.message.startswith("a malformed error came back")


@SCENARIOS
@given(data=protobuf_bytes(_batches))
def test_a_node_survives_any_bytes_a_peer_sends(data: bytes) -> None:
    try:
        batch = pb.Batch.FromString(data)
    except DecodeError:
        return  # grpc refuses the message before the link reads it
    asyncio.run(serve([batch]))


# ------------------------------------------------------------------ PUBLISH frames: topics


def test_a_long_published_topic_is_matched_in_memory_bounded_by_its_length() -> None:
    # a PUBLISH frame's topic reaches a node's subscription patterns unchecked (12 KB here)
    topic = ".".join([f"prices-{uuid.uuid4().hex}", *["a"] * 6000])
    pattern = topic.split(".", 1)[0] + ".#.x"
    assert peak_bytes(lambda: matches(pattern, topic)) < 64 * 1024 + 64 * len(topic)

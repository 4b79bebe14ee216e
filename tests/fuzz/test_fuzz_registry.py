"""The registry's messages, as the embedded registry and the Redis registry read them
(registry/embedded.py, registry/redis.py, proto/wiremesh/registry/v1/registry.proto).

A node's record comes from whoever leases (any local program, for the embedded registry)
or from whatever is in Redis: a record or a change message on the channel may have been
written by another program (docs/protocol.md §8.3). A record that does not parse is
refused by protobuf (``DecodeError``) or, in Redis, skipped; a change that does not follow
makes the watcher read everything again; nothing else escapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import mutated, protobuf_bytes
from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState
from wiremesh.proto import registry_pb2 as pb
from wiremesh.registry.embedded import RegistryServer, node_from_proto, snapshot_from_proto
from wiremesh.registry.redis import _Mesh, _snapshot

FUZZ = settings.get_profile("wiremesh-fuzz")

_names = st.one_of(st.sampled_from(["orders", "orders-1", "billing", ""]), st.text(max_size=12))
_nodes = st.builds(
    pb.Node,
    node_id=_names,
    service=_names,
    address=st.one_of(st.just("127.0.0.1:5001"), st.text(max_size=20)),
    pid=st.integers(-(2**31), 2**31 - 1),
    started_at=st.floats(allow_nan=True, allow_infinity=True),
    state=st.sampled_from(["serving", "draining", "", "dead", "SERVING"]),
    methods=st.lists(
        st.builds(pb.Method, name=_names, idempotent=st.booleans(), returns_protobuf=st.booleans()),
        max_size=3,
    ),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3),
    groups=st.lists(_names, max_size=3),
    subscriptions=st.lists(st.text(max_size=12), max_size=3),
    stats=st.dictionaries(st.text(max_size=8), st.integers(0, 2**64 - 1), max_size=3),
    host=st.text(max_size=12),
)
_snapshots = st.builds(
    pb.Snapshot,
    version=st.integers(0, 2**64 - 1),
    nodes=st.lists(_nodes, max_size=3),
    services=st.lists(_names, max_size=3),
    epoch=st.text(max_size=16),
)


def assert_typed(node: NodeInfo) -> None:
    assert isinstance(node.state, NodeState)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in node.metadata.items())
    assert all(isinstance(v, int) and v >= 0 for v in node.stats.values())
    assert all(info.name == name for name, info in node.methods.items())


# ------------------------------------------------------------------ records


@FUZZ
@given(data=protobuf_bytes(_nodes))
def test_any_record_reads_as_a_node_or_fails_with_decode_error(data: bytes) -> None:
    try:
        message = pb.Node.FromString(data)
    except DecodeError:
        return
    assert_typed(node_from_proto(message))


@FUZZ
@given(data=protobuf_bytes(_snapshots))
def test_any_snapshot_reads_as_a_mesh_or_fails_with_decode_error(data: bytes) -> None:
    try:
        message = pb.Snapshot.FromString(data)
    except DecodeError:
        return
    snapshot = snapshot_from_proto(message)
    assert isinstance(snapshot, MeshSnapshot)
    for node in snapshot.nodes:
        assert_typed(node)
        assert node.service in snapshot.services


# ------------------------------------------------------------------ the embedded registry's lease

_lease_requests = st.one_of(
    _nodes.map(lambda n: pb.LeaseRequest(register=n)),
    _nodes.map(lambda n: pb.LeaseRequest(update=n)),
    st.builds(
        pb.Heartbeat,
        state=st.sampled_from(["", "serving", "draining", "gone", "Serving"]),
        stats=st.dictionaries(st.text(max_size=8), st.integers(0, 2**64 - 1), max_size=2),
    ).map(lambda h: pb.LeaseRequest(heartbeat=h)),
    st.just(pb.LeaseRequest()),
)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code


class Context:
    """What the registry's Lease handler uses of a ``ServicerContext``."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        pass


async def lease(requests: list[pb.LeaseRequest]) -> RegistryServer:
    server = RegistryServer()

    async def stream() -> AsyncIterator[pb.LeaseRequest]:
        for request in requests:
            yield request
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(server.lease(stream(), Context()), 10)
    except Aborted as exc:  # documented: a stream that leases a second node id
        assert exc.code is grpc.StatusCode.INVALID_ARGUMENT
    await server.stop(0)
    return server


@FUZZ
@given(requests=st.lists(_lease_requests, max_size=6))
def test_any_lease_stream_registers_renews_and_leaves(requests: list[pb.LeaseRequest]) -> None:
    server = asyncio.run(lease(requests))
    # the stream ended: the node it leased left the mesh (docs/protocol.md §8.2, rule 4)
    assert len(server.membership) == 0


# ------------------------------------------------------------------ the Redis registry

EPOCH = b"e1"


def mesh_at(version: int) -> _Mesh:
    return _Mesh("e1", version, {}, set())


def change(epoch: bytes, version: bytes, op: bytes, node_id: str, record: bytes) -> bytes:
    return b" ".join([epoch, version, op, node_id.encode(), record])


_records = protobuf_bytes(_nodes)
_changes = st.builds(
    change,
    epoch=st.sampled_from([EPOCH, b"e2", b"", b"\xff"]),
    version=st.one_of(
        st.sampled_from([b"5", b"6", b"7", b"-1", b"x", b"6.0", b" 6", b"1_0"]),
        st.integers(0, 2**70).map(lambda n: str(n).encode()),
        st.integers(4300, 5000).map(lambda n: b"9" * n),
    ),
    op=st.sampled_from([b"put", b"del", b"", b"PUT"]),
    node_id=st.text(max_size=12).filter(lambda t: " " not in t),
    record=_records,
)


def applies(data: bytes) -> None:
    mesh = mesh_at(5)
    followed = mesh.apply(data)
    assert isinstance(followed, bool)
    assert mesh.version >= 5
    for node in mesh.snapshot().nodes:
        assert_typed(node)


def is_text(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(data=st.one_of(st.binary(max_size=64), _changes, _changes.flatmap(mutated)))
def test_any_change_message_applies_or_asks_to_read_again(data: bytes) -> None:
    applies(data)


def test_a_change_message_whose_node_id_is_not_utf8_asks_to_read_again() -> None:
    assert mesh_at(5).apply(b"e1 6 del \xff ") is False


def reply(records: list[bytes], services: list[bytes], stats: list[bytes]) -> list[Any]:
    """The answer of the registry's read script: epoch, version, swept ids, then the
    node records, the services and the counters as Redis returns them (flat lists)."""
    return [EPOCH, 7, [], records, services, stats]


_ids = st.text(max_size=10).map(str.encode)
_read_replies = st.builds(
    reply,
    records=st.lists(st.tuples(_ids, _records), max_size=4).map(
        lambda pairs: [part for pair in pairs for part in pair]
    )
    | st.lists(_records, max_size=5),  # an odd count too
    services=st.lists(_ids, max_size=3),
    stats=st.lists(st.one_of(_ids, st.binary(max_size=20)), max_size=5),
)


@FUZZ
@given(answer=_read_replies)
def test_any_registry_keys_read_as_a_mesh(answer: list[Any]) -> None:
    snapshot = _snapshot(answer)
    assert snapshot.epoch == "e1" and snapshot.version == 7
    for node in snapshot.nodes:
        assert_typed(node)


@pytest.mark.parametrize(
    "answer",
    [
        reply([b"\xff", pb.Node(node_id="a", service="s").SerializeToString()], [], []),
        reply([], [b"\xff"], []),
    ],
    ids=["node-id", "service"],
)
def test_registry_keys_that_are_not_utf8_are_skipped(answer: list[Any]) -> None:
    assert _snapshot(answer).nodes == ()

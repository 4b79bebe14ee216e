"""Only members join a mesh, and its files are its owner's (items 6 and 7 of the hardening
issue).

A local process that is not a member (it cannot read the mesh file) tries to lease a fake
node into a real mesh's embedded registry; a member that misbehaves floods it with leases;
a registry of 5,000 nodes must still be watched and listed past gRPC's 4 MiB message
limit; and every folder and file under a real mesh's data folder must be private, also
under a umask of 022.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import msgpack
import pytest

from tests.fixtures.meshes import FIXTURES, RunningMesh, eventually, mesh_client, serving_nodes
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.errors import Unauthenticated
from wiremesh.proto import registry_pb2 as pb
from wiremesh.registry.embedded import (
    JOIN_KEY,
    MAX_LEASES_PER_CONNECTION,
    EmbeddedRegistry,
    RegistryServer,
)

REGISTRY = "/wiremesh.registry.v1.Registry/"
#: one connection per channel: the bound on leases is per connection
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
#: gRPC's usual receive limit, which a snapshot of 5,000 nodes of ours passes
FOUR_MIB = 4 * 1024 * 1024

#: a service with a store and an event handler, so that the mesh writes every kind of file
LEDGER = """\
from __future__ import annotations

import sqlalchemy as sa

from wiremesh import Context, Service, on_event, rpc


class Ledger(Service):
    name = "ledger"

    async def on_start(self) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(sa.text("CREATE TABLE IF NOT EXISTS lines (text TEXT)"))

    @rpc
    async def add(self, ctx: Context, text: str) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(sa.text("INSERT INTO lines VALUES (:text)"), {"text": text})
            tx.emit("ledger.added", text)

    @on_event("ledger.added")
    async def added(self, ctx: Context, text: str) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(sa.text("INSERT INTO lines VALUES (:text)"), {"text": text + "!"})
"""

CONFIG = """\
[mesh]
name = "members"
drain_grace = 2
default_timeout = 5
python_path = [".", "{fixtures}"]

[restart]
initial_backoff = 0.2
max_backoff = 1

[gateway]
enabled = true
port = 0

[services.echo]
target = "svc_echo:Echo"

[services.ledger]
target = "ledger:Ledger"
"""


# ------------------------------------------------------------------ a real mesh


@dataclass
class Mesh:
    folder: Path
    running: RunningMesh
    #: mesh.json, as the CLI and clients read it
    file: dict[str, Any]
    #: the gateway's base URL and its development token
    gateway: str
    token: str


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    """``wiremesh run`` with the embedded registry and broker, a gateway, ``echo`` and
    ``ledger`` (a store and an event handler), started under a umask of 022."""
    (tmp_path / "ledger.py").write_text(LEDGER)
    (tmp_path / "wiremesh.toml").write_text(CONFIG.format(fixtures=FIXTURES))
    with umask(0o022):
        running = RunningMesh(tmp_path).start()
    try:
        url = (await running.line(r"^gateway: (http://\S+)", timeout=30)).group(1)
        base, _, token = url.partition("/#token=")
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "echo", 1)
            await serving_nodes(client, "ledger", 1)
        finally:
            await client.close()
        file = json.loads((tmp_path / ".wiremesh" / "mesh.json").read_text())
        yield Mesh(tmp_path, running, file, base, token)
    finally:
        running.stop()


# ------------------------------------------------------------------ raw registry calls


def lease_call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_unary(
        REGISTRY + "Lease",
        request_serializer=pb.LeaseRequest.SerializeToString,
        response_deserializer=pb.LeaseReply.FromString,
    )


async def holding(
    *nodes: pb.Node, until: asyncio.Event, pause: float = 0.0
) -> AsyncIterator[pb.LeaseRequest]:
    """A lease stream's messages: a register for each of ``nodes`` (``pause`` seconds
    apart), then silence."""
    for node in nodes:
        yield pb.LeaseRequest(register=node)
        await asyncio.sleep(pause)
    await until.wait()


async def listed(address: str) -> pb.Snapshot:
    """List, as a foreign client whose receive limit is raised past the snapshot."""
    options = [("grpc.max_receive_message_length", -1), OWN_CONNECTION]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(
            REGISTRY + "List",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.Snapshot.FromString,
        )
        snapshot: pb.Snapshot = await call(pb.WatchRequest(), timeout=10)
        return snapshot


def record(node_id: str, address: str = "127.0.0.1:1", methods: int = 1) -> pb.Node:
    return pb.Node(
        node_id=node_id,
        service="flood",
        address=address,
        pid=4242,
        state="serving",
        methods=[pb.Method(name=f"method_{i:02d}_of_a_plausible_name") for i in range(methods)],
    )


class FakeNode:
    """A gRPC server of the attacker's that answers every ``echo`` method, and counts."""

    def __init__(self) -> None:
        self.calls = 0
        self.server = grpc.aio.server()

        async def answer(request: bytes, context: Any) -> bytes:
            self.calls += 1
            return msgpack.packb({"node": "attacker", "pid": 0})

        handler = grpc.unary_unary_rpc_method_handler(answer)
        methods = {name: handler for name in ("echo", "whoami", "slow", "heap")}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("echo", methods),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# ------------------------------------------------------------------ 6. who may join


async def test_a_process_without_the_join_secret_cannot_lease_and_is_never_routed_to(
    mesh: Mesh,
) -> None:
    registry = mesh.file["registry"]
    secret = mesh.file["join_secret"]
    assert secret and len(secret) >= 32
    # the attacker's node: a copy of the real echo node's record, at the attacker's address
    real = next(n for n in (await listed(registry)).nodes if n.service == "echo")
    fake = FakeNode()
    await fake.server.start()
    forged = pb.Node()
    forged.CopyFrom(real)
    forged.node_id, forged.address = "echo-bad0", fake.address
    hold = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(registry, options=[OWN_CONNECTION]) as channel:
            lease = lease_call(channel)
            for metadata in (None, ((JOIN_KEY, "not-the-secret"),), ((JOIN_KEY, ""),)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(lease(holding(forged, until=hold), metadata=metadata), 5)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

            attempts = 0

            async def knock() -> None:  # the attacker keeps trying while users call
                nonlocal attempts
                while True:
                    attempts += 1
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await lease(holding(forged, until=hold))
                    await asyncio.sleep(0.01)

            knocking = asyncio.create_task(knock())
            try:
                headers = {"Authorization": f"Bearer {mesh.token}"}
                async with httpx.AsyncClient(base_url=mesh.gateway, headers=headers) as http:
                    answered = 0
                    while answered < 40 or attempts < 100:
                        answer = await http.post("/rpc/echo/whoami", timeout=10)
                        assert answer.status_code == 200, answer.text
                        assert answer.json()["node"] == real.node_id
                        answered += 1
                        await asyncio.sleep(0.02)  # under the door's rate limit
            finally:
                knocking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await knocking
        assert fake.calls == 0
        assert "echo-bad0" not in {n.node_id for n in (await listed(registry)).nodes}
        # refusals are logged once per interval, not once per attempt
        refusals = mesh.running.matches(r"refused \d+ Lease call\(s\) without the mesh's join")
        assert 1 <= len(refusals) <= 3, mesh.running.output

        # the mesh file's secret is what admits (a member on this machine can read it)
        async with grpc.aio.insecure_channel(registry, options=[OWN_CONNECTION]) as channel:
            call = lease_call(channel)(holding(forged, until=hold), metadata=((JOIN_KEY, secret),))
            try:
                for _ in range(100):
                    if "echo-bad0" in {n.node_id for n in (await listed(registry)).nodes}:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the mesh's own secret did not admit the lease")
            finally:
                call.cancel()
    finally:
        hold.set()
        await fake.server.stop(0)


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    """A registry with a join secret and a long ttl (the test's leases send no heartbeat)."""
    server = RegistryServer(ttl=600.0, join_secret="members-only")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


MEMBER = ((JOIN_KEY, "members-only"),)


async def test_a_node_without_the_join_secret_fails_to_start_unauthenticated(
    registry: RegistryServer,
) -> None:
    node = NodeInfo("echo-0a0a", "echo", "127.0.0.1:1")
    for secret in (None, "a-guess"):
        outsider = EmbeddedRegistry(registry.address, join_secret=secret)
        try:
            with pytest.raises(Unauthenticated, match="admits the mesh's members only"):
                await asyncio.wait_for(outsider.lease(node), 5)
        finally:
            await outsider.close()
    assert "echo-0a0a" not in registry.membership
    member = EmbeddedRegistry(registry.address, join_secret="members-only")
    try:
        await asyncio.wait_for(member.lease(node), 5)
        # lease() returns once the registry holds the node
        assert "echo-0a0a" in registry.membership
    finally:
        await member.close()


async def test_a_member_cannot_flood_the_registry_from_one_stream_or_one_connection(
    registry: RegistryServer, caplog: pytest.LogCaptureFixture
) -> None:
    hold = asyncio.Event()
    caplog.set_level(logging.WARNING, "wiremesh.registry")
    try:
        # one stream holds one node: a second node id on it ends the stream
        async with grpc.aio.insecure_channel(registry.address, options=[OWN_CONNECTION]) as ch:
            flood = [record(f"flood-{i:04d}") for i in range(200)]
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(
                    # a pause between messages: the stream's end reaches the sender before
                    # its next message fails on a closed stream (grpc's INTERNAL)
                    lease_call(ch)(holding(*flood, until=hold, pause=0.01), metadata=MEMBER),
                    5,
                )
            assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert not [n for n in (await listed(registry.address)).nodes if n.service == "flood"]

        # one connection holds a bounded number of lease streams
        bound = MAX_LEASES_PER_CONNECTION
        async with grpc.aio.insecure_channel(registry.address, options=[OWN_CONNECTION]) as ch:
            lease = lease_call(ch)
            calls = [
                lease(holding(record(f"many-{i:04d}"), until=hold), metadata=MEMBER)
                for i in range(bound + 20)
            ]
            try:
                for _ in range(200):
                    done = [c for c in calls if c.done()]
                    seen = [n for n in (await listed(registry.address)).nodes]
                    if len(done) == 20 and len(seen) == bound:
                        break
                    await asyncio.sleep(0.05)
                codes = [await c.code() for c in calls if c.done()]
                assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 20
                assert len((await listed(registry.address)).nodes) == bound
                # the bound is the connection's: another connection leases as before
                async with grpc.aio.insecure_channel(
                    registry.address, options=[OWN_CONNECTION]
                ) as other:
                    more = lease_call(other)(holding(record("other"), until=hold), metadata=MEMBER)
                    for _ in range(100):
                        if len((await listed(registry.address)).nodes) == bound + 1:
                            break
                        await asyncio.sleep(0.05)
                    else:
                        raise AssertionError("another connection could not lease")
                    more.cancel()
            finally:
                for call in calls:
                    call.cancel()
        # refused twenty times, told at once and then once per 10 s, not twenty times
        assert registry.crowded.total == 20
        registry.crowded.flush(time.monotonic() + 10)  # as the registry's sweep does later
        told = [r.getMessage() for r in caplog.records if "Lease call(s) past" in r.getMessage()]
        assert 1 <= len(told) <= 3, told
        assert sum(int(line.split()[2]) for line in told) == 20, told
    finally:
        hold.set()


async def test_a_registry_of_5000_nodes_is_still_watched_and_listed(
    registry: RegistryServer,
) -> None:
    hold = asyncio.Event()
    total, per_connection = 5000, 50
    # a node of ours with 30 methods: about 1 KiB a record, 5 MB a snapshot
    nodes = [record(f"big-{i:05d}", f"127.0.0.1:{10000 + i}", methods=30) for i in range(total)]
    assert sum(n.ByteSize() for n in nodes) > FOUR_MIB
    early = EmbeddedRegistry(registry.address)  # a watcher from before the last nodes came
    late = EmbeddedRegistry(registry.address)
    channels = [
        grpc.aio.insecure_channel(registry.address, options=[OWN_CONNECTION])
        for _ in range(total // per_connection)
    ]
    calls: list[Any] = []
    watched = 0

    async def watch_early() -> None:
        nonlocal watched
        async for snapshot in early.watch():
            watched = len(snapshot.nodes)

    async def lease(batch: range) -> None:
        # the mesh grows as a real one does, a few nodes at a time (grpc stalls when
        # thousands of streams open at once on channels just made)
        for first in range(batch.start, batch.stop, per_connection):
            channel = channels[first // per_connection]
            for node in nodes[first : first + per_connection]:
                calls.append(lease_call(channel)(holding(node, until=hold), metadata=MEMBER))
            have = first + per_connection
            await eventually(lambda: len(registry.membership) >= have, 30)  # noqa: B023

    watcher: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(90):
            await lease(range(0, total - per_connection))
            # past 4 MiB already: a watcher from now on follows the last nodes' arrival
            watcher = asyncio.create_task(watch_early())
            await eventually(
                lambda: watched == total - per_connection, 30, "a watcher to see the mesh"
            )
            await lease(range(total - per_connection, total))
            await eventually(lambda: watched == total, 30, "the watcher to see every node")
        # a new watcher gets the whole view, and so does our List (a Watch's first snapshot)
        snapshots = cast(AsyncGenerator[MeshSnapshot, None], late.watch())
        async with asyncio.timeout(30):
            first = await anext(snapshots)
        await snapshots.aclose()
        assert len(first.nodes) == total
        assert {n.node_id for n in first.nodes} == {n.node_id for n in nodes}
        assert len((await late.snapshot(timeout=30)).nodes) == total
        # a foreign client reads Watch with gRPC's default limit: every part fits in it
        async with grpc.aio.insecure_channel(registry.address) as plain:
            watch = plain.unary_stream(
                REGISTRY + "Watch",
                request_serializer=pb.WatchRequest.SerializeToString,
                response_deserializer=pb.Snapshot.FromString,
            )(pb.WatchRequest())
            parts = []
            async for part in watch:
                parts.append(part)
                if not part.more:
                    break
            watch.cancel()
        assert len(parts) > 1
        assert all(p.ByteSize() < FOUR_MIB for p in parts)
        assert sum(len(p.nodes) for p in parts) == total
        assert list(parts[-1].services) == ["flood"]
        # List answers in one message, for a client whose limit allows it
        assert len((await listed(registry.address)).nodes) == total
    finally:
        hold.set()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close(None)
        await early.close()
        await late.close()


# ------------------------------------------------------------------ 7. private files


async def test_every_folder_and_file_of_a_mesh_is_private_to_its_owner(mesh: Mesh) -> None:
    client = await mesh_client(mesh.folder)
    try:
        await client.call("ledger.add", "one")  # the store, the outbox, the broker
        await client.emit("ledger.added", "two")
        await asyncio.sleep(0.5)  # the handler's write
    finally:
        await client.close()
    data = mesh.folder / ".wiremesh"
    found = {data: stat.S_IMODE(data.stat().st_mode)}
    for path in data.rglob("*"):
        found[path] = stat.S_IMODE(path.lstat().st_mode)
    names = {str(p.relative_to(data)) for p in found if p != data}
    # what a mesh writes: every kind of file was made
    assert {
        "mesh.json",
        "gateway/dev-secret",
        "broker/broker.db",
        "broker/broker.db-wal",
        "data/ledger/store.db",
        "data/ledger/store.db-wal",
    } <= names, names
    wrong = {
        str(path.relative_to(mesh.folder)): oct(mode)
        for path, mode in found.items()
        if mode != (0o700 if path.is_dir() else 0o600)
    }
    assert not wrong, wrong

"""The registry with real node processes, on both backends: who is alive, seen from a
client. Every test that speaks of the Registry interface runs on the embedded registry and
on Redis (a private redis-server per test, so that it can be killed and paused)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from tests.fixtures.meshes import LoneNode, eventually, process_exists, serving_nodes
from tests.fixtures.redis_server import RedisServer, redis_available
from wiremesh.client import connect
from wiremesh.core.model import NodeInfo, NodeState
from wiremesh.errors import Unavailable
from wiremesh.proto import registry_pb2 as pb
from wiremesh.registry.embedded import RegistryServer, node_to_proto
from wiremesh.registry.redis import mesh_prefix

ECHO = "svc_echo:Echo"


class Backend:
    """A registry of either kind that a test starts, restarts empty and looks into."""

    kind = ""
    #: what nodes and clients are given to reach it
    address = ""
    #: seconds within which a dead or hung node leaves every view (ttl 1.5 s)
    leaves_within = 2.0

    def members(self) -> set[str]:
        raise NotImplementedError

    async def restart_empty(self, away: float) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class Embedded(Backend):
    kind = "embedded"

    def __init__(self) -> None:
        self.server = RegistryServer(ttl=1.5)

    async def start(self) -> Embedded:
        await self.server.start()
        self.address = self.server.address
        return self

    def members(self) -> set[str]:
        return set(self.server.membership.snapshot().by_id)

    async def restart_empty(self, away: float) -> None:
        await self.server.stop(0)
        await asyncio.sleep(away)
        self.server = RegistryServer(port=self.server.port, ttl=1.5)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(0)


class Redis(Backend):
    kind = "redis"
    #: the ttl and a second: leases end by Redis's clock, and a lease that ended is swept
    #: by the next member to reach Redis
    leaves_within = 2.5

    def __init__(self, folder: Path) -> None:
        self.server = RedisServer(folder / "redis")
        self.mesh = f"test-{os.urandom(3).hex()}"

    async def start(self) -> Redis:
        if not redis_available():
            pytest.skip("redis-server is not installed here: the Redis registry is NOT TESTED")
        self.server.start()
        self.address = f"{self.server.url}#{self.mesh}"
        return self

    def members(self) -> set[str]:
        with redis.Redis(host="127.0.0.1", port=self.server.port) as client:
            return {k.decode() for k in client.hkeys(mesh_prefix(self.mesh) + "nodes")}

    async def restart_empty(self, away: float) -> None:
        self.server.kill()
        await asyncio.sleep(away)
        self.server.start()

    async def stop(self) -> None:
        self.server.stop()


@pytest.fixture(params=["embedded", "redis"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    backend = await (Embedded() if request.param == "embedded" else Redis(tmp_path)).start()
    try:
        yield backend
    finally:
        await backend.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[LoneNode]]:
    """Node processes a test starts; every one is killed at teardown."""
    started: list[LoneNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def start_node(nodes: list[LoneNode], registry: str, folder: Path) -> LoneNode:
    node = LoneNode(ECHO, "echo", registry, folder).start()
    nodes.append(node)
    return node


async def test_a_killed_node_leaves_the_view_within_its_bound(
    registry: Backend, nodes: list[LoneNode], tmp_path: Path
) -> None:
    victim = start_node(nodes, registry.address, tmp_path)
    survivor = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 2)
        victim.send(signal.SIGKILL)
        await eventually(
            lambda: victim.node_id not in client.snapshot.by_id,
            registry.leaves_within,
            "the killed node to leave the client's view",
        )
        assert survivor.node_id in client.snapshot.by_id
        assert victim.node_id not in registry.members()
        assert await client.call("echo.whoami") == {
            "node": survivor.node_id,
            "pid": survivor.pid,
        }


async def test_a_hung_node_leaves_the_view_within_its_bound_and_returns_when_it_resumes(
    registry: Backend, nodes: list[LoneNode], tmp_path: Path
) -> None:
    hung = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 1)
        hung.send(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            await eventually(
                lambda: hung.node_id not in client.snapshot.by_id,
                registry.leaves_within,
                "the hung node to leave the client's view",
            )
            print(f"left the view {time.monotonic() - stopped_at:.2f}s after it hung")
            assert process_exists(hung.pid)  # hung, not dead
        finally:
            hung.send(signal.SIGCONT)
        # alive again: its next heartbeat puts it back
        (back,) = await serving_nodes(client, "echo", 1, timeout=5)
        assert back.node_id == hung.node_id
        assert await client.call("echo.echo", "awake") == "awake"


async def test_after_the_registry_restarts_empty_nodes_register_again_and_no_view_loses_them(
    registry: Backend, nodes: list[LoneNode], tmp_path: Path
) -> None:
    one = start_node(nodes, registry.address, tmp_path)
    two = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 2)
        lost: list[set[str]] = []
        client.view.on_change(
            lambda old, new: lost.append({one.node_id, two.node_id} - set(new.by_id))
        )
        await registry.restart_empty(away=1.0)
        back_at = time.monotonic()
        # nobody tells the nodes: they find the new registry and register by themselves
        await eventually(
            lambda: {one.node_id, two.node_id} <= registry.members(),
            10,
            "both nodes to register with the new registry",
        )
        print(f"registered again {time.monotonic() - back_at:.2f}s after the restart")
        back = await serving_nodes(client, "echo", 2, timeout=10)
        assert {n.node_id for n in back} == {one.node_id, two.node_id}
        assert all(n.state is NodeState.SERVING for n in back)
        replies = {(await client.call("echo.whoami"))["node"] for _ in range(4)}
        assert replies == {one.node_id, two.node_id}
        # the client's view never dropped a node, before, during or after the restart
        assert not any(lost), lost


async def test_a_node_that_stops_gracefully_leaves_the_view(
    registry: Backend, nodes: list[LoneNode], tmp_path: Path
) -> None:
    node = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 1)
        node.send(signal.SIGTERM)
        assert await node.exit_code() == 0
        await eventually(lambda: not client.nodes("echo"), 2.0, "the node to leave")
        assert "echo" in client.snapshot.services  # known service, no live node


async def test_connecting_to_an_absent_registry_fails_clearly(registry: Backend) -> None:
    address = registry.address
    await registry.stop()  # a port where nobody listens now
    with pytest.raises(Unavailable) as caught:
        await connect(address, timeout=0.5)
    shown = address.partition("#")[0]
    assert f"no registry at {shown}" in str(caught.value)


async def test_joining_an_unreachable_redis_registry_fails_with_a_clear_error(
    tmp_path: Path,
) -> None:
    from wiremesh.registry.redis import RedisRegistry

    server = RedisServer(tmp_path / "redis")  # never started: nobody listens there
    registry = RedisRegistry(
        server.url.replace("redis://", "redis://:s3cret@"), mesh="test", ttl=1.5
    )
    try:
        with pytest.raises(Unavailable) as caught:
            await registry.lease(NodeInfo("echo-0a0a", "echo", "127.0.0.1:1"), timeout=2)
    finally:
        await registry.close()
    message = str(caught.value)
    assert f"127.0.0.1:{server.port}" in message
    assert "s3cret" not in message  # no secret in an error message
    assert registry.reachable is False


async def test_a_lease_stream_that_ends_late_does_not_remove_the_node_registered_again() -> None:
    # A node whose lease stream broke on its side registers again on a new stream; when
    # the registry notices the old stream's end later, the node must stay.
    node = NodeInfo("echo-0a0a", "echo", "127.0.0.1:1")

    async def lease(ended: asyncio.Event) -> AsyncIterator[pb.LeaseRequest]:
        # no heartbeat: a wrong removal would not be repaired before the check (ttl 1.5 s)
        yield pb.LeaseRequest(register=node_to_proto(node))
        await ended.wait()

    registry = RegistryServer(ttl=1.5)
    await registry.start()
    async with grpc.aio.insecure_channel(registry.address) as channel:
        call = channel.stream_unary(
            "/wiremesh.registry.v1.Registry/Lease",
            request_serializer=pb.LeaseRequest.SerializeToString,
            response_deserializer=pb.LeaseReply.FromString,
        )
        old_ended, new_ended = asyncio.Event(), asyncio.Event()
        old = call(lease(old_ended))
        await eventually(lambda: node.node_id in registry.membership, 5)
        version = registry.membership.version
        new = call(lease(new_ended))
        await eventually(lambda: registry.membership.version > version, 5, "the new register")
        old.cancel()
        await asyncio.sleep(0.5)  # time for the registry to see the old stream end
        assert node.node_id in registry.membership
        new_ended.set()
        await new
        await eventually(lambda: node.node_id not in registry.membership, 5, "the node to go")
    await registry.stop(0)


async def test_a_call_in_flight_outlives_its_node_leaving_the_view(
    registry: Backend, nodes: list[LoneNode], tmp_path: Path
) -> None:
    # The node hangs past its lease (it leaves every view), then resumes and answers:
    # the call's deadline is far, its connection never broke, so the answer must arrive.
    node = start_node(nodes, registry.address, tmp_path)
    async with await connect(registry.address) as client:
        await serving_nodes(client, "echo", 1)
        in_flight = asyncio.create_task(client.call("echo.slow", 1.0, timeout=30))
        await eventually(lambda: "slow call started" in node.output, 10, "the call to start")
        node.send(signal.SIGSTOP)
        try:
            await eventually(lambda: not client.nodes("echo"), 5, "the node to leave the view")
            await asyncio.sleep(1.5)  # longer than the channel's close grace
        finally:
            node.send(signal.SIGCONT)
        reply = await asyncio.wait_for(in_flight, 15)
        assert reply == {"slept": 1.0, "node": node.node_id}


# ------------------------------------------------------------------------- Redis only


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    backend = await Redis(tmp_path).start()
    try:
        yield backend
    finally:
        await backend.stop()


async def test_while_redis_is_away_views_keep_every_node_and_calls_go_on(
    private_redis: Redis, nodes: list[LoneNode], tmp_path: Path
) -> None:
    one = start_node(nodes, private_redis.address, tmp_path)
    two = start_node(nodes, private_redis.address, tmp_path)
    async with await connect(private_redis.address) as client:
        await serving_nodes(client, "echo", 2)
        lost: list[set[str]] = []
        client.view.on_change(
            lambda old, new: lost.append({one.node_id, two.node_id} - set(new.by_id))
        )
        private_redis.server.pause()  # away, with its data: four ttls long
        try:
            await eventually(lambda: not client.view.reachable, 5, "the client to notice")
            for _ in range(30):
                assert (await client.call("echo.echo", "still here")) == "still here"
                await asyncio.sleep(0.2)
        finally:
            private_redis.server.resume()
        await eventually(lambda: client.view.reachable, 5, "the registry to be reachable")
        await asyncio.sleep(2.0)  # long enough for a wrong sweep to show
        assert {one.node_id, two.node_id} <= private_redis.members()
        assert {n.node_id for n in client.nodes("echo")} == {one.node_id, two.node_id}
        assert not any(lost), lost


async def test_a_change_whose_message_was_lost_reaches_the_view_by_the_version_check(
    private_redis: Redis,
) -> None:
    async with await connect(private_redis.address) as client:
        stray = NodeInfo("echo-f00d", "echo", "127.0.0.1:1")
        prefix = mesh_prefix(private_redis.mesh)
        with redis.Redis(port=private_redis.server.port) as direct:
            # a change made behind the watchers' backs: no message on the channel
            direct.hset(prefix + "nodes", stray.node_id, node_to_proto(stray).SerializeToString())
            direct.zadd(prefix + "deadlines", {stray.node_id: time.time() * 1000 + 60_000})
            direct.hincrby(prefix + "state", "version", 1)
        await eventually(lambda: stray.node_id in client.snapshot.by_id, 3, "the re-read")


async def test_meshes_in_one_redis_database_are_apart_and_a_url_finds_the_only_one(
    private_redis: Redis, nodes: list[LoneNode], tmp_path: Path
) -> None:
    url = private_redis.server.url
    node = LoneNode(ECHO, "echo", url, tmp_path, mesh="alpha").start()
    nodes.append(node)
    async with await connect(f"{url}#alpha") as alpha:
        await serving_nodes(alpha, "echo", 1)
    async with await connect(f"{url}#beta") as beta:
        assert beta.snapshot.nodes == ()  # another mesh: nothing of alpha's
    async with await connect(url) as client:  # the database holds one mesh: alpha
        (seen,) = await serving_nodes(client, "echo", 1)
        assert seen.node_id == node.node_id
    with redis.Redis(port=private_redis.server.port) as direct:
        direct.sadd("wiremesh:meshes", "gamma")
    with pytest.raises(Exception) as caught:
        await connect(url, timeout=2)
    assert "several meshes (alpha, gamma)" in str(caught.value)
    assert f"{url}#alpha" in str(caught.value)


async def test_a_node_record_carries_its_host_and_the_advertised_address(
    private_redis: Redis, tmp_path: Path
) -> None:
    from tests.fixtures.svc_echo import Echo
    from wiremesh.runtime.node import Node, NodeNetwork

    node = Node(
        Echo,
        registry_address=private_redis.address,
        data_dir=tmp_path / "echo",
        network=NodeNetwork(host="0.0.0.0", metrics_port=None),
    )
    await node.start()
    try:
        async with await connect(private_redis.address) as client:
            (seen,) = await serving_nodes(client, "echo", 1)
            # a wildcard bind advertises the local address that reaches the registry
            assert seen.host == "127.0.0.1"
            assert seen.address == f"127.0.0.1:{node.server.port}"
            assert await client.call("echo.echo", 7) == 7
    finally:
        await node.stop(0)

"""Mesh links between real nodes: batching, order, cancellation, deadlines, reconnects,
failures, drains, size limits, and one stream per pair of nodes.

Every test runs real nodes on 127.0.0.1 in the test's event loop. Calls from the mesh's
client travel over its links (the default); the assertions look at the links themselves
(``Links.get``, a link's counters, its pending calls), not only at the answers.
Nothing here asserts a timing: waits are bounded generously, to fail instead of hanging.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from wiremesh import (
    Context,
    DeadlineExceeded,
    PayloadTooLarge,
    Service,
    Unavailable,
    rpc,
)
from wiremesh.proto import link_pb2 as pb
from wiremesh.runtime.node import Node, NodeNetwork
from wiremesh.testing import TestMesh
from wiremesh.transport.client import channel_options
from wiremesh.transport.link import CALL, ERROR, Link, error_of

#: generous bound on any wait, so that a broken link fails the test instead of hanging it
WAIT = 5.0
#: a small gRPC message limit for the nodes of the size tests (the client honours it)
SMALL_MESSAGES = 64 * 1024


class Probe:
    """What the handlers saw, per test."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled: list[str] = []  # node ids whose handler got CancelledError
        self.cancelled_event = asyncio.Event()
        self.holding: str | None = None
        self.calls: Counter[tuple[str, str]] = Counter()


PROBE = Probe()


class Keeper(Service):
    name = "keeper"

    @rpc(idempotent=True)
    async def whoami(self, ctx: Context) -> str:
        PROBE.calls["whoami", ctx.node_id] += 1
        return ctx.node_id

    @rpc
    async def charge(self, ctx: Context) -> str:
        """Not idempotent: never retried after it may have run."""
        PROBE.calls["charge", ctx.node_id] += 1
        return ctx.node_id

    @rpc
    async def record(self, ctx: Context, n: int) -> int:
        PROBE.order.append(n)  # before any await: the order the calls started in
        return n

    @rpc
    async def echo(self, ctx: Context, data: bytes) -> bytes:
        return data

    @rpc
    async def blob(self, ctx: Context, size: int) -> bytes:
        return b"x" * size

    @rpc
    async def block(self, ctx: Context) -> str:
        """Wait for the release; record a cancellation."""
        PROBE.calls["block", ctx.node_id] += 1
        PROBE.holding = ctx.node_id
        PROBE.entered.set()
        try:
            await PROBE.release.wait()
        except asyncio.CancelledError:
            PROBE.cancelled.append(ctx.node_id)
            PROBE.cancelled_event.set()
            raise
        return ctx.node_id

    @rpc(idempotent=True)
    async def hold_first(self, ctx: Context) -> str:
        """Idempotent: the first call waits for the release, the others answer at once."""
        PROBE.calls["hold_first", ctx.node_id] += 1
        if PROBE.holding is None:
            PROBE.holding = ctx.node_id
            PROBE.entered.set()
            await PROBE.release.wait()
        return ctx.node_id


class Ping(Service):
    name = "ping"

    @rpc
    async def start(self, ctx: Context) -> str:
        answer: str = await ctx.call("pong.back")
        return answer

    @rpc
    async def whoami(self, ctx: Context) -> str:
        return ctx.node_id


class Pong(Service):
    name = "pong"

    @rpc
    async def back(self, ctx: Context) -> str:
        answer: str = await ctx.call("ping.whoami")  # back to the node that called us
        return answer


@pytest.fixture(autouse=True)
def fresh_probe() -> None:
    global PROBE
    PROBE = Probe()


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Keeper, drain_grace=0.2) as mesh:
        yield mesh


@pytest.fixture
async def mesh2() -> AsyncIterator[TestMesh]:
    async with TestMesh(Keeper, replicas={"keeper": 2}, drain_grace=0.2) as mesh:
        yield mesh


def client_link(mesh: TestMesh, node: Node) -> Link:
    """The link from the mesh's client to ``node`` (opened by a call before)."""
    links = mesh.client.links
    assert links is not None
    link = links.get(node.node_id)
    assert link is not None
    return link


def accepted_from(node: Node, remote_id: str) -> list[Link]:
    """The links ``node`` accepted from the process ``remote_id``."""
    return [link for link in node.links.accepted if link.remote_id == remote_id]


async def kill(node: Node) -> None:
    """The node's process dies: its gRPC server and every stream stop at once, while the
    registry still lists it (callers find out by calling)."""
    await node.server.server.stop(None)


async def eventually(predicate: object, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        await asyncio.sleep(0.01)


# -- batching and order -------------------------------------------------------------------


async def test_concurrent_calls_travel_in_few_batches(mesh: TestMesh) -> None:
    (node,) = mesh.nodes
    await mesh.call("keeper.whoami")
    link = client_link(mesh, node)
    (served,) = accepted_from(node, link.local_id)
    batches, frames = link.sent_batches, link.sent_frames
    served_batches = served.sent_batches

    calls = 300
    answers = await asyncio.gather(
        *(mesh.call("keeper.echo", bytes([i % 256])) for i in range(calls))
    )

    assert answers == [bytes([i % 256]) for i in range(calls)]
    # one frame per call, and a liveness probe or two when the answers took longer than
    # the link's probe_after on a busy machine
    assert calls <= link.sent_frames - frames <= calls + 2
    # frames queued in the same loop turn leave together: far fewer gRPC messages
    assert link.sent_batches - batches < calls // 2
    assert served.sent_batches - served_batches < calls // 2
    assert client_link(mesh, node) is link  # one link for all of them


async def test_calls_issued_in_order_run_in_that_order(mesh: TestMesh) -> None:
    await mesh.call("keeper.whoami")
    # all in one loop turn (one batch) ...
    await asyncio.gather(*(mesh.call("keeper.record", i) for i in range(100)))
    # ... and one per loop turn (many batches)
    tasks = []
    for i in range(100, 200):
        tasks.append(asyncio.create_task(mesh.call("keeper.record", i)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert PROBE.order == list(range(200))


# -- cancellation and deadlines -------------------------------------------------------------


async def test_cancelling_the_caller_cancels_the_remote_handler(mesh: TestMesh) -> None:
    (node,) = mesh.nodes
    call = asyncio.create_task(mesh.call("keeper.block", timeout=30))
    await asyncio.wait_for(PROBE.entered.wait(), WAIT)
    link = client_link(mesh, node)
    (served,) = accepted_from(node, link.local_id)
    assert len(served.serving) == 1

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(PROBE.cancelled_event.wait(), WAIT)

    assert PROBE.cancelled == [node.node_id]
    await eventually(lambda: not served.serving, "the node forgets the cancelled call")
    assert not link.pending
    assert not link.closed  # a CANCEL frame, not a broken link
    assert await mesh.call("keeper.whoami") == node.node_id


async def test_a_passing_deadline_sends_cancel_and_the_handler_is_cancelled(
    mesh: TestMesh,
) -> None:
    (node,) = mesh.nodes
    await mesh.call("keeper.whoami")
    link = client_link(mesh, node)
    frames = link.sent_frames

    # a deadline shorter than the liveness watch's first probe (0.25 s of quiet), so that
    # the link sends the CALL and its CANCEL and nothing between them
    with pytest.raises(DeadlineExceeded):
        await mesh.call("keeper.block", timeout=0.2)
    # a link call carries its timeout, so the node does not enforce it itself: only the
    # caller's CANCEL frame can have cancelled the handler
    await asyncio.wait_for(PROBE.cancelled_event.wait(), WAIT)

    assert PROBE.cancelled == [node.node_id]
    assert link.sent_frames - frames == 2  # the CALL, then its CANCEL
    assert not link.closed
    assert not link.pending
    assert await mesh.call("keeper.whoami") == node.node_id


async def test_each_call_expires_at_its_own_deadline(mesh: TestMesh) -> None:
    (node,) = mesh.nodes
    await mesh.call("keeper.whoami")
    link = client_link(mesh, node)
    long = asyncio.create_task(mesh.call("keeper.block", timeout=30))
    await asyncio.wait_for(PROBE.entered.wait(), WAIT)

    # deadlines shorter than the one pending, not in the order they were sent
    short = [mesh.call("keeper.block", timeout=timeout) for timeout in (0.4, 0.1, 0.25)]
    results = await asyncio.wait_for(asyncio.gather(*short, return_exceptions=True), WAIT)

    assert all(isinstance(result, DeadlineExceeded) for result in results), results
    await eventually(lambda: len(PROBE.cancelled) == 3, "three handlers cancelled")
    assert not long.done()
    assert link.pending == 1
    PROBE.release.set()
    assert await asyncio.wait_for(long, WAIT) == node.node_id
    assert PROBE.cancelled == [node.node_id] * 3
    assert not link.pending


async def test_answered_calls_leave_no_deadline_behind(mesh: TestMesh) -> None:
    await mesh.call("keeper.whoami")
    (node,) = mesh.nodes
    link = client_link(mesh, node)
    for _ in range(1000):
        await mesh.call("keeper.whoami")
    # one timer per link, not per call; what answered calls leave is swept away
    assert link.calls.held < 600
    assert not link.pending


# -- peers that restart, die or drain -------------------------------------------------------


async def test_a_link_reconnects_after_the_peer_node_restarts(mesh: TestMesh) -> None:
    (old,) = mesh.nodes
    assert await mesh.call("keeper.whoami") == old.node_id
    old_link = client_link(mesh, old)

    await mesh.stop_node(old)
    # the same node comes back: same node id, a new process (a new server and port)
    node = Node(
        Keeper,
        registry_address=mesh.registry.address,
        node_id=old.node_id,
        data_dir=mesh.data_dir / "keeper",
    )
    await node.start()
    mesh.nodes.append(node)
    await mesh.wait_for_nodes()

    assert old_link.closed
    assert await mesh.call("keeper.whoami") == node.node_id
    new_link = client_link(mesh, node)
    assert new_link is not old_link and not new_link.closed
    assert PROBE.calls["whoami", node.node_id] == 2  # the old node's call and the new one's
    assert len(accepted_from(node, new_link.local_id)) == 1


async def test_a_node_on_an_address_that_refused_a_moment_ago_is_reached_at_once(
    mesh: TestMesh,
) -> None:
    with socket.socket() as probe:  # an address nothing listens on, for now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # another channel of this process, with the options wiremesh's own have, tried it and
    # is backing off (grpc would share its connection with every new channel there)
    stale = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(4 << 20))
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await stale.unary_unary("/wiremesh.Probe/Nothing")(b"", timeout=1)
        node = Node(  # a node starts there: a restart on the same port, say
            Keeper,
            registry_address=mesh.registry.address,
            data_dir=mesh.data_dir / "k",
            network=NodeNetwork(port=port),
        )
        await node.start()
        mesh.nodes.append(node)
        await mesh.wait_for_nodes()
        assert await mesh.call("keeper.whoami", node=node.node_id, timeout=2) == node.node_id
    finally:
        await stale.close()


async def test_a_new_node_gets_a_new_link_and_the_old_one_closes(mesh: TestMesh) -> None:
    (old,) = mesh.nodes
    await mesh.call("keeper.whoami")
    old_link = client_link(mesh, old)
    await mesh.stop_node(old)
    new = await mesh.add_node(Keeper)

    assert await mesh.call("keeper.whoami") == new.node_id
    assert old_link.closed
    links = mesh.client.links
    assert links is not None
    assert links.get(old.node_id) is None
    assert not client_link(mesh, new).closed


async def test_a_peer_dying_mid_call_fails_the_call_unavailable(mesh: TestMesh) -> None:
    (node,) = mesh.nodes
    call = asyncio.create_task(mesh.call("keeper.block", timeout=30))
    await asyncio.wait_for(PROBE.entered.wait(), WAIT)
    link = client_link(mesh, node)

    await kill(node)

    with pytest.raises(Unavailable) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.node == node.node_id
    assert link.closed
    assert not link.pending


async def test_an_idempotent_call_is_retried_on_another_node_when_its_peer_dies(
    mesh2: TestMesh,
) -> None:
    call = asyncio.create_task(mesh2.call("keeper.hold_first", timeout=30))
    await asyncio.wait_for(PROBE.entered.wait(), WAIT)
    (dying,) = [n for n in mesh2.nodes if n.node_id == PROBE.holding]
    (other,) = [n for n in mesh2.nodes if n is not dying]
    link = client_link(mesh2, dying)

    await kill(dying)

    assert await asyncio.wait_for(call, WAIT) == other.node_id
    assert link.closed
    assert PROBE.calls["hold_first", other.node_id] == 1


async def test_a_draining_node_refuses_link_calls_and_callers_go_elsewhere(
    mesh2: TestMesh,
) -> None:
    draining, other = mesh2.nodes
    await asyncio.gather(*(mesh2.call("keeper.whoami") for _ in range(4)))  # open both links
    PROBE.calls.clear()
    # draining, but the mesh does not know it yet: callers still choose it
    draining.node_links.draining = True

    # the refusal itself: an ERROR frame marked not_run, whatever the method
    link = client_link(mesh2, draining)
    frame = pb.Frame(kind=CALL, service="keeper", method="charge", timeout_ms=5000)
    reply = await link.call(frame, time.monotonic() + WAIT)
    assert reply.kind == ERROR and reply.not_run
    assert isinstance(error_of(reply, draining.node_id), Unavailable)

    # so even a method that is not idempotent goes to another node, and runs once
    answers = [await mesh2.call("keeper.charge", timeout=WAIT) for _ in range(6)]
    assert answers == [other.node_id] * 6
    assert PROBE.calls["charge", draining.node_id] == 0
    assert PROBE.calls["charge", other.node_id] == 6
    assert not link.closed


# -- limits ---------------------------------------------------------------------------------


async def test_an_oversized_payload_fails_alone_and_the_link_keeps_working() -> None:
    async with TestMesh(Keeper, drain_grace=0.2, max_message_bytes=SMALL_MESSAGES) as mesh:
        (node,) = mesh.nodes
        await mesh.call("keeper.whoami")
        link = client_link(mesh, node)
        too_big = SMALL_MESSAGES  # more than a frame may carry under that limit

        # a request too large for the peer is refused before it is sent
        frames = link.sent_frames
        with pytest.raises(PayloadTooLarge):
            await mesh.call("keeper.echo", b"x" * too_big)
        assert link.sent_frames == frames
        assert await mesh.call("keeper.echo", b"small") == b"small"

        # an answer too large is refused by the node, as an error for that call only
        with pytest.raises(PayloadTooLarge):
            await mesh.call("keeper.blob", too_big)
        assert await mesh.call("keeper.blob", 1000) == b"x" * 1000

        # a payload that fits, near the limit, still travels
        fits = link.max_payload - 64
        assert len(await mesh.call("keeper.echo", b"y" * fits)) == fits
        assert client_link(mesh, node) is link and not link.closed


# -- one stream per pair of nodes ------------------------------------------------------------


async def test_a_node_calls_back_over_the_link_it_accepted() -> None:
    async with TestMesh(Ping, Pong, drain_grace=0.2) as mesh:
        (a,) = mesh.nodes_of("ping")
        (b,) = mesh.nodes_of("pong")
        for _ in range(5):
            # client -> a, a -> b (a opens the link), b -> a (over that same link)
            assert await mesh.call("ping.start") == a.node_id

        opened = a.links.get(b.node_id)
        assert opened not in a.links.accepted  # a opened it
        adopted = b.links.get(a.node_id)
        assert opened is not None and adopted is not None
        assert adopted in b.links.accepted  # b uses the stream a opened
        assert not accepted_from(a, b.node_id)  # b never opened a stream of its own to a
        # both ends sent frames on that one stream: a its calls and b's answers, b the reverse
        a_stats, b_stats = a.links.stats()[b.node_id], b.links.stats()[a.node_id]
        assert a_stats["frames"] >= 10 and b_stats["frames"] >= 10
        assert adopted.remote_id == a.node_id and opened.remote_id == b.node_id

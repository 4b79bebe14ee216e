"""Multicast over real nodes: modes, targets, groups, deadlines, dead and slow nodes.

Every test runs real nodes on 127.0.0.1 inside the test's event loop (``TestMesh``).
Timing bounds are loose on purpose ("returned in under 2 s with a 0.5 s deadline"):
they tell "at the deadline" from "waited for the slow node", nothing finer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pydantic
import pytest

from wiremesh import (
    Cancelled,
    Context,
    DeadlineExceeded,
    InternalError,
    InvalidPayload,
    MethodNotFound,
    NodeNotFound,
    Service,
    ServiceError,
    ServiceNotFound,
    Unavailable,
    rpc,
)
from wiremesh.client import MeshClient
from wiremesh.core.gather import quorum
from wiremesh.core.model import MeshSnapshot
from wiremesh.proto.registry_pb2 import Method
from wiremesh.runtime.node import Node
from wiremesh.testing import TestMesh
from wiremesh.transport import multicast as multicast_module


class Probe:
    """What the handlers saw, per test (a fresh one each test)."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.cancelled: set[str] = set()
        self.calls = 0
        self.release = asyncio.Event()


PROBE = Probe()


class WorkerRefused(ServiceError):
    """A domain error: it comes back as itself in its node's slot."""


class Load(pydantic.BaseModel):
    node: str
    load: float


class Worker(Service):
    name = "worker"

    @rpc(idempotent=True)
    async def whoami(self, ctx: Context) -> str:
        PROBE.calls += 1
        return ctx.node_id

    @rpc
    async def nap(self, ctx: Context, seconds: dict[str, float]) -> str:
        """Sleep as long as the payload says for this node (0 when not named)."""
        PROBE.calls += 1
        PROBE.entered.append(ctx.node_id)
        try:
            await asyncio.sleep(seconds.get(ctx.node_id, 0.0))
        except asyncio.CancelledError:
            PROBE.cancelled.add(ctx.node_id)
            raise
        return ctx.node_id

    @rpc
    async def hold(self, ctx: Context) -> str:
        """Wait until the test releases every held call."""
        PROBE.entered.append(ctx.node_id)
        await PROBE.release.wait()
        return ctx.node_id

    @rpc
    async def fail(self, ctx: Context, how: dict[str, str]) -> str:
        kind = how.get(ctx.node_id, "ok")
        if kind == "domain":
            raise WorkerRefused(f"{ctx.node_id} refuses")
        if kind == "crash":
            raise RuntimeError("boom")
        return ctx.node_id

    @rpc
    async def remaining(self, ctx: Context) -> float:
        return ctx.remaining

    @rpc
    async def tenant(self, ctx: Context, value: Any) -> dict[str, Any]:
        return {"tenant": ctx.metadata.get("tenant"), "value": value, "caller": ctx.caller}

    @rpc
    async def load(self, ctx: Context) -> Load:
        return Load(node=ctx.node_id, load=0.5)

    @rpc
    async def describe(self, ctx: Context, method: Method) -> Method:
        return Method(name=f"{method.name}@{ctx.node_id}")


class Front(Service):
    name = "front"

    @rpc
    async def survey(self, ctx: Context) -> dict[str, Any]:
        result = await ctx.multicast("worker.remaining")
        return {"values": result.values, "own": ctx.remaining}


@pytest.fixture(autouse=True)
def fresh_probe() -> None:
    global PROBE
    PROBE = Probe()


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Worker, replicas={"worker": 3}, drain_grace=0.1) as mesh:
        yield mesh


def ids(mesh: TestMesh) -> list[str]:
    return [n.node_id for n in mesh.nodes_of("worker")]


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g}s: {what}")
        await asyncio.sleep(0.01)


async def entered(count: int) -> None:
    await until(lambda: len(PROBE.entered) >= count, f"{count} handlers entered")


async def cancelled(node_ids: set[str]) -> None:
    await until(lambda: node_ids <= PROBE.cancelled, f"handlers cancelled on {node_ids}")


async def groups_seen(client: MeshClient, expected: dict[str, set[str]]) -> None:
    """Wait until ``client`` sees each node id in exactly the groups given."""

    def settled(snapshot: MeshSnapshot) -> bool:
        return all(
            (node := snapshot.by_id.get(node_id)) is not None and set(node.groups) == groups
            for node_id, groups in expected.items()
        )

    await client.view.wait_for(settled, 5.0)


# -- modes ---------------------------------------------------------------------------------


async def test_all_gathers_every_node_tagged_by_node_id(mesh: TestMesh) -> None:
    result = await mesh.multicast("worker.whoami")
    assert dict(result) == {node_id: node_id for node_id in ids(mesh)}
    assert result.satisfied
    assert str(result.mode) == "all"
    assert result.errors == {}
    assert PROBE.calls == 3


async def test_first_returns_the_first_value_and_cancels_the_others(mesh: TestMesh) -> None:
    fast, *slow = ids(mesh)
    started = time.monotonic()
    result = await mesh.multicast(
        "worker.nap", {node: 10.0 for node in slow}, mode="first", timeout=5
    )
    assert time.monotonic() - started < 2.0
    assert result.satisfied
    assert result.first == fast
    assert result.values == {fast: fast}
    assert all(isinstance(result[node], Cancelled) for node in slow)
    await cancelled(set(slow))  # the slow handlers were stopped, not left running


async def test_quorum_returns_once_reached(mesh: TestMesh) -> None:
    a, b, slow = ids(mesh)
    started = time.monotonic()
    result = await mesh.multicast("worker.nap", {slow: 10.0}, mode="quorum(2)", timeout=5)
    assert time.monotonic() - started < 2.0
    assert result.satisfied
    assert result.values == {a: a, b: b}
    assert isinstance(result[slow], Cancelled)
    assert result[slow].node == slow


async def test_quorum_that_cannot_be_reached(mesh: TestMesh) -> None:
    result = await mesh.multicast("worker.whoami", mode=quorum(4))
    assert not result.satisfied
    assert set(result) == set(ids(mesh))
    assert all(isinstance(result[n], Cancelled) for n in result)
    assert "cannot be met" in result[ids(mesh)[0]].message
    assert PROBE.calls == 0  # four answers from three nodes: nobody was bothered

    a, b, _ = ids(mesh)
    how = {a: "crash", b: "domain"}
    result = await mesh.multicast("worker.fail", how, mode="quorum(2)", timeout=5)
    assert not result.satisfied
    assert isinstance(result[a], InternalError)
    assert isinstance(result[b], WorkerRefused)


# -- deadlines, slow and dead nodes --------------------------------------------------------


async def test_a_slow_node_costs_its_own_slot_and_the_call_ends_at_the_deadline(
    mesh: TestMesh,
) -> None:
    a, b, slow = ids(mesh)
    started = time.monotonic()
    result = await mesh.multicast("worker.nap", {slow: 10.0}, timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.0
    assert result.values == {a: a, b: b}
    assert isinstance(result[slow], DeadlineExceeded)
    assert result[slow].node == slow
    assert not result.satisfied
    await cancelled({slow})  # the slow node was told to stop


async def test_a_node_killed_during_a_multicast_gets_an_error_in_its_slot(
    mesh: TestMesh,
) -> None:
    a, b, victim = ids(mesh)
    node = next(n for n in mesh.nodes if n.node_id == victim)
    pending = asyncio.ensure_future(mesh.multicast("worker.nap", {victim: 10.0}, timeout=8))
    await entered(3)
    started = time.monotonic()
    await kill(node)
    result = await asyncio.wait_for(pending, 5)
    assert time.monotonic() - started < 3.0  # not the 8 s deadline
    assert result.values == {a: a, b: b}
    assert isinstance(result[victim], Unavailable)
    assert result[victim].node == victim


async def test_cancelling_a_multicast_cancels_the_calls_still_out(mesh: TestMesh) -> None:
    every = ids(mesh)
    pending = asyncio.ensure_future(mesh.multicast("worker.nap", dict.fromkeys(every, 10.0)))
    await entered(3)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await cancelled(set(every))


def multicast_tasks() -> list[asyncio.Task[Any]]:
    """The tasks running code of the multicast module itself."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "cr_code", None) is not None
        and task.get_coro().cr_code.co_filename == multicast_module.__file__  # type: ignore[union-attr]
    ]


async def test_no_task_per_node_over_links_one_per_node_over_unary(mesh: TestMesh) -> None:
    pending = asyncio.ensure_future(mesh.multicast("worker.hold", timeout=5))
    await entered(3)
    assert multicast_tasks() == []  # the links path: frames and done-callbacks only
    PROBE.release.set()
    assert len(await pending) == 3

    PROBE.release.clear()
    PROBE.entered.clear()
    client = MeshClient(mesh.registry.address, links=False)
    await client.start()
    try:
        pending = asyncio.ensure_future(client.multicast("worker.hold", timeout=5))
        await entered(3)
        assert len(multicast_tasks()) == 3  # the fallback: one unary call per task
        PROBE.release.set()
        assert len(await pending) == 3
    finally:
        await client.close()


async def test_ctx_multicast_inherits_the_callers_deadline() -> None:
    async with TestMesh(Worker, Front, replicas={"worker": 2}, drain_grace=0.1) as mesh:
        answer = await mesh.call("front.survey", timeout=2.0)
    values = answer["values"]
    assert len(values) == 2
    # the workers' deadline is what remained of the front's 2 s, not the 10 s default
    assert all(0 < remaining <= 2.0 for remaining in values.values())


# -- targets -------------------------------------------------------------------------------


async def test_an_explicit_node_list_with_unknown_ids(mesh: TestMesh) -> None:
    a, b, c = ids(mesh)
    result = await mesh.multicast("worker.whoami", nodes=[a, "worker-nope", c, a])
    assert result.values == {a: a, c: c}
    assert set(result) == {a, c, "worker-nope"}
    assert isinstance(result["worker-nope"], NodeNotFound)
    assert "worker-nope" in result["worker-nope"].message
    assert b not in result
    assert result.satisfied  # every node asked has its answer, if only an error
    assert PROBE.calls == 2


async def test_groups_target_their_members_only() -> None:
    async with TestMesh(
        Worker, replicas={"worker": 3}, groups={"worker": ["green"]}, drain_grace=0.1
    ) as mesh:
        a, b, c = ids(mesh)
        green = await mesh.multicast("worker.whoami", group="green")
        assert set(green) == {a, b, c}

        nodes = mesh.nodes_of("worker")
        await nodes[0].join_group("blue")
        await nodes[1].join_group("blue")
        await groups_seen(mesh.client, {a: {"green", "blue"}, b: {"green", "blue"}})
        blue = await mesh.multicast("worker.whoami", group="blue")
        assert dict(blue) == {a: a, b: b}

        nobody = await mesh.multicast("worker.whoami", group="red")
        assert len(nobody) == 0


async def test_group_membership_changing_during_a_multicast(mesh: TestMesh) -> None:
    n0, n1, n2 = mesh.nodes_of("worker")
    await n0.join_group("blue")
    await n1.join_group("blue")
    await groups_seen(mesh.client, {n0.node_id: {"blue"}, n1.node_id: {"blue"}})

    pending = asyncio.ensure_future(mesh.multicast("worker.hold", group="blue", timeout=8))
    await entered(2)
    await n1.leave_group("blue")
    await n2.join_group("blue")
    await groups_seen(mesh.client, {n1.node_id: set(), n2.node_id: {"blue"}})
    PROBE.release.set()
    during = await asyncio.wait_for(pending, 5)
    # the nodes were chosen when it started: n1 was asked and answers, n2 was not asked
    assert dict(during) == {n0.node_id: n0.node_id, n1.node_id: n1.node_id}

    after = await mesh.multicast("worker.whoami", group="blue")
    assert dict(after) == {n0.node_id: n0.node_id, n2.node_id: n2.node_id}


async def test_bad_targets_fail_the_whole_call(mesh: TestMesh) -> None:
    a = ids(mesh)[0]
    with pytest.raises(ServiceNotFound):
        await mesh.multicast("nobody.whoami")
    with pytest.raises(MethodNotFound) as multicast_error:
        await mesh.multicast("worker.nothing")
    with pytest.raises(MethodNotFound) as call_error:
        await mesh.call("worker.nothing")
    assert multicast_error.value.message == call_error.value.message
    with pytest.raises(InvalidPayload, match="nodes="):
        await mesh.multicast(f"worker@{a}.whoami")
    with pytest.raises(InvalidPayload, match="mode"):
        await mesh.multicast("worker.whoami", mode="most")
    with pytest.raises(InvalidPayload, match="not both"):
        await mesh.multicast("worker.whoami", group="blue", nodes=[a])
    with pytest.raises(InvalidPayload, match="group name"):
        await mesh.multicast("worker.whoami", group="no spaces")
    with pytest.raises(InvalidPayload, match="list of node ids"):
        await mesh.multicast("worker.whoami", nodes=a)
    assert PROBE.calls == 0


# -- payloads and errors -------------------------------------------------------------------


async def test_handler_errors_come_back_typed_in_their_slots(mesh: TestMesh) -> None:
    a, b, c = ids(mesh)
    result = await mesh.multicast("worker.fail", {a: "domain", b: "crash"})
    assert result.satisfied
    assert isinstance(result[a], WorkerRefused)
    assert result[a].message == f"{a} refuses"
    assert isinstance(result[b], InternalError)
    assert result[b].node == b
    assert result[c] == c
    assert set(result.errors) == {a, b}


async def test_a_bad_payload_is_rejected_by_every_node(mesh: TestMesh) -> None:
    result = await mesh.multicast("worker.nap", "not a mapping")
    assert len(result) == 3
    assert all(isinstance(result[n], InvalidPayload) for n in result)


async def test_returns_and_protobuf_replies(mesh: TestMesh) -> None:
    loads = await mesh.multicast("worker.load", returns=Load)
    assert {n: v.node for n, v in loads.values.items()} == {n: n for n in ids(mesh)}
    assert all(isinstance(v, Load) for v in loads.values.values())

    described = await mesh.multicast("worker.describe", Method(name="m"), returns=Method)
    assert described.values == {n: Method(name=f"m@{n}") for n in ids(mesh)}


@pytest.mark.parametrize("links", [True, False])
async def test_metadata_and_codec_reach_every_node(mesh: TestMesh, links: bool) -> None:
    client = MeshClient(mesh.registry.address, links=links, identity="tests@here")
    await client.start()
    try:
        result = await client.multicast(
            "worker.tenant", {"x": [1, 2]}, codec="json", metadata={"tenant": "acme"}
        )
        expected = {"tenant": "acme", "value": {"x": [1, 2]}, "caller": "tests@here"}
        assert result.values == dict.fromkeys(ids(mesh), expected)
        with pytest.raises(InvalidPayload, match="reserved"):
            await client.multicast("worker.tenant", 1, metadata={"wm-caller": "forged"})
    finally:
        await client.close()


async def test_without_links_over_unary_grpc(mesh: TestMesh) -> None:
    client = MeshClient(mesh.registry.address, links=False)
    await client.start()
    try:
        a, b, slow = ids(mesh)
        everyone = await client.multicast("worker.whoami")
        assert dict(everyone) == {n: n for n in (a, b, slow)}

        started = time.monotonic()
        result = await client.multicast("worker.nap", {slow: 10.0}, timeout=0.5)
        assert time.monotonic() - started < 2.0
        assert result.values == {a: a, b: b}
        assert isinstance(result[slow], DeadlineExceeded)

        first = await client.multicast("worker.nap", {a: 10.0, b: 10.0}, mode="first")
        assert first.values == {slow: slow}
        await cancelled({a, b})
    finally:
        await client.close()


async def kill(node: Node) -> None:
    """Stop a node abruptly: its links and server go at once, no drain."""
    await node.links.close()
    await node.server.server.stop(None)

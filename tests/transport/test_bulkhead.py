"""Bulkheads on real nodes: ``@rpc(max_concurrency=…, max_queue=…)`` bounds a method's
calls on each node; a call past the bound is refused unrun (``Overloaded``) and its caller
sends it to another node, idempotent or not, over mesh links and over unary gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from wiremesh import (
    Context,
    DeadlineExceeded,
    Overloaded,
    Service,
    Unavailable,
    rpc,
)
from wiremesh.client import MeshClient
from wiremesh.service import ServiceSpec
from wiremesh.testing import TestMesh

RELEASE: asyncio.Event


class Slow(Service):
    name = "slow"

    @rpc(max_concurrency=1, max_queue=1)  # not idempotent: a refusal still goes elsewhere
    async def work(self, ctx: Context) -> str:
        await RELEASE.wait()
        return ctx.node_id


@pytest.fixture(autouse=True)
def release() -> None:
    global RELEASE
    RELEASE = asyncio.Event()


@pytest.fixture
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Slow, replicas={"slow": 2}, drain_grace=0.1) as mesh:
        yield mesh


async def fill(mesh: TestMesh, node_id: str) -> list[asyncio.Task[str]]:
    """One call running and one waiting on ``node_id``: its bulkhead is full."""
    tasks = [asyncio.create_task(mesh.call("slow.work", node=node_id)) for _ in range(2)]
    method = next(n for n in mesh.nodes_of("slow") if n.node_id == node_id).server.methods["work"]
    for _ in range(200):
        state = method.bulkhead_state()
        if state is not None and state[2:4] == (1, 1):
            return tasks
        await asyncio.sleep(0.01)
    raise AssertionError(f"the bulkhead of {node_id} did not fill: {method.bulkhead_state()}")


async def test_a_full_node_refuses_unrun_and_the_call_goes_to_another_node(
    mesh: TestMesh,
) -> None:
    busy, free = (n.node_id for n in mesh.nodes_of("slow"))
    held = await fill(mesh, busy)
    # a call named for the full node cannot go elsewhere: it gets the typed refusal
    with pytest.raises(Overloaded, match=r"slow\.work is at its limit .*1 calls running, 1"):
        await mesh.call("slow.work", node=busy)
    # unnamed calls (links, from the client) find the free node, whichever comes first
    unnamed = [asyncio.create_task(mesh.call("slow.work")) for _ in range(2)]
    await asyncio.sleep(0.2)
    RELEASE.set()
    assert await asyncio.gather(*unnamed) == [free, free]
    assert await asyncio.gather(*held) == [busy, busy]
    refused = next(n for n in mesh.nodes_of("slow") if n.node_id == busy)
    state = refused.server.methods["work"].bulkhead_state()
    # the named call and at least one unnamed call (round robin sends one of the two
    # there first) were refused; each unnamed one then ran on the free node
    assert state is not None and state[2:4] == (0, 0) and state[4] >= 2, state


async def test_when_every_node_is_full_the_caller_gets_overloaded(mesh: TestMesh) -> None:
    held = [task for node in mesh.nodes_of("slow") for task in await fill(mesh, node.node_id)]
    with pytest.raises(Overloaded) as caught:
        await mesh.call("slow.work")
    assert isinstance(caught.value, Unavailable)  # what callers that know no better catch
    RELEASE.set()
    await asyncio.gather(*held)
    assert await mesh.call("slow.work") in {n.node_id for n in mesh.nodes_of("slow")}


async def test_a_waiting_call_ends_at_its_deadline_and_frees_its_place(mesh: TestMesh) -> None:
    node = mesh.nodes_of("slow")[0]
    method = node.server.methods["work"]
    running = asyncio.create_task(mesh.call("slow.work", node=node.node_id))
    await asyncio.sleep(0.1)
    with pytest.raises(DeadlineExceeded):
        await mesh.call("slow.work", node=node.node_id, timeout=0.3)
    for _ in range(100):
        if method.bulkhead_state() == ("slow", "work", 1, 0, 0):
            break
        await asyncio.sleep(0.01)
    assert method.bulkhead_state() == ("slow", "work", 1, 0, 0)
    RELEASE.set()
    assert await running == node.node_id
    assert method.bulkhead_state() == ("slow", "work", 0, 0, 0)


async def test_unary_grpc_callers_are_refused_with_unavailable_and_the_typed_error(
    mesh: TestMesh,
) -> None:
    busy, free = mesh.nodes_of("slow")
    held = await fill(mesh, busy.node_id)
    async with grpc.aio.insecure_channel(busy.server.address) as channel:
        call = channel.unary_unary("/slow/work")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\x90", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    trailers = dict(caught.value.trailing_metadata() or ())
    assert "Overloaded" in str(trailers.get("wm-error"))
    # a wiremesh caller without links (unary gRPC) routes the refused call elsewhere
    client = MeshClient(mesh.registry.address, links=False)
    await client.start()
    try:
        unnamed = asyncio.create_task(client.call("slow.work"))
        await asyncio.sleep(0.2)
        RELEASE.set()
        assert await unnamed == free.node_id
    finally:
        await client.close()
    await asyncio.gather(*held)


def test_bad_bulkhead_settings_fail_at_the_decorator() -> None:
    with pytest.raises(TypeError, match="max_concurrency"):
        rpc(max_concurrency=0)
    with pytest.raises(TypeError, match="max_queue needs max_concurrency"):
        rpc(max_queue=3)
    with pytest.raises(TypeError, match="max_queue"):
        rpc(max_concurrency=2, max_queue=-1)
    spec = ServiceSpec.of(Slow).methods["work"]
    assert (spec.max_concurrency, spec.max_queue) == (1, 1)


async def test_a_nodes_metrics_show_its_bulkheads() -> None:
    from tests.observability.test_metrics import read, value

    async with TestMesh(Slow, metrics_port=0, drain_grace=0.1) as mesh:
        (node,) = mesh.nodes_of("slow")
        held = await fill(mesh, node.node_id)
        with pytest.raises(Overloaded):
            await mesh.call("slow.work")
        samples = await read(node)
        labels = {"service": "slow", "method": "work"}
        assert value(samples, "wiremesh_bulkhead_running", **labels) == 1
        assert value(samples, "wiremesh_bulkhead_waiting", **labels) == 1
        assert value(samples, "wiremesh_bulkhead_refused_total", **labels) == 1
        RELEASE.set()
        await asyncio.gather(*held)
        samples = await read(node)
        assert value(samples, "wiremesh_bulkhead_running", **labels) == 0


async def test_the_http_door_answers_a_full_method_503_with_retry_after() -> None:
    import httpx

    async with TestMesh(Slow, gateway=True, drain_grace=0.1) as mesh:
        (node,) = mesh.nodes_of("slow")
        held = await fill(mesh, node.node_id)
        auth = {"Authorization": f"Bearer {mesh.token('ada')}"}
        async with httpx.AsyncClient(base_url=mesh.gateway.url) as http:
            answer = await http.post("/rpc/slow/work", headers=auth)
        RELEASE.set()
        await asyncio.gather(*held)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == "wiremesh.errors.Overloaded"

"""The dashboard's document from a real mesh: services, nodes, the links between them,
rates from the nodes' /metrics (per node and per service), the gateway's edges to the
nodes of its sessions, and extras (sessions, dead letters) from their sources."""

from __future__ import annotations

import asyncio

import pytest

from wiremesh import Context, Service, rpc
from wiremesh.observability.dashboard import DASHBOARD_ASSETS, MeshState, asset
from wiremesh.testing import TestMesh


class Front(Service):
    name = "front"

    @rpc
    async def order(self, ctx: Context, item: str) -> int:
        return int(await ctx.call("stock.take", item))


class Stock(Service):
    name = "stock"

    @rpc
    async def take(self, ctx: Context, item: str) -> int:
        return 3


async def test_the_document_shows_nodes_links_and_rates() -> None:
    async def sessions() -> int:
        return 7

    async def broken() -> int:
        raise RuntimeError("broker unreachable")

    async with TestMesh(Front, Stock, replicas={"stock": 2}) as mesh:
        state = MeshState(
            lambda: mesh.client.view.snapshot,
            mesh="shop",
            extras={"sessions": sessions, "dead_letters": broken},
            min_interval=0.0,
        )
        await state.document()  # the first reading: no rates yet
        for _ in range(10):
            await mesh.call("front.order", "bolt")
        await asyncio.sleep(0.05)
        document = await state.document()
        front = mesh.client.nodes("front")[0].node_id
        stocks = {n.node_id for n in mesh.client.nodes("stock")}
    assert document["mesh"] == "shop"
    assert {s["name"]: s["nodes"] for s in document["services"]} == {"front": 1, "stock": 2}
    nodes = {n["id"]: n for n in document["nodes"]}
    assert set(nodes) == {front, *stocks}
    assert nodes[front]["calls_per_s"] > 0
    assert nodes[front]["p50_ms"] is not None
    assert sum(nodes[s]["calls_per_s"] for s in stocks) > 0
    # the front node called both stock nodes over its mesh links
    assert {(link["from"], link["to"]) for link in document["links"]} >= {
        (front, s) for s in stocks
    }
    assert {link["kind"] for link in document["links"]} == {"mesh"}
    # per service: rates summed over its nodes, p99 the worst of theirs
    services = {s["name"]: s for s in document["services"]}
    assert services["stock"]["serving"] == 2
    assert services["stock"]["calls_per_s"] == pytest.approx(
        sum(nodes[s]["calls_per_s"] for s in stocks), abs=0.02
    )
    assert services["stock"]["p99_ms"] == max(
        nodes[s]["p99_ms"] for s in stocks if nodes[s]["p99_ms"] is not None
    )
    assert services["front"]["errors_per_s"] == 0
    assert document["sessions"] == 7
    assert document["dead_letters"] is None
    assert document["problems"] == ["dead_letters: broker unreachable"]


async def test_the_gateways_sessions_are_edges_to_their_live_nodes() -> None:
    async with TestMesh(Stock, replicas={"stock": 2}) as mesh:
        one, two = sorted(n.node_id for n in mesh.client.nodes("stock"))
        state = MeshState(
            lambda: mesh.client.view.snapshot,
            gateway_id="gateway-1a2b3c",
            session_nodes=lambda: [one, two, one, "stock-gone"],
            home="/",
        )
        document = await state.document()
    assert [link for link in document["links"] if link["kind"] == "sessions"] == [
        {"from": "gateway-1a2b3c", "to": one, "kind": "sessions", "sessions": 2},
        {"from": "gateway-1a2b3c", "to": two, "kind": "sessions", "sessions": 1},
    ]  # a session on a node that left the registry is no edge
    assert document["gateway"] == "gateway-1a2b3c"
    assert document["home"] == "/"


async def test_pages_asking_at_once_share_one_reading() -> None:
    async with TestMesh(Stock) as mesh:
        state = MeshState(lambda: mesh.client.view.snapshot, min_interval=60.0)
        first, second = await asyncio.gather(state.document(), state.document())
        assert first is second


def test_the_page_and_its_assets_are_packaged() -> None:
    page = asset("dashboard.html").decode()
    assert 'src="dashboard.js"' in page and 'href="dashboard.css"' in page
    assert '<link rel="icon" href="favicon.svg"' in page  # no request for /favicon.ico
    for name in DASHBOARD_ASSETS:
        assert asset(name)
    assert "http://" not in page and "https://" not in page  # nothing from the internet
    with pytest.raises(KeyError):
        asset("../__init__.py")

"""The ipaas demo, run as its README says: ``wiremesh run`` in a copy of its folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures.meshes import REPO, RunningMesh, eventually, mesh_client, serving, serving_nodes
from wiremesh import ServiceError
from wiremesh.client import MeshClient

DEMO = REPO / "examples" / "ipaas"


@dataclass
class Demo:
    folder: Path
    running: RunningMesh


def on_any_port(config: Path) -> None:
    """Let the demo's gateway take any free port (8080 may be taken on this machine)."""
    text = config.read_text()
    assert "\n[gateway]\n" in text
    config.write_text(text.replace("\n[gateway]\n", "\n[gateway]\nport = 0\n", 1))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    folder = tmp_path_factory.mktemp("ipaas")
    for name in ("connectors.py", "flows.py", "wiremesh.toml"):
        shutil.copy(DEMO / name, folder / name)
    shutil.copytree(DEMO / "web", folder / "web")
    on_any_port(folder / "wiremesh.toml")
    with RunningMesh(folder) as running:
        yield Demo(folder, running)


@pytest.fixture
async def client(demo: Demo) -> AsyncIterator[MeshClient]:
    mesh = await mesh_client(demo.folder)
    try:
        await serving_nodes(mesh, "connectors", 2)
        await serving_nodes(mesh, "flows", 1)
        yield mesh
    finally:
        await mesh.close()


WELCOME = {"flow": "welcome", "input": {"name": "Ada"}}


async def test_the_welcome_flow_greets_loudly(client: MeshClient) -> None:
    result = await client.call("flows.run", WELCOME)
    assert result["flow"] == "welcome"
    assert result["output"]["text"] == "HELLO, ADA!"
    assert [step["connector"] for step in result["steps"]] == ["greeting", "shout"]
    connectors = {n.node_id for n in client.nodes("connectors")}
    assert {step["node"] for step in result["steps"]} <= connectors


async def test_the_invoice_flow_does_arithmetic(client: MeshClient) -> None:
    result = await client.call("flows.run", {"flow": "invoice", "input": {"amount": 10}})
    assert result["output"]["amount"] == 24.0


async def test_an_unknown_flow_is_a_typed_service_error(client: MeshClient) -> None:
    with pytest.raises(ServiceError) as caught:
        await client.call("flows.run", {"flow": "no-such-flow", "input": {}})
    assert caught.value.remote_type is not None
    assert caught.value.remote_type.endswith("FlowNotFound")
    assert "no-such-flow" in caught.value.message


async def test_each_service_keeps_its_data_under_its_own_folder(
    demo: Demo, client: MeshClient
) -> None:
    data = demo.folder / ".wiremesh" / "data"
    assert (data / "connectors" / "connectors.sqlite3").is_file()
    assert (data / "flows" / "flows.sqlite3").is_file()
    defined = await client.call("flows.define", {"name": "quiet", "steps": ["greeting"]})
    assert defined == {"name": "quiet", "steps": ["greeting"]}
    result = await client.call("flows.run", {"flow": "quiet", "input": {"name": "Bo"}})
    assert result["output"]["text"] == "Hello, Bo!"


async def test_flow_runs_keep_succeeding_while_a_connectors_node_is_killed(
    demo: Demo, client: MeshClient
) -> None:
    victim = serving(client, "connectors")[0]
    results: list[dict[str, object]] = []
    errors: list[BaseException] = []
    killed = False
    stop_at = time.monotonic() + 30

    async def runs() -> None:
        nonlocal killed
        while time.monotonic() < stop_at:
            try:
                results.append(await client.call("flows.run", WELCOME))
            except Exception as exc:
                errors.append(exc)
            if not killed and len(results) >= 20:
                os.kill(victim.pid, signal.SIGKILL)
                killed = True
            # keep going until well after the kill: the view has caught up, the node is back
            if killed and len(results) >= 200 and victim.node_id not in client.snapshot.by_id:
                return

    await asyncio.gather(runs(), runs(), runs())
    assert killed
    assert errors == [], [(type(e).__name__, str(e), e.node) for e in errors]  # type: ignore[attr-defined]
    assert len(results) >= 200
    assert all(r["output"]["text"] == "HELLO, ADA!" for r in results)  # type: ignore[index]
    # the supervisor starts a new connectors node in the dead one's place
    await eventually(
        lambda: (
            len(nodes := serving(client, "connectors")) == 2
            and victim.node_id not in {n.node_id for n in nodes}
        ),
        15,
        "a new connectors node",
    )
    await demo.running.line(rf"^{victim.node_id}: exited with signal SIGKILL; restart in")


async def test_the_gateway_serves_the_demo_page_and_the_client(demo: Demo) -> None:
    found = await demo.running.line(r"^gateway: (http://127\.0\.0\.1:\d+)/#token=(\S+)$")
    base, token = found.group(1), found.group(2)
    async with httpx.AsyncClient(base_url=base) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert '<script type="module" src="app.js">' in page.text
        app = await http.get("/app.js")
        assert 'from "/_wiremesh/wiremesh.js"' in app.text
        client = await http.get("/_wiremesh/wiremesh.js")
        assert client.text == (REPO / "clients" / "js" / "wiremesh.js").read_text()
        # the path of the page's WebSocket: the upgrade would be accepted with this token
        probe = await http.get("/ws/flows", headers={"Authorization": f"Bearer {token}"})
        assert probe.status_code == 426
        assert (await http.get("/ws/flows")).status_code == 401

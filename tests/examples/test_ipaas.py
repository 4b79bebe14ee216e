"""The ipaas demo, run as its README says: ``wiremesh run`` in a copy of its folder; its
runs through the gateway's HTTP door and their channels, with ``websockets`` clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

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


# ---------------------------------------------------------------- runs and their channels


@dataclass
class Door:
    """The demo's gateway: its HTTP door and WebSockets, with tokens it accepts."""

    base: str
    folder: Path

    def token(self, subject: str = "dev") -> str:
        from wiremesh.gateway.auth import dev_secret, mint_token

        secret = dev_secret(self.folder / ".wiremesh")
        assert secret is not None
        return mint_token(secret, subject=subject, ttl=600)

    async def call(self, method: str, payload: object, subject: str = "dev") -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            headers = {"Authorization": f"Bearer {self.token(subject)}"}
            return await http.post(f"/rpc/flows/{method}", json=payload, headers=headers)

    def session(self, subject: str = "dev") -> websockets.asyncio.client.connect:
        return websockets.connect(
            "ws" + self.base[4:] + "/ws/flows",
            subprotocols=["wiremesh.v1", f"bearer.{self.token(subject)}"],  # type: ignore[list-item]
        )


@pytest.fixture
async def door(demo: Demo, client: MeshClient) -> Door:
    found = await demo.running.line(r"^gateway: (http://127\.0\.0\.1:\d+)/#token=")
    return Door(found.group(1), demo.folder)


async def control(ws: ClientConnection, *kinds: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next control message of one of ``kinds``."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str) and (found := json.loads(message))["wm"] in kinds:
                return found  # type: ignore[no-any-return]


async def follow(
    ws: ClientConnection, channel: str, since: dict[str, Any], until: str
) -> list[dict[str, Any]]:
    """Subscribe from ``since`` and read the publications (recovered, then live) until
    one of event ``until``; each as ``{"offset", "data"}``."""
    await ws.send(json.dumps({"wm": "subscribe", "channel": channel, "id": 1, "since": since}))
    answer = await control(ws, "subscribed", "error")
    assert answer["wm"] == "subscribed" and answer["recovered"] is True, answer
    seen = list(answer["publications"])
    while not seen or seen[-1]["data"]["event"] not in (until, "failed"):
        seen.append(await control(ws, "pub"))
    return [{"offset": p["offset"], "data": p["data"]} for p in seen]


ONBOARDING = {"flow": "onboarding", "input": {"name": "Ada", "amount": 10}}


async def test_a_started_run_publishes_its_steps_and_its_end_to_its_channel(door: Door) -> None:
    answer = await door.call("start", ONBOARDING | {"pace": 0})
    assert answer.status_code == 200, answer.text
    started = answer.json()
    assert started["steps"] == ["greeting", "shout", "double", "add-tax"]
    since = {"offset": started["offset"], "epoch": started["epoch"]}
    async with door.session() as ws:
        seen = await follow(ws, f"flow-run:{started['run']}", since, "done")
    events = [p["data"] for p in seen]
    assert [(e["event"], e.get("index")) for e in events] == [
        *(("step", i) for i in range(4)),
        ("done", None),
    ]
    assert events[-1]["output"] == {"name": "Ada", "text": "HELLO, ADA!", "amount": 24.0}
    state = (await door.call("run_state", started["run"])).json()
    assert (state["state"], state["output"]) == ("done", events[-1]["output"])
    assert [step["connector"] for step in state["done"]] == started["steps"]


async def test_a_runs_channel_and_state_are_its_starters_alone(door: Door) -> None:
    started = (await door.call("start", ONBOARDING, subject="ada")).json()
    async with door.session(subject="eve") as ws:
        await ws.send(json.dumps({"wm": "subscribe", "channel": f"flow-run:{started['run']}"}))
        assert (await control(ws, "subscribed", "error"))["code"] == 4403
    assert (await door.call("run_state", started["run"], subject="eve")).status_code == 404
    assert (await door.call("run_state", started["run"], subject="ada")).status_code == 200
    refused = await door.call("start", {"flow": "nope"})
    assert refused.status_code == 409 and "no flow named 'nope'" in refused.json()["detail"]


async def test_a_run_goes_on_after_its_flows_node_is_killed_and_no_step_is_lost_or_doubled(
    demo: Demo, client: MeshClient, door: Door
) -> None:
    victim = serving(client, "flows")[0]
    started = (await door.call("start", ONBOARDING | {"pace": 0.3})).json()
    channel = f"flow-run:{started['run']}"
    since = {"offset": started["offset"], "epoch": started["epoch"]}
    async with door.session() as ws:
        before = await follow(ws, channel, since, "step")
        os.kill(victim.pid, signal.SIGKILL)  # mid-run: the node waits before its next step
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
    # the broker hands the run's command to the node started in the dead one's place
    resumed = await demo.running.line(
        rf"^(flows-\S+) \| INFO ipaas.flows: run {started['run']} resumes after step", 20
    )
    assert resumed.group(1) != victim.node_id
    # back from the last publication seen: what was missed, then live, to the end
    last = {"offset": before[-1]["offset"], "epoch": started["epoch"]}
    async with door.session() as ws:
        after = await follow(ws, channel, last, "done")
    # and the whole channel, from the start: each step once, in order, then the end
    async with door.session() as ws:
        whole = await follow(ws, channel, since, "done")
    assert before + after == whole
    events = [p["data"] for p in whole]
    assert [(e["event"], e.get("index")) for e in events] == [
        *(("step", i) for i in range(4)),
        ("done", None),
    ]
    assert events[-1]["output"] == {"name": "Ada", "text": "HELLO, ADA!", "amount": 24.0}

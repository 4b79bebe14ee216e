"""The gateway as ``wiremesh run`` starts it: its own process, the printed URL and token,
``wiremesh token``, a node killed (1012) and the mesh stopped (1001)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import jwt
import pytest
import websockets

from tests.fixtures.meshes import WIREMESH, RunningMesh, mesh_client, write_mesh

GATEWAY = """\
[gateway]
port = 0
static = "web"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_mesh(tmp_path, {"chat": "svc_socket:Chat"}, name="gw", extra=GATEWAY)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<h1>demo</h1>")
    return tmp_path


def closed_code(ws: websockets.ClientConnection) -> int | None:
    frame = ws.protocol.close_rcvd
    return frame.code if frame is not None else None


async def drain(ws: websockets.ClientConnection) -> None:
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed:
        pass


async def test_run_starts_a_gateway_that_closes_with_1012_then_1001(folder: Path) -> None:
    with RunningMesh(folder) as mesh:
        url = (await mesh.line(r"^gateway: (http://\S+)", timeout=30)).group(1)
        base, _, token = url.partition("/#token=")
        assert token, url
        ws_url = base.replace("http://", "ws://") + "/ws/chat"
        async with httpx.AsyncClient(base_url=base) as http:
            page = await http.get("/")
            assert page.status_code == 200 and page.text == "<h1>demo</h1>"
            assert (await http.get("/healthz")).json()["status"] == "ok"
        protocols = ["wiremesh.v1", f"bearer.{token}"]
        async with websockets.connect(ws_url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
            await ws.send(b"!pid")
            node_pid = int(await ws.recv())
            os.kill(node_pid, signal.SIGKILL)
            async with asyncio.timeout(15):
                await drain(ws)
            assert closed_code(ws) == 1012
        # the supervisor restarts the node; a reconnecting client reaches the new one
        await mesh.line(r"^chat-\S+: serving at", count=2, timeout=30)
        async with asyncio.timeout(15):
            while True:
                try:
                    ws = await websockets.connect(ws_url, subprotocols=protocols)  # type: ignore[arg-type]
                    break
                except websockets.InvalidStatus as exc:
                    assert exc.response.status_code == 503
                    await asyncio.sleep(0.1)
        await ws.send(b"!pid")
        assert int(await ws.recv()) != node_pid
        mesh.send(signal.SIGTERM)
        async with asyncio.timeout(15):
            await drain(ws)
        assert closed_code(ws) == 1001
        assert await mesh.exit_code() == 0


def test_token_mints_what_the_gateway_accepts(folder: Path) -> None:
    done = subprocess.run(
        [WIREMESH, "token", "--sub", "ada", "--scope", "chat:write", "--ttl", "60"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.strip()
    secret = (folder / ".wiremesh" / "gateway" / "dev-secret").read_text().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["sub"] == "ada" and claims["scope"] == "chat:write"
    assert claims["exp"] - claims["iat"] == 60


def start_gateway(folder: Path) -> subprocess.Popen[str]:
    """``wiremesh gateway --port 0`` in ``folder``, as a user runs a second one."""
    return subprocess.Popen(
        [WIREMESH, "gateway", "--port", "0"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


async def test_a_second_gateway_from_the_cli_joins_the_mesh(folder: Path) -> None:
    with RunningMesh(folder) as mesh:
        url = (await mesh.line(r"^gateway: (http://\S+)", timeout=30)).group(1)
        base, _, token = url.partition("/#token=")
        second = start_gateway(folder)
        client = await mesh_client(folder)
        try:
            assert second.stdout is not None
            line = ""
            while not line.startswith("gateway: "):
                line = await asyncio.wait_for(asyncio.to_thread(second.stdout.readline), 30)
            other = line.split()[1].rstrip("/")
            protocols = ["wiremesh.v1", f"bearer.{token}"]
            first_ws = base.replace("http://", "ws://") + "/ws/chat"
            second_ws = other.replace("http://", "ws://") + "/ws/chat"
            async with (
                websockets.connect(first_ws, subprotocols=protocols) as a,
                websockets.connect(  # type: ignore[arg-type]
                    second_ws,
                    subprotocols=protocols,  # type: ignore[arg-type]
                ) as b,
            ):
                for ws in (a, b):
                    await ws.send(b"ready?")
                    assert await ws.recv() == b"ready?"
                # the development token's principal is "dev": both gateways hold one of its
                # sessions, and a push to it from the node reaches both
                reached = await client.call("chat.shout", {"principal": "dev", "text": "all"})
                assert reached == 2
                assert await a.recv() == b"all"
                assert await b.recv() == b"all"
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 15) == 0
        finally:
            await client.close()
            if second.poll() is None:
                second.kill()
                second.wait(5)

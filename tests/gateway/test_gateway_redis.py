"""A gateway on a Redis mesh: ``wiremesh gateway --mesh redis://…#name`` joins it from any
folder, serves sessions to its nodes, registers where other hosts reach it, and keeps
serving (``/readyz`` 200, sessions open) while Redis is away, saying so in ``/readyz`` and
``wiremesh_registry_reachable``. Real processes, a real (private) redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.meshes import (
    WIREMESH,
    LoneNode,
    RunningMesh,
    eventually_async,
    serving_nodes,
    write_mesh,
)
from tests.fixtures.redis_server import RedisServer, redis_available
from wiremesh.client import connect
from wiremesh.gateway.auth import mint_token
from wiremesh.gateway.frame_stream import GATEWAY_NODES, GATEWAY_URL_KEY
from wiremesh.observability.metrics import METRICS_KEY

REACHABLE = "wiremesh_registry_reachable"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed here: the gateway on Redis is NOT TESTED")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def gateway_process(folder: Path, *args: str) -> AsyncIterator[tuple[str, str]]:
    """``wiremesh gateway *args`` in ``folder``; yields its printed line's URL and the whole
    line, and stops it with SIGTERM (it must exit 0)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WIREMESH_")}
    process = await asyncio.create_subprocess_exec(
        WIREMESH,
        "gateway",
        *args,
        cwd=folder,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while not output or not output[-1].startswith("gateway: "):
                line = await process.stdout.readline()
                assert line, f"the gateway exited before it served: {''.join(output)}"
                output.append(line.decode())
        drain = asyncio.create_task(process.stdout.read())  # never let the pipe fill
        yield output[-1].split()[1].rstrip("/"), output[-1].strip()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        await drain
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def gauge(address: str, name: str) -> float:
    """The value of a gauge without labels in the Prometheus text at ``address``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"no {name} at {address}")


async def test_a_gateway_on_a_redis_mesh_keeps_serving_while_redis_is_away(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    name = f"gw-{os.urandom(3).hex()}"
    mesh = f"{redis_server.url}#{name}"
    node = LoneNode("svc_socket:Chat", "chat", redis_server.url, tmp_path, mesh=name).start()
    try:
        async with await connect(mesh, timeout=15) as client:
            (chat,) = await serving_nodes(client, "chat", 1)
        node_metrics = chat.metadata[METRICS_KEY]
        async with (
            gateway_process(tmp_path, "--mesh", mesh, "--port", "0") as (url, _),
            httpx.AsyncClient(base_url=url) as http,
        ):
            gateway_metrics = url.removeprefix("http://")
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "registry": "reachable",
                "nodes": {"chat": 1},
            }
            for address in (gateway_metrics, node_metrics):
                assert await asyncio.to_thread(gauge, address, REACHABLE) == 1

            secret = (tmp_path / ".wiremesh" / "gateway" / "dev-secret").read_text().strip()
            token = mint_token(secret, subject="ada", ttl=300)
            async with websockets.connect(
                url.replace("http://", "ws://") + "/ws/chat",
                subprotocols=["wiremesh.v1", f"bearer.{token}"],  # type: ignore[list-item]
            ) as ws:
                await ws.send(b"before")
                assert await ws.recv() == b"before"

                redis_server.pause()
                try:

                    async def registry_away() -> bool:
                        answer = await http.get("/readyz")
                        assert answer.status_code == 200, answer.text  # never unready for it
                        return bool(answer.json()["registry"] == "unreachable")

                    await eventually_async(registry_away, 10, "/readyz to see Redis away")
                    away = await http.get("/readyz")
                    assert away.json() == {
                        "status": "ready",
                        "registry": "unreachable",
                        "nodes": {"chat": 1},
                    }
                    for address in (gateway_metrics, node_metrics):

                        async def flipped(address: str = address) -> bool:
                            return await asyncio.to_thread(gauge, address, REACHABLE) == 0

                        await eventually_async(flipped, 10, f"the gauge at {address} to be 0")
                    # the session never noticed
                    await ws.send(b"during")
                    assert await ws.recv() == b"during"
                finally:
                    redis_server.resume()

                async def registry_back() -> bool:
                    answer = await http.get("/readyz")
                    return bool(answer.json()["registry"] == "reachable")

                await eventually_async(registry_back, 10, "/readyz to see Redis again")
                for address in (gateway_metrics, node_metrics):

                    async def restored(address: str = address) -> bool:
                        return await asyncio.to_thread(gauge, address, REACHABLE) == 1

                    await eventually_async(restored, 10, f"the gauge at {address} to be 1")
                await ws.send(b"after")
                assert await ws.recv() == b"after"
    finally:
        node.stop()


async def test_the_gateway_registers_its_public_url_and_an_address_others_reach(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    name = f"gw-{os.urandom(3).hex()}"
    mesh = f"{redis_server.url}#{name}"
    (tmp_path / "wiremesh.toml").write_text(
        "[gateway]\n"
        'host = "0.0.0.0"\n'
        "allow_plain = true\n"
        'public_url = "https://chat.example.com/"\n'
        "[gateway.auth]\n"
        'secret = "a-secret-for-this-test-of-32-bytes-or-more"\n'
    )
    async with gateway_process(tmp_path, "--mesh", mesh, "--port", "0") as (url, line):
        assert url == "https://chat.example.com"
        port = line.rpartition(":")[2].rstrip("/)")
        # a wildcard bind advertises the address that reaches the registry: here, loopback
        assert line.endswith(f"(listening at http://127.0.0.1:{port}/)"), line
        async with await connect(mesh) as client:
            (gateway,) = client.nodes(GATEWAY_NODES)
        assert gateway.metadata[GATEWAY_URL_KEY] == "https://chat.example.com"
        assert gateway.host == "127.0.0.1"
        assert gateway.address == f"127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_wiremesh_run_on_redis_prints_the_public_url(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=0.5).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (a Redis mesh needs one): NOT TESTED")
    name = f"gw-{os.urandom(3).hex()}"
    extra = (
        f'[registry]\nbackend = "redis"\nurl = "{redis_server.url}"\n\n'
        '[broker]\nurl = "amqp://guest:guest@127.0.0.1:5672/"\n\n'
        '[gateway]\nport = 0\npublic_url = "https://chat.example.test/"\n'
    )
    write_mesh(tmp_path, {"chat": "svc_socket:Chat"}, name=name, extra=extra)
    with RunningMesh(tmp_path) as running:
        line = await running.line(r"^gateway: (\S+)", timeout=30)
        base, _, token = line.group(1).partition("/#token=")
        assert base == "https://chat.example.test" and token
        # the folder's mesh.json leads the CLI to the Redis registry
        async with await connect(str(tmp_path)) as client:
            (gateway,) = client.nodes(GATEWAY_NODES)
            assert gateway.metadata[GATEWAY_URL_KEY] == "https://chat.example.test"
            assert gateway.host == "127.0.0.1"

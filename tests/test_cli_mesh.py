"""The mesh commands reach a mesh by its registry's URL: ``--mesh redis://…#name`` or
``WIREMESH_MESH``, from any folder. Real node processes on a real Redis (the machine's, a
mesh name of their own; a private ``redis-server`` for the tests that pause or stop it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.fixtures.meshes import WIREMESH, LoneNode, serving_nodes
from tests.fixtures.redis_server import RedisServer, redis_available
from wiremesh.client import connect
from wiremesh.messaging.broker_server import BrokerServer

SHARED_REDIS = "redis://127.0.0.1:6379/0"
ECHO = "svc_echo:Echo"


def wiremesh_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, without a WIREMESH_MESH of the surrounding shell."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WIREMESH_")}
    return subprocess.run(
        [WIREMESH, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, "COLUMNS": "200", **(env or {})},
    )


def shared_redis_runs() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class RedisMesh:
    url: str  # the registry's URL with the mesh's name: redis://host:port/0#name
    nodes: dict[str, int]  # node id -> pid


async def _serving(url: str, count: int) -> dict[str, int]:
    async with await connect(url, timeout=15) as client:
        return {n.node_id: n.pid for n in await serving_nodes(client, "echo", count)}


@pytest.fixture(scope="module")
def redis_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisMesh]:
    """Two echo nodes of a mesh of their own on the machine's Redis, for the module."""
    if not shared_redis_runs():
        pytest.skip("no Redis on 127.0.0.1:6379: the CLI on a Redis mesh is NOT TESTED")
    folder = tmp_path_factory.mktemp("redis-mesh")
    name = f"cli-{os.urandom(3).hex()}"
    nodes = [LoneNode(ECHO, "echo", SHARED_REDIS, folder, mesh=name).start() for _ in range(2)]
    try:
        url = f"{SHARED_REDIS}#{name}"
        yield RedisMesh(url, asyncio.run(_serving(url, 2)))
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to pause and stop."""
    if not redis_available():
        pytest.skip("redis-server is not installed here: an unreachable registry is NOT TESTED")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------- listing and calling


def test_nodes_of_a_redis_mesh_shows_each_node_with_its_host(
    redis_mesh: RedisMesh, tmp_path: Path
) -> None:
    done = wiremesh_cli("nodes", "--mesh", redis_mesh.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[1]
    assert "host" in header and header.index("host") < header.index("address")
    for node_id, pid in redis_mesh.nodes.items():
        (row,) = [line for line in done.stdout.splitlines() if node_id in line]
        assert str(pid) in row and "serving" in row
        assert "│ 127.0.0.1 " in row  # the HOST cell

    listed = wiremesh_cli("nodes", "--json", "--mesh", redis_mesh.url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {row["node"]: row["pid"] for row in rows} == redis_mesh.nodes
    for row in rows:
        assert row["host"] == "127.0.0.1"
        assert row["address"].startswith("127.0.0.1:")


def test_the_wiremesh_mesh_variable_names_the_mesh(redis_mesh: RedisMesh, tmp_path: Path) -> None:
    done = wiremesh_cli("nodes", "--json", cwd=tmp_path, env={"WIREMESH_MESH": redis_mesh.url})
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {row["node"] for row in rows} == set(redis_mesh.nodes)
    # --mesh wins over the variable
    elsewhere = {"WIREMESH_MESH": "redis://127.0.0.1:1/0#nowhere"}
    named = wiremesh_cli("nodes", "--json", "--mesh", redis_mesh.url, cwd=tmp_path, env=elsewhere)
    assert named.returncode == 0, named.stderr


def test_call_reaches_a_node_of_a_redis_mesh(redis_mesh: RedisMesh, tmp_path: Path) -> None:
    done = wiremesh_cli("call", "echo.echo", '"hi"', "--mesh", redis_mesh.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "hi"
    node = sorted(redis_mesh.nodes)[0]
    mine = wiremesh_cli(
        "call", f"echo@{node}.whoami", cwd=tmp_path, env={"WIREMESH_MESH": redis_mesh.url}
    )
    assert mine.returncode == 0, mine.stderr
    assert node in mine.stdout


def test_help_teaches_mesh_urls_and_the_variable(tmp_path: Path) -> None:
    for command in (("nodes",), ("top",), ("call",), ("dlq", "list"), ("gateway",)):
        done = wiremesh_cli(*command, "--help", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())
        assert "--mesh" in text and "WIREMESH_MESH" in text, command
        assert "redis://" in text, command


# ------------------------------------------------------------------------- an unreachable registry


async def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """The command in a subprocess, leaving the test's event loop free."""
    done = await asyncio.to_thread(wiremesh_cli, *args, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


async def test_nodes_says_in_one_line_that_a_paused_registry_is_unreachable(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    # a database that answers but holds no mesh is not "unreachable"
    code, _, err = await _cli("nodes", "--mesh", private_redis.url, cwd=tmp_path)
    assert code == 1, err
    assert "no mesh has registered" in err

    name = f"cli-{os.urandom(3).hex()}"
    node = LoneNode(ECHO, "echo", private_redis.url, tmp_path, mesh=name).start()
    try:
        async with await connect(f"{private_redis.url}#{name}", timeout=15) as client:
            await serving_nodes(client, "echo", 1)
        private_redis.pause()
        try:
            for mesh in (f"{private_redis.url}#{name}", private_redis.url):
                code, out, err = await _cli("nodes", "--mesh", mesh, "--timeout", "1", cwd=tmp_path)
                assert code == 3, (mesh, err)
                assert out == ""
                lines = err.strip().splitlines()
                assert len(lines) == 1, err
                assert lines[0].startswith(f"error: the registry at {private_redis.url} is ")
                assert "unreachable" in lines[0]
                if "#" in mesh:  # --timeout is the wait it gave up after
                    assert "no answer within 1s" in lines[0], lines[0]
        finally:
            private_redis.resume()
        # once Redis answers again, so does the command, with the node still there
        code, out, err = await _cli(
            "nodes", "--json", "--mesh", f"{private_redis.url}#{name}", cwd=tmp_path
        )
        assert code == 0, err
        assert json.loads(out)["node"] == node.node_id
    finally:
        node.stop()


def test_a_stopped_registry_is_unreachable_at_once(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe closes
    done = wiremesh_cli(
        "call", "echo.echo", "1", "--mesh", f"redis://127.0.0.1:{port}/0", cwd=tmp_path
    )
    assert done.returncode == 3
    assert "unreachable" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------- dlq and its broker


def test_dlq_of_a_redis_mesh_says_which_broker_is_missing(
    redis_mesh: RedisMesh, tmp_path: Path
) -> None:
    done = wiremesh_cli("dlq", "list", "--mesh", redis_mesh.url, cwd=tmp_path)
    assert done.returncode == 2
    assert "--broker" in done.stderr and "WIREMESH_BROKER" in done.stderr
    assert "wiremesh.toml" in done.stderr


async def test_dlq_of_a_redis_mesh_uses_the_broker_given(
    redis_mesh: RedisMesh, tmp_path: Path
) -> None:
    broker = BrokerServer(tmp_path / "broker.db")
    await broker.start()
    try:
        code, _, err = await _cli(
            "dlq", "list", "--mesh", redis_mesh.url, "--broker", broker.url, cwd=tmp_path
        )
        assert code == 0, err
        assert err.strip() == "no dead letters"
        done = await asyncio.to_thread(
            wiremesh_cli,
            "dlq",
            "purge",
            "--all",
            cwd=tmp_path,
            env={"WIREMESH_MESH": redis_mesh.url, "WIREMESH_BROKER": broker.url},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "purged 0 message(s)"
    finally:
        await broker.stop()


# ------------------------------------------------------------------------- gateway


async def test_gateway_accepts_its_older_registry_option(
    redis_mesh: RedisMesh, tmp_path: Path
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WIREMESH_")}
    process = await asyncio.create_subprocess_exec(
        WIREMESH,
        "gateway",
        "--registry",
        redis_mesh.url,
        "--port",
        "0",
        cwd=tmp_path,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = b""
            while not line.startswith(b"gateway: "):
                line = await process.stdout.readline()
                assert line, "the gateway exited before it served"
        assert line.split()[1].startswith(b"http://127.0.0.1:")
        async with await connect(redis_mesh.url) as client:
            assert client.nodes("wm-gateway")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A folder with development certificates and ``[tls]`` on, and a private redis-server
    that speaks TLS only, with a certificate from that CA, and asks clients for theirs."""
    if not redis_available():
        pytest.skip("redis-server is not installed here: a rediss:// mesh is NOT TESTED")
    folder = tmp_path / "mesh"
    folder.mkdir()
    made = wiremesh_cli("certs", "init", cwd=folder)
    assert made.returncode == 0, made.stderr
    (folder / "wiremesh.toml").write_text("[tls]\nenabled = true\n")
    certs = folder / ".wiremesh" / "certs"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(certs / "node.pem"),
            "--tls-key-file", str(certs / "node-key.pem"),
            "--tls-ca-cert-file", str(certs / "ca.pem"),
            "--tls-auth-clients", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp_path),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            if process.poll() is not None:
                pytest.skip("this redis-server speaks no TLS: a rediss:// mesh is NOT TESTED")
            with socket.socket() as attempt:
                if attempt.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield folder, port
    finally:
        process.kill()
        process.wait(10)


def test_a_rediss_mesh_is_reached_with_the_folders_certificates(
    tls_redis: tuple[Path, int], tmp_path: Path
) -> None:
    folder, port = tls_redis
    mesh = f"rediss://127.0.0.1:{port}/0#tls-{os.urandom(3).hex()}"
    # in the folder whose [tls] names the certificates: they are used
    done = wiremesh_cli("nodes", "--mesh", mesh, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert "no live nodes" in done.stderr
    # elsewhere, with none: the TLS handshake fails, and Redis is out of reach
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = wiremesh_cli("nodes", "--mesh", mesh, cwd=elsewhere)
    assert refused.returncode == 3, refused.stderr
    # ... unless the URL carries its own
    certs = folder / ".wiremesh" / "certs"
    base, _, name = mesh.partition("#")
    own = (
        f"{base}?ssl_ca_certs={quote(str(certs / 'ca.pem'))}"
        f"&ssl_certfile={quote(str(certs / 'client.pem'))}"
        f"&ssl_keyfile={quote(str(certs / 'client-key.pem'))}#{name}"
    )
    listed = wiremesh_cli("nodes", "--json", cwd=elsewhere, env={"WIREMESH_MESH": own})
    assert listed.returncode == 0, listed.stderr

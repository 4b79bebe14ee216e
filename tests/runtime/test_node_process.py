"""Node processes (``python -m wiremesh.runtime.node_process``): start, serve, drain, die."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fixtures.meshes import (
    FIXTURES,
    PYTHON,
    LoneNode,
    eventually,
    kill_group,
    kill_nodes,
    process_exists,
    serving_nodes,
)
from wiremesh.client import MeshClient, connect
from wiremesh.errors import Unavailable, WiremeshError
from wiremesh.registry.embedded import RegistryServer
from wiremesh.runtime.heap import YOUNG_THRESHOLD
from wiremesh.runtime.node_process import EXIT_CONFIG, NodeLaunch

ECHO = "svc_echo:Echo"


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    server = RegistryServer(ttl=1.5)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def client(registry: RegistryServer) -> AsyncIterator[MeshClient]:
    mesh = await connect(registry.address)
    try:
        yield mesh
    finally:
        await mesh.close()


@pytest.fixture
def nodes() -> Iterator[list[LoneNode]]:
    started: list[LoneNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def start_node(
    nodes: list[LoneNode], registry: str, folder: Path, target: str = ECHO, service: str = "echo"
) -> LoneNode:
    node = LoneNode(target, service, registry, folder).start()
    nodes.append(node)
    return node


async def test_a_node_serves_then_drains_on_sigterm(
    registry: RegistryServer, client: MeshClient, nodes: list[LoneNode], tmp_path: Path
) -> None:
    node = start_node(nodes, registry.address, tmp_path)
    (info,) = await serving_nodes(client, "echo", 1)
    assert info.node_id == node.node_id
    assert info.pid == node.pid
    assert set(info.methods) >= {"echo", "whoami", "slow", "record"}
    assert info.methods["echo"].idempotent
    assert not info.methods["record"].idempotent
    assert (tmp_path / "data" / "echo").is_dir()  # its data folder, made for it

    in_flight = asyncio.create_task(client.call("echo.slow", 1.0))
    await eventually(lambda: "slow call started" in node.output, 10, "the slow call to start")
    node.send(signal.SIGTERM)
    assert (await in_flight)["slept"] == 1.0
    assert await node.exit_code() == 0
    assert "draining" in node.output
    await eventually(lambda: not client.nodes("echo"), 5, "the node to leave the mesh")


async def test_a_node_settles_its_heap_once_it_serves(
    registry: RegistryServer, client: MeshClient, nodes: list[LoneNode], tmp_path: Path
) -> None:
    start_node(nodes, registry.address, tmp_path)
    await serving_nodes(client, "echo", 1)
    heap = await client.call("echo.heap")
    # modules, classes, gRPC and the service: out of every later collection
    assert heap["frozen"] > 10_000
    assert heap["young_threshold"] == YOUNG_THRESHOLD


def run_node(
    launch: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "wiremesh.runtime.node_process", launch],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def launch_json(tmp_path: Path, **changes: Any) -> str:
    launch = NodeLaunch(
        target=ECHO,
        service="echo",
        node_id="echo-test",
        registry="127.0.0.1:1",
        data_dir=str(tmp_path / "data"),
        python_path=[str(FIXTURES)],
    )
    for key, value in changes.items():
        setattr(launch, key, value)
    return launch.to_json()


async def test_a_node_runs_on_uvloop_when_it_is_installed(
    registry: RegistryServer, client: MeshClient, nodes: list[LoneNode], tmp_path: Path
) -> None:
    """``wiremesh[speed]`` is installed with what the tests need: its loop is the default
    (``WIREMESH_LOOP`` unset, as here)."""
    assert "WIREMESH_LOOP" not in os.environ
    start_node(nodes, registry.address, tmp_path)
    await serving_nodes(client, "echo", 1)
    assert await client.call("echo.loop") == "uvloop"


def test_a_node_asked_for_a_loop_it_does_not_know_exits_78(tmp_path: Path) -> None:
    done = run_node(launch_json(tmp_path), env={"WIREMESH_LOOP": "trio"})
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "WIREMESH_LOOP='trio': expected one of auto, asyncio, uvloop" in done.stderr


def test_a_bad_launch_description_exits_78(tmp_path: Path) -> None:
    done = run_node(json.dumps({"target": ECHO}))
    assert done.returncode == EXIT_CONFIG
    assert "bad launch description" in done.stderr


def test_a_node_reads_its_launch_from_stdin_when_its_argument_is_a_dash(
    tmp_path: Path,
) -> None:
    """How the supervisor starts nodes: the launch holds passwords, and a process's
    arguments are readable by every local user."""
    done = subprocess.run(
        [PYTHON, "-m", "wiremesh.runtime.node_process", "-"],
        input=launch_json(tmp_path, target="svc_echo:Missing"),
        capture_output=True,
        text=True,
        timeout=30.0,
        start_new_session=True,
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "has no 'Missing'" in done.stderr  # the launch was read: its target was tried
    bad = subprocess.run(
        [PYTHON, "-m", "wiremesh.runtime.node_process", "-"],
        input="{not json",
        capture_output=True,
        text=True,
        timeout=30.0,
    )
    assert bad.returncode == EXIT_CONFIG
    assert "bad launch description" in bad.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "svc_no_such_module:Echo"}, "cannot import 'svc_no_such_module'"),
        ({"target": "svc_echo:Missing"}, "has no 'Missing'"),
        ({"service": "greeter"}, "but the configuration calls it 'greeter'"),
        (
            {"target": "svc_misconfigured:Misconfigured", "service": "misconfigured"},
            "the setting PRICE_LIST is missing",
        ),
    ],
    ids=["no-module", "no-class", "wrong-name", "config-error-in-on_start"],
)
def test_a_node_that_cannot_start_as_configured_exits_78(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    done = run_node(launch_json(tmp_path, **changes))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


_PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-m", "wiremesh.runtime.node_process", sys.argv[1] % os.getpid()],
        start_new_session=True,
    )
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


async def test_a_node_drains_and_exits_when_its_supervisor_is_gone(
    registry: RegistryServer, client: MeshClient, tmp_path: Path
) -> None:
    # a stand-in supervisor: starts the node, says its pid, then is killed by the test
    launch = launch_json(tmp_path, registry=registry.address, node_id="echo-orphan")
    launch = launch.replace('"supervisor_pid": 0', '"supervisor_pid": %d')
    parent = await asyncio.create_subprocess_exec(
        PYTHON, "-c", _PARENT, launch, stdout=subprocess.PIPE, start_new_session=True
    )
    node_pid = 0
    try:
        assert parent.stdout is not None
        node_pid = int(await asyncio.wait_for(parent.stdout.readline(), 15))
        await serving_nodes(client, "echo", 1)
        kill_group(parent.pid)
        await asyncio.wait_for(parent.wait(), 5)
        await eventually(lambda: not process_exists(node_pid), 10, "the orphan node to exit")
        assert not client.nodes("echo")
    finally:
        kill_group(parent.pid)
        await asyncio.wait_for(parent.wait(), 5)
        kill_nodes([node_pid] if node_pid else [])


async def _calls_while_killing(
    client: MeshClient, victim: LoneNode, method: str, *, seconds: float = 2.0, workers: int = 4
) -> tuple[list[Any], list[BaseException]]:
    """Call ``echo.<method>`` from ``workers`` loops for ``seconds``; SIGKILL ``victim`` once
    both nodes have answered a few calls. Returns the results and the exceptions."""
    results: list[Any] = []
    errors: list[BaseException] = []
    answered: dict[str, int] = {}
    stop_at = time.monotonic() + seconds
    counter = iter(range(1_000_000))

    async def loop() -> None:
        while time.monotonic() < stop_at:
            value = next(counter)
            try:
                reply = await client.call(f"echo.{method}", value, timeout=5)
            except Exception as exc:
                errors.append(exc)
                continue
            assert reply["value"] == value
            answered[reply["node"]] = answered.get(reply["node"], 0) + 1
            results.append(reply)

    async def killer() -> None:
        await eventually(lambda: answered.get(victim.node_id, 0) >= 5, 5, "calls to the victim")
        victim.send(signal.SIGKILL)

    await asyncio.gather(killer(), *(loop() for _ in range(workers)))
    assert len(answered) == 2  # both nodes served calls
    return results, errors


async def test_idempotent_calls_all_succeed_while_a_node_is_killed(
    registry: RegistryServer, client: MeshClient, nodes: list[LoneNode], tmp_path: Path
) -> None:
    victim = start_node(nodes, registry.address, tmp_path)
    start_node(nodes, registry.address, tmp_path)
    await serving_nodes(client, "echo", 2)
    results, errors = await _calls_while_killing(client, victim, "stamp")
    assert errors == []
    assert len(results) > 20
    assert await victim.exit_code() == -signal.SIGKILL


async def test_non_idempotent_calls_fail_only_with_unavailable_while_a_node_is_killed(
    registry: RegistryServer, client: MeshClient, nodes: list[LoneNode], tmp_path: Path
) -> None:
    victim = start_node(nodes, registry.address, tmp_path)
    survivor = start_node(nodes, registry.address, tmp_path)
    await serving_nodes(client, "echo", 2)
    results, errors = await _calls_while_killing(client, victim, "record")
    assert len(results) > 20
    for error in errors:
        assert isinstance(error, Unavailable), repr(error)
        assert not isinstance(error, grpc.RpcError)
        assert error.node == victim.node_id
    # once the mesh has seen the death, every call lands on the survivor
    await eventually(lambda: victim.node_id not in client.snapshot.by_id, 5)
    reply = await client.call("echo.record", 1)
    assert reply["node"] == survivor.node_id
    assert all(isinstance(e, WiremeshError) for e in errors)


@pytest.mark.parametrize("method", ["stamp", "record"], ids=["idempotent", "not-idempotent"])
async def test_no_call_fails_while_a_node_drains_gracefully(
    registry: RegistryServer,
    client: MeshClient,
    nodes: list[LoneNode],
    tmp_path: Path,
    method: str,
) -> None:
    # callers learn that the node drains before it refuses calls: they simply go elsewhere
    leaving = start_node(nodes, registry.address, tmp_path)
    staying = start_node(nodes, registry.address, tmp_path)
    await serving_nodes(client, "echo", 2)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    async def loop() -> None:
        value, after_exit = 0, 0
        while after_exit < 10:  # until the node is gone, then ten calls more
            try:
                results.append(await client.call(f"echo.{method}", value, timeout=5))
            except Exception as exc:
                errors.append(exc)
            value += 1
            if leaving.process is not None and leaving.process.poll() is not None:
                after_exit += 1

    async def drain() -> None:
        await eventually(lambda: len(results) >= 50, 10, "calls before the drain")
        leaving.send(signal.SIGTERM)

    await asyncio.gather(drain(), *(loop() for _ in range(4)))
    assert errors == []
    assert await leaving.exit_code() == 0
    assert {r["node"] for r in results} == {leaving.node_id, staying.node_id}
    assert all(r["node"] == staying.node_id for r in results[-40:])

"""A shutdown under load loses no in-flight work: real meshes stopped while they work.

Each test stops a real mesh (``wiremesh run``, or node processes on a registry of the
test's own) with work in flight, and checks what ``docs/guide.md`` ("Stopping") promises:
the work in flight finishes, new work is refused in the documented order, the HTTP door
answers within the grace (or with a problem+json 503), and ``make demo`` ends with 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import os
import pty
import re
import select
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fixtures.meshes import (
    FIXTURES,
    REPO,
    LoneNode,
    RunningMesh,
    eventually,
    kill_nodes,
    mesh_client,
    serving_nodes,
)
from wiremesh.client import connect
from wiremesh.core import drain
from wiremesh.core.model import MeshSnapshot, NodeInfo, NodeState
from wiremesh.errors import Unavailable
from wiremesh.registry.embedded import RegistryServer

#: work of several steps: every step is a call nested in the run, to another service
CHAIN = """\
from __future__ import annotations

import asyncio
import sys

from wiremesh import Context, Service, rpc


class Chain(Service):
    name = "chain"

    @rpc
    async def run(self, ctx: Context, pause: float) -> list[str]:
        steps = [await ctx.call("worker.step")]
        print(f"run started on {ctx.node_id}", file=sys.stderr, flush=True)
        for _ in range(3):
            await asyncio.sleep(pause)
            steps.append(await ctx.call("worker.step"))
        return steps


class Worker(Service):
    name = "worker"

    @rpc  # not idempotent: a refused step is never hidden by a retry
    async def step(self, ctx: Context) -> str:
        await asyncio.sleep(0.02)
        return ctx.node_id
"""


def write_config(folder: Path, services: str, *, grace: float) -> Path:
    """A mesh of ``services`` (TOML tables) in ``folder``, its modules found in ``folder``
    (``chain.py``) and in the test fixtures."""
    (folder / "chain.py").write_text(CHAIN)
    path = folder / "wiremesh.toml"
    path.write_text(
        f'[mesh]\nname = "drain"\ndrain_grace = {grace}\ndefault_timeout = 10\n'
        f'python_path = [".", "{FIXTURES}"]\n\n[restart]\ninitial_backoff = 0.2\n\n' + services
    )
    return path


CHAIN_AND_WORKERS = """\
[services.chain]
target = "chain:Chain"

[services.worker]
target = "chain:Worker"
replicas = 2
"""


# ------------------------------------------------------------------ 1. the drain order


def test_the_drain_rules_are_values_in_values_out() -> None:
    assert doctest.testmod(drain).failed == 0
    rules = drain.Drain()
    rules.called_by("chain@chain-1", deadline=20.0, now=10.0)
    rules.called_by("chain@chain-1", deadline=15.0, now=11.0)  # the latest deadline stays
    caller = NodeInfo("chain-1", "chain", "127.0.0.1:1")
    worker = NodeInfo("worker-1", "worker", "127.0.0.1:2", metadata={drain.DRAINS_WITH_KEY: "h/1"})
    mesh = MeshSnapshot.of(1, [caller, worker])
    # a serving caller whose work has called holds the node until that call's deadline
    assert rules.holding(now=19.0, snapshot=mesh) == ["chain@chain-1"]
    assert not rules.settled(now=19.0, snapshot=mesh)
    assert rules.settled(now=20.5, snapshot=mesh)
    # a draining caller says itself when it is done
    draining = MeshSnapshot.of(2, [caller.with_state(NodeState.DRAINING), worker])
    assert rules.holding(now=19.0, snapshot=draining) == []
    assert drain.Drain.working(draining, "worker-1", None) == ["chain-1"]
    done = replace(caller, state=NodeState.DRAINING, metadata={drain.DRAIN_KEY: drain.DONE})
    assert drain.Drain.working(MeshSnapshot.of(3, [done, worker]), "worker-1", None) == []
    # a node of the same supervisor counts as draining, even before it says so
    assert drain.Drain.working(mesh, "chain-1", "h/1") == ["worker-1"]
    assert drain.Drain.working(mesh, "chain-1", "h/2") == []


async def test_nested_calls_of_work_in_flight_finish_while_the_whole_mesh_drains(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, CHAIN_AND_WORKERS, grace=8)
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "chain", 1)
            workers = {n.node_id for n in await serving_nodes(client, "worker", 2)}
            runs = [
                asyncio.create_task(client.call("chain.run", 0.4, timeout=15)) for _ in range(8)
            ]
            await mesh.line(r"run started on chain-", count=8)
            mesh.send(signal.SIGINT)
            stopped_at = time.monotonic()
            # every step after the first runs while every node of the mesh drains
            results = await asyncio.wait_for(asyncio.gather(*runs), 15)
            assert all(len(steps) == 4 and set(steps) <= workers for steps in results)
            assert await mesh.exit_code() == 0
            # the callers' work done, the callees went at once: not held for the grace
            assert time.monotonic() - stopped_at < 7
        finally:
            await client.close()
    assert "mesh drain: stopped" in mesh.output
    assert "Traceback" not in mesh.output


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    server = RegistryServer(ttl=1.5)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
def nodes() -> Iterator[list[LoneNode]]:
    started: list[LoneNode] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def lone(
    nodes: list[LoneNode], registry: RegistryServer, folder: Path, target: str, service: str
) -> LoneNode:
    """A node process on ``registry`` with a grace of 8 s, started by hand (as if on a
    host of its own)."""
    (folder / "chain.py").write_text(CHAIN)
    node = LoneNode(target, service, registry.address, folder)
    node.launch.python_path.append(str(folder))
    node.launch.drain_grace = 8.0
    nodes.append(node.start())
    return node


async def test_a_draining_node_finishes_a_remote_callers_work_in_flight_and_refuses_its_new_work(
    registry: RegistryServer, nodes: list[LoneNode], tmp_path: Path
) -> None:
    # the caller stays up (its host does not stop); the only worker drains
    chain = lone(nodes, registry, tmp_path, "chain:Chain", "chain")
    worker = lone(nodes, registry, tmp_path, "chain:Worker", "worker")
    client = await connect(registry.address)
    try:
        await serving_nodes(client, "chain", 1)
        await serving_nodes(client, "worker", 1)
        runs = [asyncio.create_task(client.call("chain.run", 0.4, timeout=6)) for _ in range(4)]
        # each run has called the worker once: its work is in flight there
        await eventually(lambda: chain.output.count("run started") == 4, 10, "the runs to start")
        worker.send(signal.SIGTERM)
        for steps in await asyncio.wait_for(asyncio.gather(*runs), 10):
            assert steps == [worker.node_id] * 4
        # work that begins once the worker drains is new work: refused, not run
        await eventually(lambda: not client.nodes("worker")[0].serving, 5, "the drain news")
        await asyncio.sleep(0.5)
        with pytest.raises(Unavailable, match="draining"):
            await client.call("chain.run", 0.0, timeout=5)
        assert await worker.exit_code(15) == 0
        assert "Traceback" not in worker.output
    finally:
        await client.close()


# ------------------------------------------------------------------ 2. the HTTP door

ECHO_AND_GATEWAY = """\
[services.echo]
target = "svc_echo:Echo"

[gateway]
enabled = true
port = 0
"""


async def test_the_http_door_finishes_a_request_within_the_grace_or_answers_503_problem(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, ECHO_AND_GATEWAY, grace=6)
    with RunningMesh(tmp_path) as mesh:
        url = (await mesh.line(r"^gateway: (http://\S+)", timeout=30)).group(1)
        base, _, token = url.partition("/#token=")
        headers = {"authorization": f"Bearer {token}", "wiremesh-timeout": "60"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            # longer than uvicorn's own graceful timeout, shorter than the grace
            within = asyncio.create_task(http.post("/rpc/echo/slow", json=3.0))
            # longer than the grace
            beyond = asyncio.create_task(http.post("/rpc/echo/slow", json=30.0))
            await mesh.line(r"slow call started on echo-", count=2)
            mesh.send(signal.SIGINT)
            finished, cut = await asyncio.wait_for(asyncio.gather(within, beyond), 20)
        assert finished.status_code == 200, finished.text
        assert finished.json()["slept"] == 3.0
        assert cut.status_code == 503, cut.text
        assert cut.headers["content-type"] == "application/problem+json"
        assert cut.json()["status"] == 503
        assert await mesh.exit_code() == 0
    assert "Traceback" not in mesh.output
    assert "timeout graceful shutdown exceeded" not in mesh.output


# ------------------------------------------------------------------ 3. the order of refusal


async def direct_call(address: str) -> grpc.StatusCode:
    """A new call from outside the mesh, straight to a node: its status."""
    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary("/echo/echo")
        try:
            await echo(b"\xa2hi", timeout=2, metadata=(("wm-codec", "msgpack"),))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_nodes_refuse_new_direct_calls_while_the_gateway_still_finishes_its_requests(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, ECHO_AND_GATEWAY, grace=6)
    with RunningMesh(tmp_path) as mesh:
        url = (await mesh.line(r"^gateway: (http://\S+)", timeout=30)).group(1)
        base, _, token = url.partition("/#token=")
        client = await mesh_client(tmp_path)
        try:
            (node,) = await serving_nodes(client, "echo", 1)
            assert await direct_call(node.address) is grpc.StatusCode.OK
            headers = {"authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
                request = asyncio.create_task(http.post("/rpc/echo/slow", json=3.0))
                await mesh.line(r"slow call started on echo-")
                mesh.send(signal.SIGINT)
                stopped_at = time.monotonic()
                # the gateway still finishes its request; the node takes no new work
                await eventually(lambda: "draining" in mesh.output, 5, "the drain to begin")
                await asyncio.sleep(max(0.0, stopped_at + 1.0 - time.monotonic()))
                assert not request.done()
                assert await direct_call(node.address) is grpc.StatusCode.UNAVAILABLE
                # nor does the gateway: it listens no more (or answers a 503 problem)
                with contextlib.suppress(httpx.ConnectError):
                    refused = await http.post("/rpc/echo/echo", json=1)
                    assert refused.status_code == 503, refused.text
                    assert refused.headers["content-type"] == "application/problem+json"
                answer = await asyncio.wait_for(request, 15)
            assert answer.status_code == 200, answer.text
            assert await mesh.exit_code() == 0
        finally:
            await client.close()


async def test_an_open_health_watch_sees_not_serving_and_ends_without_holding_the_node(
    registry: RegistryServer, nodes: list[LoneNode], tmp_path: Path
) -> None:
    node = LoneNode("svc_echo:Echo", "echo", registry.address, tmp_path)
    node.launch.drain_grace = 8.0
    nodes.append(node.start())
    client = await connect(registry.address)
    try:
        (info,) = await serving_nodes(client, "echo", 1)
    finally:
        await client.close()
    seen: list[int] = []
    async with grpc.aio.insecure_channel(info.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        reader = aiter(watch)
        seen.append((await anext(reader)).status)
        node.send(signal.SIGTERM)
        stopped_at = time.monotonic()

        async def read_to_the_end() -> None:
            async for reply in reader:
                seen.append(reply.status)

        # the stream ends (OK) once the node drains: nothing holds the node for its grace
        await asyncio.wait_for(read_to_the_end(), 6)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert seen == [serving, not_serving]
    assert await node.exit_code(10) == 0
    print(f"ended {time.monotonic() - stopped_at:.2f}s after SIGTERM")
    assert time.monotonic() - stopped_at < 5  # not the grace of 8 s


async def test_an_open_registry_watch_leaves_no_error_at_the_supervisors_exit(
    tmp_path: Path,
) -> None:
    write_config(tmp_path, '[services.echo]\ntarget = "svc_echo:Echo"\n', grace=2)
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)  # its view holds a Watch on the registry
        try:
            await serving_nodes(client, "echo", 1)
            mesh.send(signal.SIGINT)
            assert await mesh.exit_code() == 0
        finally:
            await client.close()
    assert "mesh drain: stopped" in mesh.output
    assert "CancelledError" not in mesh.output
    assert "Traceback" not in mesh.output


# ------------------------------------------------------------------ 4. make demo


def run_under_a_terminal(argv: list[str], cwd: Path, ready: str, timeout: float) -> tuple[int, str]:
    """Run ``argv`` with a terminal of its own, press Ctrl-C once ``ready`` shows in its
    output, and return its exit status and output."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its own session, the pty its controlling terminal
        try:
            os.chdir(cwd)
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    output = b""
    pressed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.1)
            if readable:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the terminal closed: everything has exited
                    break
                if not chunk:
                    break
                output += chunk
            if not pressed and ready.encode() in output:
                os.write(fd, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
                pressed = True
        else:
            raise AssertionError(f"{argv} did not end within {timeout:g}s:\n{output.decode()}")
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), output.decode(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
        os.close(fd)


def test_make_demo_ends_with_status_0_after_a_clean_drain(tmp_path: Path) -> None:
    make = shutil.which("make")
    assert make is not None, "GNU make is needed (the demo is started with it)"
    # the demo target's own recipe, on a tiny mesh instead of the ipaas demo
    write_config(tmp_path, '[services.echo]\ntarget = "svc_echo:Echo"\n', grace=2)
    # the interpreter of this test run, not a fresh .venv (-o: install nothing)
    bin_dir = Path(sys.executable).parent
    argv = [make, "-C", str(REPO), "-o", ".venv/.installed", f"BIN={bin_dir}"]
    argv += ["demo", f"DEMO={tmp_path}"]
    code, output = run_under_a_terminal(argv, tmp_path, ": serving at ", timeout=60)
    kill_nodes(int(pid) for pid in re.findall(r"started \(pid (\d+)\)", output))
    assert "mesh drain: stopped" in output, output
    assert "Interrupt" not in output, output
    assert code == 0, output

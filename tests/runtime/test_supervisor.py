"""The supervisor (``wiremesh run``) with real node processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
from pathlib import Path

import pytest
from rich.console import Console

from tests.fixtures.meshes import (
    RunningMesh,
    eventually,
    kill_nodes,
    mesh_client,
    process_exists,
    serving,
    serving_nodes,
    supervising,
    write_mesh,
)
from wiremesh.errors import Unavailable
from wiremesh.runtime.config import load_config
from wiremesh.runtime.display import nodes_table
from wiremesh.runtime.supervisor import ProcessState, Supervisor

ECHO = "svc_echo:Echo"


def mesh_json(folder: Path) -> Path:
    return folder / ".wiremesh" / "mesh.json"


async def test_run_starts_the_replicas_and_writes_mesh_json(tmp_path: Path) -> None:
    write_mesh(tmp_path, {"echo": {"target": ECHO, "replicas": 2}})
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            nodes = await serving_nodes(client, "echo", 2)
            described = json.loads(mesh_json(tmp_path).read_text())
            # its owner's only: a broker url in it may carry a password
            assert mesh_json(tmp_path).stat().st_mode & 0o777 == 0o600
            assert described["pid"] == mesh.pid
            assert described["name"] == "test"
            assert described["registry"].startswith("127.0.0.1:")
            started = mesh.node_pids()
            assert {n.node_id: n.pid for n in nodes} == started
            for node in nodes:
                assert node.address.startswith("127.0.0.1:")
                reply = await client.call("echo.whoami", node=node.node_id)
                assert reply == {"node": node.node_id, "pid": node.pid}
        finally:
            await client.close()
        mesh.send(signal.SIGTERM)
        assert await mesh.exit_code() == 0
    assert not mesh_json(tmp_path).exists()
    assert not any(process_exists(pid) for pid in started.values())
    assert "mesh test: stopped" in mesh.output


async def test_a_killed_node_is_restarted_as_a_new_node(tmp_path: Path) -> None:
    config = write_mesh(tmp_path, {"echo": {"target": ECHO, "replicas": 2}})
    async with supervising(config) as (supervisor, lines):
        client = await mesh_client(tmp_path)
        try:
            before = await serving_nodes(client, "echo", 2)
            victim = before[0]
            await eventually(
                lambda: all(s.state is ProcessState.SERVING for s in supervisor.slots), 10
            )
            os.kill(victim.pid, signal.SIGKILL)
            after = await eventually(
                lambda: (
                    len(nodes := serving(client, "echo")) == 2
                    and victim.node_id not in {n.node_id for n in nodes}
                    and nodes
                ),
                15,
                "a new node to replace the killed one",
            )
            new = {n.node_id for n in after} - {n.node_id for n in before}
            assert len(new) == 1
            (replacement,) = [n for n in after if n.node_id in new]
            assert replacement.pid != victim.pid
            assert await client.call("echo.echo", "still here", node=replacement.node_id) == (
                "still here"
            )
            slot = next(s for s in supervisor.slots if s.node_id == replacement.node_id)
            assert slot.restarts == 1
            # what 'wiremesh run' shows on a terminal
            await eventually(lambda: slot.state is ProcessState.SERVING, 10)
            console = Console(record=True, width=200)
            console.print(nodes_table(supervisor))
            (row,) = [line for line in console.export_text().splitlines() if slot.node_id in line]
            assert re.search(rf"│ echo\s+│ {slot.node_id}\s+│ {replacement.address}\s+│", row)
            assert re.search(rf"│ {replacement.pid}\s+│ serving\s+│ \d+s\s+│ 1\s+│$", row), row
            assert slot.last_exit == -signal.SIGKILL
            assert any(
                line.startswith(f"{victim.node_id}: exited with signal SIGKILL; restart in")
                for line in lines
            ), lines
            assert not process_exists(victim.pid)
        finally:
            await client.close()


_RESTART = re.compile(r"^crash-\w+: exited with code 3; restart in (\d+\.\d)s$")


async def test_a_node_that_exits_at_once_is_restarted_with_growing_backoff(
    tmp_path: Path,
) -> None:
    config = write_mesh(tmp_path, {"crash": "svc_crash:Crash"})
    random.seed(20240601)  # the backoff draws its jitter from random: make the run repeatable
    async with supervising(config) as (supervisor, lines):
        (slot,) = supervisor.slots
        await eventually(
            lambda: sum(1 for line in lines if _RESTART.match(line)) >= 6,
            40,
            "six restarts of the crashing node",
        )
        delays = [float(m.group(1)) for line in lines if (m := _RESTART.match(line))]
        assert slot.restarts >= 6
        assert slot.backoff.failures == slot.restarts
        # full jitter between initial/2 and min(max_backoff, initial * 2**n), printed to 0.1 s
        for n, delay in enumerate(delays):
            assert 0.1 - 0.05 <= delay <= min(1.0, 0.2 * 2**n) + 0.05, (n, delays)
        assert max(delays[2:]) > 0.25, delays
        # every start is a new node, and none ever joined the mesh
        starts = [line for line in lines if re.match(r"^crash-\w+: started \(pid \d+\)$", line)]
        assert len({line.split(":")[0] for line in starts}) == len(starts) >= 6
        assert supervisor.registry is not None
        assert supervisor.registry.membership.snapshot().by_service.get("crash") is None


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("svc_broken_import:Broken", "No module named 'wiremesh_no_such_dependency'"),
        ("svc_no_such_module:Thing", "No module named 'svc_no_such_module'"),
        ("svc_echo:NoSuchClass", "has no 'NoSuchClass'"),
        ("svc_echo:EchoRefused", "is not a wiremesh.Service subclass"),
    ],
)
def test_a_target_that_cannot_load_stops_the_run_before_anything_starts(
    tmp_path: Path, target: str, reason: str
) -> None:
    write_mesh(tmp_path, {"echo": ECHO, "other": target})
    with RunningMesh(tmp_path) as mesh:
        assert mesh.wait(20) == 2
    assert reason in mesh.output
    assert target in mesh.output
    assert "Traceback" not in mesh.output
    assert "started (pid" not in mesh.output
    assert not mesh_json(tmp_path).exists()


def test_a_target_naming_another_service_is_reported(tmp_path: Path) -> None:
    write_mesh(tmp_path, {"greeter": ECHO})
    with RunningMesh(tmp_path) as mesh:
        assert mesh.wait(20) == 2
    assert "services.greeter.target" in mesh.output
    assert "[services.echo]" in mesh.output
    assert "started (pid" not in mesh.output


async def test_a_node_that_cannot_start_as_configured_is_not_restarted(tmp_path: Path) -> None:
    config = write_mesh(
        tmp_path, {"echo": ECHO, "misconfigured": "svc_misconfigured:Misconfigured"}
    )
    async with supervising(config) as (supervisor, lines):
        slot = next(s for s in supervisor.slots if s.service == "misconfigured")
        await eventually(lambda: slot.state is ProcessState.FAILED, 15, "the node to fail")
        assert slot.last_exit == 78
        assert any("the setting PRICE_LIST is missing" in line for line in lines), lines
        assert f"{slot.node_id}: cannot start as configured; not restarting" in lines
        client = await mesh_client(tmp_path)
        try:
            await serving_nodes(client, "echo", 1)
            # well past the longest restart backoff (1 s): still one start, still failed
            await asyncio.sleep(2.0)
            starts = [line for line in lines if line.startswith("misconfigured-")]
            assert sum(1 for line in starts if "started (pid" in line) == 1, lines
            assert slot.state is ProcessState.FAILED
            assert slot.restarts == 0
            assert await client.call("echo.echo", 7) == 7
        finally:
            await client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_drains_the_mesh_and_in_flight_calls_complete(
    tmp_path: Path, sig: signal.Signals
) -> None:
    write_mesh(tmp_path, {"echo": {"target": ECHO, "replicas": 2}})
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            nodes = await serving_nodes(client, "echo", 2)
            in_flight = asyncio.create_task(client.call("echo.slow", 1.0, timeout=10))
            await mesh.line(r"slow call started on echo-")
            mesh.send(sig)
            result = await asyncio.wait_for(in_flight, 10)
            assert result["slept"] == 1.0
            assert result["node"] in {n.node_id for n in nodes}
            assert await mesh.exit_code() == 0
        finally:
            await client.close()
    assert "draining 2 node(s)" in mesh.output
    assert not mesh_json(tmp_path).exists()
    pids = [n.pid for n in nodes]
    assert sorted(pids) == sorted(mesh.node_pids().values())
    assert not any(process_exists(pid) for pid in pids)


async def test_a_hung_node_is_killed_and_replaced(tmp_path: Path) -> None:
    config = write_mesh(tmp_path, {"echo": ECHO})
    async with supervising(config) as (supervisor, lines):
        (slot,) = supervisor.slots
        client = await mesh_client(tmp_path)
        try:
            (hung,) = await serving_nodes(client, "echo", 1)
            await eventually(lambda: slot.state is ProcessState.SERVING, 10)
            os.kill(hung.pid, signal.SIGSTOP)
            try:
                await eventually(
                    lambda: slot.state is ProcessState.UNRESPONSIVE, 10, "state unresponsive"
                )
                (replacement,) = await eventually(
                    lambda: (
                        (nodes := serving(client, "echo"))
                        and nodes[0].node_id != hung.node_id
                        and nodes
                    ),
                    20,
                    "a new node to replace the hung one",
                )
            finally:
                if process_exists(hung.pid):
                    os.kill(hung.pid, signal.SIGCONT)
            assert f"{hung.node_id}: unresponsive; killing it" in lines
            assert slot.restarts == 1, "\n".join(lines)
            assert slot.node_id == replacement.node_id
            assert replacement.pid != hung.pid
            await eventually(lambda: not process_exists(hung.pid), 5, "the hung node to be gone")
            assert await client.call("echo.echo", "ok") == "ok"
        finally:
            await client.close()


def test_a_busy_registry_port_is_reported_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        write_mesh(tmp_path, {"echo": ECHO}, extra=f"[registry]\nport = {port}")
        with RunningMesh(tmp_path) as mesh:
            assert mesh.wait(20) == 1
    assert f"127.0.0.1:{port}" in mesh.output
    assert "Traceback" not in mesh.output
    assert "started (pid" not in mesh.output
    assert not mesh_json(tmp_path).exists()


async def test_a_second_sigint_stops_at_once(tmp_path: Path) -> None:
    write_mesh(tmp_path, {"echo": ECHO})
    with RunningMesh(tmp_path) as mesh:
        client = await mesh_client(tmp_path)
        try:
            (node,) = await serving_nodes(client, "echo", 1)
            in_flight = asyncio.create_task(client.call("echo.slow", 30.0, timeout=60))
            await mesh.line(r"slow call started on echo-")
            mesh.send(signal.SIGINT)
            await mesh.line(r"^draining 1 node\(s\)")
            mesh.send(signal.SIGINT)
            await mesh.line(r"^stopping at once$")
            with pytest.raises(Unavailable):  # the node was killed under the call
                await asyncio.wait_for(in_flight, 10)
            assert await mesh.exit_code() == 0
        finally:
            await client.close()
    assert not process_exists(node.pid)
    assert not mesh_json(tmp_path).exists()


async def test_stopping_during_a_crash_loop_leaves_no_process(tmp_path: Path) -> None:
    config = load_config(
        write_mesh(tmp_path, {"crash": {"target": "svc_crash:Crash", "replicas": 3}})
    )
    lines: list[str] = []
    supervisor = Supervisor(config, echo=lines.append)
    task = asyncio.create_task(supervisor.run())
    started = re.compile(r"^crash-\w+: started \(pid (\d+)\)$")
    try:
        await eventually(
            lambda: sum(1 for line in lines if started.match(line)) >= 6, 30, "restarts"
        )
        supervisor.stop()  # some slots wait to restart, some have a process starting
        assert await asyncio.wait_for(task, 15) == 0
        pids = [int(m.group(1)) for line in lines if (m := started.match(line))]
        assert not [pid for pid in pids if process_exists(pid)]
        assert all(s.state is ProcessState.STOPPED for s in supervisor.slots)
        assert not any(
            "restart in" in line for line in lines[lines.index("draining 3 node(s), grace 2s") :]
        )
    finally:
        if not task.done():
            supervisor.kill_all()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        kill_nodes(int(m.group(1)) for line in lines if (m := started.match(line)))


GATEWAY = """\
[gateway]
port = 0
"""
_SERVING = re.compile(r"^(?:chat|echo)-\w+: serving at ")


async def test_the_gateway_is_announced_once_every_node_serves(tmp_path: Path) -> None:
    config = write_mesh(
        tmp_path,
        {"chat": "svc_socket:Chat", "echo": {"target": ECHO, "replicas": 2}},
        extra=GATEWAY,
    )
    async with supervising(config) as (supervisor, lines):
        await eventually(lambda: supervisor.gateway_url is not None, 30, "the gateway announced")
        announced = next(i for i, line in enumerate(lines) if line.startswith("gateway: "))
        assert sum(1 for line in lines[:announced] if _SERVING.match(line)) == 3, lines


async def test_the_gateway_is_announced_in_the_end_when_a_node_never_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wiremesh.runtime import supervisor as module

    monkeypatch.setattr(module, "ANNOUNCE_GATEWAY_AFTER", 1.5)
    config = write_mesh(
        tmp_path, {"chat": "svc_socket:Chat", "crash": "svc_crash:Crash"}, extra=GATEWAY
    )
    async with supervising(config) as (supervisor, lines):
        await eventually(lambda: supervisor.gateway_url is not None, 30, "the gateway announced")
        crash = next(s for s in supervisor.slots if s.service == "crash")
        assert crash.state is not ProcessState.SERVING
        assert any(line.startswith("gateway: http://") for line in lines)

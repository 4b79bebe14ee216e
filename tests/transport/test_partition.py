"""Calls between hosts survive a partition.

Two real node processes of ``echo`` (``tests/fixtures/svc_echo.py``) on 127.0.0.1, and a
client of the mesh in this process. The client reaches ``near`` directly and ``far``
through a :class:`Route`, a TCP relay in this process that stands for the network
between two hosts: it relays bytes both ways until the test cuts it; cut, it relays
nothing and reads nothing, and keeps every socket open (no RST, no FIN), as a route
that drops packets does. ``far`` registers with a registry of its own; the test leases
its record, under the relay's address, in the mesh's registry, and the lease's
heartbeats do not cross the cut: every view keeps listing ``far``.

The bounds asserted are the documented ones (:mod:`wiremesh.core.ejection`), with room
for a loaded machine; a call that outlives its deadline fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fixtures.meshes import LoneNode, eventually, eventually_async, serving_nodes
from wiremesh.client import MeshClient, connect
from wiremesh.core.ejection import MAX_EJECTION, PROBE_AFTER, UNREACHABLE_AFTER
from wiremesh.errors import DeadlineExceeded, Unavailable
from wiremesh.registry.embedded import EmbeddedRegistry, RegistryServer

ECHO = "svc_echo:Echo"
#: every call's deadline here
DEADLINE = 2.0
#: room for a loaded machine on top of a documented bound
SLACK = 1.0
#: a silent peer is ejected within this of the first call it leaves unanswered
EJECTED_WITHIN = UNREACHABLE_AFTER + PROBE_AFTER
#: a peer that can be reached again is back within this
BACK_WITHIN = MAX_EJECTION + UNREACHABLE_AFTER

T = TypeVar("T")


class Route:
    """A TCP relay to ``target`` (``host:port``) that can be cut and healed."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.relaying = asyncio.Event()
        self.relaying.set()
        self.address = ""
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Route:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def cut(self) -> None:
        """Stop dead: read nothing, send nothing, close nothing."""
        self.relaying.clear()
        for transport in self._transports:
            self._pause(transport)

    def heal(self) -> None:
        self.relaying.set()
        for transport in self._transports:
            if isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
                transport.resume_reading()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in self._transports:
            transport.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    def _pause(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
            transport.pause_reading()

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        if not self.relaying.is_set():
            self._pause(writer.transport)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._track(writer)
        try:
            await self.relaying.wait()  # a connection made across a cut route goes nowhere
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._track(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.relaying.wait()  # read before the cut: held back, not relayed
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@dataclass
class Mesh:
    client: MeshClient
    near: LoneNode
    far: LoneNode
    route: Route

    async def call(self, target: str, *args: Any, timeout: float = DEADLINE) -> Any:
        """A call that must end (answer or error) within its deadline."""
        started = time.monotonic()
        try:
            return await asyncio.wait_for(
                self.client.call(target, *args, timeout=timeout), timeout + 5.0
            )
        finally:
            took = time.monotonic() - started
            assert took < timeout + 0.5, f"{target} took {took:.2f}s, deadline {timeout}s"

    async def whoami(self, timeout: float = DEADLINE) -> str:
        answer: dict[str, Any] = await self.call("echo.whoami", timeout=timeout)
        node: str = answer["node"]
        return node

    def ejected(self) -> bool:
        assert self.client.links is not None
        return self.far.node_id in self.client.links.ejections

    def listed(self) -> bool:
        return self.far.node_id in self.client.snapshot.by_id


async def first(condition: Callable[[], Awaitable[T]], within: float, what: str) -> float:
    """Seconds until ``condition`` holds, failing after ``within``."""
    started = time.monotonic()
    await eventually_async(condition, within, what)
    return time.monotonic() - started


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    registry, elsewhere = RegistryServer(ttl=1.5), RegistryServer(ttl=1.5)
    await registry.start()
    await elsewhere.start()
    near = LoneNode(ECHO, "echo", registry.address, tmp_path).start()
    far = LoneNode(ECHO, "echo", elsewhere.address, tmp_path).start()
    route: Route | None = None
    leases = EmbeddedRegistry(registry.address)
    client: MeshClient | None = None
    try:
        far_view = EmbeddedRegistry(elsewhere.address)
        try:
            snapshot = await eventually_async(
                lambda: _snapshot_with(far_view, far.node_id), 15, "far to register"
            )
        finally:
            await far_view.close()
        record = snapshot.by_id[far.node_id]
        route = await Route(record.address).start()
        await leases.lease(replace(record, address=route.address))
        client = await connect(registry.address)
        await serving_nodes(client, "echo", 2)
        yield Mesh(client, near, far, route)
    finally:
        if client is not None:
            await client.close()
        await leases.close()
        if route is not None:
            route.heal()
            await route.close()
        near.stop()
        far.stop()
        await registry.stop(0)
        await elsewhere.stop(0)


async def _snapshot_with(registry: EmbeddedRegistry, node_id: str) -> Any:
    with contextlib.suppress(Unavailable):
        snapshot = await registry.snapshot(timeout=1.0)
        if node_id in snapshot.by_id:
            return snapshot
    return None


async def test_idempotent_calls_go_on_while_a_peer_is_cut_off_and_it_is_back_once_healed(
    mesh: Mesh,
) -> None:
    assert {await mesh.whoami() for _ in range(4)} == {mesh.near.node_id, mesh.far.node_id}

    mesh.route.cut()
    cut_at = time.monotonic()
    # round robin: the second call at the latest goes to far, and waits for it
    answers = [await mesh.whoami(), await mesh.whoami()]
    assert mesh.ejected(), "far was not left out"
    assert time.monotonic() - cut_at < EJECTED_WITHIN + SLACK
    for _ in range(20):
        answers.append(await mesh.whoami())
    assert set(answers) == {mesh.near.node_id}
    assert mesh.listed()  # the registry still lists it: only this caller leaves it out

    mesh.route.heal()
    took = await first(
        lambda: _answered_by(mesh, mesh.far.node_id), BACK_WITHIN + SLACK, "far to be used again"
    )
    assert took < BACK_WITHIN + SLACK
    assert not mesh.ejected()
    assert {await mesh.whoami() for _ in range(4)} == {mesh.near.node_id, mesh.far.node_id}


async def _answered_by(mesh: Mesh, node_id: str) -> bool:
    return await mesh.whoami() == node_id


async def test_an_idempotent_call_in_flight_when_its_peer_is_cut_off_is_answered_elsewhere(
    mesh: Mesh,
) -> None:
    # four slow calls at once: round robin sends two to each node
    calls = [asyncio.create_task(mesh.call("echo.slow", 1.0, timeout=4.0)) for _ in range(4)]
    await eventually(lambda: "slow call started" in mesh.far.output, 5, "a call to start on far")
    mesh.route.cut()
    answers = await asyncio.gather(*calls)
    # the two that far was running were given up, and answered by near within their deadline
    assert [answer["node"] for answer in answers] == [mesh.near.node_id] * 4
    assert mesh.ejected()


async def test_a_call_that_cannot_go_elsewhere_fails_within_its_deadline_when_its_peer_is_cut_off(
    mesh: Mesh,
) -> None:
    assert {await mesh.whoami() for _ in range(2)} == {mesh.near.node_id, mesh.far.node_id}
    mesh.route.cut()

    # not idempotent: the one that goes to far is not answered, and fails in time
    outcomes = await asyncio.gather(
        *(mesh.call("echo.record", n) for n in range(2)), return_exceptions=True
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1, outcomes
    assert isinstance(failed[0], (Unavailable, DeadlineExceeded)), failed[0]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert answered[0]["node"] == mesh.near.node_id

    # named: never sent elsewhere, whether idempotent or not; fails in time
    for target in (f"echo@{mesh.far.node_id}.whoami", f"echo@{mesh.far.node_id}.record"):
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await mesh.call(target, *([] if target.endswith("whoami") else [1]))

    # far is left out by now: calls that are not idempotent go to near and succeed
    assert mesh.ejected()
    for n in range(4):
        assert (await mesh.call("echo.record", n))["node"] == mesh.near.node_id

"""Deadlines: the default one, inheritance across hops, expiry and cancellation.

Bounds are loose on purpose: tests never assert timings tightly. gRPC itself rounds a
timeout up a little when it encodes it (``grpc-timeout``), so a nested handler may see a
few milliseconds more than its caller had.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import msgpack
import pytest

from wiremesh import Context, Deadline, DeadlineExceeded, Service, ServiceProxy, rpc
from wiremesh.client import MeshClient
from wiremesh.testing import TestMesh

#: what gRPC's rounding of the timeout may add (plus scheduling noise on a busy machine)
SLACK = 0.15


class Probe:
    """What the handlers saw, per test (each test makes its own)."""

    def __init__(self) -> None:
        self.remaining: dict[str, float] = {}
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.calls = 0


PROBE = Probe()


class Alpha(Service):
    name = "alpha"

    gamma = ServiceProxy("gamma")

    @rpc
    async def via_proxy(self, ctx: Context) -> float:
        result: float = await self.gamma.remaining()
        return result

    @rpc
    async def start(self, ctx: Context, pause: float) -> dict[str, float]:
        PROBE.remaining["alpha"] = ctx.remaining
        await asyncio.sleep(pause)
        await ctx.call("beta.relay", pause)
        return PROBE.remaining

    @rpc
    async def capped(self, ctx: Context, timeout: float) -> float:
        result: float = await ctx.call("gamma.remaining", timeout=timeout)
        return result

    @rpc
    async def expired(self, ctx: Context, timeout: float) -> str:
        try:
            await ctx.call("gamma.count", timeout=timeout)
        except DeadlineExceeded as exc:
            return f"DeadlineExceeded: {exc.message}"
        return "sent"

    @rpc
    async def wait_on_gamma(self, ctx: Context) -> None:
        await ctx.call("gamma.hang")


class Beta(Service):
    name = "beta"

    @rpc
    async def relay(self, ctx: Context, pause: float) -> None:
        PROBE.remaining["beta"] = ctx.remaining
        await asyncio.sleep(pause)
        await ctx.call("gamma.record")


class Gamma(Service):
    name = "gamma"

    @rpc
    async def record(self, ctx: Context) -> None:
        PROBE.remaining["gamma"] = ctx.remaining

    @rpc
    async def remaining(self, ctx: Context) -> float:
        return ctx.remaining

    @rpc
    async def count(self, ctx: Context) -> int:
        PROBE.calls += 1
        return PROBE.calls

    @rpc
    async def hang(self, ctx: Context) -> None:
        PROBE.entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            PROBE.cancelled.set()
            raise
        PROBE.finished.set()


@pytest.fixture
def probe() -> Probe:
    global PROBE
    PROBE = Probe()
    return PROBE


@pytest.fixture
async def mesh(probe: Probe) -> AsyncIterator[TestMesh]:
    async with TestMesh(Alpha, Beta, Gamma, default_timeout=2.0, drain_grace=0.1) as mesh:
        yield mesh


async def test_the_default_deadline_applies(mesh: TestMesh) -> None:
    remaining = await mesh.call("gamma.remaining")
    assert 0.5 < remaining <= 2.0 + SLACK


async def test_a_node_uses_its_default_when_the_caller_sent_no_deadline(mesh: TestMesh) -> None:
    (gamma,) = mesh.nodes_of("gamma")
    async with grpc.aio.insecure_channel(gamma.address) as channel:
        call = channel.unary_unary("/gamma/remaining", None, None)
        remaining = msgpack.unpackb(await call(b""))  # no timeout: no grpc-timeout header
    assert 0.5 < remaining <= 2.0


async def test_a_default_deadline_expires(mesh: TestMesh, probe: Probe) -> None:
    client = MeshClient(mesh.registry.address, default_timeout=0.3)
    await client.start()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.call("gamma.hang")
        assert time.monotonic() - started < 5
        await asyncio.wait_for(probe.cancelled.wait(), 5)
    finally:
        await client.close()


async def test_nested_calls_inherit_what_remains_over_three_hops(
    mesh: TestMesh, probe: Probe
) -> None:
    seen = await mesh.call("alpha.start", 0.1, timeout=1.5)
    alpha, beta, gamma = seen["alpha"], seen["beta"], seen["gamma"]
    assert alpha <= 1.5 + SLACK
    assert beta <= alpha - 0.05  # alpha slept 0.1 s before calling beta
    assert gamma <= beta - 0.05  # beta slept 0.1 s before calling gamma
    assert gamma > 0
    # a fresh call would have had the node's 2 s default: gamma got the inherited one
    assert gamma < 1.5


async def test_a_service_proxy_call_inherits_the_deadline(mesh: TestMesh) -> None:
    remaining = await mesh.call("alpha.via_proxy", timeout=0.8)
    assert 0 < remaining <= 0.8 + SLACK


async def test_a_nested_timeout_caps_the_inherited_deadline(mesh: TestMesh) -> None:
    remaining = await mesh.call("alpha.capped", 0.4, timeout=1.8)
    assert 0 < remaining <= 0.4 + SLACK
    # a nested timeout longer than what remains does not extend it
    remaining = await mesh.call("alpha.capped", 30.0, timeout=0.8)
    assert 0 < remaining <= 0.8 + SLACK


async def test_when_the_deadline_passes_the_remote_handler_is_cancelled(
    mesh: TestMesh, probe: Probe
) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        await mesh.call("gamma.hang", timeout=0.3)
    assert time.monotonic() - started < 5
    assert info.value.node == mesh.nodes_of("gamma")[0].node_id
    await asyncio.wait_for(probe.cancelled.wait(), 5)
    assert not probe.finished.is_set()
    assert await mesh.call("gamma.remaining") > 0  # the node keeps serving


async def test_an_inherited_deadline_cancels_the_handler_two_hops_away(
    mesh: TestMesh, probe: Probe
) -> None:
    with pytest.raises(DeadlineExceeded):
        await mesh.call("alpha.wait_on_gamma", timeout=0.4)
    await asyncio.wait_for(probe.cancelled.wait(), 5)
    assert not probe.finished.is_set()


@pytest.mark.parametrize("timeout", [0, 0.0, -1, -0.001])
async def test_a_timeout_of_zero_or_less_is_refused_without_sending(
    mesh: TestMesh, probe: Probe, timeout: float
) -> None:
    with pytest.raises(DeadlineExceeded, match="timeout must be positive"):
        await mesh.call("gamma.count", timeout=timeout)
    assert probe.calls == 0


async def test_a_deadline_in_the_past_is_refused_without_sending(
    mesh: TestMesh, probe: Probe
) -> None:
    with pytest.raises(DeadlineExceeded):
        await mesh.call("gamma.count", deadline=Deadline.after(-1.0, now=time.monotonic()))
    assert probe.calls == 0
    assert await mesh.call("gamma.count") == 1


@pytest.mark.parametrize("timeout", [0, -5])
async def test_a_nested_call_with_no_time_left_is_not_sent(
    mesh: TestMesh, probe: Probe, timeout: float
) -> None:
    reply = await mesh.call("alpha.expired", timeout)
    assert reply.startswith("DeadlineExceeded")
    assert probe.calls == 0


async def test_cancelling_the_calling_task_cancels_the_remote_handler(
    mesh: TestMesh, probe: Probe
) -> None:
    task = asyncio.create_task(mesh.call("gamma.hang", timeout=10))
    await asyncio.wait_for(probe.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(probe.cancelled.wait(), 5)
    assert not probe.finished.is_set()
    assert await mesh.call("gamma.remaining") > 0


async def test_cancelling_a_caller_cancels_the_whole_chain(mesh: TestMesh, probe: Probe) -> None:
    task = asyncio.create_task(mesh.call("alpha.wait_on_gamma", timeout=10))
    await asyncio.wait_for(probe.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(probe.cancelled.wait(), 5)

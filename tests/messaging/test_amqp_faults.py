"""RabbitMQ goes away and comes back: nothing that ``publish`` acknowledged is lost.

Restarts the RabbitMQ application on this machine (``rabbitmqctl stop_app`` /
``start_app``), once, for a few seconds. Skipped when RabbitMQ does not run on
127.0.0.1:5672 or ``rabbitmqctl`` cannot control it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest

from wiremesh.errors import BrokerUnavailable
from wiremesh.messaging.amqp import AmqpBroker
from wiremesh.messaging.base import Binding, Envelope, Received

URL = "amqp://guest:guest@127.0.0.1:5672/"
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def why_not() -> str | None:
    """Why this machine cannot run these tests, or ``None`` when it can."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1.0).close()
    except OSError:
        return "RabbitMQ is not running on 127.0.0.1:5672"
    if not os.access(RABBITMQCTL, os.X_OK):
        return "rabbitmqctl is not installed (on PATH or /usr/sbin)"
    try:
        done = subprocess.run(
            [RABBITMQCTL, "-q", "status"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"rabbitmqctl status failed: {exc}"
    if done.returncode != 0:
        return f"rabbitmqctl cannot control the local RabbitMQ: {done.stderr.decode()[-300:]}"
    return None


REASON = why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


async def rabbitmqctl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        RABBITMQCTL, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, f"rabbitmqctl {' '.join(args)}: {stderr.decode()}"


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[AmqpBroker, AmqpBroker]]:
    mesh = f"test-{uuid.uuid4().hex[:10]}"
    sender = AmqpBroker(URL, mesh=mesh, reconnect_interval=0.3)
    consumer = AmqpBroker(URL, mesh=mesh, reconnect_interval=0.3)
    await sender.start()
    await consumer.start()
    yield sender, consumer
    for broker in (consumer, sender):
        await broker.delete_topology()
        await broker.close()


@pytest.mark.timeout(150)
async def test_restart_during_a_stream_loses_nothing_acknowledged(
    nodes: tuple[AmqpBroker, AmqpBroker],
) -> None:
    sender, consumer = nodes
    received: set[str] = set()
    arrived = asyncio.Event()

    async def handle(message: Received) -> None:
        received.add(message.envelope.id)
        arrived.set()
        await message.ack()

    binding = Binding("sink", "on_tick", "event", ("ticks.#",), "pool", "sink-1", 32)
    await consumer.consume(binding, handle)

    acknowledged: list[str] = []
    refused = 0
    stop = asyncio.Event()
    counter = itertools.count()

    async def emit() -> None:
        nonlocal refused
        while not stop.is_set():
            envelope = Envelope(uuid.uuid4().hex, "event", f"ticks.{next(counter)}", b"\x01", "raw")
            try:
                await sender.publish([envelope], timeout=30)
            except BrokerUnavailable:
                refused += 1  # not acknowledged: the emitter would send it again
                continue
            acknowledged.append(envelope.id)

    async def wait_acknowledged(count: int) -> None:
        async with asyncio.timeout(60):
            while len(acknowledged) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    emitters = [asyncio.create_task(emit()) for _ in range(8)]
    restarted = False
    try:
        await wait_acknowledged(300)
        await rabbitmqctl("stop_app")
        try:
            # while it is down, a publish waits up to its deadline, then fails clearly
            late = Envelope(uuid.uuid4().hex, "event", "ticks.late", b"", "raw")
            with pytest.raises(BrokerUnavailable, match="did not accept 1 message"):
                await sender.publish([late], timeout=0.5)
            before_restart = len(acknowledged)
        finally:
            await rabbitmqctl("start_app")
            restarted = True
        # the stream goes on after the restart, the consumer included
        await wait_acknowledged(before_restart + 300)
    finally:
        if not restarted:
            await rabbitmqctl("start_app")
        stop.set()
        await asyncio.gather(*emitters)

    async with asyncio.timeout(60):
        while not received.issuperset(acknowledged):
            arrived.clear()
            await arrived.wait()
    assert refused == 0

"""A handler's time limit, on the embedded broker: one running too long is cancelled and
retried, the others around it go on, and its worker takes the next message."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.fixtures.meshes import eventually
from wiremesh import Context, Service, on_event
from wiremesh.core.delivery import DeliveryPolicy
from wiremesh.messaging.base import Binding
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.messaging.consumer import HandlerRunner, MessageHandler
from wiremesh.messaging.embedded import EmbeddedBroker
from wiremesh.messaging.outbound import make_envelope
from wiremesh.service import ServiceSpec
from wiremesh.transport.entrypoint import stop


class Sleepy(Service):
    """``n`` below 0 hangs on its first attempt; the others return at once."""

    name = "sleepy"

    def __init__(self) -> None:
        self.started: list[int] = []
        self.done: list[tuple[int, int]] = []
        self.cancelled: list[int] = []

    @on_event("naps.*", concurrency=2)
    async def nap(self, ctx: Context, n: int) -> None:
        assert ctx.message is not None
        self.started.append(n)
        if n < 0 and ctx.message.attempt == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.append(n)
                raise
        self.done.append((n, ctx.message.attempt))


async def test_a_handler_past_its_time_limit_is_retried_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    server = BrokerServer(tmp_path / "broker.db")
    await server.start()
    broker = EmbeddedBroker(server.address)
    service = Sleepy()
    spec = ServiceSpec.of(Sleepy).handlers[0]
    caller: Any = None  # the handler makes no calls
    handler = MessageHandler(
        spec,
        service,
        "sleepy",
        "sleepy-1",
        caller,
        policy=DeliveryPolicy(attempts=3, initial=0.01, maximum=0.05),
        timeout=0.3,
    )
    binding = Binding("sleepy", "nap", "event", ("naps.*",), "pool", "sleepy-1", 8)
    runner = HandlerRunner(handler, broker, binding)
    await runner.start()
    try:
        envelopes = [
            make_envelope("event", "naps.x", n, "msgpack", None, sender="test")
            for n in (-1, 1, -2, 2, 3)
        ]
        await broker.publish(envelopes, timeout=5)
        await eventually(lambda: len(service.done) == 5, 10)
        assert sorted(service.done) == [(-2, 2), (-1, 2), (1, 1), (2, 1), (3, 1)]
        assert sorted(service.cancelled) == [-2, -1]
        assert handler.counts["retried"] == 2
        assert handler.counts["handled"] == 5
        await eventually(lambda: not server.stats().get("sleepy/nap"), 10)
        # the workers are not left cancelling: they take more messages
        await broker.publish(
            [make_envelope("event", "naps.y", 4, "msgpack", None, sender="test")], timeout=5
        )
        await eventually(lambda: (4, 1) in service.done, 10)
    finally:
        await stop(runner, time.monotonic() + 1.0)
        await broker.close()
        await server.stop()


async def test_cancelling_a_handler_from_outside_is_not_a_timeout(tmp_path: Path) -> None:
    server = BrokerServer(tmp_path / "broker.db")
    await server.start()
    broker = EmbeddedBroker(server.address)
    service = Sleepy()
    spec = ServiceSpec.of(Sleepy).handlers[0]
    caller: Any = None
    handler = MessageHandler(spec, service, "sleepy", "sleepy-1", caller, timeout=30.0)
    binding = Binding("sleepy", "nap", "event", ("naps.*",), "pool", "sleepy-1", 8)
    runner = HandlerRunner(handler, broker, binding)
    await runner.start()
    try:
        envelope = make_envelope("event", "naps.x", -1, "msgpack", None, sender="test")
        await broker.publish([envelope], timeout=5)
        await eventually(lambda: service.started == [-1], 10)
        await stop(runner, time.monotonic())  # the running handler is cancelled, not failed
        assert service.cancelled == [-1]
        assert handler.counts["retried"] == 0 and handler.counts["dead"] == 0
        assert server.stats() == {"sleepy/nap": 1}  # unsettled: back on its queue
    finally:
        await broker.close()
        await server.stop()

"""The dead letters of a mesh on RabbitMQ: the queue ``wm.M.dead``.

AMQP has no way to look at a queue without taking its messages, so every operation here
takes them with ``basic.get`` on a channel of its own, settles those it is about (a
replay republishes, confirmed, before its ack; a purge acks) and closes the channel,
which puts every other message back where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

import aio_pika.abc

from wiremesh.messaging.amqp import topology as topo
from wiremesh.messaging.amqp.failures import CLOSE_TIMEOUT, DISCONNECTED, broker_errors
from wiremesh.messaging.amqp.publisher import CONFIRM_TIMEOUT, AmqpPublisher, Outgoing, properties
from wiremesh.messaging.base import DeadLetter

__all__ = ["DeadLetters", "DeadLettersHost"]

#: most dead letters a replay or a purge holds unsettled at once while it scans
SCAN_LIMIT = 100_000
_DEAD_HEADERS = (
    topo.DEAD_REASON_HEADER,
    topo.DEAD_QUEUE_HEADER,
    topo.DEAD_AMQP_QUEUE_HEADER,
    topo.DIED_AT_HEADER,
    topo.DELAY_HEADER,
    topo.RETRY_REASON_HEADER,
)


class DeadLettersHost(Protocol):
    """What the dead letters use of the broker that made them
    (:class:`~wiremesh.messaging.amqp.broker.AmqpBroker`)."""

    @property
    def topology(self) -> topo.Topology:
        """The names of the mesh's exchanges and queues."""
        ...

    @property
    def publisher(self) -> AmqpPublisher:
        """The confirmed publisher that replays a dead letter."""
        ...

    async def connected(self) -> aio_pika.abc.AbstractRobustConnection:
        """The broker's connection, started if need be."""
        ...


class DeadLetters:
    """The dead-letter queue of a mesh: list, find, replay, purge."""

    def __init__(self, broker: DeadLettersHost) -> None:
        self.broker = broker

    async def _scan(self, limit: int) -> AsyncGenerator[aio_pika.abc.AbstractIncomingMessage, None]:
        """Take up to ``limit`` dead letters, oldest first, of those there when the scan
        begins (a replayed message that dies again is not seen twice); the ones the caller
        does not settle go back when the scan ends."""
        topology = self.broker.topology
        with broker_errors("read the dead letters"):
            channel = await (await self.broker.connected()).channel(publisher_confirms=False)
        try:
            with broker_errors("read the dead letters"):
                queue = await channel.declare_queue(topology.dead, passive=True)
                there = queue.declaration_result.message_count or 0
                for _ in range(min(limit, there)):
                    message = await queue.get(no_ack=False, fail=False, timeout=10.0)
                    if message is None:
                        return
                    yield message
        finally:
            with contextlib.suppress(*DISCONNECTED):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)

    def _letter(self, message: aio_pika.abc.AbstractIncomingMessage) -> DeadLetter:
        envelope = topo.envelope_from(
            body=message.body,
            headers=message.headers,
            message_id=message.message_id,
            message_type=message.type,
            content_type=message.content_type,
            routing_key=message.routing_key,
            default_kind="event",
        )
        return topo.dead_letter_from(self.broker.topology, envelope, message.headers)

    async def list(self, limit: int) -> list[DeadLetter]:
        async with contextlib.aclosing(self._scan(max(limit, 0))) as scan:
            return [self._letter(message) async for message in scan]

    async def find(self, message_id: str) -> DeadLetter | None:
        async with contextlib.aclosing(self._scan(SCAN_LIMIT)) as scan:
            async for message in scan:
                if message.message_id == message_id:
                    return self._letter(message)
        return None

    async def replay(self, message_ids: Sequence[str] | None) -> int:
        wanted = None if message_ids is None else set(message_ids)
        count = 0
        async for message in self._scan(SCAN_LIMIT):
            if wanted is not None and message.message_id not in wanted:
                continue
            queue = topo.amqp_queue_of_dead(message.headers)
            if queue is None:
                continue  # nowhere known to go back to: it stays
            headers: dict[str, Any] = {
                k: v
                for k, v in (message.headers or {}).items()
                if k not in _DEAD_HEADERS and not k.startswith("x-")
            }
            headers[topo.ATTEMPT_HEADER] = 1
            letter = self._letter(message)
            headers.setdefault(topo.TOPIC_HEADER, letter.envelope.topic)
            props = properties(
                message_id=letter.envelope.id,
                content_type=message.content_type or topo.CONTENT_TYPES["msgpack"],
                message_type=letter.envelope.kind,
                headers=headers,
            )
            with broker_errors("replay a dead letter"):
                await asyncio.wait_for(
                    self.broker.publisher.send([Outgoing("", queue, message.body, props)]),
                    CONFIRM_TIMEOUT,
                )
                await message.ack()
            count += 1
        return count

    async def purge(self, message_ids: Sequence[str] | None) -> int:
        if message_ids is None:
            with broker_errors("purge the dead letters"):
                channel = await (await self.broker.connected()).channel(publisher_confirms=False)
                try:
                    queue = await channel.get_queue(self.broker.topology.dead, ensure=False)
                    result = await queue.purge()
                finally:
                    with contextlib.suppress(*DISCONNECTED):
                        await channel.close()
            return int(result.message_count or 0)
        wanted = set(message_ids)
        count = 0
        async for message in self._scan(SCAN_LIMIT):
            if message.message_id in wanted:
                with broker_errors("purge a dead letter"):
                    await message.ack()
                count += 1
        return count

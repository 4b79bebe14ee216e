"""Moving delayed messages along their hops (:func:`~.topology.next_hop`).

Every node whose broker consumes anything runs one :class:`Delayer`: it consumes
``wm.M.delayed``, where a delayed message lands each time its delay bucket expires, and
sends it on, to the next bucket or, once due, to the exchange it was sent to; then it
acks. The copy is confirmed before the ack, so a node that dies in between leaves the
message where it was (it may then go on twice, which the inbox of idempotent consumers
absorbs). The message waits in RabbitMQ, durable, while no node runs: it goes on when one
starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import aio_pika
import aio_pika.abc

from wiremesh.messaging.amqp import topology as topo
from wiremesh.messaging.amqp.failures import DISCONNECTED, broker_errors
from wiremesh.messaging.amqp.publisher import (
    CONFIRM_TIMEOUT,
    AmqpPublisher,
    Outgoing,
    properties,
)
from wiremesh.messaging.base import HEADER_DUE, due_from_header


class DelayingBroker(Protocol):
    """What a :class:`Delayer` needs of its broker (:class:`~.broker.AmqpBroker`)."""

    @property
    def topology(self) -> topo.Topology: ...

    @property
    def publisher(self) -> AmqpPublisher: ...

    async def connected(self) -> aio_pika.abc.AbstractRobustConnection: ...

    async def ensure_delayed_queues(self, bucket_ms: int) -> None: ...

    async def ensure_command_queue(self, target: str) -> None: ...


__all__ = ["Delayer", "DelayingBroker"]

log = logging.getLogger("wiremesh.messaging.amqp")

#: delayed messages a node moves at once
_PREFETCH = 64
#: seconds before a message that could not be moved on is handed back
_BACK_AFTER = 0.5


class Delayer:
    """Consumes ``wm.M.delayed`` for ``broker`` and moves each message one hop on."""

    def __init__(self, broker: DelayingBroker) -> None:
        self.broker = broker
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def start(self) -> None:
        broker = self.broker
        connection = await broker.connected()
        await broker.ensure_delayed_queues(topo.MIN_BUCKET_MS)
        with broker_errors("consume the delayed messages"):
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=_PREFETCH)
            queue = await channel.get_queue(broker.topology.delayed, ensure=False)
            await queue.consume(self._on_message)
        self._channel = channel

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(*DISCONNECTED):
                await channel.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        due = due_from_header(_text(headers.get(HEADER_DUE)))
        hop = (
            None if due is None else topo.next_hop(self.broker.topology, headers, due, time.time())
        )
        if hop is None:
            log.warning(
                "delayed message %s has no due time or destination: it goes to the dead letters",
                message.message_id,
            )
            await message.reject(requeue=False)
            return
        props = properties(
            message_id=message.message_id or "",
            content_type=message.content_type or topo.CONTENT_TYPES["msgpack"],
            message_type=message.type or "",
            headers=hop.headers,
        )
        if hop.wait > 0:  # less than the smallest bucket is left: never early
            await asyncio.sleep(hop.wait)
        try:
            if hop.bucket is not None:
                await self.broker.ensure_delayed_queues(hop.bucket)
            elif hop.exchange == self.broker.topology.commands:
                await self.broker.ensure_command_queue(hop.routing_key)
            await asyncio.wait_for(
                self.broker.publisher.send(
                    [Outgoing(hop.exchange, hop.routing_key, message.body, props)]
                ),
                CONFIRM_TIMEOUT,
            )
        except Exception as exc:
            log.warning(
                "delayed message %s not moved on (%s): it comes back", message.message_id, exc
            )
            await asyncio.sleep(_BACK_AFTER)  # no hot loop while RabbitMQ refuses
            with contextlib.suppress(*DISCONNECTED):
                await message.nack(requeue=True)
            return
        with contextlib.suppress(*DISCONNECTED):
            await message.ack()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)

"""Consuming one binding: its channel, its queue, and how a message is settled.

Each binding consumes on a channel of its own, whose ``basic.qos`` prefetch is the
binding's: the broker itself holds back what the handler may not take yet. A retry or a
dead letter is a confirmed copy (to ``wm.M.delay`` or ``wm.M.dead``) followed by the ack
of the original, so that a message is never lost between the two (at worst delivered
twice, which the consumer's inbox absorbs) and a waiting retry holds no prefetch slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, Protocol

import aio_pika.abc
import aiormq
import aiormq.abc
from pamqp import commands as spec

from wiremesh.messaging.amqp import topology as topo
from wiremesh.messaging.amqp.failures import CLOSE_TIMEOUT, DISCONNECTED
from wiremesh.messaging.amqp.publisher import CONFIRM_TIMEOUT, AmqpPublisher, Outgoing, properties
from wiremesh.messaging.base import Binding, Envelope, OnReceived

__all__ = ["AmqpReceived", "AmqpSubscription", "SubscriptionHost"]

log = logging.getLogger("wiremesh.messaging.amqp")


class SubscriptionHost(Protocol):
    """What a subscription uses of the broker that made it
    (:class:`~wiremesh.messaging.amqp.broker.AmqpBroker`)."""

    @property
    def topology(self) -> topo.Topology:
        """The names of the mesh's exchanges and queues."""
        ...

    @property
    def publisher(self) -> AmqpPublisher:
        """The confirmed publisher that copies a retry or a dead letter."""
        ...

    async def ensure_delay_queue(self, bucket_ms: int) -> None:
        """Declare the delay queue of ``bucket_ms`` (once)."""
        ...

    def forget(self, subscription: AmqpSubscription) -> None:
        """``subscription`` was cancelled: the broker no longer closes it."""
        ...


class AmqpReceived:
    """One delivered message; ack, retry or dead settles it once."""

    __slots__ = ("_channel", "_props", "_subscription", "_tag", "envelope", "settled")

    def __init__(
        self,
        subscription: AmqpSubscription,
        channel: aiormq.abc.AbstractChannel,
        tag: int,
        envelope: Envelope,
        props: Any,
    ) -> None:
        self._subscription = subscription
        self._channel = channel
        self._tag = tag
        self._props = props
        self.envelope = envelope
        self.settled = False

    async def ack(self) -> None:
        if self.settled:
            return
        self.settled = True
        await self._send_ack()

    async def retry(self, delay: float, reason: str) -> None:
        if self.settled:
            return
        self.settled = True
        sub = self._subscription
        bucket = topo.delay_bucket(delay)
        headers = topo.headers_for(replace(self.envelope, attempt=self.envelope.attempt + 1))
        headers[topo.DELAY_HEADER] = str(bucket)
        headers[topo.RETRY_REASON_HEADER] = reason[:1000]
        try:
            await sub.broker.ensure_delay_queue(bucket)
            await self._copy_then_ack(sub.broker.topology.delay, sub.queue_name, headers)
        except Exception as exc:
            log.warning(
                "retry of %s not recorded (%s): it comes back as it is", self.envelope.id, exc
            )
            await self._requeue()

    async def dead(self, reason: str) -> None:
        if self.settled:
            return
        self.settled = True
        sub = self._subscription
        headers = topo.headers_for(self.envelope)
        headers[topo.DEAD_REASON_HEADER] = reason[:4000]
        headers[topo.DEAD_QUEUE_HEADER] = sub.binding.queue
        headers[topo.DEAD_AMQP_QUEUE_HEADER] = sub.queue_name
        headers[topo.DIED_AT_HEADER] = repr(time.time())
        try:
            await self._copy_then_ack(sub.broker.topology.dead, "", headers)
        except Exception as exc:
            # the queue's own dead-letter exchange takes it, without our reason
            log.warning("dead letter %s sent without its reason (%s)", self.envelope.id, exc)
            with contextlib.suppress(*DISCONNECTED):
                if not self._channel.is_closed:
                    await self._channel.basic_reject(self._tag, requeue=False)

    async def _copy_then_ack(
        self, exchange: str, routing_key: str, headers: dict[str, Any]
    ) -> None:
        envelope = self.envelope
        props = properties(
            message_id=envelope.id,
            content_type=self._props.content_type or topo.CONTENT_TYPES["msgpack"],
            message_type=envelope.kind,
            headers=headers,
        )
        await asyncio.wait_for(
            self._subscription.broker.publisher.send(
                [Outgoing(exchange, routing_key, envelope.body, props)]
            ),
            CONFIRM_TIMEOUT,
        )
        await self._send_ack()

    async def _send_ack(self) -> None:
        self._subscription.acks.add(self._channel, self._tag)

    async def _requeue(self) -> None:
        try:
            if not self._channel.is_closed:
                await self._channel.basic_nack(self._tag, requeue=True, wait=False)
        except DISCONNECTED:
            pass


class Acks:
    """Acks coalesced: those given in one loop turn leave in one write.

    A closed channel's acks are dropped: the broker delivers those messages again.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[aiormq.abc.AbstractChannel, int]] = []
        self._scheduled = False

    def add(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        self._pending.append((channel, tag))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        by_channel: dict[aiormq.abc.AbstractChannel, list[Any]] = {}
        for channel, tag in pending:
            by_channel.setdefault(channel, []).append(spec.Basic.Ack(delivery_tag=tag))
        for channel, frames in by_channel.items():
            if channel.is_closed:
                continue
            write_queue = getattr(channel, "write_queue", None)
            number = getattr(channel, "number", None)
            if write_queue is None or number is None:  # not the aiormq we know: one by one
                for frame in frames:
                    _spawn(channel.basic_ack(frame.delivery_tag, wait=False))
                continue
            payload = aiormq.abc.ChannelFrame.marshall(frames=frames, channel_number=number)
            try:
                write_queue.put_nowait(payload)
            except asyncio.QueueFull:
                _spawn(write_queue.put(payload))


_background: set[asyncio.Future[Any]] = set()


def _spawn(awaitable: Awaitable[Any]) -> None:
    future = asyncio.ensure_future(awaitable)
    _background.add(future)
    future.add_done_callback(_settled)


def _settled(future: asyncio.Future[Any]) -> None:
    _background.discard(future)
    if not future.cancelled() and future.exception() is not None:
        log.debug("ack not sent: %s", future.exception())


class AmqpSubscription:
    """The consumer of one binding, resumed by itself after every reconnection."""

    def __init__(
        self,
        broker: SubscriptionHost,
        binding: Binding,
        handler: OnReceived,
        channel: aio_pika.abc.AbstractRobustChannel,
        queue_name: str,
    ) -> None:
        self.broker = broker
        self.binding = binding
        self.queue_name = queue_name
        self._handler = handler
        self._channel = channel
        self._consumer_tag: str | None = None
        self._cancelled = False
        self.acks = Acks()

    async def start(self) -> None:
        self._channel.reopen_callbacks.add(self._on_reopen)
        await self._consume()

    async def _consume(self) -> None:
        channel = await self._channel.get_underlay_channel()
        ok = await channel.basic_consume(self.queue_name, self._on_delivery, no_ack=False)
        self._consumer_tag = ok.consumer_tag

    async def _on_reopen(self, _channel: Any) -> None:
        if not self._cancelled:
            await self._consume()

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        try:
            envelope = topo.envelope_from(
                body=message.body,
                headers=props.headers,
                message_id=props.message_id,
                message_type=props.message_type,
                content_type=props.content_type,
                routing_key=message.routing_key,
                default_kind=self.binding.kind,
                exchange=message.exchange or "",
            )
        except Exception:  # the mapping is total; this is a last guard for a poison message
            log.exception("undecodable AMQP message on %s: rejected", self.queue_name)
            with contextlib.suppress(*DISCONNECTED):
                await message.channel.basic_reject(message.delivery_tag or 0, requeue=False)
            return
        tag = message.delivery_tag or 0
        received = AmqpReceived(self, message.channel, tag, envelope, props)
        try:
            await self._handler(received)
        except Exception:
            log.exception("handler of %s failed on %s", self.queue_name, envelope.id)
            if not received.settled:
                received.settled = True
                await received._requeue()

    async def cancel(self) -> None:
        """Stop receiving and close the channel: whatever is still unsettled goes back to
        the queue (and an exclusive broadcast queue goes away). Draining the handlers
        first is the caller's business."""
        if self._cancelled:
            return
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        with contextlib.suppress(*DISCONNECTED):
            channel = await asyncio.wait_for(self._channel.get_underlay_channel(), 1.0)
            if self._consumer_tag is not None and not channel.is_closed:
                await asyncio.wait_for(channel.basic_cancel(self._consumer_tag), CLOSE_TIMEOUT)
        with contextlib.suppress(*DISCONNECTED):
            await asyncio.wait_for(self._channel.close(), CLOSE_TIMEOUT)
        self.broker.forget(self)

"""Publishing with confirms, coalesced.

Every message published in one turn of the event loop, by however many callers, leaves
as one write on the socket; each caller then waits for the broker's confirms of its own
messages, all together. That is what aiormq's ``basic_publish`` does for one message (a
delivery tag, a confirmation future, the frames under the channel lock), done for a
whole batch at once: one lock, one marshalled write, no task per message.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiormq
import aiormq.abc
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["CONFIRM_TIMEOUT", "AmqpPublisher", "Outgoing", "properties"]

log = logging.getLogger("wiremesh.messaging.amqp")

PERSISTENT = 2
#: seconds the copy a settle or a replay publishes may wait for the broker's confirm
CONFIRM_TIMEOUT = 30.0


@dataclass(slots=True)
class Outgoing:
    """One message to publish: where to, its properties and its body."""

    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties


_stamp: tuple[int, datetime.datetime] = (0, datetime.datetime.fromtimestamp(0, datetime.UTC))


def _timestamp() -> datetime.datetime:
    """Now, to the second (AMQP timestamps have no finer resolution), built once a second."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.datetime.fromtimestamp(second, datetime.UTC))
    return _stamp[1]


def properties(
    *,
    message_id: str,
    content_type: str,
    message_type: str,
    headers: dict[str, Any],
) -> spec.Basic.Properties:
    """The properties of every message wiremesh publishes: persistent, stamped."""
    return spec.Basic.Properties(
        content_type=content_type,
        delivery_mode=PERSISTENT,
        message_id=message_id,
        message_type=message_type,
        timestamp=_timestamp(),
        headers=headers,
        app_id="wiremesh",
    )


@dataclass(slots=True)
class _Batch:
    items: Sequence[Outgoing]
    #: resolved with the messages' confirmation futures once they are written
    written: asyncio.Future[list[asyncio.Future[Any]]]
    confirms: list[asyncio.Future[Any]] = field(default_factory=list)


class AmqpPublisher:
    """Publishes on one channel in confirm mode (the channel is set with :meth:`attach`
    after every (re)connection)."""

    def __init__(self) -> None:
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._pending: list[_Batch] = []
        self._flushing: asyncio.Task[None] | None = None
        self._batched = True

    def attach(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Publish on ``channel`` from now on (a fresh channel after a reconnection)."""
        self._channel = channel
        # the batched path needs aiormq's confirm bookkeeping; else one basic_publish each
        self._batched = all(
            hasattr(channel, name)
            for name in ("confirmations", "delivery_tag", "write_queue", "lock", "number")
        )

    async def send(self, items: Sequence[Outgoing]) -> None:
        """Return once the broker confirmed every item. Raises what aiormq raises when the
        channel closes or the broker refuses one (the caller translates it)."""
        if not self._batched:
            await self._send_one_by_one(items)
            return
        loop = asyncio.get_running_loop()
        batch = _Batch(items, loop.create_future())
        self._pending.append(batch)
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        try:
            confirms = await batch.written
        except BaseException:
            if not batch.written.done():
                batch.written.cancel()
            raise
        if len(confirms) == 1:
            await confirms[0]
        else:
            await asyncio.gather(*confirms)

    async def _send_one_by_one(self, items: Sequence[Outgoing]) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the publishing channel is closed")
        await asyncio.gather(
            *(
                channel.basic_publish(
                    item.body,
                    exchange=item.exchange,
                    routing_key=item.routing_key,
                    properties=item.properties,
                )
                for item in items
            )
        )

    async def _flush(self) -> None:
        try:
            while self._pending:
                batches, self._pending = self._pending, []
                batches = [b for b in batches if not b.written.done()]
                if not batches:
                    continue
                channel = self._channel
                try:
                    if channel is None or channel.is_closed:
                        raise aiormq.exceptions.ChannelInvalidStateError(
                            "the publishing channel is closed"
                        )
                    await self._write(channel, batches)
                except Exception as exc:
                    for batch in batches:
                        if not batch.written.done():
                            batch.written.set_exception(exc)
                    continue
                for batch in batches:
                    if not batch.written.done():
                        batch.written.set_result(batch.confirms)
                    else:  # the caller gave up: nobody will look at its confirms
                        for confirm in batch.confirms:
                            confirm.add_done_callback(_forget)
        finally:
            self._flushing = None

    async def _write(self, channel: Any, batches: list[_Batch]) -> None:
        frames: list[Any] = []
        limit = channel.max_content_size
        async with channel.lock:
            tag = channel.delivery_tag
            confirmations = channel.confirmations
            create_future = channel.create_future
            for batch in batches:
                confirms = batch.confirms
                for item in batch.items:
                    tag += 1
                    confirm = create_future()
                    confirmations[tag] = confirm
                    confirms.append(confirm)
                    frames.append(
                        spec.Basic.Publish(exchange=item.exchange, routing_key=item.routing_key)
                    )
                    body = item.body
                    frames.append(ContentHeader(0, len(body), item.properties))
                    if len(body) < limit:
                        if body:
                            frames.append(ContentBody(body))
                    else:
                        frames.extend(
                            ContentBody(body[i : i + limit]) for i in range(0, len(body), limit)
                        )
            first = channel.delivery_tag + 1
            channel.delivery_tag = tag
            try:
                await channel.write_queue.put(
                    aiormq.abc.ChannelFrame.marshall(frames=frames, channel_number=channel.number)
                )
            except BaseException:
                # never written: give the delivery tags back, forget their confirmations
                channel.delivery_tag = first - 1
                for t in range(first, tag + 1):
                    confirm = confirmations.pop(t, None)
                    if confirm is not None:
                        confirm.cancel()
                raise


def _forget(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

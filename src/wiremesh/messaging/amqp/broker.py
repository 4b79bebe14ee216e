"""The RabbitMQ backend: :class:`AmqpBroker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
import aio_pika.abc

from wiremesh.core.defaults import START_TIMEOUT
from wiremesh.errors import BrokerUnavailable, ConfigError
from wiremesh.messaging.amqp import topology as topo
from wiremesh.messaging.amqp.consumer import AmqpSubscription
from wiremesh.messaging.amqp.dead import DeadLetters
from wiremesh.messaging.amqp.delayed import Delayer
from wiremesh.messaging.amqp.failures import (
    CLOSE_TIMEOUT,
    DISCONNECTED,
    broker_errors,
    translate,
)
from wiremesh.messaging.amqp.publisher import AmqpPublisher, Outgoing, properties
from wiremesh.messaging.base import (
    DEAD_LETTERS_LIMIT,
    HEADER_DUE,
    Binding,
    DeadLetter,
    Envelope,
    OnReceived,
    Subscription,
    due_from_header,
)

__all__ = ["AmqpBroker"]

log = logging.getLogger("wiremesh.messaging.amqp")


class AmqpBroker:
    """Durable messaging through RabbitMQ (``amqp://user:password@host:port/vhost``).

    One connection, restored by itself after a failure (aio-pika's robust connection):
    one confirm-mode channel publishes, one channel per binding consumes with the
    binding's prefetch. ``quorum_queues`` declares every durable queue as a quorum queue
    (a RabbitMQ cluster replicates them); exclusive broadcast queues stay classic. The
    topology is :class:`wiremesh.messaging.amqp.topology.Topology` and
    ``docs/protocol.md``.
    """

    def __init__(
        self,
        url: str,
        *,
        mesh: str,
        quorum_queues: bool = False,
        connect_timeout: float = START_TIMEOUT,
        reconnect_interval: float = 1.0,
    ) -> None:
        if not mesh or any(c.isspace() for c in mesh):
            raise ConfigError(f"mesh name {mesh!r}: a word without spaces")
        self.url = url
        self.topology = topo.Topology(mesh)
        self.quorum = quorum_queues
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        self.publisher = AmqpPublisher()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._queues: set[str] = set()
        self._declaring: dict[str, asyncio.Future[None]] = {}
        self._subscriptions: set[AmqpSubscription] = set()
        #: moves delayed messages on, once this broker consumes anything
        self._delayer: Delayer | None = None
        self._dead = DeadLetters(self)
        self._starting: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    async def connected(self) -> aio_pika.abc.AbstractRobustConnection:
        """The connection, started if need be."""
        await self.start()
        if self._connection is None:
            raise BrokerUnavailable("the AMQP broker is closed")
        return self._connection

    async def start(self) -> None:
        """Connect, and declare the mesh's exchanges and its dead-letter queue. Every other
        method calls it first: starting explicitly only moves the wait (and the failure of
        an unreachable broker) earlier."""
        if self._channel is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._channel is None:
                await self._start()

    async def _start(self) -> None:
        t = self.topology
        try:
            with broker_errors(f"connect to {_safe(self.url)}"):
                self._connection = await aio_pika.connect_robust(
                    self.url,
                    timeout=self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                    client_properties={"connection_name": f"wiremesh {t.mesh}"},
                )
            with broker_errors("open the publishing channel"):
                channel = await self._connection.channel(publisher_confirms=True)
                channel.reopen_callbacks.add(self._attach)
                await self._attach(channel)
            for name, kind in (
                (t.events, aio_pika.ExchangeType.TOPIC),
                (t.commands, aio_pika.ExchangeType.DIRECT),
                (t.dead, aio_pika.ExchangeType.FANOUT),
                (t.delay, aio_pika.ExchangeType.HEADERS),
            ):
                with broker_errors(f"declare the exchange {name}"):
                    self._exchanges[name] = await channel.declare_exchange(name, kind, durable=True)
            await self._declare_queue(channel, t.dead, {**self._type_args()}, (t.dead, ""))
            self._channel = channel
        except BaseException:
            await self.close()
            raise

    async def _attach(self, channel: Any) -> None:
        self.publisher.attach(await channel.get_underlay_channel())

    async def close(self) -> None:
        delayer, self._delayer = self._delayer, None
        if delayer is not None:
            await delayer.close()
        for sub in list(self._subscriptions):
            with contextlib.suppress(Exception):
                await sub.cancel()
        connection, self._connection = self._connection, None
        self._channel = None
        if connection is not None:
            with contextlib.suppress(*DISCONNECTED):
                await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)

    def forget(self, subscription: AmqpSubscription) -> None:
        self._subscriptions.discard(subscription)

    # ------------------------------------------------------------------ topology

    def _type_args(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.quorum else {}

    async def _declare_queue(
        self,
        channel: aio_pika.abc.AbstractRobustChannel,
        name: str,
        arguments: dict[str, Any],
        *bindings: tuple[str, str] | tuple[str, str, dict[str, Any]],
        exclusive: bool = False,
    ) -> None:
        """Declare ``name`` (once per broker, concurrent callers wait for the first) and
        bind it: ``bindings`` are ``(exchange, routing key[, arguments])``."""
        with broker_errors(f"declare the queue {name}"):
            queue = await channel.declare_queue(
                name,
                durable=not exclusive,
                exclusive=exclusive,
                auto_delete=exclusive,
                arguments=arguments,
            )
            for exchange, key, *binding_args in bindings:
                await queue.bind(
                    self._exchanges[exchange],
                    key,
                    arguments=binding_args[0] if binding_args else None,
                )
        self._queues.add(name)

    async def _declare_once(self, name: str, declare: Any) -> None:
        if name in self._queues:
            return
        pending = self._declaring.get(name)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._declaring[name] = future
        try:
            await declare()
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a waiter may or may not be there
            raise
        finally:
            del self._declaring[name]

    async def ensure_delay_queue(self, bucket_ms: int) -> None:
        """Declare the delay queue of ``bucket_ms``, bound to ``wm.M.delay`` by the
        ``wm-delay`` header."""
        t = self.topology
        name = t.delay_queue(bucket_ms)
        assert self._channel is not None
        await self._declare_once(
            name,
            lambda: self._declare_queue(
                self._channel,
                name,
                topo.delay_queue_arguments(bucket_ms, quorum=self.quorum),
                (t.delay, "", {"x-match": "all", topo.DELAY_HEADER: str(bucket_ms)}),
            ),
        )

    async def ensure_delayed_queues(self, bucket_ms: int) -> None:
        """Declare what a delayed message's hop through ``bucket_ms`` needs: the delay
        queue, and ``wm.M.delayed`` it expires into (its own unreadable messages go to
        the dead letters)."""
        await self.ensure_delay_queue(bucket_ms)
        t = self.topology
        assert self._channel is not None
        await self._declare_once(
            t.delayed,
            lambda: self._declare_queue(
                self._channel, t.delayed, topo.queue_arguments(t, None, quorum=self.quorum)
            ),
        )

    async def ensure_command_queue(self, target: str) -> None:
        """A command waits in its queue even before any node of its service started: the
        sender declares the queue too."""
        t = self.topology
        name = t.command_queue(target)
        assert self._channel is not None
        await self._declare_once(
            name,
            lambda: self._declare_queue(
                self._channel,
                name,
                topo.queue_arguments(t, None, quorum=self.quorum, target=target),
                (t.commands, target),
            ),
        )

    # ------------------------------------------------------------------ publish

    def outgoing(self, envelope: Envelope) -> Outgoing:
        """The AMQP message ``envelope`` is published as."""
        t = self.topology
        if envelope.kind == "command":
            exchange = t.commands
        elif envelope.kind == "event":
            exchange = t.events
        else:
            raise ConfigError(f"unknown message kind {envelope.kind!r}")
        content_type = topo.CONTENT_TYPES.get(envelope.codec)
        if content_type is None:
            raise ConfigError(
                f"unknown codec {envelope.codec!r}: use one of {', '.join(topo.CONTENT_TYPES)}"
            )
        due = due_from_header(envelope.headers.get(HEADER_DUE))
        hop = None if due is None else topo.delayed_hop(t, envelope, exchange, due, time.time())
        props = properties(
            message_id=envelope.id,
            content_type=content_type,
            message_type=envelope.kind,
            headers=topo.headers_for(envelope) if hop is None else hop.headers,
        )
        if hop is not None:  # a delayed message: its first hop (see topology.next_hop)
            return Outgoing(hop.exchange, hop.routing_key, envelope.body, props)
        return Outgoing(exchange, envelope.topic, envelope.body, props)

    async def publish(self, envelopes: Sequence[Envelope], *, timeout: float) -> None:
        """Return once RabbitMQ confirmed every envelope. While the broker is down or
        refusing, try again until ``timeout``, then raise :class:`BrokerUnavailable`
        (ids make a message accepted twice harmless)."""
        if not envelopes:
            return
        items = [self.outgoing(e) for e in envelopes]
        targets = {e.topic for e in envelopes if e.kind == "command"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    channel = self._channel
                    if channel is None:
                        await self.start()
                        channel = self._channel
                        assert channel is not None
                    if channel.is_closed:
                        await channel.ready()
                    for target in targets:
                        await self.ensure_command_queue(target)
                    for bucket in {b for i in items if (b := _bucket_of(i)) is not None}:
                        await self.ensure_delayed_queues(bucket)
                    await self.publisher.send(items)
                return
            except TimeoutError as exc:
                last = last or exc
                break
            except BrokerUnavailable as exc:
                last = exc
            except ConfigError:
                raise
            except Exception as exc:
                last = translate(exc, "publish")
                if isinstance(last, ConfigError):
                    raise last from exc
            await asyncio.sleep(min(0.1, max(deadline - loop.time(), 0)))
        raise BrokerUnavailable(
            f"RabbitMQ at {_safe(self.url)} did not accept {len(items)} message(s) within "
            f"{timeout:g}s: {last or 'no answer'}; it may have stored them all the same, and "
            "sending again may deliver them twice"
        ) from last

    # ------------------------------------------------------------------ consume

    async def consume(self, binding: Binding, handler: OnReceived) -> Subscription:
        t = self.topology
        connection = await self.connected()
        name = t.queue(binding)
        if binding.kind == "command":
            bindings: list[tuple[str, str]] = [(t.commands, binding.patterns[0])]
        else:
            bindings = [(t.events, pattern) for pattern in binding.patterns]
        with broker_errors(f"open a channel for {binding.queue}"):
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=max(1, binding.prefetch))
        try:
            await self._declare_queue(
                channel,
                name,
                topo.queue_arguments(t, binding, quorum=self.quorum),
                *bindings,
                exclusive=binding.kind == "event" and binding.delivery == "broadcast",
            )
            subscription = AmqpSubscription(self, binding, handler, channel, name)
            with broker_errors(f"consume from {name}"):
                await subscription.start()
        except BaseException:
            with contextlib.suppress(*DISCONNECTED):
                await channel.close()
            raise
        self._subscriptions.add(subscription)
        if self._delayer is None:  # a consuming node also moves delayed messages on
            self._delayer = Delayer(self)
            try:
                await self._delayer.start()
            except BaseException:
                self._delayer = None
                raise
        return subscription

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, *, limit: int = DEAD_LETTERS_LIMIT) -> list[DeadLetter]:
        return await self._dead.list(limit)

    async def dead_letter(self, message_id: str) -> DeadLetter | None:
        return await self._dead.find(message_id)

    async def replay(self, message_ids: Sequence[str] | None = None) -> int:
        return await self._dead.replay(message_ids)

    async def purge(self, message_ids: Sequence[str] | None = None) -> int:
        return await self._dead.purge(message_ids)

    # ------------------------------------------------------------------ teardown

    async def delete_topology(self) -> None:
        """Delete every queue and exchange of the mesh this broker declared (its delay,
        command and consumer queues, the dead letters and the four exchanges). For tests
        and for retiring a mesh; messages in them are lost."""
        connection = await self.connected()
        channel = await connection.channel(publisher_confirms=False)
        try:
            for name in sorted(self._queues):
                with contextlib.suppress(*DISCONNECTED):
                    await channel.queue_delete(name)
            for name in self._exchanges:
                with contextlib.suppress(*DISCONNECTED):
                    await channel.exchange_delete(name)
        finally:
            with contextlib.suppress(*DISCONNECTED):
                await channel.close()
        self._queues.clear()


def _safe(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}@{host}"
    return url


def _bucket_of(item: Outgoing) -> int | None:
    """The delay bucket a delayed message's hop waits in (None: not a delayed hop)."""
    headers = item.properties.headers or {}
    if topo.DUE_EXCHANGE_HEADER not in headers:
        return None
    return int(str(headers[topo.DELAY_HEADER]))

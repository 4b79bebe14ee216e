"""The client of the embedded broker (:mod:`wiremesh.messaging.broker_server`).

Publishes made in the same loop turn travel as one ``Publish`` request; a request waits
for the broker to be reachable (``wait_for_ready``) until the earliest deadline among
its envelopes, and a failed request is sent again while deadlines allow. Each
subscription holds one ``Consume`` stream, opened again when it breaks; settles made in
the same loop turn travel as one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.errors import BrokerUnavailable, ConfigError, PayloadTooLarge
from wiremesh.messaging.base import (
    DEAD_LETTERS_LIMIT,
    Binding,
    DeadLetter,
    Envelope,
    OnReceived,
)
from wiremesh.messaging.broker_server import ENVELOPE_ROOM, SERVICE, envelope_from_proto
from wiremesh.proto import broker_pb2 as pb
from wiremesh.transport.grpc_core import OWN_SUBCHANNELS
from wiremesh.transport.tls import TlsFiles, open_channel

__all__ = ["EmbeddedBroker"]

log = logging.getLogger("wiremesh.broker")

#: most envelope bytes in one Publish request
_REQUEST_BYTES = 1024 * 1024
_RECONNECT_DELAY = 0.2
#: Publish requests in flight at once
_SENDERS = 4
#: longest consume() waits for the broker to confirm the subscription
_SUBSCRIBE_WAIT = 5.0
#: seconds a dead-letter request (list, replay, purge) may take
_ADMIN_TIMEOUT = 10.0
#: seconds a cancelled subscription waits to send its last settles and end its stream
_CANCEL_WAIT = 2.0

_T = TypeVar("_T")


class EmbeddedBroker:
    """A :class:`~wiremesh.messaging.base.Broker` talking to the embedded broker at
    ``address`` (``host:port``)."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        limit = max_message_bytes + ENVELOPE_ROOM
        options = [
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            OWN_SUBCHANNELS,
        ]
        self.channel = open_channel(address, credentials, options)
        self._publish = self.channel.unary_unary(
            f"/{SERVICE}/Publish",
            request_serializer=pb.PublishRequest.SerializeToString,
            response_deserializer=pb.PublishReply.FromString,
        )
        self._consume = self.channel.stream_stream(
            f"/{SERVICE}/Consume",
            request_serializer=pb.ConsumeRequest.SerializeToString,
            response_deserializer=pb.Deliveries.FromString,
        )
        self._list_dead = self.channel.unary_unary(
            f"/{SERVICE}/ListDead",
            request_serializer=pb.ListDeadRequest.SerializeToString,
            response_deserializer=pb.DeadLetters.FromString,
        )
        self._replay = self.channel.unary_unary(
            f"/{SERVICE}/Replay",
            request_serializer=pb.MessageIds.SerializeToString,
            response_deserializer=pb.Count.FromString,
        )
        self._purge = self.channel.unary_unary(
            f"/{SERVICE}/Purge",
            request_serializer=pb.MessageIds.SerializeToString,
            response_deserializer=pb.Count.FromString,
        )
        self._waiting: deque[tuple[Sequence[Envelope], float, asyncio.Future[None]]] = deque()
        #: every publish not confirmed yet: its deadline (monotonic) and timeout
        self._unconfirmed: dict[asyncio.Future[None], tuple[float, float]] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = float("inf")
        #: requests in flight at once, each carrying what gathered since the previous one
        self._senders: set[asyncio.Task[None]] = set()
        self._sending = 0
        self._subscriptions: list[_Subscription] = []

    @classmethod
    def from_url(cls, url: str, *, data_dir: Path, tls: TlsFiles | None = None) -> EmbeddedBroker:
        """``embedded://host:port``, or ``embedded``: the broker of the mesh running with
        ``data_dir`` as its data folder (read from its ``mesh.json``)."""
        from wiremesh.runtime.meshfile import MESH_FILE, MeshFile

        credentials = tls.channel_credentials() if tls else None
        if url.startswith("embedded://"):
            return cls(url.removeprefix("embedded://"), credentials=credentials)
        path = data_dir / MESH_FILE
        if not path.is_file():
            raise BrokerUnavailable(f"no mesh is running with its data in {data_dir}")
        mesh = MeshFile.read(path)
        if not mesh.broker or not mesh.broker.startswith("embedded://"):
            raise ConfigError(f"the mesh in {data_dir} does not run the embedded broker")
        if credentials is None and mesh.client_tls() is not None:
            credentials = mesh.client_tls().channel_credentials()  # type: ignore[union-attr]
        return cls(mesh.broker.removeprefix("embedded://"), credentials=credentials)

    async def start(self) -> None:
        """Nothing to wait for: the channel connects on first use."""

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        for sender in list(self._senders):
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        for _, _, future in self._waiting:
            if not future.done():
                future.set_exception(BrokerUnavailable("the broker client was closed"))
        self._waiting.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry, self._expiry_at = None, float("inf")
        await self.channel.close(None)

    # ------------------------------------------------------------------ publishing

    async def publish(self, envelopes: Sequence[Envelope], *, timeout: float) -> None:
        if not envelopes:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        deadline = time.monotonic() + timeout
        self._waiting.append((envelopes, deadline, future))
        if self._sending < _SENDERS:
            self._sending += 1
            self._senders.add(loop.create_task(self._send(), name="wiremesh-broker-publish"))
        self._unconfirmed[future] = (deadline, timeout)
        if deadline < self._expiry_at:
            self._arm_expiry(loop, deadline)
        try:
            await future
        finally:
            del self._unconfirmed[future]

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """One timer for every publish waiting (not one each), due at the earliest
        deadline among them."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = deadline
        self._expiry = loop.call_at(loop.time() + (deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._expiry, self._expiry_at = None, float("inf")
        now = time.monotonic()
        earliest = float("inf")
        for future, (deadline, timeout) in self._unconfirmed.items():
            if deadline > now:
                earliest = min(earliest, deadline)
            elif not future.done():
                future.set_exception(
                    BrokerUnavailable(
                        f"the broker at {self.address} did not accept the message "
                        f"within {timeout:g}s"
                    )
                )
        if earliest < float("inf"):
            self._arm_expiry(asyncio.get_running_loop(), earliest)

    async def _send(self) -> None:
        try:
            await self._send_waiting()
        finally:
            self._sending -= 1
            task = asyncio.current_task()
            if task is not None:
                self._senders.discard(task)

    async def _send_waiting(self) -> None:
        waiting = self._waiting
        while waiting:
            batch: list[tuple[Sequence[Envelope], float, asyncio.Future[None]]] = []
            request = pb.PublishRequest()
            add = request.envelopes.add
            size = 0
            while waiting and size < _REQUEST_BYTES:
                item = waiting.popleft()
                if item[2].done():
                    continue
                batch.append(item)
                for e in item[0]:
                    wire = add(
                        id=e.id,
                        kind=e.kind,
                        topic=e.topic,
                        body=e.body,
                        codec=e.codec,
                        attempt=e.attempt,
                    )
                    headers = wire.headers  # (a protobuf map is filled item by item)
                    for key, value in e.headers.items():
                        headers[key] = value
                    size += len(e.body) + 256
            if not batch:
                continue
            wait = min(deadline for _, deadline, _ in batch) - time.monotonic()
            try:
                await self._publish(request, timeout=max(wait, 0.001), wait_for_ready=True)
            except grpc.aio.AioRpcError as exc:
                self._failed(batch, exc)
                await asyncio.sleep(0.05)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _failed(
        self,
        batch: list[tuple[Sequence[Envelope], float, asyncio.Future[None]]],
        exc: grpc.aio.AioRpcError,
    ) -> None:
        code = exc.code()
        now = time.monotonic()
        again = []
        for item in batch:
            future = item[2]
            if future.done():
                continue
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                future.set_exception(PayloadTooLarge(f"the broker refused: {exc.details()}"))
            elif item[1] <= now or code not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                future.set_exception(BrokerUnavailable(failure_reason(self.address, exc)))
            else:
                again.append(item)
        self._waiting.extendleft(reversed(again))

    # ------------------------------------------------------------------ consuming

    async def consume(self, binding: Binding, handler: OnReceived) -> _Subscription:
        subscription = _Subscription(self, binding, handler)
        self._subscriptions.append(subscription)
        subscription.start()
        with contextlib.suppress(TimeoutError):  # the broker is down: it subscribes later
            await asyncio.wait_for(subscription.subscribed.wait(), _SUBSCRIBE_WAIT)
        return subscription

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(self, *, limit: int = DEAD_LETTERS_LIMIT) -> list[DeadLetter]:
        reply = await self._admin(
            self._list_dead(pb.ListDeadRequest(limit=limit), timeout=_ADMIN_TIMEOUT)
        )
        return [_dead_from_proto(d) for d in reply.dead_letters]

    async def dead_letter(self, message_id: str) -> DeadLetter | None:
        request = pb.ListDeadRequest(limit=1, ids=[message_id])
        reply = await self._admin(self._list_dead(request, timeout=_ADMIN_TIMEOUT))
        return _dead_from_proto(reply.dead_letters[0]) if reply.dead_letters else None

    async def replay(self, message_ids: Sequence[str] | None = None) -> int:
        request = pb.MessageIds(ids=message_ids or [], all=message_ids is None)
        reply = await self._admin(self._replay(request, timeout=_ADMIN_TIMEOUT))
        return int(reply.count)

    async def purge(self, message_ids: Sequence[str] | None = None) -> int:
        request = pb.MessageIds(ids=message_ids or [], all=message_ids is None)
        reply = await self._admin(self._purge(request, timeout=_ADMIN_TIMEOUT))
        return int(reply.count)

    async def _admin(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise BrokerUnavailable(failure_reason(self.address, exc)) from None


def failure_reason(address: str, exc: grpc.aio.AioRpcError) -> str:
    """What a failed broker call says: gRPC's details, else its status code (an aborted
    connection often carries no details at all)."""
    reason = exc.details() or exc.code().name.lower().replace("_", " ")
    return f"the broker at {address} did not accept it: {reason}"


def _dead_from_proto(d: pb.DeadLetter) -> DeadLetter:
    return DeadLetter(envelope_from_proto(d.envelope), d.reason, d.queue, d.died_at)


class _Received:
    __slots__ = ("_generation", "_subscription", "envelope", "tag")

    def __init__(
        self, envelope: Envelope, tag: int, subscription: _Subscription, generation: int
    ) -> None:
        self.envelope = envelope
        self.tag = tag
        self._subscription = subscription
        self._generation = generation

    async def ack(self) -> None:
        self._subscription.settle(self._generation, ack=self.tag)

    async def retry(self, delay: float, reason: str) -> None:
        retry = pb.Retry(tag=self.tag, delay=delay, reason=reason)
        self._subscription.settle(self._generation, retry=retry)

    async def dead(self, reason: str) -> None:
        self._subscription.settle(self._generation, dead=pb.Dead(tag=self.tag, reason=reason))


class _Subscription:
    """One handler's Consume stream, opened again whenever it breaks."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        binding: Binding,
        handler: OnReceived,
    ) -> None:
        self.broker = broker
        self.binding = binding
        self.handler = handler
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        #: tags name deliveries of one stream: settles of an older stream are void
        self._generation = 0
        #: settles not sent yet
        self._acks: list[int] = []
        self._retries: list[pb.Retry] = []
        self._deads: list[pb.Dead] = []
        self._dirty = asyncio.Event()
        self._closed = False
        #: set once the broker has confirmed a subscription (its queue routes messages)
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"wiremesh-consume-{self.binding.queue}")

    def settle(
        self,
        generation: int,
        *,
        ack: int | None = None,
        retry: pb.Retry | None = None,
        dead: pb.Dead | None = None,
    ) -> None:
        if generation != self._generation or self._call is None:
            return  # that stream is gone: the broker put the message back already
        if ack is not None:
            self._acks.append(ack)
        if retry is not None:
            self._retries.append(retry)
        if dead is not None:
            self._deads.append(dead)
        self._dirty.set()

    def _take(self) -> pb.ConsumeRequest | None:
        """What was settled since the last call, as one message (``None``: nothing)."""
        if not (self._acks or self._retries or self._deads):
            return None
        settle = pb.Settle(acks=self._acks, retries=self._retries, deads=self._deads)
        self._acks, self._retries, self._deads = [], [], []
        return pb.ConsumeRequest(settle=settle)

    async def _run(self) -> None:
        b = self.binding
        subscribe = pb.ConsumeRequest(
            subscribe=pb.Binding(
                service=b.service,
                handler=b.handler,
                kind=b.kind,
                patterns=list(b.patterns),
                delivery=b.delivery,
                node_id=b.node_id,
                prefetch=b.prefetch,
            )
        )
        while not self._closed:
            self._generation += 1
            generation = self._generation
            self._take()  # (for the stream that is gone)
            call = self._call = self.broker._consume(wait_for_ready=True)  # type: ignore[call-arg]
            writer = asyncio.create_task(self._write(call))
            try:
                await call.write(subscribe)
                while True:
                    message = await call.read()
                    if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                        break
                    assert isinstance(message, pb.Deliveries)
                    self.subscribed.set()
                    for delivery in message.deliveries:
                        envelope = envelope_from_proto(delivery.envelope)
                        await self.handler(_Received(envelope, delivery.tag, self, generation))
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                if not self._closed:
                    log.debug("consume stream of %s broke: %s", b.queue, exc)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
                if self._call is call:
                    self._call = None
                call.cancel()
            if not self._closed:
                await asyncio.sleep(_RECONNECT_DELAY)

    async def _write(
        self, call: grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.Deliveries]
    ) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            request = self._take()
            if request is not None:
                await call.write(request)

    async def cancel(self) -> None:
        """Send what is settled, then end the stream; the broker puts back the rest."""
        if self._closed:
            return
        self._closed = True
        call = self._call
        request = self._take()
        if call is not None and request is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                await asyncio.wait_for(call.write(request), _CANCEL_WAIT)
        if call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, TimeoutError):
                await asyncio.wait_for(call.done_writing(), _CANCEL_WAIT)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(ValueError):
            self.broker._subscriptions.remove(self)

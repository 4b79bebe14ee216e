"""The embedded broker's server: queues in memory, every change on disk first.

``wiremesh run`` hosts a :class:`BrokerServer` next to the embedded registry; its wire
contract is ``proto/wiremesh/broker/v1/broker.proto``, its disk :class:`Journal`.

Theory of operation. Each event handler of each service has a queue
(``service/handler``; a broadcast handler has one per node, ``service/handler@node``, that
lives while the node consumes it), each command one (``service/command``), made by the
first consumer or by the first send, so that a command waits for its service. A publish
is routed to every queue whose patterns match (a command to the queue of its command),
stored, and only then acknowledged and offered to consumers.
A queue hands its messages round-robin to its consumers, each holding at most its
``prefetch`` unsettled; a singleton queue only to its oldest consumer, the others standing
by. A retried message waits on a timer and goes to the back of its queue, so that a
failing message never holds up the ones behind it. When a consumer's stream ends, what
it held goes back to the front of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from wiremesh.core.defaults import HOST, MAX_MESSAGE_BYTES
from wiremesh.core.topics import matching
from wiremesh.errors import Unavailable
from wiremesh.messaging.base import HEADER_DUE, DeadLetter, Kind, due_from_header
from wiremesh.messaging.journal import (
    Journal,
    QueueRecord,
    Stored,
    envelope_from_proto,
    envelope_to_proto,
)
from wiremesh.proto import broker_pb2 as pb

__all__ = ["BrokerServer", "envelope_from_proto", "envelope_to_proto"]

log = logging.getLogger("wiremesh.broker")

SERVICE = "wiremesh.broker.v1.Broker"
#: bytes a gRPC message of the broker may hold beyond its largest payload: the
#: envelope's other fields and the batch around it
ENVELOPE_ROOM = 64 * 1024
#: most deliveries sent in one stream message
_BATCH = 512


def dead_to_proto(d: DeadLetter) -> pb.DeadLetter:
    return pb.DeadLetter(
        envelope=envelope_to_proto(d.envelope), reason=d.reason, queue=d.queue, died_at=d.died_at
    )


def _command_queue(target: str) -> str:
    """``service/command``: one queue per command, whichever method handles it."""
    service, _, command = target.partition(".")
    return f"{service}/{command}"


class _Consumer:
    """One Consume stream: what it holds and what waits to be sent to it."""

    def __init__(self, queue: _Queue, prefetch: int) -> None:
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.held: dict[int, Stored] = {}
        #: (tag, envelope) of the deliveries not sent yet
        self.outgoing: list[tuple[int, pb.Envelope]] = []
        self.wake = asyncio.Event()
        self._tags = itertools.count(1)

    @property
    def free(self) -> int:
        return self.prefetch - len(self.held)

    def give(self, copy: Stored) -> None:
        tag = copy.tag = next(self._tags)
        self.held[tag] = copy
        self.outgoing.append((tag, copy.to_wire()))
        self.wake.set()


class _Queue:
    def __init__(self, record: QueueRecord) -> None:
        self.record = record
        self.ready: deque[Stored] = deque()
        self.consumers: list[_Consumer] = []
        self._turn = 0

    def pump(self) -> None:
        """Hand ready messages to consumers with room, round-robin."""
        if not self.ready or not self.consumers:
            return
        eligible = self.consumers[:1] if self.record.delivery == "singleton" else self.consumers
        while self.ready:
            for _ in range(len(eligible)):
                self._turn = (self._turn + 1) % len(eligible)
                consumer = eligible[self._turn]
                if consumer.free > 0:
                    consumer.give(self.ready.popleft())
                    break
            else:
                return


class BrokerServer:
    """The embedded broker, storing in ``path`` and serving on ``host:port``."""

    def __init__(
        self,
        path: Path,
        *,
        host: str = HOST,
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.path = path
        self.host = host
        self.port = port
        self.credentials = credentials
        self.journal = Journal(path)
        self.queues: dict[str, _Queue] = {}
        self._routes: dict[tuple[str, str], list[_Queue]] = {}
        self._delayed: list[tuple[float, int, Stored]] = []
        self._timer: asyncio.TimerHandle | None = None
        limit = max_message_bytes + ENVELOPE_ROOM
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        handlers = {
            "Publish": grpc.unary_unary_rpc_method_handler(
                self.publish,
                request_deserializer=pb.PublishRequest.FromString,
                response_serializer=pb.PublishReply.SerializeToString,
            ),
            "Consume": grpc.stream_stream_rpc_method_handler(
                self.consume,
                request_deserializer=pb.ConsumeRequest.FromString,
                response_serializer=pb.Deliveries.SerializeToString,
            ),
            "ListDead": grpc.unary_unary_rpc_method_handler(
                self.list_dead,
                request_deserializer=pb.ListDeadRequest.FromString,
                response_serializer=pb.DeadLetters.SerializeToString,
            ),
            "Replay": grpc.unary_unary_rpc_method_handler(
                self.replay,
                request_deserializer=pb.MessageIds.FromString,
                response_serializer=pb.Count.SerializeToString,
            ),
            "Purge": grpc.unary_unary_rpc_method_handler(
                self.purge,
                request_deserializer=pb.MessageIds.FromString,
                response_serializer=pb.Count.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """What nodes are told: ``embedded://host:port``."""
        return f"embedded://{self.address}"

    async def start(self) -> None:
        """Load the queues and messages from disk, then listen."""
        records, stored = await asyncio.to_thread(self.journal.load)
        for record in records:
            self.queues[record.name] = _Queue(record)
        now = time.time()
        for copy in stored:
            queue = self.queues.get(copy.queue)
            if queue is None:
                continue
            if copy.not_before > now:
                self._delay(copy)
            else:
                queue.ready.append(copy)
        if stored:
            log.info("broker: %d message(s) pending from the last run", len(stored))
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if self.credentials is None:
                self.port = self.server.add_insecure_port(bind)
            else:
                self.port = self.server.add_secure_port(bind, self.credentials)
        except RuntimeError:
            await self.journal.close()
            raise Unavailable(
                f"the broker cannot listen on {bind}: the address is in use or not available "
                "here (choose another broker.port, or 0 for any free port)"
            ) from None
        await self.server.start()

    async def stop(self, grace: float = 0.5) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.server.stop(grace)
        await self.journal.close()

    def stats(self) -> dict[str, int]:
        """Messages per queue: ready, delayed and held by consumers."""
        counts = {
            name: len(q.ready) + sum(len(c.held) for c in q.consumers)
            for name, q in self.queues.items()
        }
        for _, _, copy in self._delayed:
            counts[copy.queue] = counts.get(copy.queue, 0) + 1
        return counts

    # ------------------------------------------------------------------ routing

    def _route(self, kind: str, topic: str) -> list[_Queue]:
        key = (kind, topic)
        found = self._routes.get(key)
        if found is None:
            if kind == "command":
                found = [
                    q
                    for q in self.queues.values()
                    if q.record.kind == "command" and topic in q.record.patterns
                ]
            else:
                found = [
                    q
                    for q in self.queues.values()
                    if q.record.kind == "event" and matching(q.record.patterns, topic)
                ]
            if len(self._routes) > 65536:
                self._routes.clear()
            self._routes[key] = found
        return found

    async def publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishReply:
        copies: list[Stored] = []
        new_seq = self.journal.new_seq
        now = time.time()
        for message in request.envelopes:
            message.attempt = 1
            kind = "command" if message.kind == "command" else "event"
            routes = self._route(kind, message.topic)
            if not routes and kind == "command":
                routes = [await self._command_waits(message.topic)]
            # a delayed message (its wm-due header) waits, on disk, until it is due
            due = due_from_header(message.headers.get(HEADER_DUE)) or 0.0
            for queue in routes:  # stored and sent to consumers as it came
                copies.append(Stored(new_seq(), queue.record.name, None, due, wire=message))
        if copies:
            try:
                await self.journal.submit(Journal.insert(copies))
            except Exception as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"broker storage: {exc}")
            touched: dict[str, _Queue] = {}
            for copy in copies:
                target = self.queues.get(copy.queue)
                if target is None:  # (a broadcast queue may have gone meanwhile)
                    continue
                if copy.not_before > now:
                    self._delay(copy)
                else:
                    target.ready.append(copy)
                    touched[copy.queue] = target
            for target in touched.values():
                target.pump()
        return pb.PublishReply(routed=len(copies))

    # ------------------------------------------------------------------ consuming

    async def _declare(self, binding: pb.Binding) -> _Queue:
        transient = binding.delivery == "broadcast"
        kind: Kind = "command" if binding.kind == "command" else "event"
        name = f"{binding.service}/{binding.handler}"
        if kind == "command":
            name = _command_queue(binding.patterns[0])
        elif transient:
            name = f"{name}@{binding.node_id}"
        record = QueueRecord(
            name,
            binding.service,
            binding.handler,
            kind,
            tuple(binding.patterns),
            binding.delivery or "pool",
            transient,
        )
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue(record)
        elif queue.record == record:
            return queue
        queue.record = record
        self._routes.clear()
        await self.journal.submit(Journal.save_queue(record))
        return queue

    async def _command_waits(self, target: str) -> _Queue:
        """The queue of a command no node ever consumed yet: it waits there."""
        service, _, command = target.partition(".")
        record = QueueRecord(
            _command_queue(target), service, command, "command", (target,), "pool", False
        )
        queue = self.queues.get(record.name)
        if queue is None:
            queue = self.queues[record.name] = _Queue(record)
            self._routes.clear()
            await self.journal.submit(Journal.save_queue(record))
        return queue

    async def consume(
        self, requests: AsyncIterator[pb.ConsumeRequest], context: Any
    ) -> AsyncIterator[pb.Deliveries]:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("subscribe"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "subscribe first")
            return
        binding = first.subscribe
        if not binding.service or not binding.handler or not binding.patterns:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "binding is incomplete")
            return
        queue = await self._declare(binding)
        consumer = _Consumer(queue, binding.prefetch)
        queue.consumers.append(consumer)
        reader = asyncio.create_task(self._read_settles(requests, consumer))
        try:
            yield pb.Deliveries()  # subscribed: the queue exists and routes from now on
            queue.pump()
            while not reader.done():
                waiter = asyncio.ensure_future(consumer.wake.wait())
                await asyncio.wait((waiter, reader), return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                consumer.wake.clear()
                while consumer.outgoing:
                    batch = consumer.outgoing[:_BATCH]
                    del consumer.outgoing[:_BATCH]
                    deliveries = pb.Deliveries()
                    add = deliveries.deliveries.add  # (builds each in place: no copy)
                    for tag, wire in batch:
                        add(tag=tag, envelope=wire)
                    yield deliveries
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._leave(consumer)

    async def _read_settles(
        self, requests: AsyncIterator[pb.ConsumeRequest], consumer: _Consumer
    ) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for request in requests:
                if request.HasField("settle"):
                    self._settle(consumer, request.settle)

    def _settle(self, consumer: _Consumer, settle: pb.Settle) -> None:
        done: list[int] = []
        for tag in settle.acks:
            copy = consumer.held.pop(tag, None)
            if copy is not None:
                done.append(copy.seq)
        if done:
            self.journal.defer(Journal.delete(done))
        now = time.time()
        for retry in settle.retries:
            copy = consumer.held.pop(retry.tag, None)
            if copy is None:
                continue
            copy.envelope = replace(copy.envelope, attempt=copy.envelope.attempt + 1)
            copy.not_before = now + max(0.0, retry.delay)
            self.journal.submit(Journal.delay(copy))
            self._delay(copy)
        for dead in settle.deads:
            copy = consumer.held.pop(dead.tag, None)
            if copy is None:
                continue
            log.warning("dead letter %s on %s: %s", copy.envelope.id, copy.queue, dead.reason)
            self.journal.submit(Journal.bury(copy, dead.reason, now))
        consumer.queue.pump()

    def _leave(self, consumer: _Consumer) -> None:
        queue = consumer.queue
        with contextlib.suppress(ValueError):
            queue.consumers.remove(consumer)
        held = sorted(consumer.held.values(), key=lambda c: c.seq)
        consumer.held.clear()
        queue.ready.extendleft(reversed(held))
        if queue.record.transient and not queue.consumers:
            del self.queues[queue.record.name]
            self._routes.clear()
            self.journal.submit(Journal.drop_queue(queue.record.name))
            return
        queue.pump()

    # ------------------------------------------------------------------ delays

    def _delay(self, copy: Stored) -> None:
        """Keep ``copy`` until its ``not_before`` (a retry's backoff, a delayed message);
        the timer moves only when ``copy`` comes first (a batch of delayed messages does not
        set it again for each)."""
        heapq.heappush(self._delayed, (copy.not_before, copy.seq, copy))
        if self._timer is None or self._delayed[0][2] is copy:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._delayed:
            wait = max(0.0, self._delayed[0][0] - time.time())
            self._timer = asyncio.get_running_loop().call_later(wait, self._due)

    def _due(self) -> None:
        self._timer = None
        now = time.time()
        touched: dict[str, _Queue] = {}
        while self._delayed and self._delayed[0][0] <= now:
            _, _, copy = heapq.heappop(self._delayed)
            queue = self.queues.get(copy.queue)
            if queue is not None:
                copy.not_before = 0.0
                queue.ready.append(copy)
                touched[copy.queue] = queue
        for queue in touched.values():
            queue.pump()
        self._arm()

    # ------------------------------------------------------------------ dead letters

    async def list_dead(self, request: pb.ListDeadRequest, context: Any) -> pb.DeadLetters:
        ids = list(request.ids) or None
        found = await self.journal.submit(Journal.list_dead(request.limit or 100, ids))
        return pb.DeadLetters(dead_letters=[dead_to_proto(d) for d in found])

    async def replay(self, request: pb.MessageIds, context: Any) -> pb.Count:
        ids = None if request.all else list(request.ids)
        if ids == []:
            return pb.Count(count=0)
        back = await self.journal.submit(
            Journal.take_dead(ids, set(self.queues), self.journal.new_seq)
        )
        for copy in back:
            found = self.queues.get(copy.queue)
            if found is not None:
                found.ready.append(copy)
                found.pump()
        return pb.Count(count=len(back))

    async def purge(self, request: pb.MessageIds, context: Any) -> pb.Count:
        ids = None if request.all else list(request.ids)
        if ids == []:
            return pb.Count(count=0)
        count = await self.journal.submit(Journal.purge_dead(ids))
        return pb.Count(count=count)

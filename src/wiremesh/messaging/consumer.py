"""Running one ``@on_event`` / ``@command`` method for the messages its binding receives.

For each message: decode and validate the payload (a failure is a dead letter at once,
never a retry), run the handler under its concurrency limit with a
:class:`~wiremesh.Context` (its first store transaction records the message in the inbox,
and ends the handler when the message was handled before), then settle it as
the :class:`~wiremesh.core.delivery.DeliveryPolicy` says: ack after success, retry later
or dead letter after a failure. ``concurrency`` worker tasks per handler take messages
from a bounded queue that the broker fills up to the binding's prefetch.

Drain (:meth:`HandlerRunner.close`): stop taking messages, let those running finish
within the grace period, then end the subscription; whatever is unsettled goes back to
the broker for another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from wiremesh.context import Context, MeshCaller, _current
from wiremesh.core.codec import CodecName, decode
from wiremesh.core.deadline import Deadline
from wiremesh.core.delivery import DeadLetter, DeliveryPolicy, Retry
from wiremesh.errors import InvalidPayload, WiremeshError
from wiremesh.messaging.base import HEADER_SENDER, Binding, Broker, Received, Subscription
from wiremesh.messaging.store import Duplicate, InboxMark, Store, inbox_mark
from wiremesh.observability import tracing
from wiremesh.service import HandlerSpec, Service

__all__ = ["HandlerRunner", "MessageHandler"]

log = logging.getLogger("wiremesh.messaging")


class MessageHandler:
    """One handler method of one service instance, ready to run envelopes (no broker)."""

    def __init__(
        self,
        spec: HandlerSpec,
        service: Service,
        service_name: str,
        node_id: str,
        caller: MeshCaller,
        *,
        store: Store | None = None,
        policy: DeliveryPolicy | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.spec = spec
        self.service_name = service_name
        self.node_id = node_id
        self.caller = caller
        self.store = store
        self.policy = policy or DeliveryPolicy()
        self.timeout = timeout
        self._func: Callable[..., Awaitable[Any]] = getattr(service, spec.attribute)
        self.counts = {"handled": 0, "duplicates": 0, "retried": 0, "dead": 0}

    async def handle(self, received: Received) -> None:
        """Run the handler for ``received`` and settle it; never raises (but cancellation)."""
        envelope = received.envelope
        shapes = self.spec.shapes
        try:
            codec: CodecName = envelope.codec  # type: ignore[assignment]
            payload = envelope.body if shapes.takes_protobuf else decode(envelope.body, codec)
            args, kwargs = shapes.arguments(payload)
        except InvalidPayload as exc:
            outcome = self.policy.undecodable(exc)
            log.warning(
                "%s/%s: message %s on %r is a dead letter: %s",
                self.service_name,
                self.spec.attribute,
                envelope.id,
                envelope.topic,
                outcome.reason,
            )
            self.counts["dead"] += 1
            await received.dead(outcome.reason)
            return
        handler = self.spec.attribute
        ctx = Context(
            deadline=Deadline.after(self.timeout),
            service=self.service_name,
            method=handler,
            node_id=self.node_id,
            caller_client=self.caller,
            metadata=dict(envelope.headers),
            caller=envelope.headers.get(HEADER_SENDER),
            message=envelope,
        )
        token = _current.set(ctx)
        mark = inbox_mark.set(InboxMark(self.service_name, handler, envelope.id))
        span = (
            tracing.server_span(
                f"{self.service_name}.{handler}",
                envelope.headers,
                node=self.node_id,
                peer=envelope.headers.get(HEADER_SENDER),
                size=len(envelope.body),
                kind="consumer",
            )
            if tracing.enabled()
            else None
        )
        status = "ok"
        try:
            async with asyncio.timeout(self.timeout):
                await self._func(ctx, *args, **kwargs)
        except Duplicate:
            self.counts["duplicates"] += 1
            await received.ack()
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception as exc:
            status = "deadline_exceeded" if isinstance(exc, TimeoutError) else "internal"
            await self._failed(received, exc)
        else:
            self.counts["handled"] += 1
            await received.ack()
        finally:
            if span is not None:
                span.set("wiremesh.attempt", envelope.attempt)
                span.end(status)
            inbox_mark.reset(mark)
            _current.reset(token)

    async def _failed(self, received: Received, exc: Exception) -> None:
        envelope = received.envelope
        if isinstance(exc, TimeoutError):
            exc = TimeoutError(f"the handler ran longer than {self.timeout:g}s")
        outcome = self.policy.after_failure(envelope.attempt, exc)
        where = f"{self.service_name}/{self.spec.attribute}"
        if isinstance(outcome, Retry):
            log.warning(
                "%s: message %s failed (attempt %d), retrying in %.2fs: %s",
                where,
                envelope.id,
                envelope.attempt,
                outcome.delay,
                outcome.reason,
                exc_info=not isinstance(exc, WiremeshError),
            )
            self.counts["retried"] += 1
            await received.retry(outcome.delay, outcome.reason)
        else:
            assert isinstance(outcome, DeadLetter)
            log.error("%s: message %s is a dead letter: %s", where, envelope.id, outcome.reason)
            self.counts["dead"] += 1
            await received.dead(outcome.reason)


class HandlerRunner:
    """Consumes one handler's binding from a broker with ``concurrency`` workers."""

    def __init__(self, handler: MessageHandler, broker: Broker, binding: Binding) -> None:
        self.handler = handler
        self.broker = broker
        self.binding = binding
        self._queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=max(1, binding.prefetch))
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"wiremesh-handler-{self.binding.queue}")
            for _ in range(self.handler.spec.concurrency)
        ]
        self._subscription = await self.broker.consume(self.binding, self._receive)

    @property
    def waiting(self) -> int:
        """Messages the broker handed over that wait for a free worker."""
        return self._queue.qsize()

    async def _receive(self, received: Received) -> None:
        await self._queue.put(received)

    async def _work(self) -> None:
        while not self._closing:
            received = await self._queue.get()
            if self._closing:
                return  # left unsettled: the broker gives it to another node
            self._running += 1
            self._idle.clear()
            try:
                await self.handler.handle(received)
            finally:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()

    async def close(self, grace: float) -> None:
        """Stop taking messages, let running handlers finish within ``grace`` seconds,
        then end the subscription (what is unsettled goes back to the broker)."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._subscription is not None:
            await self._subscription.cancel()

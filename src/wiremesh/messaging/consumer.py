"""Running one ``@on_event`` / ``@command`` method for the messages its binding receives.

For each message: decode and validate the payload (a failure is a dead letter at once,
never a retry), run the handler under its concurrency limit with a
:class:`~wiremesh.Context` (its first store transaction records the message in the inbox,
and ends the handler when the message was handled before), then settle it as
the :class:`~wiremesh.core.delivery.DeliveryPolicy` says: ack after success, retry later
or dead letter after a failure (logged one line per attempt, the traceback only at the
first attempt and at the dead letter). ``concurrency`` worker tasks per handler take messages
from a bounded queue that the broker fills up to the binding's prefetch.

The handler runs inside the entrypoint pipeline that calls and publishes run in too
(:class:`~wiremesh.transport.entrypoint.Pipeline`): its context made current, a consumer
span that continues the sender's trace (with the attempt), the handler's outcome as the
span's status.

A node's handlers are one entrypoint (:class:`Consumers`). Drain
(:meth:`HandlerRunner.drain`, then :meth:`HandlerRunner.close`): stop taking messages,
let those running finish within the grace period, then end the subscription; whatever is
unsettled goes back to the broker for another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from wiremesh.context import Context, MeshCaller
from wiremesh.core.codec import CodecName, decode
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import HANDLER_TIMEOUT
from wiremesh.core.delivery import DeadLetter, DeliveryPolicy, Retry
from wiremesh.errors import InvalidPayload, WiremeshError
from wiremesh.messaging.base import HEADER_SENDER, Binding, Broker, Received, Subscription
from wiremesh.messaging.store import Duplicate, InboxMark, Store, inbox_mark
from wiremesh.middleware import Kind, around
from wiremesh.service import HandlerSpec, Service, ServiceSpec
from wiremesh.transport.entrypoint import Pipeline

__all__ = ["Consumers", "HandlerRunner", "MessageHandler"]

log = logging.getLogger("wiremesh.messaging")


class _TimeLimit:
    """Runs handlers for at most ``seconds`` each, as ``asyncio.timeout`` would (the task
    is cancelled, and the cancellation becomes a :class:`TimeoutError`), with one timer
    for every handler running under it instead of one per handler: a handler is
    cancelled within ``seconds`` plus the time left on the timer when it started.

    ``task = limit.enter()`` before the handler, ``limit.leave(task)`` after it, however
    it ended. Handlers start in deadline order (the same ``seconds`` on a clock that only
    goes forward), so the oldest one running is the first of ``_running``. The timer is
    armed when a handler starts and none is; when due, it cancels the handlers past their
    deadline and is armed again for the oldest of the others. It stays armed when the
    handlers end, so that it costs nothing per handler.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: task -> its deadline on the loop's clock
        self._running: dict[asyncio.Task[Any], float] = {}
        #: tasks cancelled for running too long -> their cancel requests before that
        self._expired: dict[asyncio.Task[Any], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def enter(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a time limit needs a task")
        loop = task.get_loop()
        deadline = self._running[task] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        return task

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """Whether the handler of ``task`` was cancelled for running too long, and by
        nothing else: its :class:`asyncio.CancelledError` then means a timeout."""
        del self._running[task]
        if self._expired:
            cancelling = self._expired.pop(task, None)
            if cancelling is not None:
                return task.uncancel() <= cancelling
        return False

    def _expire(self) -> None:
        self._timer = None
        if not self._running:
            return
        loop = next(iter(self._running)).get_loop()
        now = loop.time()
        for task, deadline in self._running.items():
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            if task not in self._expired:
                self._expired[task] = task.cancelling()
                task.cancel()


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
        timeout: float = HANDLER_TIMEOUT,
        kind: Kind | None = None,
    ) -> None:
        self.spec = spec
        self.service_name = service_name
        self.node_id = node_id
        self.caller = caller
        self.store = store
        self.policy = policy or DeliveryPolicy()
        #: the backoff's jitter
        self._rng = random.Random()
        self.timeout = timeout
        # (the middleware was checked with the service's spec, as the node started)
        self._func: Callable[..., Awaitable[Any]] = around(
            tuple(type(service).middleware),
            kind or spec.kind,
            service_name,
            spec.attribute,
            getattr(service, spec.attribute),
        )
        self._pipeline = Pipeline(
            service_name,
            spec.attribute,
            node_id=node_id,
            mesh=caller,
            kind="consumer",
            returns_status=True,
        )
        self._limit = _TimeLimit(timeout)
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
        pipeline = self._pipeline
        ctx = pipeline.context(
            Deadline.after(self.timeout, now=time.monotonic()),
            metadata=dict(envelope.headers),
            caller=envelope.headers.get(HEADER_SENDER),
            message=envelope,
        )
        mark = inbox_mark.set(InboxMark(self.service_name, self.spec.attribute, envelope.id))
        try:
            await pipeline.run(
                ctx,
                self._attempt(received, ctx, args, kwargs),
                len(envelope.body),
                attributes={"wiremesh.attempt": envelope.attempt},
            )
        finally:
            inbox_mark.reset(mark)

    async def _attempt(
        self, received: Received, ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """Run the handler under its time limit, then settle the message; the status of
        the handler's outcome, whatever settling the message does."""
        limit = self._limit
        task = limit.enter()
        try:
            try:
                await self._func(ctx, *args, **kwargs)
            finally:
                overtime = limit.leave(task)
        except Duplicate:
            self.counts["duplicates"] += 1
            await received.ack()
            return "ok"
        except asyncio.CancelledError:
            if not overtime:
                raise  # cancelled from outside: the run's status says so
            await self._failed(received, TimeoutError())
            return "deadline_exceeded"
        except Exception as exc:
            await self._failed(received, exc)
            return "deadline_exceeded" if isinstance(exc, TimeoutError) else "internal"
        self.counts["handled"] += 1
        await received.ack()
        return "ok"

    async def _failed(self, received: Received, exc: Exception) -> None:
        envelope = received.envelope
        if isinstance(exc, TimeoutError):
            exc = TimeoutError(f"the handler ran longer than {self.timeout:g}s")
        outcome = self.policy.after_failure(envelope.attempt, exc, self._rng)
        where = f"{self.service_name}/{self.spec.attribute}"
        # the traceback once at the first failure and once at the dead letter, one line for
        # each retry between; none for a WiremeshError (its message says it all) nor for
        # the time limit (raised by no line of the handler)
        traceback = None if isinstance(exc, WiremeshError) or exc.__traceback__ is None else exc
        if isinstance(outcome, Retry):
            log.warning(
                "%s: message %s failed (attempt %d of %d), retrying in %.2fs: %s",
                where,
                envelope.id,
                envelope.attempt,
                self.policy.attempts,
                outcome.delay,
                outcome.reason,
                exc_info=traceback if envelope.attempt <= 1 else None,
            )
            self.counts["retried"] += 1
            await received.retry(outcome.delay, outcome.reason)
        else:
            assert isinstance(outcome, DeadLetter)
            log.error(
                "%s: message %s is a dead letter: %s",
                where,
                envelope.id,
                outcome.reason,
                exc_info=traceback,
            )
            self.counts["dead"] += 1
            await received.dead(outcome.reason)


class HandlerRunner:
    """Consumes one handler's binding from a broker with ``concurrency`` workers: an
    entrypoint of the node (:class:`~wiremesh.transport.entrypoint.Entrypoint`)."""

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
        queue = self._queue
        if queue.full():
            await queue.put(received)
        else:
            queue.put_nowait(received)

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

    async def drain(self, deadline: float) -> None:
        """Stop taking messages, and let the running handlers finish until ``deadline``
        (on ``time.monotonic()``) at most."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Cancel the handlers still running, then end the subscription: what is
        unsettled goes back to the broker, for another node."""
        self._closing = True
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._subscription is not None:
            await self._subscription.cancel()


class Consumers:
    """Every ``@on_event`` and ``@command`` handler of a node, each consuming its binding
    from the node's broker: one entrypoint of the node
    (:class:`~wiremesh.transport.entrypoint.Entrypoint`), whose handlers start, drain and
    close together."""

    def __init__(self, runners: Sequence[HandlerRunner] = ()) -> None:
        self.runners = tuple(runners)

    @classmethod
    def of(
        cls,
        service: Service,
        spec: ServiceSpec,
        broker: Broker,
        *,
        node_id: str,
        caller: MeshCaller,
        store: Store,
        policy: DeliveryPolicy,
        timeout: float,
        prefetch: int,
    ) -> Consumers:
        """The handlers of ``service`` (described by ``spec``) on ``broker``: each takes
        up to ``prefetch`` messages at a time (or its concurrency, when more) and runs one
        for ``timeout`` seconds at most, settling it as ``policy`` says."""
        runners = []
        for handler_spec in spec.handlers:
            handler = MessageHandler(
                handler_spec,
                service,
                spec.name,
                node_id,
                caller,
                store=store,
                policy=policy,
                timeout=timeout,
            )
            binding = Binding(
                service=spec.name,
                handler=handler_spec.attribute,
                kind=handler_spec.kind,
                patterns=handler_spec.patterns,
                delivery=handler_spec.delivery,
                node_id=node_id,
                prefetch=max(prefetch, handler_spec.concurrency),
            )
            runners.append(HandlerRunner(handler, broker, binding))
        return cls(runners)

    def stats(self) -> dict[str, int]:
        """The handlers' counts together (``messages_handled``, ``messages_duplicates``,
        ``messages_retried``, ``messages_dead``) and ``messages_waiting``: messages the
        broker handed over that wait for a free worker."""
        counts: dict[str, int] = {}
        for runner in self.runners:
            for name, value in runner.handler.counts.items():
                key = f"messages_{name}"
                counts[key] = counts.get(key, 0) + value
            counts["messages_waiting"] = counts.get("messages_waiting", 0) + runner.waiting
        return counts

    async def start(self) -> None:
        await asyncio.gather(*(runner.start() for runner in self.runners))

    async def drain(self, deadline: float) -> None:
        await asyncio.gather(*(runner.drain(deadline) for runner in self.runners))

    async def close(self) -> None:
        await asyncio.gather(*(runner.close() for runner in self.runners))

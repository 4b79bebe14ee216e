"""Running ``@timer`` and ``@cron`` methods on their schedule (:mod:`wiremesh.core.schedule`).

A timer that runs **once** per mesh (the default) goes through the broker. Every node of
the service plans each tick: when it starts, and each time a tick falls due, it sends the
next tick as a delayed command (``<service>.tick:<method>``, its time in the ``wm-tick``
header) that the broker keeps, on disk, until it is due. The ticks' queue is a singleton:
one node consumes it at a time (the broker hands it to another when that node goes), and
runs the first copy of each tick; a :class:`~wiremesh.core.schedule.TickLedger` drops the
other copies, and a marker of the last tick that ran, which the consumer holds and the
broker hands to the next one (:class:`TickHandler`), keeps a late copy from running on the
next consumer. So a tick runs once however many nodes planned it; a node killed
mid-tick leaves it unacknowledged and the next consumer runs it (at least once: the same
``ctx.tick`` each time, for handlers that must be idempotent); a tick that fell due while
every node was down waits in the broker and runs once when a node returns. A failed
tick is retried and dead-lettered like any command.

A timer that runs on **every node** is a loop in the node: no broker, nothing durable; a
tick that falls due while the method still runs its last one is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from wiremesh.context import MeshCaller
from wiremesh.core.defaults import HANDLER_TIMEOUT
from wiremesh.core.delivery import DeliveryPolicy
from wiremesh.core.schedule import TickLedger, tick_from_text, tick_text
from wiremesh.errors import WiremeshError
from wiremesh.messaging.base import (
    HEADER_SENDER,
    HEADER_TICK,
    HEADER_TICK_RAN,
    Binding,
    Broker,
    Envelope,
    Received,
    new_message_id,
)
from wiremesh.messaging.consumer import HandlerRunner, MessageHandler
from wiremesh.messaging.outbound import make_envelope
from wiremesh.messaging.store import Store
from wiremesh.service import HandlerSpec, Service, ServiceSpec, TimerSpec

__all__ = ["LocalTimer", "TickHandler", "TickPlanner", "Timers"]

log = logging.getLogger("wiremesh.timers")

#: seconds between two tries to plan a tick while the broker refuses it
PLAN_RETRY = 1.0
#: seconds a node waits for the broker to accept one planned tick
PLAN_TIMEOUT = 5.0
#: copies of a once-per-mesh timer's ticks a node takes from the broker at a time
TICK_PREFETCH = 16
#: seconds a consumer holds a marker of the last tick that ran before it sends it again
#: (under RabbitMQ's consumer_timeout, 30 minutes by default)
MARK_RENEW = 600.0


def _handler_spec(service: str, timer: TimerSpec) -> HandlerSpec:
    """A timer as the handler of its ticks: one at a time."""
    delivery: Any = "singleton" if timer.delivery == "once" else "pool"
    return HandlerSpec(
        timer.attribute, "command", (timer.target(service),), delivery, 1, timer.shapes
    )


def _tick_envelope(
    target: str, text: str, sender: str, *, at: float | None = None, ran: bool = False
) -> Envelope:
    """The command of the tick ``text`` (a ``wm-tick`` value) of the timer ``target``: due
    ``at`` (a planned tick), or, with ``ran``, the marker that it ran."""
    headers = {HEADER_TICK: text, HEADER_TICK_RAN: "1"} if ran else {HEADER_TICK: text}
    return make_envelope("command", target, None, "msgpack", headers, sender=sender, at=at)


class _Settled:
    """A received tick that remembers how the handler settled it, and runs ``before_ack``
    before it acknowledges it."""

    def __init__(self, received: Received, before_ack: Callable[[], Awaitable[None]]) -> None:
        self._received = received
        self._before_ack = before_ack
        self.outcome: Literal["ack", "retry", "dead"] | None = None

    @property
    def envelope(self) -> Envelope:
        return self._received.envelope

    async def ack(self) -> None:
        self.outcome = "ack"
        await self._before_ack()
        await self._received.ack()

    async def retry(self, delay: float, reason: str) -> None:
        self.outcome = "retry"
        await self._received.retry(delay, reason)

    async def dead(self, reason: str) -> None:
        self.outcome = "dead"
        await self._received.dead(reason)


class TickHandler(MessageHandler):
    """Runs the ticks of a once-per-mesh timer that reach this node: the first copy of
    each (its :class:`TickLedger` decides), the others acknowledged unrun.

    What ran survives the node: before it acknowledges a tick it ran, the node sends a
    *marker* of it (the tick's command with ``wm-tick-ran``) to the same queue, and the
    consumer holds the newest marker it has seen unacknowledged. When the consumer goes,
    the broker hands its marker to the next one together with the queue, so that a late
    copy of a tick that ran (moved by a busy node) is dropped there too. A marker held
    for :data:`MARK_RENEW` seconds is sent again and the old one acknowledged (RabbitMQ
    closes a channel that holds a message too long).
    """

    def __init__(
        self, *args: Any, ledger: TickLedger, broker: Broker, target: str, **kwargs: Any
    ) -> None:
        super().__init__(*args, kind="timer", **kwargs)
        self.ledger = ledger
        self.broker = broker
        self.target = target
        self.counts["skipped"] = 0
        #: the newest marker seen, held unacknowledged, and its tick
        self._held: tuple[Received, float] | None = None
        self._renew: asyncio.TimerHandle | None = None
        self._renewing: asyncio.Task[None] | None = None

    async def handle(self, received: Received) -> None:
        envelope = received.envelope
        text = envelope.headers.get(HEADER_TICK)
        tick = tick_from_text(text)
        if tick is None:
            reason = "a tick without its time (no valid wm-tick header)"
            log.error(
                "%s/%s: message %s: %s", self.service_name, self.spec.attribute, envelope.id, reason
            )
            self.counts["dead"] += 1
            await received.dead(reason)
            return
        at = tick.timestamp()
        if envelope.headers.get(HEADER_TICK_RAN):
            await self._marker(received, at)
            return
        if self.ledger.verdict(at, envelope.attempt, time.time()) != "run":
            self.counts["skipped"] += 1
            await received.ack()
            return
        settled = _Settled(received, lambda: self._mark(text or ""))
        await super().handle(settled)
        if settled.outcome == "retry":
            self.ledger.retrying(at)
        elif settled.outcome is not None:  # handled, or given up as a dead letter
            self.ledger.ran(at)

    async def _mark(self, text: str) -> None:
        """Send the marker of the tick ``text`` that ran here (before its ack)."""
        envelope = _tick_envelope(self.target, text, self.node_id, ran=True)
        try:
            await self.broker.publish([envelope], timeout=PLAN_TIMEOUT)
        except WiremeshError as exc:  # this node still knows; the next one may not
            log.warning(
                "%s/%s: could not note that the tick of %s ran: %s",
                self.service_name,
                self.spec.attribute,
                text,
                exc,
            )

    async def _marker(self, received: Received, at: float) -> None:
        """Another (or this) node ran the tick ``at``: note it, and hold the newest
        marker."""
        self.ledger.ran(at)
        held = self._held
        if held is not None and held[1] > at:
            await received.ack()
            return
        self._held = (received, at)
        if self._renew is not None:
            self._renew.cancel()
        self._renew = asyncio.get_running_loop().call_later(MARK_RENEW, self._start_renewal)
        if held is not None:
            await held[0].ack()

    def _start_renewal(self) -> None:
        self._renew = None
        held = self._held
        if held is not None and self._renewing is None:
            text = held[0].envelope.headers.get(HEADER_TICK, "")
            self._renewing = asyncio.get_running_loop().create_task(self._renewal(text))

    async def _renewal(self, text: str) -> None:
        try:
            await self._mark(text)  # it comes back, and replaces the one held
        finally:
            self._renewing = None

    def close(self) -> None:
        """Stop renewing the marker (the node stops; the broker takes the marker back)."""
        if self._renew is not None:
            self._renew.cancel()
            self._renew = None
        if self._renewing is not None:
            self._renewing.cancel()


class TickPlanner:
    """Sends the ticks of one once-per-mesh timer to the broker ahead of time: the next
    tick when the node starts, then each next one as the last falls due."""

    def __init__(
        self, broker: Broker, service: str, timer: TimerSpec, ledger: TickLedger, *, sender: str
    ) -> None:
        self.broker = broker
        self.service = service
        self.timer = timer
        self.ledger = ledger
        self.sender = sender
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._plan(), name=f"wiremesh-timer-{self.service}.{self.timer.attribute}"
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _plan(self) -> None:
        schedule = self.timer.schedule
        tick = schedule.after(time.time())
        while True:
            await self._send(tick)
            if self.ledger.planned_from is None:
                self.ledger.planned_from = tick
            await asyncio.sleep(max(0.0, tick - time.time()))
            tick = schedule.after(max(time.time(), tick))

    async def _send(self, tick: float) -> None:
        """Plan ``tick``, trying again while the broker refuses it (the tick then runs
        late, never not at all because of this node)."""
        schedule = self.timer.schedule
        target = self.timer.target(self.service)
        while True:
            envelope = _tick_envelope(target, tick_text(schedule, tick), self.sender, at=tick)
            try:
                await self.broker.publish([envelope], timeout=PLAN_TIMEOUT)
                return
            except WiremeshError as exc:
                log.warning(
                    "%s/%s: could not plan the tick of %s, trying again in %gs: %s",
                    self.service,
                    self.timer.attribute,
                    tick_text(schedule, tick),
                    PLAN_RETRY,
                    exc,
                )
            await asyncio.sleep(PLAN_RETRY)


class _LocalTick:
    """A tick of an every-node timer, settled by nobody: it is not stored anywhere."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    async def ack(self) -> None:
        pass

    async def retry(self, delay: float, reason: str) -> None:
        pass

    async def dead(self, reason: str) -> None:
        pass


class LocalTimer(MessageHandler):
    """An every-node timer: runs each tick on this node, one at a time."""

    def __init__(self, *args: Any, timer: TimerSpec, **kwargs: Any) -> None:
        super().__init__(*args, kind="timer", **kwargs)
        self.timer = timer
        self.counts["failed"] = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._loop(), name=f"wiremesh-timer-{self.service_name}.{self.spec.attribute}"
        )

    async def _loop(self) -> None:
        schedule = self.timer.schedule
        tick = schedule.after(time.time())
        while True:
            await asyncio.sleep(max(0.0, tick - time.time()))
            if self._closing:
                return
            headers = {HEADER_TICK: tick_text(schedule, tick), HEADER_SENDER: self.node_id}
            envelope = Envelope(
                new_message_id(), "command", self.spec.patterns[0], b"\xc0", "msgpack", headers
            )
            self._idle.clear()
            try:
                await self.handle(_LocalTick(envelope))
            finally:
                self._idle.set()
            tick = schedule.after(max(time.time(), tick))

    async def _failed(self, received: Received, exc: Exception) -> None:
        if isinstance(exc, TimeoutError):
            exc = TimeoutError(f"the tick ran longer than {self.timeout:g}s")
        traceback = None if isinstance(exc, WiremeshError) or exc.__traceback__ is None else exc
        log.error(
            "%s/%s: the tick of %s failed: %s",
            self.service_name,
            self.spec.attribute,
            received.envelope.headers.get(HEADER_TICK),
            exc,
            exc_info=traceback,
        )
        self.counts["failed"] += 1

    async def drain(self, deadline: float) -> None:
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Timers:
    """Every ``@timer`` and ``@cron`` method of a node: one entrypoint of the node
    (:class:`~wiremesh.transport.entrypoint.Entrypoint`). Once-per-mesh timers need the
    broker (without one they do not run, and the node says so as it starts)."""

    def __init__(
        self,
        runners: Sequence[HandlerRunner] = (),
        planners: Sequence[TickPlanner] = (),
        local: Sequence[LocalTimer] = (),
    ) -> None:
        self.runners = tuple(runners)
        self.planners = tuple(planners)
        self.local = tuple(local)

    @classmethod
    def of(
        cls,
        service: Service,
        spec: ServiceSpec,
        broker: Broker | None,
        *,
        node_id: str,
        caller: MeshCaller,
        store: Store | None = None,
        policy: DeliveryPolicy | None = None,
        timeout: float = HANDLER_TIMEOUT,
    ) -> Timers:
        runners: list[HandlerRunner] = []
        planners: list[TickPlanner] = []
        local: list[LocalTimer] = []
        for timer in spec.timers:
            handler_spec = _handler_spec(spec.name, timer)
            options: dict[str, Any] = {"store": store, "policy": policy, "timeout": timeout}
            if timer.delivery == "every_node":
                local.append(
                    LocalTimer(
                        handler_spec, service, spec.name, node_id, caller, timer=timer, **options
                    )
                )
                continue
            if broker is None:
                log.warning(
                    "%s.%s runs once per mesh through the broker, but this node runs without "
                    "one: it does not run here",
                    spec.name,
                    timer.attribute,
                )
                continue
            ledger = TickLedger(timer.schedule)
            handler = TickHandler(
                handler_spec,
                service,
                spec.name,
                node_id,
                caller,
                ledger=ledger,
                broker=broker,
                target=timer.target(spec.name),
                **options,
            )
            binding = Binding(
                service=spec.name,
                handler=timer.attribute,
                kind="command",
                patterns=handler_spec.patterns,
                delivery="singleton",
                node_id=node_id,
                prefetch=TICK_PREFETCH,
            )
            runners.append(HandlerRunner(handler, broker, binding))
            planners.append(TickPlanner(broker, spec.name, timer, ledger, sender=node_id))
        return cls(runners, planners, local)

    def stats(self) -> dict[str, int]:
        """``ticks_run``, ``ticks_skipped`` (copies of a tick run already, or overtaken
        by a later one), ``ticks_retried``, ``ticks_failed`` (every-node ticks that
        raised, and once-per-mesh ticks dead-lettered)."""
        counts = {"ticks_run": 0, "ticks_skipped": 0, "ticks_retried": 0, "ticks_failed": 0}
        for runner in self.runners:
            c = runner.handler.counts
            counts["ticks_run"] += c["handled"]
            counts["ticks_skipped"] += c["skipped"]
            counts["ticks_retried"] += c["retried"]
            counts["ticks_failed"] += c["dead"]
        for timer in self.local:
            counts["ticks_run"] += timer.counts["handled"]
            counts["ticks_failed"] += timer.counts["failed"]
        return counts

    async def start(self) -> None:
        await asyncio.gather(*(runner.start() for runner in self.runners))
        for planner in self.planners:
            planner.start()
        for timer in self.local:
            timer.start()

    async def drain(self, deadline: float) -> None:
        for planner in self.planners:
            await planner.close()
        await asyncio.gather(
            *(runner.drain(deadline) for runner in self.runners),
            *(timer.drain(deadline) for timer in self.local),
        )

    async def close(self) -> None:
        for planner in self.planners:
            await planner.close()
        for runner in self.runners:
            if isinstance(runner.handler, TickHandler):
                runner.handler.close()
        await asyncio.gather(
            *(runner.close() for runner in self.runners),
            *(timer.close() for timer in self.local),
        )

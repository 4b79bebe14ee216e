"""Running one ``@rpc`` method for a request, whatever transport brought it.

The unary gRPC path (:mod:`.server`) and mesh links (:mod:`.link`) both hand a request's
bytes, codec and deadline to a :class:`Method` and get the answer's bytes back, or a
:class:`~wiremesh.errors.WiremeshError` — never another exception: a handler's own
exception is logged here and becomes :class:`~wiremesh.errors.InternalError`.

Each call runs as part of its work (:mod:`wiremesh.core.drain`): the work's age comes in
``wm-work-age`` (a link's call carries it among its metadata; the handler never sees it),
the handler runs inside that work, so that the calls it makes carry the age on, and the
node's :class:`~wiremesh.core.drain.Drain` is told of the call (what is running, and which
calling node's work may call again): what a draining node waits for before it goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from wiremesh.context import Context, MeshCaller
from wiremesh.core.bulkhead import Bulkhead
from wiremesh.core.codec import CODECS, CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.drain import Drain, began_at, enter_work, leave_work
from wiremesh.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidPayload,
    Overloaded,
    WiremeshError,
)
from wiremesh.middleware import Middleware, around
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.service import MethodSpec, Service, ServiceSpec
from wiremesh.transport.entrypoint import Pipeline
from wiremesh.transport.wire import WORK_AGE_KEY, exception_type_name

__all__ = ["Method", "methods_of", "within"]

log = logging.getLogger("wiremesh.node")


class Method:
    """One method of one service instance, ready to run requests."""

    __slots__ = (
        "_bulkhead",
        "_drain",
        "_func",
        "_pipeline",
        "_returns_protobuf",
        "_shapes",
        "_takes_protobuf",
        "name",
        "service",
    )

    def __init__(
        self,
        spec: MethodSpec,
        service: Service,
        service_name: str,
        node_id: str,
        caller: MeshCaller,
        metrics: MeshMetrics | None = None,
        drain: Drain | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.name = spec.name
        self.service = service_name
        self._func: Callable[..., Awaitable[Any]] = around(
            middleware,
            "call",
            service_name,
            spec.name,
            getattr(service, spec.attribute),
        )
        self._shapes = spec.shapes
        self._takes_protobuf = spec.shapes.takes_protobuf
        self._returns_protobuf = spec.shapes.returns_protobuf
        self._pipeline = Pipeline(
            service_name,
            spec.name,
            node_id=node_id,
            mesh=caller,
            metrics=metrics.handled(service_name, spec.name) if metrics is not None else None,
        )
        self._drain = drain
        self._bulkhead: Bulkhead[asyncio.Future[None]] | None = (
            None if spec.max_concurrency is None else Bulkhead(spec.max_concurrency, spec.max_queue)
        )

    def run(
        self,
        request: bytes,
        codec: str,
        deadline: Deadline,
        *,
        caller: str | None = None,
        metadata: Mapping[str, str | bytes] | None = None,
        trace: bytes = b"",
        tracestate: str = "",
        peer: str | None = None,
        enforce_deadline: bool = False,
        work_age: str | None = None,
    ) -> Coroutine[Any, Any, bytes]:
        """The encoded answer to ``request``, to await. The caller's trace context is in
        ``trace`` and ``tracestate`` (a link's frame) or in ``metadata`` (unary gRPC);
        the age of its work in ``work_age`` or, from a link, in ``metadata``.
        ``enforce_deadline`` cancels the handler when ``deadline`` passes (for transports
        that do not cancel it themselves)."""
        if metadata is not None and WORK_AGE_KEY in metadata:
            rest = dict(metadata)
            work_age = str(rest.pop(WORK_AGE_KEY))
            metadata = rest or None
        pipeline = self._pipeline
        ctx = pipeline.context(deadline, metadata=metadata, caller=caller, peer=peer)
        answer = self._answer(ctx, request, codec, work_age, enforce_deadline)
        return pipeline.run(ctx, answer, len(request), trace, tracestate)

    def bulkhead_state(self) -> tuple[str, str, int, int, int] | None:
        """(service, method, running, waiting, refused) of the method's bulkhead, if any."""
        gate = self._bulkhead
        if gate is None:
            return None
        return self.service, self.name, gate.running, gate.waiting, gate.refused

    async def _answer(
        self, ctx: Context, request: bytes, codec: str, work_age: str | None, enforce: bool
    ) -> bytes:
        """Decode, run the handler as part of its work, encode: inside the pipeline's run."""
        deadline = ctx.deadline
        caller = ctx.caller
        now = time.monotonic()
        drain = self._drain
        if drain is not None:
            drain.running += 1
            if caller is not None and work_age is not None:
                drain.called_by(caller, deadline.at, now)
        # a call that carries no age begins its work (began_at's answer, without the call)
        work = enter_work(now if work_age is None else began_at(work_age, now))
        bulkhead = self._bulkhead
        held = False
        try:
            if bulkhead is not None:
                if not bulkhead.enter():
                    await self._wait_turn(bulkhead, deadline)
                held = True
            if codec not in CODECS:
                raise InvalidPayload(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
            payload = request if self._takes_protobuf else decode(request, codec)
            args, kwargs = self._shapes.arguments(payload)
            if enforce:
                result = await within(
                    deadline.remaining(now=time.monotonic()), self._func(ctx, *args, **kwargs)
                )
            else:
                result = await self._func(ctx, *args, **kwargs)
            if self._returns_protobuf:
                reply_codec: CodecName = "proto"
            else:
                reply_codec = "msgpack" if codec == "proto" else codec
            try:
                return encode(result, reply_codec)
            except InvalidPayload as exc:  # the handler ran: not the caller's fault
                raise InternalError(
                    f"{self.service}.{self.name} returned what cannot travel: {exc.message}"
                ) from None
        except WiremeshError:
            raise
        except Exception as exc:
            log.exception("%s.%s raised %s", self.service, self.name, type(exc).__name__)
            raise InternalError(str(exc), remote_type=exception_type_name(exc)) from None
        finally:
            if held and bulkhead is not None:
                _pass_on(bulkhead)
            leave_work(work)
            if drain is not None:
                drain.running -= 1

    async def _wait_turn(
        self, bulkhead: Bulkhead[asyncio.Future[None]], deadline: Deadline
    ) -> None:
        """Wait in the bulkhead's queue for a slot, until ``deadline`` at most; refused
        (:class:`Overloaded`, unrun) when the queue is full."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not bulkhead.wait(turn):
            raise Overloaded(
                f"{self.service}.{self.name} is at its limit on node {self._pipeline.node_id}: "
                f"{bulkhead.running} calls running, {bulkhead.waiting} waiting "
                "(@rpc max_concurrency, max_queue)",
                node=self._pipeline.node_id,
                # seconds after which trying again makes sense (the HTTP door's Retry-After)
                details={"retry_after": 1},
            )
        try:
            async with asyncio.timeout(deadline.remaining(now=time.monotonic())):
                await turn
        except BaseException as error:
            if not bulkhead.withdraw(turn) and turn.done() and not turn.cancelled():
                _pass_on(bulkhead)  # handed a slot it will not use
            if isinstance(error, TimeoutError):
                raise DeadlineExceeded(
                    f"the deadline passed while {self.service}.{self.name} waited for a "
                    "free slot (@rpc max_concurrency)"
                ) from None
            raise


def _pass_on(bulkhead: Bulkhead[asyncio.Future[None]]) -> None:
    """A slot of ``bulkhead`` is free: hand it to the first waiter still waiting."""
    while (turn := bulkhead.leave()) is not None:
        if not turn.done():
            turn.set_result(None)
            return
        # that waiter gave up (its deadline, a cancel) and finds itself gone from the
        # queue: the slot goes on to the next


def methods_of(
    spec: ServiceSpec,
    service: Service,
    node_id: str,
    caller: MeshCaller,
    metrics: MeshMetrics | None = None,
    drain: Drain | None = None,
) -> dict[str, Method]:
    """Every unary method of ``service`` by its wire name (telling ``drain`` of each call);
    the streaming ones are :class:`~.streams.StreamMethod`."""
    return {
        name: Method(m, service, spec.name, node_id, caller, metrics, drain, spec.middleware)
        for name, m in spec.methods.items()
        if m.stream is None
    }


async def within(seconds: float, handler: Awaitable[Any]) -> Any:
    """Await ``handler``, cancelling it with :class:`DeadlineExceeded` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds) as scope:
            return await handler
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded(f"the deadline of {seconds:.3g}s passed") from None
        raise

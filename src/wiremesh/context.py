"""The per-call :class:`Context` a handler receives, and the caller it calls through."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from wiremesh.core.codec import CodecName
from wiremesh.core.deadline import Deadline
from wiremesh.core.gather import Mode, MulticastResult
from wiremesh.core.schedule import tick_from_text
from wiremesh.errors import BrokerUnavailable
from wiremesh.messaging.base import HEADER_TICK

if TYPE_CHECKING:
    from wiremesh.messaging.base import Envelope
    from wiremesh.messaging.outbound import Outbound

__all__ = ["Context", "MeshCaller", "StreamCall", "current_context"]


class StreamCall(Protocol):
    """A streaming call, as its caller iterates it (``async for item in stream``); closed
    by leaving the loop, ``aclose()`` or ``async with``
    (:class:`wiremesh.transport.streams.Stream`)."""

    def __aiter__(self) -> StreamCall: ...

    async def __anext__(self) -> Any: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> StreamCall: ...

    async def __aexit__(self, *exc: object) -> None: ...


class MeshCaller(Protocol):
    """What makes calls: a node's client inside the mesh, or ``wiremesh.connect()``."""

    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        deadline: Deadline | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any: ...

    def stream(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        deadline: Deadline | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StreamCall: ...

    async def multicast(
        self,
        target: str,
        payload: Any = None,
        *,
        mode: str | Mode = "all",
        timeout: float | None = None,
        deadline: Deadline | None = None,
        group: str | None = None,
        nodes: Sequence[str] | None = None,
        codec: CodecName = "msgpack",
        returns: Any = None,
        metadata: Mapping[str, str] | None = None,
    ) -> MulticastResult: ...

    async def publish(
        self, topic: str, payload: Any = None, *, codec: CodecName = "msgpack"
    ) -> int: ...


_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "wiremesh_context", default=None
)


def current_context() -> Context | None:
    """The context of the handler running in this task (or in the task that started it),
    None outside a handler. Set with :meth:`Context.activate`; the variable behind it is
    private to this module."""
    return _current.get()


class Context:
    """What a handler knows about the call it is serving.

    ``deadline`` is when the caller stops waiting; ``metadata`` the caller's custom
    metadata (keys without the ``wm-`` prefix that gRPC did not reserve; values of binary
    ``-bin`` keys, which only foreign clients send, are bytes); ``caller`` the
    calling node (``service@node-id``) or ``None`` for a client outside the mesh; ``peer``
    the transport address; ``node_id`` and ``service`` say where the handler runs.
    In an ``@on_event`` or ``@command`` handler, ``message`` is the envelope being
    handled (its ``id``, ``topic``, ``attempt`` and ``headers``), ``metadata`` its headers
    and ``caller`` the sending node; elsewhere ``message`` is None. In a ``@timer`` or
    ``@cron`` method, ``tick`` is the time of the tick it runs.
    """

    __slots__ = (
        "_caller",
        "caller",
        "deadline",
        "message",
        "metadata",
        "method",
        "node_id",
        "peer",
        "service",
    )

    def __init__(
        self,
        *,
        deadline: Deadline,
        service: str,
        method: str,
        node_id: str,
        caller_client: MeshCaller,
        metadata: Mapping[str, str | bytes] | None = None,
        caller: str | None = None,
        peer: str | None = None,
        message: Envelope | None = None,
    ) -> None:
        self.deadline = deadline
        self.message = message
        self.service = service
        self.method = method
        self.node_id = node_id
        self.metadata: Mapping[str, str | bytes] = metadata or {}
        self.caller = caller
        self.peer = peer
        self._caller = caller_client

    @property
    def tick(self) -> datetime | None:
        """In a ``@timer`` or ``@cron`` method, the time of the tick being run (an aware
        datetime, in the ``@cron``'s time zone; UTC for ``@timer``): the same on every
        try of a tick, so a handler can make its work idempotent. None elsewhere."""
        message = self.message
        if message is None:
            return None
        return tick_from_text(message.headers.get(HEADER_TICK))

    @property
    def remaining(self) -> float:
        """Seconds left before the deadline."""
        return self.deadline.remaining(now=time.monotonic())

    async def call(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Call ``service.method`` (or ``service@node-id.method``) with what remains of this
        call's deadline, capped by ``timeout`` when given. ``returns`` validates the result
        into a type; without it the result is the plain decoded value."""
        return await self._caller.call(
            target,
            payload,
            node=node,
            returns=returns,
            codec=codec,
            deadline=self.deadline.capped(timeout, now=time.monotonic()),
            metadata=metadata,
        )

    def stream(
        self,
        target: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        node: str | None = None,
        returns: Any = None,
        codec: CodecName = "msgpack",
        metadata: Mapping[str, str] | None = None,
    ) -> StreamCall:
        """A streaming call of ``service.method``, within what remains of this call's
        deadline (capped by ``timeout``): iterate it for the items that come back.
        ``payload`` is the request of a server-streaming method, or the items (an
        iterable or async iterable) of a client-streaming or bidirectional one::

            async for price in ctx.stream("pricing.prices", "sku-1", returns=Price):
                ...

        Leaving the loop early cancels the call at both ends; see ``docs/streams.md``."""
        return self._caller.stream(
            target,
            payload,
            node=node,
            returns=returns,
            codec=codec,
            deadline=self.deadline.capped(timeout, now=time.monotonic()),
            metadata=metadata,
        )

    async def multicast(
        self,
        target: str,
        payload: Any = None,
        *,
        mode: str | Mode = "all",
        timeout: float | None = None,
        group: str | None = None,
        nodes: Sequence[str] | None = None,
        codec: CodecName = "msgpack",
        returns: Any = None,
        metadata: Mapping[str, str] | None = None,
    ) -> MulticastResult:
        """Call ``service.method`` on many nodes (all of the service's, a ``group``, or the
        ``nodes`` listed) within what remains of this call's deadline; the result maps each
        node id to its value or its error."""
        return await self._caller.multicast(
            target,
            payload,
            mode=mode,
            deadline=self.deadline.capped(timeout, now=time.monotonic()),
            group=group,
            nodes=nodes,
            codec=codec,
            returns=returns,
            metadata=metadata,
        )

    async def publish(
        self, topic: str, payload: Any = None, *, codec: CodecName = "msgpack"
    ) -> int:
        """Fire-and-forget ``payload`` to every node subscribed to ``topic``."""
        return await self._caller.publish(topic, payload, codec=codec)

    async def emit(
        self,
        topic: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        """Emit a durable event to every service with a handler for ``topic``; returns its
        message id once the broker has durably accepted it (never waiting for a
        consumer). Waits for the broker at most what remains of this call's deadline
        (capped by ``timeout``), then raises :class:`~wiremesh.errors.BrokerUnavailable`.
        To emit only if a database transaction commits, use ``tx.emit`` (the outbox).

        ``delay`` (seconds) or ``at`` (an aware datetime, or a unix time) makes it a
        delayed message: the broker keeps it, through restarts, and hands it to no handler
        before then (a year at most)."""
        outbound = self._outbound()
        return await outbound.emit(
            topic,
            payload,
            codec=codec,
            headers=headers,
            timeout=timeout,
            deadline=self.deadline,
            delay=delay,
            at=at,
        )

    async def send(
        self,
        target: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        """Send a durable command to one node of a service (``"billing.charge"``); returns
        its message id once the broker has durably accepted it; see :meth:`emit` (for
        ``delay`` and ``at`` too)."""
        outbound = self._outbound()
        return await outbound.send(
            target,
            payload,
            codec=codec,
            headers=headers,
            timeout=timeout,
            deadline=self.deadline,
            delay=delay,
            at=at,
        )

    def _outbound(self) -> Outbound:
        from wiremesh.messaging.outbound import outbound_of

        found = outbound_of(self._caller)
        if found is None:
            held: Outbound | None = getattr(self._caller, "outbound", None)  # a test double
            if held is not None:
                return held
            raise BrokerUnavailable(
                f"{self.service} has no broker to emit through (this node runs without one)"
            )
        return found

    def activate(self) -> contextvars.Token[Context | None]:
        """Make this the context of the task that runs from here on: what
        :func:`current_context` returns, in this task and the tasks it starts. Whoever runs
        a handler calls it before the handler and gives the token to :meth:`deactivate`
        after it (in a ``finally``)."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[Context | None]) -> None:
        """Give back the context that was current before :meth:`activate` returned
        ``token``."""
        _current.reset(token)

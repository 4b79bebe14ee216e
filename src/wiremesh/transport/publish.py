"""Publish: fire-and-forget messages to every node subscribed to a topic, over links.

Sending (:func:`publish`, behind ``ctx.publish`` and ``MeshClient.publish``): the topic is
checked, the payload encoded once, and one PUBLISH frame is queued on the mesh link to
every serving node whose subscriptions match the topic. The matching nodes are cached per
(mesh snapshot, topic), so a publish is a dict lookup, an encode and one append per
subscriber. Nothing waits: when a link's queue is full (its peer or the network cannot
keep up) the frame is dropped for that peer only, and counted.

Receiving (:class:`Subscriptions`, installed by the node as ``NodeLinks.deliver``): a
link's reader hands each PUBLISH frame over without waiting. Per link there is a bounded
queue and at most one consumer task, started by the first message after the link was
idle and ended when its queue is empty, that runs the matching ``@subscribe`` handlers one
message at a time, in the order the frames arrived. When a link's queue is full the
message is dropped and counted, so a slow handler never stalls the link's reader (and
with it the calls that share the link).

Counters: the sender's in :meth:`Publisher.stats`, the receiver's in
:meth:`Subscriptions.stats`; a node reports both with its heartbeats, so ``wiremesh
nodes`` shows them. See ``docs/publish.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from wiremesh.context import Context, MeshCaller
from wiremesh.core.batching import QUEUED_FRAMES
from wiremesh.core.codec import CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import CALL_TIMEOUT
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.core.shape import SignatureShapes, is_protobuf_type
from wiremesh.core.topics import check_topic, matches
from wiremesh.errors import ConfigError, PayloadTooLarge, WiremeshError
from wiremesh.middleware import around
from wiremesh.observability import tracing
from wiremesh.proto import link_pb2 as pb
from wiremesh.transport.entrypoint import Pipeline
from wiremesh.transport.link import PUBLISH, Link

if TYPE_CHECKING:
    from wiremesh.registry.view import MeshView
    from wiremesh.service import Service, ServiceSpec
    from wiremesh.transport.peer_links import Links

__all__ = [
    "DEFAULT_QUEUE",
    "Publisher",
    "PublishingCaller",
    "Subscriptions",
    "publish",
    "publisher_of",
]

log = logging.getLogger("wiremesh.publish")

#: messages waiting for the handlers, per link, before more are dropped; as many as a
#: link queues on its sending side, so that one full batch from a peer always fits
DEFAULT_QUEUE = QUEUED_FRAMES
_CACHE_LIMIT = 4096
#: messages taken up within this many seconds of each other share one deadline
_DEADLINE_REUSE = 0.001
#: seconds between two warnings about bad payloads for the same handler
_WARN_EVERY = 10.0


class PublishingCaller(Protocol):
    """What a :class:`Publisher` uses of the caller it sends for (a
    :class:`~wiremesh.transport.client.Caller`): the mesh as it sees it and its links.
    The publisher is kept per caller, in a weak map: the caller must be weakly
    referenceable and hashable."""

    @property
    def view(self) -> MeshView:
        """Where the subscribed nodes are found (its ``snapshot``)."""

    @property
    def links(self) -> Links | None:
        """The mesh links the messages travel over; None: the caller cannot publish."""


async def publish(
    caller: PublishingCaller, topic: str, payload: Any = None, *, codec: CodecName = "msgpack"
) -> int:
    """Queue ``payload`` for every serving node subscribed to ``topic``; how many took it.

    Never waits. Raises :class:`~wiremesh.InvalidPayload` for a bad topic or a payload that
    does not encode, :class:`~wiremesh.PayloadTooLarge` when it cannot fit in a link's
    message (then no node gets it), and :class:`~wiremesh.ConfigError` for a caller
    without mesh links.
    """
    return publisher_of(caller).publish(topic, payload, codec)


_publishers: weakref.WeakKeyDictionary[PublishingCaller, Publisher] = weakref.WeakKeyDictionary()


def publisher_of(caller: PublishingCaller) -> Publisher:
    """The sending side of ``caller`` (made on first use): its routes and counters."""
    found = _publishers.get(caller)
    if found is None:
        found = _publishers[caller] = Publisher(caller)
    return found


class _Targets:
    """The links a topic's messages go out on, with the largest payload all of them carry."""

    __slots__ = ("links", "max_payload")

    def __init__(self, links: tuple[Link, ...]) -> None:
        self.links = links
        self.max_payload = min((link.max_payload for link in links), default=0)


class Publisher:
    """Sends one caller's publishes: routes and links cached per snapshot, and counters."""

    __slots__ = (
        "_caller",
        "_protobuf",
        "_routes",
        "_snapshot",
        "_targets",
        "dropped",
        "published",
        "sent",
    )

    def __init__(self, caller: PublishingCaller) -> None:
        self._caller = caller
        self._snapshot: MeshSnapshot | None = None
        self._routes: dict[str, tuple[NodeInfo, ...]] = {}
        self._targets: dict[str, _Targets] = {}
        self._protobuf: dict[type, bool] = {}
        #: ``publish`` calls that went through (whether or not anyone subscribed)
        self.published = 0
        #: frames queued on a link, one per subscriber per message
        self.sent = 0
        #: frames dropped because a link's queue was full (or the link had closed)
        self.dropped = 0

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "publish_sent": self.sent,
            "publish_dropped": self.dropped,
        }

    def route(self, topic: str) -> tuple[NodeInfo, ...]:
        """The serving nodes subscribed to ``topic`` now (``topic`` is checked first)."""
        snapshot = self._caller.view.snapshot
        if snapshot is not self._snapshot:
            self._routes = {}
            self._targets = {}
            self._snapshot = snapshot
        nodes = self._routes.get(topic)
        if nodes is None:
            check_topic(topic)
            nodes = tuple(
                node
                for node in snapshot.nodes
                if node.serving and any(matches(p, topic) for p in node.subscriptions)
            )
            if len(self._routes) >= _CACHE_LIMIT:
                self._routes.clear()
            self._routes[topic] = nodes
        return nodes

    def _targets_of(self, topic: str, links: Links) -> _Targets:
        """The links to the nodes subscribed to ``topic``: cached while the mesh stays the
        same and none of them has closed (a closed one is opened again)."""
        targets = self._targets.get(topic)
        if targets is not None and self._snapshot is self._caller.view.snapshot:
            for link in targets.links:
                if link.closed:
                    break
            else:
                return targets
        targets = _Targets(tuple(links.to(node) for node in self.route(topic)))
        if len(self._targets) >= _CACHE_LIMIT:
            self._targets.clear()
        self._targets[topic] = targets
        return targets

    def publish(self, topic: str, payload: Any, codec: CodecName) -> int:
        links = self._caller.links
        if links is None:
            raise ConfigError(
                "publish travels over mesh links, and this caller has none: create the "
                "node or client with links enabled (the default)"
            )
        targets = self._targets_of(topic, links)
        kind = type(payload)
        protobuf = self._protobuf.get(kind)
        if protobuf is None:
            protobuf = is_protobuf_type(kind)
            if len(self._protobuf) < _CACHE_LIMIT:
                self._protobuf[kind] = protobuf
        if protobuf:
            codec = "proto"
        body = encode(payload, codec)  # once, whoever subscribes: a bad payload always fails
        self.published += 1
        size = len(body)
        if size > targets.max_payload:  # all or none: not sent to some peers only
            if not targets.links:
                return 0
            narrowest = min(targets.links, key=lambda link: link.max_payload)
            raise PayloadTooLarge(
                f"the message to {topic!r} is {size} bytes; a link to "
                f"{narrowest.remote_id} carries at most {narrowest.max_payload} "
                "(mesh.max_message_bytes)"
            )
        # one frame for every link (a batch copies the frames it is made of); fields set
        # one by one cost less than keywords
        frame = pb.Frame()
        frame.kind = PUBLISH
        frame.topic = topic
        frame.payload = body
        if codec != "msgpack":
            frame.codec = codec
        links_to = targets.links
        if tracing.enabled():
            span = tracing.client_span(f"publish {topic}", size=size, kind="producer")
            if span is not None:
                frame.trace, frame.tracestate = tracing.frame_context(span)
                span.set("wiremesh.subscribers", len(links_to))
                span.end()
        accepted = 0
        for link in links_to:
            if link.publish(frame, size):
                accepted += 1
        self.sent += accepted
        self.dropped += len(links_to) - accepted
        return accepted


# ---------------------------------------------------------------------------- receiving


class _Handler:
    """One ``@subscribe`` method of the running service instance."""

    __slots__ = ("func", "name", "patterns", "pipeline", "shapes", "takes_protobuf")

    def __init__(
        self,
        name: str,
        func: Callable[..., Awaitable[Any]],
        patterns: tuple[str, ...],
        shapes: SignatureShapes,
        pipeline: Pipeline,
    ) -> None:
        self.name = name
        self.func = func
        self.patterns = patterns
        self.shapes = shapes
        self.takes_protobuf = shapes.takes_protobuf
        self.pipeline = pipeline


class _Inbox:
    """The messages of one link waiting for the handlers, and the task running them."""

    __slots__ = ("frames", "link", "task")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.frames: deque[tuple[pb.Frame, str, tuple[_Handler, ...]]] = deque()
        self.task: asyncio.Task[None] | None = None


class Subscriptions:
    """A node's receiving side of publish: runs its ``@subscribe`` handlers.

    :meth:`deliver` is what the node installs as ``NodeLinks.deliver``; it never waits.
    ``max_queued`` bounds the messages waiting per link. An entrypoint of the node
    (:class:`~wiremesh.transport.entrypoint.Entrypoint`): it takes messages from its
    making; :meth:`drain` and :meth:`close` end that.
    """

    def __init__(
        self,
        spec: ServiceSpec,
        service: Service,
        *,
        node_id: str,
        caller: MeshCaller,
        default_timeout: float = CALL_TIMEOUT,
        max_queued: int = DEFAULT_QUEUE,
    ) -> None:
        if max_queued < 1:
            raise ConfigError(f"the publish queue must hold at least 1 message, not {max_queued}")
        self.service = spec.name
        self.node_id = node_id
        self.caller = caller
        self.default_timeout = default_timeout
        self.max_queued = max_queued
        handlers: dict[str, _Handler] = {}
        for _, sub in spec.subscriptions:
            if sub.attribute not in handlers:
                func = around(
                    spec.middleware,
                    "publish",
                    spec.name,
                    sub.attribute,
                    getattr(service, sub.attribute),
                )
                pipeline = Pipeline(
                    spec.name,
                    sub.attribute,
                    node_id=node_id,
                    mesh=caller,
                    kind="consumer",
                    failed=self._failed,
                )
                handlers[sub.attribute] = _Handler(
                    sub.attribute, func, sub.patterns, sub.shapes, pipeline
                )
        self._handlers = tuple(handlers.values())
        self._by_topic: dict[str, tuple[_Handler, ...]] = {}
        #: the read-only ``ctx.metadata`` of the messages to each topic
        self._metadata: dict[str, Mapping[str, str | bytes]] = {}
        self._inboxes: dict[Link, _Inbox] = {}
        self._running: dict[asyncio.Task[None], _Inbox] = {}
        self._warned: dict[str, float] = {}
        self._closed = False
        #: PUBLISH frames that arrived
        self.received = 0
        #: handler runs that returned
        self.delivered = 0
        #: messages dropped because their link's queue was full (or the node stopped)
        self.dropped = 0
        #: messages no handler of this node subscribes to (a sender's stale view)
        self.unmatched = 0
        #: handler runs skipped because the payload did not decode or validate
        self.invalid = 0
        #: handler runs that raised
        self.failed = 0

    @property
    def queued(self) -> int:
        """Messages waiting for the handlers now, over every link."""
        return sum(len(inbox.frames) for inbox in self._running.values())

    def stats(self) -> dict[str, int]:
        return {
            "publish_received": self.received,
            "publish_delivered": self.delivered,
            "publish_delivery_dropped": self.dropped,
            "publish_delivery_queued": self.queued,
            "publish_unmatched": self.unmatched,
            "publish_invalid": self.invalid,
            "publish_failed": self.failed,
        }

    def handlers_for(self, topic: str) -> tuple[_Handler, ...]:
        """The handlers a message to ``topic`` goes to, in definition order."""
        found = self._by_topic.get(topic)
        if found is None:
            found = tuple(h for h in self._handlers if any(matches(p, topic) for p in h.patterns))
            if len(self._by_topic) >= _CACHE_LIMIT:
                self._by_topic.clear()
            self._by_topic[topic] = found
        return found

    def deliver(self, link: Link, frame: pb.Frame) -> None:
        """Queue a PUBLISH frame that arrived on ``link`` for its handlers (never waits)."""
        self.received += 1
        topic = frame.topic
        handlers = self._by_topic.get(topic) or self.handlers_for(topic)
        if not handlers:
            self.unmatched += 1
            return
        if self._closed:
            self.dropped += 1
            return
        inbox = self._inboxes.get(link)
        if inbox is None:
            inbox = _Inbox(link)
            if not link.closed:
                self._inboxes[link] = inbox
                link.on_close(self._link_closed)
        frames = inbox.frames
        if len(frames) >= self.max_queued:
            self.dropped += 1
            return
        frames.append((frame, topic, handlers))
        if inbox.task is None:
            task = asyncio.get_running_loop().create_task(
                self._drain(inbox), name=f"wiremesh-publish-{link.remote_id or 'peer'}"
            )
            inbox.task = task
            self._running[task] = inbox
            task.add_done_callback(self._finished)

    def _link_closed(self, link: Link) -> None:
        # what arrived before the link closed is still delivered, by the running task
        self._inboxes.pop(link, None)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    async def _drain(self, inbox: _Inbox) -> None:
        frames = inbox.frames
        link = inbox.link
        remote = link.remote_service
        caller = f"{remote}@{link.remote_id}" if remote else None
        timeout = self.default_timeout
        taken_at = -1.0
        deadline = Deadline(0.0)
        # messages for the same handler and topic taken up within the same deadline share
        # one context: every field of it is the same
        ctx: Context | None = None
        ctx_handler: _Handler | None = None
        ctx_topic = ""
        try:
            while frames:
                frame, topic, handlers = frames.popleft()
                now = time.monotonic()
                if now - taken_at > _DEADLINE_REUSE:  # a Deadline costs more than a clock read
                    taken_at = now
                    deadline = Deadline(now + timeout)
                payload = frame.payload
                codec: Any = frame.codec or "msgpack"
                # each handler runs here rather than in a task of its own: a message costs
                # two coroutines, the handler's and the pipeline's run around it
                for handler in handlers:
                    try:
                        value = payload if handler.takes_protobuf else decode(payload, codec)
                        args, kwargs = handler.shapes.arguments(value)
                    except WiremeshError as exc:
                        self._invalid(handler, topic, link, exc)
                        continue
                    if (
                        ctx is None
                        or ctx.deadline is not deadline
                        or ctx_handler is not handler
                        or ctx_topic != topic
                    ):
                        ctx = self._context(handler, link, topic, deadline, caller)
                        ctx_handler, ctx_topic = handler, topic
                    running = handler.func(ctx, *args, **kwargs)
                    try:
                        await handler.pipeline.run(ctx, running, frame=frame)
                        self.delivered += 1
                    except Exception:  # logged by _failed; nothing a handler raises ends the drain
                        self.failed += 1
        finally:
            inbox.task = None

    def _invalid(self, handler: _Handler, topic: str, link: Link, error: WiremeshError) -> None:
        """A message's payload does not fit ``handler``: counted, warned about, skipped."""
        self.invalid += 1
        self._warn(handler, topic, link, error)

    def _context(
        self, handler: _Handler, link: Link, topic: str, deadline: Deadline, caller: str | None
    ) -> Context:
        metadata = self._metadata.get(topic)
        if metadata is None:
            if len(self._metadata) >= _CACHE_LIMIT:
                self._metadata.clear()
            metadata = self._metadata[topic] = MappingProxyType({"topic": topic})
        return handler.pipeline.context(
            deadline, metadata=metadata, caller=caller, peer=link.remote_id
        )

    def _failed(self, error: Exception, ctx: Context | None) -> str:
        """A handler raised ``error``: logged (in the handler's context and span still)."""
        assert ctx is not None
        log.exception(
            "%s.%s raised %s on a message to %r",
            self.service,
            ctx.method,
            type(error).__name__,
            ctx.metadata["topic"],
        )
        return "internal"

    def _warn(self, handler: _Handler, topic: str, link: Link, error: WiremeshError) -> None:
        now = time.monotonic()
        if now - self._warned.get(handler.name, -_WARN_EVERY) < _WARN_EVERY:
            return
        self._warned[handler.name] = now
        log.warning(
            "%s.%s skipped a message to %r from %s: %s (%d bad payloads so far; "
            "this warning repeats at most every %gs)",
            self.service,
            handler.name,
            topic,
            link.remote_id or "a peer",
            error.message,
            self.invalid,
            _WARN_EVERY,
        )

    async def start(self) -> None:
        """Nothing to start: messages are taken from the making on (links bring them)."""

    async def drain(self, deadline: float) -> None:
        """Take no more messages; let the queued ones run until ``deadline`` (on
        ``time.monotonic()``) at most."""
        self._closed = True
        running = list(self._running)
        grace = deadline - time.monotonic()
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)

    async def close(self) -> None:
        """Cancel the handlers still running, and count what is left as dropped."""
        self._closed = True
        running = list(self._running)
        for task in running:
            inbox = self._running[task]
            self.dropped += len(inbox.frames)
            inbox.frames.clear()
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._inboxes.clear()

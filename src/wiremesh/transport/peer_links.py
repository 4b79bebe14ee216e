"""The links of one process: opened on demand, accepted from peers, served by the node.

:class:`Links` keeps at most one link per peer node: the first call to a node opens one
(``Link/Open`` on the node's gRPC address) and every later call reuses it, as does the
peer for its calls back when it accepted our link. A link that ends (its peer stopped or
restarted) is forgotten, and the next call opens a new one.

It also keeps the peers found silent (:attr:`Links.ejections`, by the rules of
:mod:`wiremesh.core.ejection`): a link whose peer falls silent ejects it, and when the
ejection ends the peer is probed on its link, or on a new one over a new connection
(grpc's own reconnect backoff grows to minutes; a fresh connection has none). An answer
puts the peer back; silence ejects it again, for longer.

:class:`NodeLinks` is what a node serves on its links: ``@rpc`` methods and publishes
(handed to ``NodeLinks.deliver``). Each call runs in a task of its own, so that a CANCEL
frame or the link closing cancels that handler alone, and so that each handler has its
own context (``contextvars``, ``asyncio.current_task()``). On Python 3.12+ that task
starts eagerly: a handler that answers without waiting runs to its end in the reader's
turn and its task is never scheduled (on 3.11, creating and scheduling the task is a few
per cent of a call's CPU; see ``benchmarks/README.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from wiremesh.core.batching import QUEUED_FRAMES
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.core.ejection import Ejections, Liveness
from wiremesh.core.model import NodeInfo
from wiremesh.errors import MethodNotFound, Overloaded, Unavailable, WiremeshError
from wiremesh.proto import link_pb2 as pb
from wiremesh.transport.dispatch import Method
from wiremesh.transport.link import LINK_OPEN, Link, LinkHandler
from wiremesh.transport.tls import open_channel
from wiremesh.transport.wire import error_body

__all__ = ["MAX_MESSAGE_KEY", "Links", "NodeLinks", "link_method_handler", "message_limit"]

#: registry metadata of a node: the largest gRPC message it accepts
MAX_MESSAGE_KEY = "wm.max_message_bytes"
#: seconds a closing process waits for the frames still queued on its links to be written
CLOSE_WRITES = 1.0

log = logging.getLogger("wiremesh.link")


def message_limit(node: NodeInfo, own: int) -> int:
    """The largest message a stream to ``node`` may carry: ``own`` limit, or the one the
    node advertises when lower (one frame over the peer's limit would break the whole
    stream)."""
    advertised = node.metadata.get(MAX_MESSAGE_KEY, "")
    return min(own, int(advertised)) if advertised.isdigit() else own


class Links:
    """Every link of this process, by peer node id."""

    def __init__(
        self,
        *,
        local_id: str,
        local_service: str = "",
        handler: LinkHandler | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        max_frames: int = QUEUED_FRAMES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        liveness: Liveness | None = None,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self.local_id = local_id
        self.local_service = local_service
        self.handler = handler
        self._credentials = credentials
        self._options = options or []
        self._max_frames = max_frames
        self._by_node: dict[str, Link] = {}
        self._by_address: dict[str, Link] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted: set[Link] = set()
        self.closed = False
        #: how quickly a silent peer is judged, and how long it is left out
        self.liveness = liveness if liveness is not None else Liveness()
        #: the peers found silent from here: callers' balancers leave them out
        self.ejections = Ejections(self.liveness)
        #: finds a node's current record by id, to probe it back when its ejection ends
        #: (set by the caller that uses these links; None, or no record: the ejection
        #: simply ends)
        self.locate: Callable[[str], NodeInfo | None] | None = None
        #: per ejected node: the timer of its next probe, or of its probe's end
        self._probes: dict[str, asyncio.TimerHandle] = {}

    def get(self, node_id: str) -> Link | None:
        """The link this process reaches ``node_id`` over, opened or adopted; None when
        there is none (it never opens one: :meth:`to` does)."""
        return self._by_node.get(node_id)

    def to(self, node: NodeInfo) -> Link:
        """The link to ``node``, opened now if there is none (it never waits)."""
        link = self._by_node.get(node.node_id)
        if link is not None and not link.closed:
            return link
        channel = self._channels.get(node.address)
        if channel is None:
            channel = self._channels[node.address] = open_channel(
                node.address, self._credentials, self._options
            )
        limit = message_limit(node, self._max_message_bytes)
        stream = channel.stream_stream(
            LINK_OPEN,
            request_serializer=pb.Batch.SerializeToString,
            response_deserializer=pb.Batch.FromString,
        )(None)  # no request iterator: the link writes with stream.write()
        link = Link(
            stream,
            local_id=self.local_id,
            local_service=self.local_service,
            handler=self.handler,
            max_frames=self._max_frames,
            max_message_bytes=limit,
            liveness=self.liveness,
        )
        link.remote_id = node.node_id
        self._by_node[node.node_id] = link
        self._by_address[node.address] = link
        link.on_close(self._forget)
        link.on_reachability(self._reachability)
        # the HELLO of a link we opened is an answer both ways: an ejected peer is back
        link.on_hello(self._answered)
        self._spawn(link.run(), f"wiremesh-link-{node.node_id}")
        return link

    async def accept(self, context: Any) -> None:
        """Serve a link a peer opened (the ``Link/Open`` handler); returns when it ends."""
        link = Link(
            context,
            local_id=self.local_id,
            local_service=self.local_service,
            handler=self.handler,
            max_frames=self._max_frames,
            max_message_bytes=self._max_message_bytes,
            liveness=self.liveness,
        )
        self.accepted.add(link)
        link.on_close(self._forget)
        link.on_reachability(self._reachability)
        # adopted as the peer's HELLO is read, before the call that follows it runs: a
        # call back to that peer from its handler already finds this link
        link.on_hello(self._adopt)
        try:
            await link.run()
        finally:
            self.accepted.discard(link)

    def _adopt(self, link: Link) -> None:
        """A peer node that linked to us is reached through its link too."""
        if link.remote_service and not link.closed:
            current = self._by_node.get(link.remote_id)
            if current is None or current.closed:
                self._by_node[link.remote_id] = link

    def _forget(self, link: Link) -> None:
        if self._by_node.get(link.remote_id) is link:
            del self._by_node[link.remote_id]

    # ------------------------------------------------------------------ ejections

    def _reachability(self, link: Link) -> None:
        """A link's peer fell silent (eject it) or, silent, answered (take it back)."""
        if not link.remote_id or self.closed:
            return
        if link.unreachable:
            self._eject(link.remote_id)
        else:
            self._answered(link)

    def _eject(self, node_id: str) -> None:
        loop = asyncio.get_running_loop()
        until = self.ejections.eject(node_id, loop.time())
        count = self.ejections.ejected[node_id].count
        left_out = until - loop.time()
        log.log(
            logging.WARNING if count == 1 else logging.DEBUG,
            "node %s is unreachable from %s (no answer for %gs, not even to a probe): "
            "left out for %gs",
            node_id,
            self.local_id,
            self.liveness.unreachable_after,
            round(left_out, 3),
        )
        self._set_probe(node_id, loop.call_at(until, self._probe_back, node_id))

    def _answered(self, link: Link) -> None:
        node_id = link.remote_id
        if self.ejections.answered(node_id):
            self._set_probe(node_id, None)
            log.info("node %s answers %s again: no longer left out", node_id, self.local_id)

    def _set_probe(self, node_id: str, timer: asyncio.TimerHandle | None) -> None:
        old = self._probes.pop(node_id, None)
        if old is not None:
            old.cancel()
        if timer is not None:
            self._probes[node_id] = timer

    def _probe_back(self, node_id: str) -> None:
        """An ejection ended: probe the node, still left out, and wait for its answer."""
        self._probes.pop(node_id, None)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.closed or not self.ejections.due(node_id, now):
            return
        node = self.locate(node_id) if self.locate is not None else None
        if node is None:  # it left the mesh (or nothing here can find it): nothing to do
            self.ejections.forget(node_id)
            return
        link = self._by_node.get(node_id)
        if link is None or link.closed:
            # a new connection, without the reconnect backoff of the old channel
            self._close_channel(node.address)
            link = self.to(node)
        mark = link.heard_at
        link.probe()
        timer = loop.call_at(
            now + self.liveness.unreachable_after, self._probe_ended, node_id, link, mark
        )
        self._set_probe(node_id, timer)

    def _probe_ended(self, node_id: str, link: Link, mark: float) -> None:
        self._probes.pop(node_id, None)
        if self.closed or node_id not in self.ejections:
            return
        if link.heard_at > mark:
            self._answered(link)
        else:
            self._eject(node_id)

    def forget_address(self, address: str) -> None:
        """The node at ``address`` left the mesh: drop its channel once its link ends (the
        calls in flight on it still get their answers, or fail when the peer goes)."""
        link = self._by_address.get(address)
        if link is not None and not link.closed:
            link.on_close(lambda _: self._close_channel(address))
        else:
            self._close_channel(address)

    def _close_channel(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            self._spawn(channel.close(grace=1.0), "wiremesh-link-channel-close")

    def stats(self) -> dict[str, dict[str, int]]:
        """Per peer: frames queued, batches and frames sent, publishes dropped."""
        return {
            node_id: {
                "queued": link.queued,
                "batches": link.sent_batches,
                "frames": link.sent_frames,
                "dropped": link.dropped,
            }
            for node_id, link in self._by_node.items()
        }

    @property
    def dropped(self) -> int:
        return sum(link.dropped for link in (*self._by_node.values(), *self.accepted))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Close every link, once what was queued on it is written (a publish made just
        before, say), :data:`CLOSE_WRITES` seconds at most."""
        self.closed = True
        for timer in self._probes.values():
            timer.cancel()
        self._probes.clear()
        links = [*self._by_node.values(), *self.accepted]
        await asyncio.gather(*(link.written(CLOSE_WRITES) for link in links))
        for link in links:
            link.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()


class NodeLinks:
    """A node's side of its links: runs the calls and publishes peers send it."""

    def __init__(
        self,
        *,
        service: str,
        node_id: str,
        methods: Mapping[str, Method],
        default_timeout: float,
    ) -> None:
        self.service = service
        self.node_id = node_id
        self.methods = methods
        self.default_timeout = default_timeout
        self._in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        #: set by the node: delivers a publish frame (topic, payload, codec) in order
        self.deliver: Any = None
        #: refuse new calls (with ``not_run``, so callers go elsewhere) while draining,
        #: but those ``admits`` takes: calls of work already in flight (the node's
        #: :class:`~wiremesh.core.drain.Drain` tells which)
        self.draining = False
        self.admits: Callable[[pb.Frame], bool] = _refused
        #: the answer to a probe (a CALL naming no service; see Link.probe)
        self._probe_answer = error_body(
            MethodNotFound("a probe names no service: nothing to run"), node_id
        )

    def in_flight(self) -> int:
        return self._in_flight

    def on_call(self, link: Link, frame: pb.Frame) -> None:
        if self.draining and not self.admits(frame):
            refused = Unavailable(f"node {self.node_id} is draining", node=self.node_id)
            link.fail(frame.id, error_body(refused, self.node_id), not_run=True)
            return
        method = self.methods.get(frame.method) if frame.service == self.service else None
        if method is None:
            if not frame.service:  # a probe: the caller only wants a sign of life
                link.fail(frame.id, self._probe_answer)
                return
            error = MethodNotFound(
                f"node {self.node_id} ({self.service}) has no method {frame.service}.{frame.method}"
            )
            link.fail(frame.id, error_body(error, self.node_id))
            return
        # one task per call, so that a CANCEL frame (or the link closing) cancels just that
        # handler; on Python 3.12+ it starts at once (eager): a handler that answers without
        # waiting is done before its task would have been scheduled, and is never listed
        loop = asyncio.get_running_loop()
        if sys.version_info >= (3, 12):
            task = asyncio.Task(self._serve(link, frame, method), loop=loop, eager_start=True)
            if task.done():
                return
        else:
            task = loop.create_task(self._serve(link, frame, method))
        link.serving[frame.id] = task

    async def _serve(self, link: Link, frame: pb.Frame, method: Method) -> None:
        call_id = frame.id
        timeout_ms = frame.timeout_ms
        timeout = timeout_ms / 1000 if timeout_ms else self.default_timeout
        if not self._in_flight:
            self.idle.clear()
        self._in_flight += 1
        try:
            metadata = frame.metadata
            answer = await method.run(
                frame.payload,
                frame.codec or "msgpack",
                Deadline(time.monotonic() + timeout),
                caller=frame.caller or None,
                metadata=dict(metadata) if metadata else None,
                trace=frame.trace,
                tracestate=frame.tracestate,
                peer=link.remote_id,
                # the caller cancels at its deadline; a foreign peer may not
                enforce_deadline=not timeout_ms,
            )
            link.reply(call_id, answer, self.node_id)
        except WiremeshError as exc:
            # a bulkhead's refusal ran nothing: the caller may send the call elsewhere
            link.fail(call_id, error_body(exc, self.node_id), not_run=isinstance(exc, Overloaded))
        finally:
            link.serving.pop(call_id, None)
            self._in_flight -= 1
            if not self._in_flight:
                self.idle.set()

    def on_publish(self, link: Link, frame: pb.Frame) -> None:
        if self.deliver is not None:
            self.deliver(link, frame)


def _refused(frame: pb.Frame) -> bool:
    return False


def link_method_handler(links: Links) -> grpc.RpcMethodHandler[Any, Any]:
    """The gRPC handler of ``Link/Open`` for a server whose links ``links`` holds."""

    async def open_link(requests: Any, context: Any) -> None:
        await links.accept(context)

    return grpc.stream_stream_rpc_method_handler(
        open_link,
        request_deserializer=pb.Batch.FromString,
        response_serializer=pb.Batch.SerializeToString,
    )

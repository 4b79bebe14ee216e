"""Multicast: one request to many nodes, the replies gathered under one deadline.

``multicast`` picks its nodes from the caller's mesh view once, when it starts: every
serving node of the service, those of them in a ``group``, or exactly the node ids in
``nodes``. The payload is encoded once; over mesh links each node gets one CALL frame
(:meth:`~wiremesh.transport.link.Link.start_call`, which never waits) whose future feeds
:class:`~wiremesh.core.gather.Gather` from a done-callback: no task per node, and one
future to wait on, woken when the mode is met or at the deadline. What is still out then
is cancelled (a CANCEL frame stops the remote handler).

A node costs only its own slot: an unknown node id gets :class:`NodeNotFound`, a draining
one :class:`Unavailable`, a node whose link is closed or full :class:`Unavailable`, a node
that dies mid-call :class:`Unavailable`, a slow one :class:`DeadlineExceeded`; the others'
values are there all the same. Only a bad target (no such service or method, a malformed
name, a bad mode) fails the whole call.

A caller without links (``Caller(links=None)``) sends one unary gRPC call per node, each
in a task of its own: the slower, compatible path.

What a multicast needs of the caller it goes through is :class:`MulticastCaller`, which
:class:`~wiremesh.transport.client.Caller` implements; this module does not import it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc

from wiremesh.core.balancing import Balancer
from wiremesh.core.codec import CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.gather import Gather, Mode, MulticastResult, parse_mode
from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo
from wiremesh.core.names import Target, check_group, method_path, parse_target
from wiremesh.core.shape import is_protobuf_type
from wiremesh.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidPayload,
    MethodNotFound,
    NodeNotFound,
    ServiceNotFound,
    Unavailable,
    WiremeshError,
)
from wiremesh.observability import tracing
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.proto.link_pb2 import Frame as CallFrame
from wiremesh.registry.view import MeshView
from wiremesh.transport.link import CALL, ERROR, Link, error_of
from wiremesh.transport.peer_links import Links
from wiremesh.transport.wire import custom_metadata, error_from_rpc_error, raised_by_handler

__all__ = ["MulticastCaller", "multicast"]


class MulticastCaller(Protocol):
    """What a multicast uses of the caller it goes through (a
    :class:`~wiremesh.transport.client.Caller`): the same view, links, balancers, channels
    and metrics as its calls."""

    @property
    def view(self) -> MeshView:
        """Where the nodes are chosen from."""

    @property
    def links(self) -> Links | None:
        """The mesh links to send over; None: one unary gRPC call per node."""

    @property
    def metrics(self) -> MeshMetrics | None:
        """Where the multicast is counted (None: not counted)."""

    @property
    def identity(self) -> str | None:
        """The calling node (``service@node-id``), None outside the mesh."""

    @property
    def default_timeout(self) -> float:
        """Seconds, for a multicast given neither a deadline nor a timeout."""

    def balancer(self, service: str) -> Balancer:
        """The balancer of ``service``'s nodes, told of each call started and finished."""

    def unary_stub(
        self, address: str, path: str, at: float
    ) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """The stub of ``path`` at ``address`` for a unary call that may run until ``at``."""

    def wire_metadata(
        self, codec: CodecName, extra: Mapping[str, str] | None
    ) -> tuple[tuple[str, str], ...] | None:
        """The gRPC metadata of a unary call with ``codec`` and the custom ``extra`` keys."""

    def decode_result(self, response: bytes, codec: CodecName, returns: Any) -> Any:
        """A reply decoded with ``codec`` and validated into ``returns``."""


async def multicast(
    caller: MulticastCaller,
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
) -> MulticastResult:
    """Call ``target`` (``service.method``) on many nodes and gather their replies.

    The nodes: every serving node of the service (default), those of them in ``group``,
    or the node ids in ``nodes``. ``mode`` is ``"all"``, ``"first"`` or ``"quorum(n)"``.
    The deadline is ``deadline`` capped by ``timeout``, else ``timeout``, else the
    caller's default. Returns once the mode is met or at the deadline; the result maps
    every node asked to its value (validated into ``returns`` when given) or its error.

    Raises :class:`InvalidPayload` (a bad target, mode, group or metadata),
    :class:`ServiceNotFound`, :class:`MethodNotFound`, :class:`Unavailable` (the service
    has no live node) or :class:`DeadlineExceeded` (``timeout`` not positive).
    """
    wanted = parse_mode(mode)
    where = parse_target(target)
    if where.node is not None:
        raise InvalidPayload(
            f"bad multicast target {target!r}: name the service and method only "
            f"('{where.service}.{where.method}') and pass the node ids as nodes=[...]"
        )
    if group is not None and nodes is not None:
        raise InvalidPayload("a multicast goes to a group or to a list of nodes, not both")
    if group is not None:
        check_group(group)
    if isinstance(nodes, (str, bytes)):
        raise InvalidPayload(f"nodes must be a list of node ids, not the string {nodes!r}")
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded(f"timeout must be positive, got {timeout:g}s for {target}")
    extra = dict(custom_metadata(metadata)) if metadata else None  # checked even if unsent
    if deadline is None:
        at = time.monotonic() + (caller.default_timeout if timeout is None else timeout)
    else:
        at = deadline.at
        if timeout is not None:
            at = min(at, time.monotonic() + timeout)

    info, chosen, refused = _choose(caller.view.snapshot, where, group, nodes)
    gather = Gather([*(n.node_id for n in chosen), *refused], wanted)
    for node_id, error in refused.items():
        gather.add(node_id, error)

    if is_protobuf_type(type(payload)):
        codec = "proto"
    body = encode(payload, codec)
    if info.returns_protobuf:
        reply_codec: CodecName = "proto"
    else:
        reply_codec = "msgpack" if codec == "proto" else codec

    def outcome(node_id: str, response: bytes) -> Any:
        try:
            if returns is None:
                return decode(response, reply_codec)
            return caller.decode_result(response, reply_codec, returns)
        except WiremeshError as exc:
            return _tagged(exc, node_id)

    if not chosen:
        return _counted(caller, where, wanted, gather.result(deadline_passed=False))
    if gather.done:  # e.g. quorum(3) of two nodes: it cannot be met, so nobody is called
        for node in chosen:
            reason = f"not called: {wanted} cannot be met by the {len(gather.asked)} node(s) asked"
            gather.add(node.node_id, Cancelled(reason, node=node.node_id))
        return _counted(caller, where, wanted, gather.result(deadline_passed=False))
    if at <= time.monotonic():
        return _counted(caller, where, wanted, gather.result(deadline_passed=True))
    span = None
    if tracing.enabled():
        span = tracing.client_span(f"{where.service}.{where.method}", size=len(body))
        if span is not None:
            span.set("wiremesh.multicast.mode", str(wanted))
            span.set("wiremesh.multicast.nodes", len(chosen))
    if caller.links is None:
        if span is not None:  # the trace context, after the caller's own keys are checked
            metadata = {**extra, **span.carrier} if extra else dict(span.carrier)
        send = _over_unary(caller, where, chosen, gather, body, at, codec, metadata, outcome)
    else:
        trace = tracing.frame_context(span)
        send = _over_links(caller, where, chosen, gather, body, at, codec, extra, trace, outcome)
    try:
        result = await send
    except BaseException:
        if span is not None:
            span.end("cancelled")
        raise
    return _counted(caller, where, wanted, result, span)


def _counted(
    caller: MulticastCaller,
    where: Target,
    mode: Mode,
    result: MulticastResult,
    span: tracing.Span | None = None,
) -> MulticastResult:
    """``result``, once counted in the caller's metrics and its span closed."""
    outcomes = {"ok": 0, "error": 0, "deadline": 0, "skipped": 0}
    for node_id in result:
        value = result[node_id]
        if isinstance(value, DeadlineExceeded):
            outcomes["deadline"] += 1
        elif isinstance(value, Cancelled):
            outcomes["skipped"] += 1
        elif isinstance(value, WiremeshError):
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    if caller.metrics is not None:
        caller.metrics.multicast(where.service, where.method, str(mode), outcomes)
    if span is not None:
        for outcome, count in outcomes.items():
            span.set(f"wiremesh.multicast.{outcome}", count)
        span.end("ok" if result.satisfied else "deadline_exceeded")
    return result


def _choose(
    snapshot: MeshSnapshot,
    where: Target,
    group: str | None,
    node_ids: Sequence[str] | None,
) -> tuple[MethodInfo, list[NodeInfo], dict[str, WiremeshError]]:
    """The method, the nodes to call, and the nodes asked for that cannot be called (with
    the error for their slot); raises when the target itself is wrong."""
    service = where.service
    if service not in snapshot.services:
        raise ServiceNotFound(f"no service {service!r} in the mesh")
    serving = snapshot.serving(service)
    if node_ids is None and group is None and not serving:
        raise Unavailable(f"no live node of service {service!r}")
    info = snapshot.method(service, where.method)
    if info is None and snapshot.by_service.get(service):
        known = sorted({m for n in snapshot.by_service[service] for m in n.methods})
        raise MethodNotFound(
            f"service {service!r} has no method {where.method!r} "
            f"(methods: {', '.join(known) or 'none'})"
        )
    refused: dict[str, WiremeshError] = {}
    if node_ids is not None:
        chosen: list[NodeInfo] = []
        for node_id in dict.fromkeys(node_ids):
            node = snapshot.by_id.get(node_id)
            if node is None or node.service != service:
                refused[node_id] = NodeNotFound(
                    f"no node {node_id!r} of service {service!r} in the mesh", node=node_id
                )
            elif not node.serving:
                refused[node_id] = Unavailable(f"node {node_id} is draining", node=node_id)
            else:
                chosen.append(node)
    elif group is not None:
        chosen = [n for n in serving if group in n.groups]
    else:
        chosen = list(serving)
    # a service seen once but without a live node now: nothing to check the method against
    return info or MethodInfo(where.method), chosen, refused


async def _over_links(
    caller: MulticastCaller,
    where: Target,
    chosen: list[NodeInfo],
    gather: Gather,
    body: bytes,
    at: float,
    codec: CodecName,
    metadata: dict[str, str] | None,
    trace_context: tuple[bytes, str],
    outcome: Callable[[str, bytes], Any],
) -> MulticastResult:
    """One CALL frame per node on its link (with ``trace_context``: the frames' ``trace``
    and ``tracestate``); done-callbacks feed ``gather``."""
    trace, tracestate = trace_context
    links = caller.links
    assert links is not None
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    balancer = caller.balancer(where.service)
    out: dict[str, tuple[Link, int]] = {}  # node id -> the link and call id still out

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    def answered(node_id: str, future: asyncio.Future[Any]) -> None:
        balancer.finished(node_id)
        # retrieved even when late: no "exception was never retrieved" noise
        error = None if future.cancelled() else future.exception()
        if node_id not in out:
            return  # the multicast is over: this is its own cancel coming back
        if future.cancelled():
            result: Any = Cancelled("the call was cancelled", node=node_id)
        elif error is not None:
            if isinstance(error, DeadlineExceeded):
                # the link's own timer: the deadline passed with no answer from the node,
                # which the result says as such (a node's own DeadlineExceeded is a reply)
                wake()
                return
            result = _as_error(error, node_id)
        else:
            reply = future.result()
            result = (
                error_of(reply, node_id) if reply.kind == ERROR else outcome(node_id, reply.payload)
            )
        del out[node_id]
        if gather.add(node_id, result):
            wake()

    timeout_ms = max(1, int((at - time.monotonic()) * 1000))
    codec_name = "" if codec == "msgpack" else codec
    identity = caller.identity or ""
    for node in chosen:
        node_id = node.node_id
        frame = CallFrame(
            kind=CALL,
            service=where.service,
            method=where.method,
            payload=body,
            timeout_ms=timeout_ms,
            codec=codec_name,
            caller=identity,
            metadata=metadata,
            trace=trace,
            tracestate=tracestate,
        )
        try:
            link = links.to(node)
            if _full(link):
                # a peer that does not read its link costs its own slot, not the others'
                raise Unavailable(f"the link to {node_id} is full: the node is not keeping up")
            future = link.start_call(frame, at)
        except WiremeshError as exc:
            gather.add(node_id, _tagged(exc, node_id))
            continue
        out[node_id] = (link, frame.id)
        balancer.started(node_id)
        future.add_done_callback(functools.partial(answered, node_id))

    timer = loop.call_at(at, wake)
    try:
        if not gather.done:
            await woken
    except asyncio.CancelledError:
        _cancel_links(out)
        raise
    finally:
        timer.cancel()
    result = gather.result(deadline_passed=not gather.done)
    _cancel_links(out)
    return result


def _cancel_links(out: dict[str, tuple[Link, int]]) -> None:
    calls = list(out.values())
    out.clear()  # the callbacks that follow know the multicast is over
    for link, call_id in calls:
        link.cancel(call_id)


def _full(link: Link) -> bool:
    """Whether ``link``'s queue of frames to write is at its bound."""
    return link.full


async def _over_unary(
    caller: MulticastCaller,
    where: Target,
    chosen: list[NodeInfo],
    gather: Gather,
    body: bytes,
    at: float,
    codec: CodecName,
    metadata: Mapping[str, str] | None,
    outcome: Callable[[str, bytes], Any],
) -> MulticastResult:
    """One unary gRPC call per node, each in a task (no links to share)."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    wire_metadata = caller.wire_metadata(codec, metadata)
    path = method_path(where.service, where.method)
    balancer = caller.balancer(where.service)
    tasks: dict[str, asyncio.Task[Any]] = {}

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    async def one(node: NodeInfo) -> Any:
        remaining = at - time.monotonic()
        if remaining <= 0:
            return _LATE
        stub = caller.unary_stub(node.address, path, at)
        balancer.started(node.node_id)
        try:
            response: bytes = await stub(body, timeout=remaining, metadata=wire_metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and not raised_by_handler(exc):
                return _LATE  # gRPC's own deadline: no answer in time, as the result says
            return error_from_rpc_error(exc, node=node.node_id)
        finally:
            balancer.finished(node.node_id)
        return outcome(node.node_id, response)

    def answered(node_id: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved even when late: no "never retrieved" noise
        if tasks.pop(node_id, None) is None:
            return
        result = _as_error(error, node_id) if error is not None else task.result()
        if result is _LATE:
            return  # the timer wakes the multicast at the deadline
        if gather.add(node_id, result):
            wake()

    for node in chosen:
        task = loop.create_task(one(node), name=f"wiremesh-multicast-{node.node_id}")
        tasks[node.node_id] = task
        task.add_done_callback(functools.partial(answered, node.node_id))

    timer = loop.call_at(at, wake)
    try:
        await woken
    finally:
        timer.cancel()
        result = gather.result(deadline_passed=not gather.done)
        left = list(tasks.values())
        tasks.clear()
        for task in left:
            task.cancel()
    return result


#: what a unary call that ran out of time returns, instead of an answer
_LATE: Any = object()


def _as_error(error: BaseException, node_id: str) -> WiremeshError:
    if isinstance(error, WiremeshError):
        return _tagged(error, node_id)
    return Unavailable(f"the call failed: {error!r}", node=node_id)


def _tagged(error: WiremeshError, node_id: str) -> WiremeshError:
    if error.node is None:
        error.node = node_id
    return error

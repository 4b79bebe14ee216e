"""Making calls: choose a node, send, translate the outcome, retry when allowed.

:class:`Caller` is what ``ctx.call`` and ``wiremesh.connect()`` use. It reads the mesh
from a :class:`~wiremesh.registry.MeshView` (no registry round trip per call), keeps one
gRPC channel per node address, and closes a channel when its node leaves the mesh.

Per call it does only what a call needs: the parsed target, the route to a service (its
serving nodes, whether the method is idempotent, its balancer and gRPC path) and the wire
metadata are cached, the route per mesh snapshot, so that a call is a pick, an encode,
the gRPC call and a decode.

Over links, the balancer leaves out the nodes found silent from here (ejected; see
:mod:`wiremesh.core.ejection`), though the registry still lists them, unless every
candidate is; a call to a named node goes to it regardless. An attempt that may go to
another node is sent *abandonable*: should its peer fall silent, its link gives it up
within ``unreachable_after`` and the call is retried elsewhere, within its deadline.

A call made inside a handler carries the age of the handler's work (``wm-work-age``, see
:mod:`wiremesh.core.drain`). When no node of a service serves, such a call still goes to
the draining ones: a draining node takes the calls of work that was in flight before it
drained; any other call gets :class:`Unavailable` at once, as when no node runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from wiremesh.core.balancing import Balancer, BalancerName, make_balancer
from wiremesh.core.breaker import Breakers, BreakerSettings, counts_as_failure
from wiremesh.core.codec import CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import BALANCER, CALL_TIMEOUT, MAX_MESSAGE_BYTES
from wiremesh.core.drain import work_age, work_began
from wiremesh.core.gather import Mode, MulticastResult
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.core.names import Target, method_path, parse_target
from wiremesh.core.retry import MAX_ATTEMPTS, should_retry
from wiremesh.core.shape import Shape, is_protobuf_type
from wiremesh.errors import (
    DeadlineExceeded,
    MethodNotFound,
    NodeNotFound,
    Overloaded,
    ServiceNotFound,
    Unavailable,
    WiremeshError,
)
from wiremesh.observability import tracing
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.proto.link_pb2 import Frame as CallFrame
from wiremesh.registry.view import MeshView
from wiremesh.transport.grpc_core import KEEPALIVE, OWN_SUBCHANNELS
from wiremesh.transport.link import CALL, ERROR, error_of
from wiremesh.transport.multicast import multicast
from wiremesh.transport.peer_links import Links
from wiremesh.transport.streams import Opened, Stream, check_items
from wiremesh.transport.tls import open_channel
from wiremesh.transport.wire import (
    BATCH_KEY,
    CALLER_KEY,
    CODEC_KEY,
    WORK_AGE_KEY,
    custom_metadata,
    error_from_rpc_error,
    raised_by_handler,
)

__all__ = ["Caller", "channel_options"]

log = logging.getLogger("wiremesh.calls")

_Stub = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
#: no node left out (no circuit is open)
_NONE: frozenset[str] = frozenset()
_CACHE_LIMIT = 4096


class _Failed(Exception):
    """One attempt failed with ``error``; ``answered``: a handler ran and raised it (never
    retried); ``refused``: the node refused the call before running it (may go elsewhere)."""

    def __init__(
        self, error: WiremeshError, *, answered: bool = False, refused: bool = False
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.answered = answered
        self.refused = refused


class _Route:
    """How to reach one target in one snapshot: its candidate nodes, whether its method is
    idempotent, the service's balancer and the gRPC path. ``draining``: no candidate
    serves, they all drain (only the calls of work in flight go to them)."""

    __slots__ = (
        "balancer",
        "draining",
        "idempotent",
        "nodes",
        "path",
        "proto_reply",
        "streaming",
    )

    def __init__(
        self,
        nodes: tuple[NodeInfo, ...],
        idempotent: bool,
        balancer: Balancer,
        path: str,
        proto_reply: bool,
        draining: bool = False,
        streaming: str = "",
    ) -> None:
        self.nodes = nodes
        self.idempotent = idempotent
        self.balancer = balancer
        self.path = path
        self.proto_reply = proto_reply
        self.draining = draining
        #: the method's stream kind (``server``, ``client``, ``bidi``), empty when unary
        self.streaming = streaming


#: one attempt: ``send(node, route, remaining, abandonable)``, raising :class:`_Failed`
_Attempt = Callable[[NodeInfo, _Route, float, bool], Awaitable[bytes]]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 0),
        *KEEPALIVE,
        OWN_SUBCHANNELS,
    ]


class Caller:
    """Calls methods of the services in one mesh.

    Besides :meth:`call`, :meth:`multicast` and :meth:`publish`, it offers what a multicast
    sends with (:class:`~wiremesh.transport.multicast.MulticastCaller`): its balancers,
    its unary stubs, its wire metadata and its decoding of replies.
    """

    def __init__(
        self,
        view: MeshView,
        *,
        identity: str | None = None,
        default_timeout: float = CALL_TIMEOUT,
        balancer: BalancerName = BALANCER,
        balancers: Mapping[str, BalancerName] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        links: Links | None = None,
        metrics: MeshMetrics | None = None,
        breaker: BreakerSettings | None = None,
        breakers: Mapping[str, BreakerSettings] | None = None,
    ) -> None:
        self.view = view
        #: this caller's circuits to the nodes it calls (``breaker``: the settings for
        #: every service, ``breakers``: a service's own); see :mod:`..core.breaker`
        self.breakers = Breakers(breaker, dict(breakers or {}))
        #: where the calls made from here are counted (None: not counted)
        self.metrics = metrics
        #: mesh links to call over; None: one unary gRPC call per call
        self.links = links
        self.identity = identity
        self.default_timeout = default_timeout
        self._balancer_name: BalancerName = balancer
        self._balancer_names = dict(balancers or {})
        self._balancers: dict[str, Balancer] = {}
        self._options = channel_options(max_message_bytes)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        #: per node address, the latest deadline of a call sent there (monotonic seconds)
        self._latest_deadline: dict[str, float] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._stubs: dict[tuple[str, str], _Stub] = {}
        self._targets: dict[str | tuple[str, str], Target] = {}
        # by id() of a Target from _targets; the entry holds the Target, so the id is its own
        self._routes: dict[int, tuple[Target, _Route]] = {}
        self._routes_of: MeshSnapshot | None = None
        self._protobuf_types: dict[type, bool] = {}
        self._returns: dict[Any, Shape] = {}
        self._metadata: dict[str, tuple[tuple[str, str], ...] | None] = {}
        self._publisher: Any = None
        #: the nodes left out because they were found silent (see Links.ejections)
        self._ejected: Mapping[str, object] = {} if links is None else links.ejections.ejected
        if links is not None and links.locate is None:
            links.locate = self._locate
        view.on_change(self._forget_gone_nodes)

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
    ) -> Any:
        """Call ``target`` (``service.method`` or ``service@node-id.method``) and return its
        result, validated into ``returns`` when given. Raises a :class:`WiremeshError`."""
        where = self._targets.get(target) if node is None else None
        if where is None:
            where = self._target(target, node)
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"timeout must be positive, got {timeout:g}s for {target}")
        # the deadline as a point on time.monotonic(): no Deadline object on the hot path
        if deadline is None:
            at = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        else:
            at = deadline.at
            if timeout is not None:
                at = min(at, time.monotonic() + timeout)
        kind = type(payload)
        protobuf = self._protobuf_types.get(kind)
        if protobuf is None:
            protobuf = is_protobuf_type(kind)
            if len(self._protobuf_types) < _CACHE_LIMIT:
                self._protobuf_types[kind] = protobuf
        if protobuf:
            codec = "proto"
        body = encode(payload, codec)
        span = None
        if tracing.enabled():
            span = tracing.client_span(
                f"{where.service}.{where.method}", node=where.node, size=len(body)
            )
        # a call made inside a handler belongs to its work: it carries the work's age
        began = work_began()
        age = None if began is None else work_age(began, time.monotonic())
        if self.links is not None:
            extra = dict(custom_metadata(metadata)) if metadata else None
            if age is not None:
                extra = {**extra, WORK_AGE_KEY: age} if extra else {WORK_AGE_KEY: age}
            send = self._link_send(where, body, at, codec, extra, span)
        else:
            if metadata or codec not in self._metadata:
                wire_metadata = self.wire_metadata(codec, metadata)
            else:
                wire_metadata = self._metadata[codec]
            if span is not None:
                wire_metadata = (*(wire_metadata or ()), *span.carrier.items())
            if age is not None:
                wire_metadata = (*(wire_metadata or ()), (WORK_AGE_KEY, age))
            send = self._unary_send(where, body, at, wire_metadata)
        if span is None and self.metrics is None:
            response, route = await self._send(where, at, send)
        else:
            response, route = await self._observed(where, at, send, span)
        # the answer's codec: protobuf for a method that returns a message, else the
        # request's (msgpack when the request itself was a protobuf message)
        if route.proto_reply:
            reply_codec: CodecName = "proto"
        else:
            reply_codec = "msgpack" if codec == "proto" else codec
        if returns is None:
            return decode(response, reply_codec)
        return self.decode_result(response, reply_codec, returns)

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
    ) -> MulticastResult:
        """Call ``service.method`` on many nodes at once: every serving node of the service,
        those in ``group``, or the node ids in ``nodes``; gather the replies by ``mode``
        (``all``, ``first``, ``quorum(n)``) until the deadline. See :mod:`.multicast`."""
        return await multicast(
            self,
            target,
            payload,
            mode=mode,
            timeout=timeout,
            deadline=deadline,
            group=group,
            nodes=nodes,
            codec=codec,
            returns=returns,
            metadata=metadata,
        )

    async def publish(
        self, topic: str, payload: Any = None, *, codec: CodecName = "msgpack"
    ) -> int:
        """Send ``payload`` at most once to every node subscribed to ``topic``; returns how
        many nodes it was queued for. See :mod:`.publish`."""
        publisher = self._publisher
        if publisher is None:
            from wiremesh.transport.publish import publisher_of

            publisher = self._publisher = publisher_of(self)
        queued: int = publisher.publish(topic, payload, codec)
        return queued

    async def _observed(
        self,
        where: Target,
        at: float,
        send: _Attempt,
        span: tracing.Span | None,
    ) -> tuple[bytes, _Route]:
        """:meth:`_send`, counted in :attr:`metrics` and closing ``span``."""
        started = time.perf_counter()
        status = "ok"
        try:
            response, route = await self._send(where, at, send)
        except WiremeshError as exc:
            status = exc.status.value
            raise
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.made(where.service, where.method).observe(
                    status, time.perf_counter() - started
                )
            if span is not None:
                span.end(status)
        return response, route

    async def _send(self, where: Target, at: float, send: _Attempt) -> tuple[bytes, _Route]:
        """Choose a node for ``where`` and ``send`` to it before ``at`` (on
        ``time.monotonic()``), trying another node when the rules of :mod:`..core.retry`
        allow; the answer and the route it took. ``send(node, route, remaining,
        abandonable)`` raises :class:`_Failed` to say what happened; ``abandonable``: the
        attempt may be given up for another node should its peer fall silent."""
        monotonic = time.monotonic
        ejected = self._ejected
        attempt = 0
        tried: set[str] = set()
        while True:
            attempt += 1
            remaining = at - monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"the deadline passed before {where} was sent")
            route = self._route(self.view.snapshot, where)
            if route.streaming:
                raise MethodNotFound(
                    f"{where.service}.{where.method} is a streaming method "
                    f"({route.streaming}): use stream(), not call()"
                )
            if route.draining and work_began() is None:
                # a draining node takes only the calls of work in flight: this one is new
                if where.node is not None:
                    raise Unavailable(f"node {where.node} is draining", node=where.node)
                raise Unavailable(f"no live node of service {where.service!r}")
            balancer = route.balancer
            breakers = self.breakers
            left_out: set[str] | frozenset[str]
            if breakers.circuits:  # (no clock read on the call path while none is kept)
                now = monotonic()
                left_out = breakers.left_out(where.service, now)
            else:
                now, left_out = 0.0, _NONE
            if where.node is not None and where.node in left_out:
                raise Unavailable(
                    f"the circuit to node {where.node} is open: its calls kept failing "
                    "(circuit breaker)",
                    node=where.node,
                    details={"retry_after": breakers.reopens_in(where.service, now, where.node)},
                )
            skip = tried.union(left_out) if left_out else tried
            if ejected and where.node is None:
                # leave out the nodes found silent, unless that leaves nobody
                node = balancer.pick(route.nodes, skip.union(ejected))
                if node is None:
                    node = balancer.pick(route.nodes, skip)
            else:
                node = balancer.pick(route.nodes, skip)
            if (
                node is not None
                and left_out is not _NONE
                and not breakers.allows(where.service, node.node_id, now)
            ):
                node = None  # a half-open circuit whose probe another call took
            if node is None:
                if left_out and not tried:
                    raise Unavailable(
                        f"the circuit to every node of service {where.service!r} is open: "
                        "their calls kept failing (circuit breaker)",
                        details={"retry_after": breakers.reopens_in(where.service, now)},
                    )
                raise Unavailable(f"every node of service {where.service!r} failed")
            # the same rule as should_retry's, for an Unavailable on this attempt
            abandonable = (
                route.idempotent
                and where.node is None
                and attempt < MAX_ATTEMPTS
                and len(route.nodes) - len(tried) > 1
            )
            balancer.started(node.node_id)
            recorded = False
            try:
                answer = await send(node, route, remaining, abandonable)
                if breakers.circuits:
                    recorded = True
                    breakers.record(where.service, node.node_id, False, monotonic())
                return answer, route
            except _Failed as failed:
                tried.add(node.node_id)
                status = failed.error.status
                recorded = True
                if breakers.record(
                    where.service,
                    node.node_id,
                    counts_as_failure(status, refused=failed.refused),
                    monotonic(),
                ):
                    log.warning(
                        "the circuit to node %s of %s opened: its calls kept failing",
                        node.node_id,
                        where.service,
                    )
                if not should_retry(
                    status,
                    # a handler's own error is final; a call refused unrun may go elsewhere
                    idempotent=((route.idempotent and not failed.answered) or failed.refused)
                    and where.node is None,
                    attempt=attempt,
                    remaining=at - monotonic(),
                    nodes_left=len(route.nodes) - len(tried),
                ):
                    raise failed.error from None
            finally:
                balancer.finished(node.node_id)
                if not recorded and breakers.circuits:  # cancelled: a probe never ended
                    breakers.release(where.service, node.node_id)

    def _unary_send(
        self, where: Target, body: bytes, at: float, metadata: tuple[tuple[str, str], ...] | None
    ) -> _Attempt:
        """One attempt as a unary gRPC call (when this caller has no links); gRPC's
        keepalive, not a link's watch, finds a silent peer here."""

        async def send(node: NodeInfo, route: _Route, remaining: float, abandonable: bool) -> bytes:
            stub = self.unary_stub(node.address, route.path, at)
            try:
                response: bytes = await stub(body, timeout=remaining, metadata=metadata)
                return response
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc_error(exc, node=node.node_id)
                if isinstance(error, Overloaded):  # refused unrun: may go elsewhere
                    raise _Failed(error, refused=True) from None
                raise _Failed(error, answered=raised_by_handler(exc)) from None

        return send

    def _link_send(
        self,
        where: Target,
        body: bytes,
        at: float,
        codec: CodecName,
        metadata: Mapping[str, str] | None,
        span: tracing.Span | None = None,
    ) -> _Attempt:
        """One attempt over the mesh link to the node (with ``span``'s trace context)."""
        links = self.links
        assert links is not None
        trace, tracestate = tracing.frame_context(span)

        async def send(node: NodeInfo, route: _Route, remaining: float, abandonable: bool) -> bytes:
            frame = CallFrame(
                kind=CALL,
                service=where.service,
                method=where.method,
                payload=body,
                timeout_ms=max(1, int(remaining * 1000)),
                codec="" if codec == "msgpack" else codec,
                caller=self.identity or "",
                metadata=metadata,
                trace=trace,
                tracestate=tracestate,
            )
            try:
                reply = await links.to(node).call(frame, at, abandonable=abandonable)
            except WiremeshError as error:  # the link closed or gave up, or the deadline
                raise _Failed(error) from None
            if reply.kind == ERROR:
                refused = reply.not_run
                raise _Failed(error_of(reply, node.node_id), answered=not refused, refused=refused)
            payload: bytes = reply.payload
            return payload

        return send

    def _route(self, snapshot: MeshSnapshot, where: Target) -> _Route:
        """The route to ``where`` in ``snapshot``, cached until the snapshot changes."""
        if snapshot is not self._routes_of:
            self._routes = {}
            self._routes_of = snapshot
        entry = self._routes.get(id(where))
        if entry is not None and entry[0] is where:
            return entry[1]
        route = self._new_route(snapshot, where)
        if len(self._routes) < _CACHE_LIMIT:
            self._routes[id(where)] = (where, route)
        return route

    def _new_route(self, snapshot: MeshSnapshot, where: Target) -> _Route:
        """The candidate nodes for ``where``, or the error that says why there are none."""
        service = where.service
        if where.node is not None:
            node = snapshot.by_id.get(where.node)
            if node is None or node.service != service:
                raise NodeNotFound(f"no node {where.node!r} of service {service!r} in the mesh")
            draining = not node.serving
            nodes: tuple[NodeInfo, ...] = (node,)
        else:
            nodes = snapshot.serving(service)
            draining = not nodes
            if draining:
                # none serves: the draining ones still take the calls of work in flight
                nodes = snapshot.by_service.get(service, ())
            if not nodes:
                if service in snapshot.services:
                    raise Unavailable(f"no live node of service {service!r}")
                raise ServiceNotFound(f"no service {service!r} in the mesh")
        info = nodes[0].methods.get(where.method)
        if info is None:
            known = ", ".join(sorted(nodes[0].methods)) or "none"
            raise MethodNotFound(
                f"service {service!r} has no method {where.method!r} (methods: {known})"
            )
        path = method_path(service, where.method)
        return _Route(
            nodes,
            info.idempotent,
            self.balancer(service),
            path,
            info.returns_protobuf,
            draining,
            info.streaming,
        )

    def decode_result(self, response: bytes | memoryview, codec: CodecName, returns: Any) -> Any:
        """A reply's payload decoded with ``codec`` and validated into ``returns`` (the plain
        decoded value when ``returns`` is None); raises
        :class:`~wiremesh.errors.InvalidPayload`."""
        if returns is None:
            return decode(response, codec)
        shape = self._returns.get(returns)
        if shape is None:
            shape = self._returns[returns] = Shape(returns, "result")
        if shape.is_protobuf:
            return shape.validate(bytes(response))
        return shape.validate(decode(response, codec))

    def _target(self, target: str, node: str | None) -> Target:
        key: str | tuple[str, str] = target if node is None else (target, node)
        parsed = self._targets.get(key)
        if parsed is None:
            parsed = parse_target(target, node=node)
            if len(self._targets) < _CACHE_LIMIT:
                self._targets[key] = parsed
        return parsed

    def wire_metadata(
        self, codec: CodecName, extra: Mapping[str, str] | None
    ) -> tuple[tuple[str, str], ...] | None:
        """The gRPC metadata of a unary call sent from here with ``codec`` and the caller's
        custom ``extra`` keys (checked: :func:`~.wire.custom_metadata`); None when empty."""
        if extra:
            pairs = custom_metadata(extra)
            return (*(self.wire_metadata(codec, None) or ()), *pairs)
        if codec in self._metadata:
            return self._metadata[codec]
        base: list[tuple[str, str]] = []
        if codec != "msgpack":
            base.append((CODEC_KEY, codec))
        if self.identity:
            base.append((CALLER_KEY, self.identity))
        result = tuple(base) or None
        self._metadata[codec] = result
        return result

    def balancer(self, service: str) -> Balancer:
        """The balancer of ``service``'s nodes, one per service, shared by the calls and
        the multicasts made here (it counts the calls each node has out)."""
        balancer = self._balancers.get(service)
        if balancer is None:
            name = self._balancer_names.get(service, self._balancer_name)
            balancer = self._balancers[service] = make_balancer(name)
        return balancer

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
    ) -> Stream:
        """A streaming call of ``target``, to iterate (see :class:`~.streams.Stream`):
        ``payload`` is the request of a server-streaming method, the items (an iterable or
        async iterable) of a client-streaming or bidirectional one; each item that comes
        back is validated into ``returns`` when given. The deadline (``timeout``, or the
        caller's ``deadline``) covers the whole stream."""
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"timeout must be positive, got {timeout:g}s for {target}")
        if deadline is None:
            at = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        else:
            at = deadline.at if timeout is None else min(deadline.at, time.monotonic() + timeout)
        return Stream(
            lambda: self._open_stream(target, node, payload, at, codec, metadata),
            self.decode_result,
            target,
            payload,
            at=at,
            returns=returns,
            codec=codec,
        )

    def _open_stream(
        self,
        target: str,
        node_id: str | None,
        payload: Any,
        at: float,
        codec: CodecName,
        metadata: Mapping[str, str] | None,
    ) -> Opened:
        """Start the streaming call of ``target`` on a node the balancer picks (leaving out
        the nodes whose circuit is open); a stream is not retried elsewhere once sent."""
        where = self._target(target, node_id)
        remaining = at - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline passed before {where} was sent")
        route = self._route(self.view.snapshot, where)
        kind = route.streaming
        if route.draining and work_began() is None:
            # a draining node takes only the work in flight: a new stream is not
            raise Unavailable(f"no live node of service {where.service!r}")
        if not kind:
            raise MethodNotFound(
                f"{where.service}.{where.method} is not a streaming method: call it"
            )
        if kind != "server":
            check_items(target, payload)
        breakers = self.breakers
        skip = breakers.left_out(where.service, time.monotonic()) if breakers.circuits else _NONE
        node = route.balancer.pick(route.nodes, skip)
        if node is None:
            raise Unavailable(f"no live node of service {where.service!r} takes streams now")
        if route.proto_reply:
            reply_codec: CodecName = "proto"
        else:
            reply_codec = "msgpack" if codec == "proto" else codec
        wire = [*(self.wire_metadata(codec, metadata) or ()), (BATCH_KEY, "1")]
        began = work_began()
        if began is not None:
            wire.append((WORK_AGE_KEY, work_age(began, time.monotonic())))
        channel = self.channel_to(node.address, at)
        if kind == "server":
            call: Any = channel.unary_stream(route.path, None, None)(
                encode(payload, codec), timeout=remaining, metadata=wire
            )
        else:
            method = channel.stream_unary if kind == "client" else channel.stream_stream
            # no iterator: the stream's task writes the items itself (call.write)
            call = method(route.path, None, None)(None, timeout=remaining, metadata=wire)
        balancer = route.balancer
        balancer.started(node.node_id)
        return Opened(
            call, kind, reply_codec, node.node_id, lambda: balancer.finished(node.node_id)
        )

    def channel_to(self, address: str, at: float) -> grpc.aio.Channel:
        """The gRPC channel to the node at ``address``, for a call that may run until
        ``at`` (on ``time.monotonic()``): when the node leaves the mesh, its channel
        closes only once the latest such deadline has passed."""
        if at > self._latest_deadline.get(address, 0.0):
            self._latest_deadline[address] = at
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(
                address, self._credentials, self._options
            )
        return channel

    def unary_stub(self, address: str, path: str, at: float) -> _Stub:
        """The stub of the gRPC method ``path`` at ``address``, for a unary call that may
        run until ``at`` (on ``time.monotonic()``): when that node leaves the mesh, its
        channel closes only once the latest such deadline has passed."""
        stub = self._stub(address, path)
        if at > self._latest_deadline.get(address, 0.0):
            self._latest_deadline[address] = at
        return stub

    def _stub(self, address: str, path: str) -> _Stub:
        stub = self._stubs.get((address, path))
        if stub is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = open_channel(
                    address, self._credentials, self._options
                )
            stub = self._stubs[(address, path)] = channel.unary_unary(path, None, None)
        return stub

    def _locate(self, node_id: str) -> NodeInfo | None:
        """The node's record in the mesh as this caller sees it now."""
        return self.view.snapshot.by_id.get(node_id)

    def _forget_gone_nodes(self, old: MeshSnapshot, new: MeshSnapshot) -> None:
        if self.breakers.circuits:
            self.breakers.forget({n.node_id for n in new.nodes})
        live = {n.address for n in new.nodes}
        for address in [a for a in self._channels if a not in live]:
            channel = self._channels.pop(address)
            for key in [k for k in self._stubs if k[0] == address]:
                del self._stubs[key]
            # no new call takes this channel; the ones in flight end by their deadline
            grace = max(0.0, self._latest_deadline.pop(address, 0.0) - time.monotonic())
            task = asyncio.get_running_loop().create_task(channel.close(grace=grace))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self.links is not None:
            for address in {n.address for n in old.nodes} - live:
                self.links.forget_address(address)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for channel in channels:
            await channel.close(None)

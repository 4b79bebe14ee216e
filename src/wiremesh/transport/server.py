"""A node's gRPC server: every ``@rpc`` method as a unary method (a streaming one as a
streaming method, see :mod:`.streams`), plus health, mesh links and whatever else the
node adds (the gateway stream).

Each method is served at ``/<service>/<method>`` with raw bytes in and out; the codec
named in ``wm-codec`` (msgpack by default) turns them into values. The handler runs in
the task grpc.aio gives the RPC: no extra task per call. When the caller's deadline
passes or it cancels, grpc.aio cancels that task, and so the handler.

The hot path, per call (grpc.aio itself costs far more; see ``benchmarks/rpc.py``):

- the request metadata is decoded once: grpc.aio decodes it to look the handler up, and
  :class:`_Methods` hands that tuple to the handler, instead of the handler paying
  ``context.invocation_metadata()`` for a second decoding.
- every handler, the health service's included, is a *generic* one: for each registered
  method (which the generated ``add_HealthServicer_to_server`` also installs) grpc.aio's
  server loop waits on one more pending future per incoming call, whatever its method.

Draining (:meth:`NodeServer.mark_draining`): the health service answers ``NOT_SERVING``
and ends its ``Watch`` streams (an open watch never holds the node); once the node's
:class:`~wiremesh.core.drain.Drain` has begun, a call of new work is refused, unrun, with
``UNAVAILABLE`` and no ``wm-error`` (an idempotent call may go to another node), and a call
of work already in flight runs (see :mod:`wiremesh.core.drain`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wiremesh.context import MeshCaller
from wiremesh.core.deadline import Deadline
from wiremesh.core.defaults import CALL_TIMEOUT, HOST, MAX_MESSAGE_BYTES
from wiremesh.core.drain import Drain, began_at
from wiremesh.errors import WiremeshError
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.service import Service, ServiceSpec
from wiremesh.transport.dispatch import Method, methods_of
from wiremesh.transport.grpc_core import KEEPALIVE
from wiremesh.transport.link import LINK_SERVICE
from wiremesh.transport.peer_links import Links, link_method_handler
from wiremesh.transport.streams import StreamMethod, stream_handler
from wiremesh.transport.wire import (
    BATCH_KEY,
    CALLER_KEY,
    CODEC_KEY,
    RESERVED_KEYS,
    RESERVED_PREFIXES,
    WORK_AGE_KEY,
    error_metadata,
    error_status_message,
    grpc_code,
)

__all__ = ["Health", "NodeServer", "server_options"]

log = logging.getLogger("wiremesh.node")

Metadata = Sequence[tuple[str, str | bytes]]
Handler = Callable[[Metadata, bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        # the node pings its peers too: the end of a link that a peer opened is closed
        # when the connection goes silent (grpc's default is every two hours)
        *KEEPALIVE,
        # a peer may ping every 5 s (and without calls); faster is a strike, and a few
        # strikes close its connection ("too_many_pings")
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


class NodeServer:
    """Serves one service instance over gRPC on ``host``; ``port`` is known after start.

    An entrypoint of the node (:class:`~wiremesh.transport.entrypoint.Entrypoint`): the
    unary calls, and the streams its other handlers serve (mesh links, gateways).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        service: Service,
        *,
        node_id: str,
        caller: MeshCaller,
        host: str = HOST,
        port: int = 0,
        default_timeout: float = CALL_TIMEOUT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ServerCredentials | None = None,
        links: Links | None = None,
        metrics: MeshMetrics | None = None,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
        drain: Drain | None = None,
    ) -> None:
        self.spec = spec
        self.service = service
        self.node_id = node_id
        self.caller = caller
        self.host = host
        self.port = port
        self.default_timeout = default_timeout
        self.credentials = credentials
        #: which calls the node takes while it drains (see :mod:`wiremesh.core.drain`)
        self.drain_rule = drain or Drain()
        self.health = Health()
        self.server = grpc.aio.server(options=server_options(max_message_bytes))
        self.methods = methods_of(spec, service, node_id, caller, metrics, self.drain_rule)
        handlers = {f"/{spec.name}/{name}": self._handler(m) for name, m in self.methods.items()}
        #: the streaming methods (:mod:`.streams`)
        self.streams = {
            f"/{spec.name}/{name}": StreamMethod(
                m, service, spec.name, node_id, caller, metrics, self.drain_rule, spec.middleware
            )
            for name, m in spec.methods.items()
            if m.stream is not None
        }
        health = _GenericOnly()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
        generic: list[grpc.GenericRpcHandler[Any, Any]] = [_Methods(handlers)]
        if self.streams:
            generic.append(_Streams(self))
        if links is not None:
            generic.append(
                grpc.method_handlers_generic_handler(
                    LINK_SERVICE, {"Open": link_method_handler(links)}
                )
            )
        generic.extend(extra_handlers)
        self.server.add_generic_rpc_handlers((*generic, *health.handlers()))

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        bind = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.credentials is None:
            self.port = self.server.add_insecure_port(bind)
        else:
            self.port = self.server.add_secure_port(bind, self.credentials)
        await self.server.start()
        self.health.set("", SERVING)
        self.health.set(self.spec.name, SERVING)

    def mark_draining(self) -> None:
        """The node drains: health says ``NOT_SERVING`` from now on, and its watches end."""
        self.health.end()

    async def drain(self, deadline: float) -> None:
        """Refuse new calls and streams, and let those in flight finish until ``deadline``
        (on ``time.monotonic()``) at most; then the server stops, cancelling the rest."""
        self.health.end()
        await self.server.stop(max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Stop the server now (once drained, it has stopped already)."""
        self.health.end()
        await self.server.stop(None)

    def _handler(self, method: Method) -> Handler:
        run = method.run
        default_timeout = self.default_timeout
        abort = self._abort
        drain = self.drain_rule
        refusal = f"node {self.node_id} is draining: it takes no new work"

        async def handle(
            metadata: Metadata, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            codec, caller, work_age, extra, _ = read_metadata(metadata)
            if drain.since is not None and not drain.admits(began_at(work_age, time.monotonic())):
                # unrun, and without wm-error: the caller may send it to another node
                await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)
            remaining = context.time_remaining()
            deadline = Deadline(
                time.monotonic() + (default_timeout if remaining is None else remaining)
            )
            try:
                # gRPC cancels the handler at the caller's deadline; with none, we do
                answer: bytes = await run(
                    request,
                    codec,
                    deadline,
                    caller=caller,
                    metadata=extra,
                    peer=context.peer(),
                    enforce_deadline=remaining is None,
                    work_age=work_age,
                )
                return answer
            except WiremeshError as exc:
                await abort(context, exc)
            raise AssertionError("unreachable")  # abort() always raises

        return handle

    async def _abort(
        self, context: grpc.aio.ServicerContext[bytes, bytes], exc: WiremeshError
    ) -> None:
        await context.abort(
            grpc_code(exc),
            error_status_message(exc),
            trailing_metadata=error_metadata(exc, self.node_id),
        )


def read_metadata(
    metadata: Metadata,
) -> tuple[str, str | None, str | None, dict[str, str | bytes] | None, bool]:
    """A request's metadata: its codec, calling node, work age, the custom keys for the
    handler (None when there are none) and whether a stream's messages are batches."""
    codec: str = "msgpack"
    caller: str | None = None
    work_age: str | None = None
    extra: dict[str, str | bytes] | None = None
    batch = False
    for key, value in metadata:
        if key in RESERVED_KEYS:  # user-agent on every call, accept-encoding from some
            continue
        if key == CODEC_KEY:
            codec = str(value)
        elif key == CALLER_KEY:
            caller = str(value)
        elif key == WORK_AGE_KEY:
            work_age = str(value)
        elif key == BATCH_KEY:
            batch = value == "1"
        elif not key.startswith(RESERVED_PREFIXES):
            if extra is None:
                extra = {}
            extra[key] = value
    return codec, caller, work_age, extra, batch


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The standard ``grpc.health.v1.Health`` service of a node.

    ``Check`` answers a service's status (``NOT_FOUND`` for one it does not know),
    ``List`` every status; ``Watch`` sends the status, then each change. Once the node
    drains (:meth:`end`) every status is ``NOT_SERVING`` for good and each ``Watch``
    stream, having sent it, ends (OK), as does any new one: a watcher learns that the node
    goes, and its stream does not hold the draining node until the end of its grace.
    """

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {
            "": SERVING
        }
        self._changed = asyncio.Event()
        self.ended = False

    def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        """Set the status of ``service`` (ignored once the node drains)."""
        if not self.ended:
            self._status[service] = status
            self._notify()

    def end(self) -> None:
        """Every status ``NOT_SERVING`` from now on, and the watches told so, then ended."""
        if self.ended:
            return
        self.ended = True
        self._status = dict.fromkeys(self._status, NOT_SERVING)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        sent: health_pb2.HealthCheckResponse.ServingStatus.ValueType | None = None
        while True:
            changed = self._changed
            status = self._status.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self.ended:
                return
            await changed.wait()


if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[bytes, bytes]
    _RpcMethodHandler = grpc.RpcMethodHandler[bytes, bytes]
else:  # not subscriptable at run time
    _GenericRpcHandler = grpc.GenericRpcHandler
    _RpcMethodHandler = grpc.RpcMethodHandler


class _Methods(_GenericRpcHandler):
    """A node's ``@rpc`` methods by path (``/<service>/<method>``), unary, raw bytes.

    grpc.aio decodes the request metadata to build the ``HandlerCallDetails`` it looks
    handlers up with; the handler gets that same tuple bound to it, so that it does not
    pay ``context.invocation_metadata()`` (a second decoding) on every call.
    """

    __slots__ = ("_handlers",)

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self._handlers = handlers

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        handle = self._handlers.get(handler_call_details.method)
        if handle is None:
            return None
        metadata: Metadata = handler_call_details.invocation_metadata or ()
        return _Unary(partial(handle, metadata))


class _Streams(_GenericRpcHandler):
    """A node's streaming methods by path: a handler per call, made with its metadata
    (codec, caller, work age, batching; refused unrun while the node drains, as a unary
    call of new work is)."""

    __slots__ = ("_server",)

    def __init__(self, server: NodeServer) -> None:
        self._server = server

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        server = self._server
        method = server.streams.get(handler_call_details.method)
        if method is None:
            return None
        metadata = handler_call_details.invocation_metadata or ()
        codec, caller, work_age, extra, batch = read_metadata(metadata)
        drain = server.drain_rule
        if drain.since is not None and not drain.admits(began_at(work_age, time.monotonic())):
            refusal = f"node {server.node_id} is draining: it takes no new work"

            async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)

            return stream_handler(method.kind, refuse)
        return method.handler(
            codec, caller, work_age, extra, batch, server.default_timeout, server._abort
        )


class _Unary(_RpcMethodHandler):
    """What ``grpc.unary_unary_rpc_method_handler(behaviour)`` makes (raw bytes in and out),
    made once per call here, without the import that function runs on every use."""

    __slots__ = ("unary_unary",)
    request_streaming = False
    response_streaming = False
    request_deserializer = None
    response_serializer = None
    unary_stream = None
    stream_unary = None
    stream_stream = None

    def __init__(self, behaviour: Callable[..., Awaitable[bytes]]) -> None:
        self.unary_unary = behaviour  # type: ignore[assignment]


class _GenericOnly:
    """Stands in for the server in a generated ``add_*Servicer_to_server`` and keeps its
    handlers as generic ones only (see the module docstring for why)."""

    def __init__(self) -> None:
        self._generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self._registered: list[grpc.GenericRpcHandler[Any, Any]] = []

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._registered.append(grpc.method_handlers_generic_handler(service, handlers))

    def handlers(self) -> tuple[grpc.GenericRpcHandler[Any, Any], ...]:
        # generated code adds the same methods both ways: the generic ones are enough
        return tuple(self._generic or self._registered)

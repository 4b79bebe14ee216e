"""A node's gRPC server: every ``@rpc`` method as a unary method, plus health, mesh links
and whatever else the node adds (the gateway stream).

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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from wiremesh.context import MeshCaller
from wiremesh.core.deadline import Deadline
from wiremesh.errors import WiremeshError
from wiremesh.observability.metrics import MeshMetrics
from wiremesh.service import Service, ServiceSpec
from wiremesh.transport.dispatch import Method, methods_of
from wiremesh.transport.link import LINK_SERVICE
from wiremesh.transport.links import Links, link_method_handler
from wiremesh.transport.wire import (
    CALLER_KEY,
    CODEC_KEY,
    RESERVED_KEYS,
    RESERVED_PREFIXES,
    error_metadata,
    error_status_message,
    grpc_code,
)

__all__ = ["NodeServer", "server_options"]

log = logging.getLogger("wiremesh.node")

Metadata = Sequence[tuple[str, str | bytes]]
Handler = Callable[[Metadata, bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


class NodeServer:
    """Serves one service instance over gRPC on ``host``; ``port`` is known after start."""

    def __init__(
        self,
        spec: ServiceSpec,
        service: Service,
        *,
        node_id: str,
        caller: MeshCaller,
        host: str = "127.0.0.1",
        port: int = 0,
        default_timeout: float = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        credentials: grpc.ServerCredentials | None = None,
        links: Links | None = None,
        metrics: MeshMetrics | None = None,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    ) -> None:
        self.spec = spec
        self.service = service
        self.node_id = node_id
        self.caller = caller
        self.host = host
        self.port = port
        self.default_timeout = default_timeout
        self.credentials = credentials
        self.health = HealthServicer()
        self.server = grpc.aio.server(options=server_options(max_message_bytes))
        self.methods = methods_of(spec, service, node_id, caller, metrics)
        handlers = {f"/{spec.name}/{name}": self._handler(m) for name, m in self.methods.items()}
        health = _GenericOnly()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
        generic: list[grpc.GenericRpcHandler[Any, Any]] = [_Methods(handlers)]
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
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(self.spec.name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace`` seconds, then stop."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    def _handler(self, method: Method) -> Handler:
        run = method.run
        default_timeout = self.default_timeout
        abort = self._abort

        async def handle(
            metadata: Metadata, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> bytes:
            codec: str = "msgpack"
            caller: str | None = None
            extra: dict[str, str | bytes] | None = None
            for key, value in metadata:
                if key in RESERVED_KEYS:  # user-agent, on every call
                    continue
                if key == CODEC_KEY:
                    codec = str(value)
                elif key == CALLER_KEY:
                    caller = str(value)
                elif not key.startswith(RESERVED_PREFIXES):
                    if extra is None:
                        extra = {}
                    extra[key] = value
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

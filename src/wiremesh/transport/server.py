"""A node's gRPC server: every ``@rpc`` method as a unary method, plus health.

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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from wiremesh.context import Context, MeshCaller, _current
from wiremesh.core.codec import CODECS, CodecName, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.errors import DeadlineExceeded, InternalError, InvalidPayload, WiremeshError
from wiremesh.service import MethodSpec, Service, ServiceSpec
from wiremesh.transport.wire import (
    CALLER_KEY,
    CODEC_KEY,
    RESERVED_KEYS,
    RESERVED_PREFIXES,
    error_metadata,
    error_status_message,
    exception_type_name,
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
        handlers = {f"/{spec.name}/{name}": self._handler(m) for name, m in spec.methods.items()}
        health = _GenericOnly()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
        self.server.add_generic_rpc_handlers((_Methods(handlers), *health.handlers()))

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

    def _handler(self, method: MethodSpec) -> Handler:
        func: Callable[..., Awaitable[Any]] = getattr(self.service, method.attribute)
        shapes = method.shapes
        service_name = self.spec.name
        method_name = method.name
        node_id = self.node_id
        caller_client = self.caller
        default_timeout = self.default_timeout
        takes_protobuf = shapes.takes_protobuf
        returns_protobuf = shapes.returns_protobuf

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
            ctx = Context(
                deadline=deadline,
                service=service_name,
                method=method_name,
                node_id=node_id,
                caller_client=caller_client,
                metadata=extra,
                caller=caller,
                peer=context.peer(),
            )
            token = _current.set(ctx)
            try:
                if codec not in CODECS:
                    raise InvalidPayload(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
                payload = request if takes_protobuf else decode(request, codec)
                args, kwargs = shapes.arguments(payload)
                if remaining is None:
                    # a foreign client sent no deadline: the node's default one applies
                    result = await _within(default_timeout, func(ctx, *args, **kwargs))
                else:
                    result = await func(ctx, *args, **kwargs)
                if returns_protobuf:
                    reply_codec: CodecName = "proto"
                else:
                    reply_codec = "msgpack" if codec == "proto" else codec
                try:
                    return encode(result, reply_codec)
                except InvalidPayload as exc:  # the handler ran: not the caller's fault
                    raise InternalError(
                        f"{service_name}.{method_name} returned what cannot travel: {exc.message}"
                    ) from None
            except WiremeshError as exc:
                await self._abort(context, exc)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                log.exception("%s.%s raised %s", service_name, method_name, type(exc).__name__)
                error = InternalError(str(exc), remote_type=exception_type_name(exc))
                await self._abort(context, error)
            finally:
                _current.reset(token)
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


async def _within(seconds: float, handler: Awaitable[Any]) -> Any:
    """Await ``handler``, cancelling it with :class:`DeadlineExceeded` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds) as scope:
            return await handler
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded(f"the node's default deadline of {seconds:g}s passed") from None
        raise


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

"""A node's gRPC server: every ``@rpc`` method as a unary method, plus health.

Each method is served at ``/<service>/<method>`` with raw bytes in and out; the codec
named in ``wm-codec`` (msgpack by default) turns them into values. The handler runs in
the task grpc.aio gives the RPC: no extra task per call. When the caller's deadline
passes or it cancels, grpc.aio cancels that task, and so the handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from wiremesh.context import Context, MeshCaller, _current
from wiremesh.core.codec import CODECS, decode, encode
from wiremesh.core.deadline import Deadline
from wiremesh.errors import InternalError, InvalidPayload, WiremeshError
from wiremesh.service import MethodSpec, Service, ServiceSpec
from wiremesh.transport.wire import (
    CALLER_KEY,
    CODEC_KEY,
    RESERVED_KEYS,
    RESERVED_PREFIXES,
    error_metadata,
    exception_type_name,
    grpc_code,
)

__all__ = ["NodeServer", "server_options"]

log = logging.getLogger("wiremesh.node")

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


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
        handlers = {name: self._method_handler(m) for name, m in spec.methods.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(spec.name, handlers),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

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

    def _method_handler(self, method: MethodSpec) -> grpc.RpcMethodHandler[bytes, bytes]:
        return grpc.unary_unary_rpc_method_handler(self._handler(method))

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

        async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            codec: str = "msgpack"
            caller: str | None = None
            extra: dict[str, str] | None = None
            for key, value in context.invocation_metadata() or ():
                if key == CODEC_KEY:
                    codec = str(value)
                elif key == CALLER_KEY:
                    caller = str(value)
                elif not key.startswith(RESERVED_PREFIXES) and key not in RESERVED_KEYS:
                    if extra is None:
                        extra = {}
                    extra[key] = value if isinstance(value, str) else repr(value)
            remaining = context.time_remaining()
            deadline = Deadline.after(default_timeout if remaining is None else remaining)
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
                result = await func(ctx, *args, **kwargs)
                return encode(result, "proto" if returns_protobuf else codec)
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
            exc.message or type(exc).__name__,
            trailing_metadata=error_metadata(exc, self.node_id),
        )

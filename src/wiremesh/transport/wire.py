"""What travels on the wire besides the payload: metadata keys and errors.

``docs/protocol.md`` is the reader's version of this module.
"""

from __future__ import annotations

import json
from typing import Any, cast

import grpc

from wiremesh.errors import (
    STATUS_TABLE,
    DeadlineExceeded,
    MethodNotFound,
    PayloadTooLarge,
    Status,
    Unavailable,
    WiremeshError,
    qualified_name,
    rebuild,
    status_for_grpc_code,
)

__all__ = [
    "CALLER_KEY",
    "CODEC_KEY",
    "ERROR_KEY",
    "error_from_rpc_error",
    "error_metadata",
    "exception_type_name",
]

#: request metadata: the payload codec (``msgpack`` when absent)
CODEC_KEY = "wm-codec"
#: request metadata: the calling node, ``service@node-id`` (absent for outside clients)
CALLER_KEY = "wm-caller"
#: trailing metadata of a failed call: the error as JSON
ERROR_KEY = "wm-error"

RESERVED_PREFIXES = ("wm-", "grpc-", ":")
RESERVED_KEYS = frozenset({"user-agent", "te", "content-type", "authority"})


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    if isinstance(exc, WiremeshError):
        return exc.type_name
    return cls.__qualname__ if cls.__module__ == "builtins" else qualified_name(cls)


def error_metadata(exc: WiremeshError, node_id: str) -> tuple[tuple[str, str], ...]:
    body: dict[str, Any] = {
        "type": exception_type_name(exc),
        "status": exc.status.value,
        "message": exc.message,
        "node": exc.node or node_id,
    }
    if exc.details:
        body["details"] = exc.details
    return ((ERROR_KEY, json.dumps(body, default=str, separators=(",", ":"))),)


def grpc_code(exc: WiremeshError) -> grpc.StatusCode:
    return STATUS_TABLE[exc.status].grpc_code


def error_from_rpc_error(error: grpc.aio.AioRpcError, *, node: str | None) -> WiremeshError:
    """Translate a failed gRPC call into the wiremesh error it stands for.

    A wiremesh node puts the error in the ``wm-error`` trailer and it is rebuilt exactly;
    otherwise the gRPC status code decides the class.
    """
    trailers = cast("tuple[tuple[str, str | bytes], ...]", error.trailing_metadata() or ())
    for key, value in trailers:
        if key == ERROR_KEY and isinstance(value, str):
            try:
                body = json.loads(value)
                status = Status(body["status"])
                return rebuild(
                    body.get("type"),
                    status,
                    str(body.get("message", "")),
                    node=body.get("node") or node,
                    details=body.get("details") if isinstance(body.get("details"), dict) else None,
                )
            except (ValueError, KeyError, TypeError):
                break  # a malformed trailer: fall back to the status code
    code = error.code()
    details = error.details() or code.name.lower()
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return MethodNotFound(details, node=node)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline exceeded", node=node)
    if code is grpc.StatusCode.UNAVAILABLE:
        return Unavailable(details, node=node)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PayloadTooLarge(details, node=node)
    return rebuild(None, status_for_grpc_code(code), details, node=node)

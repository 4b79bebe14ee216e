"""wiremesh: the communication fabric for Python microservices.

>>> from wiremesh import Service, Context, rpc
>>> class Greeter(Service):
...     name = "greeter"
...
...     @rpc(idempotent=True)
...     async def hello(self, ctx: Context, who: str) -> str:
...         return f"hello, {who}"
"""

from __future__ import annotations

# first, before anything imports grpc: grpc reads its settings when it is imported
from wiremesh.transport import grpc_core  # noqa: F401

# isort: split
from importlib.metadata import PackageNotFoundError, version

from wiremesh.client import MeshClient, connect
from wiremesh.context import Context, current_context
from wiremesh.core.deadline import Deadline
from wiremesh.core.gather import Mode, MulticastResult, quorum
from wiremesh.errors import (
    BrokerUnavailable,
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    InternalError,
    InvalidPayload,
    MethodNotFound,
    NodeNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceError,
    ServiceNotFound,
    Status,
    Unauthenticated,
    Unavailable,
    WiremeshError,
)
from wiremesh.service import (
    Service,
    ServiceProxy,
    command,
    on_event,
    on_socket,
    rpc,
    subscribe,
)
from wiremesh.session import Session, Sessions

try:
    __version__ = version("wiremesh")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "BrokerUnavailable",
    "Cancelled",
    "ConfigError",
    "Context",
    "Deadline",
    "DeadlineExceeded",
    "InternalError",
    "InvalidPayload",
    "MeshClient",
    "MethodNotFound",
    "Mode",
    "MulticastResult",
    "NodeNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "Service",
    "ServiceError",
    "ServiceNotFound",
    "ServiceProxy",
    "Session",
    "Sessions",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "WiremeshError",
    "__version__",
    "command",
    "connect",
    "current_context",
    "on_event",
    "on_socket",
    "quorum",
    "rpc",
    "subscribe",
]

"""wiremesh: the communication fabric for Python microservices.

>>> from wiremesh import Service, Context, rpc
>>> class Greeter(Service):
...     name = "greeter"
...
...     @rpc(idempotent=True)
...     async def hello(self, ctx: Context, who: str) -> str:
...         return f"hello, {who}"

Importing the package imports none of its modules: each name below is imported where it
lives when it is first used. So a program can import
:mod:`wiremesh.transport.grpc_core` and choose grpc's settings before grpc loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as type checkers see them; imported on first use below
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
        Overloaded,
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
    from wiremesh.middleware import Invocation, Middleware
    from wiremesh.service import (
        Service,
        ServiceProxy,
        command,
        cron,
        on_event,
        on_socket,
        rpc,
        subscribe,
        timer,
    )
    from wiremesh.session import Session, Sessions

if TYPE_CHECKING:
    __version__: str

#: the module each public name lives in
_HOMES: dict[str, tuple[str, ...]] = {
    "wiremesh.client": ("MeshClient", "connect"),
    "wiremesh.context": ("Context", "current_context"),
    "wiremesh.core.deadline": ("Deadline",),
    "wiremesh.core.gather": ("Mode", "MulticastResult", "quorum"),
    "wiremesh.errors": (
        "BrokerUnavailable",
        "Cancelled",
        "ConfigError",
        "DeadlineExceeded",
        "InternalError",
        "InvalidPayload",
        "MethodNotFound",
        "NodeNotFound",
        "NotFound",
        "Overloaded",
        "PayloadTooLarge",
        "PermissionDenied",
        "RateLimited",
        "ServiceError",
        "ServiceNotFound",
        "Status",
        "Unauthenticated",
        "Unavailable",
        "WiremeshError",
    ),
    "wiremesh.middleware": ("Invocation", "Middleware"),
    "wiremesh.service": (
        "Service",
        "ServiceProxy",
        "command",
        "cron",
        "on_event",
        "on_socket",
        "rpc",
        "subscribe",
        "timer",
    ),
    "wiremesh.session": ("Session", "Sessions"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "BrokerUnavailable",
    "Cancelled",
    "ConfigError",
    "Context",
    "Deadline",
    "DeadlineExceeded",
    "InternalError",
    "InvalidPayload",
    "Invocation",
    "MeshClient",
    "MethodNotFound",
    "Middleware",
    "Mode",
    "MulticastResult",
    "NodeNotFound",
    "NotFound",
    "Overloaded",
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
    "cron",
    "current_context",
    "on_event",
    "on_socket",
    "quorum",
    "rpc",
    "subscribe",
    "timer",
]

if not TYPE_CHECKING:  # hidden from type checkers, which would take any name for Any

    def __getattr__(name: str) -> Any:
        if name == "__version__":  # (importlib.metadata takes 50 ms to load: when asked)
            from importlib.metadata import PackageNotFoundError, version

            try:
                found = version("wiremesh")
            except PackageNotFoundError:  # running from a source tree that is not installed
                found = "0.0.0"
            globals()["__version__"] = found
            return found
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module 'wiremesh' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # found directly from now on
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})

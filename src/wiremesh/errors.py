"""Every error wiremesh raises, and how each one travels.

The tree::

    WiremeshError                  root of everything wiremesh raises
    ├── ConfigError                local: a configuration file or argument is wrong
    ├── InvalidPayload             a payload did not decode or validate (names the field)
    ├── NotFound
    │   ├── ServiceNotFound        no such service in the mesh
    │   ├── MethodNotFound         the service has no such method
    │   └── NodeNotFound           no such node id
    ├── DeadlineExceeded           the call's deadline passed
    ├── Cancelled                  the caller went away
    ├── Unavailable                no live node could take the call
    │   ├── BrokerUnavailable      the broker did not accept a message within its deadline
    │   └── Overloaded             a node refused the call unrun: its method was at its limit
    ├── PayloadTooLarge            a message went over the size limit
    ├── RateLimited                a rate limit refused the request
    ├── Unauthenticated            no or bad credentials
    ├── PermissionDenied           credentials valid, access refused
    ├── ServiceError               base class for a service's own domain errors
    └── InternalError              a handler raised something unexpected

Each class carries a :class:`Status`; the status maps to a gRPC code, an HTTP status and a
WebSocket close code in one table, :data:`STATUS_TABLE`, which ``docs/protocol.md``
reproduces. A remote error keeps the remote exception's type name (``remote_type``) and
message; a :class:`ServiceError` subclass known on the caller's side is rebuilt as itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "STATUS_TABLE",
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
    "StatusInfo",
    "Unauthenticated",
    "Unavailable",
    "WiremeshError",
    "error_class_for",
]


class Status(enum.Enum):
    """The statuses a wiremesh error can have; the value is its name on the wire."""

    INVALID_PAYLOAD = "invalid_payload"
    NOT_FOUND = "not_found"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    FAILED_PRECONDITION = "failed_precondition"
    INTERNAL = "internal"


@dataclass(frozen=True)
class StatusInfo:
    #: the name of its gRPC status code (``StatusCode[grpc_name]`` of grpcio): this module
    #: imports no gRPC, ``transport/wire.py`` maps it to the code at the transport's edge
    grpc_name: str
    http_status: int
    ws_close_code: int


#: One table for all three transports. WebSocket codes below 4000 are the RFC 6455 ones;
#: the gateway's own refusals after a WebSocket opened are 4001, 4003 and 4029 (see
#: :mod:`wiremesh.gateway.codes`), the other private codes 4000 + the HTTP status.
STATUS_TABLE: dict[Status, StatusInfo] = {
    Status.INVALID_PAYLOAD: StatusInfo("INVALID_ARGUMENT", 422, 4422),
    Status.NOT_FOUND: StatusInfo("NOT_FOUND", 404, 4404),
    Status.DEADLINE_EXCEEDED: StatusInfo("DEADLINE_EXCEEDED", 504, 4504),
    Status.CANCELLED: StatusInfo("CANCELLED", 499, 4499),
    Status.UNAVAILABLE: StatusInfo("UNAVAILABLE", 503, 1013),
    Status.PAYLOAD_TOO_LARGE: StatusInfo("RESOURCE_EXHAUSTED", 413, 1009),
    Status.RATE_LIMITED: StatusInfo("RESOURCE_EXHAUSTED", 429, 4029),
    Status.UNAUTHENTICATED: StatusInfo("UNAUTHENTICATED", 401, 4001),
    Status.PERMISSION_DENIED: StatusInfo("PERMISSION_DENIED", 403, 4003),
    Status.FAILED_PRECONDITION: StatusInfo("FAILED_PRECONDITION", 409, 4409),
    Status.INTERNAL: StatusInfo("INTERNAL", 500, 1011),
}


class WiremeshError(Exception):
    """Root of every error wiremesh raises.

    ``message`` is the human text; ``remote_type`` names the exception type that was raised
    on the remote side (``None`` for a local error); ``node`` is the node id that answered,
    when known; ``details`` holds structured, JSON-safe extras.
    """

    status: ClassVar[Status] = Status.INTERNAL

    def __init__(
        self,
        message: str = "",
        *,
        remote_type: str | None = None,
        node: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remote_type = remote_type
        self.node = node
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        text = self.message or self.__class__.__name__
        if self.remote_type and self.remote_type.rsplit(".", 1)[-1] != type(self).__name__:
            text = f"{self.remote_type}: {text}"
        if self.node:
            text = f"{text} (node {self.node})"
        return text

    @property
    def type_name(self) -> str:
        """The name this error travels under: the remote type if any, else our own."""
        return self.remote_type or qualified_name(type(self))


class ConfigError(WiremeshError):
    """A configuration file, a target or a command-line argument is wrong."""

    status = Status.INVALID_PAYLOAD


class InvalidPayload(WiremeshError):
    """A payload did not decode or did not validate; the message names the field."""

    status = Status.INVALID_PAYLOAD


class NotFound(WiremeshError):
    status = Status.NOT_FOUND


class ServiceNotFound(NotFound):
    """No node of this service has ever registered in the mesh."""


class MethodNotFound(NotFound):
    """The service exists but has no such method."""


class NodeNotFound(NotFound):
    """The named node is not (or no longer) in the mesh."""


class DeadlineExceeded(WiremeshError):
    status = Status.DEADLINE_EXCEEDED


class Cancelled(WiremeshError):
    status = Status.CANCELLED


class Unavailable(WiremeshError):
    """No live node could take the call (the service is known but none answered)."""

    status = Status.UNAVAILABLE


class BrokerUnavailable(Unavailable):
    """The broker did not confirm a message within the deadline (down, unreachable or
    refusing). It may have stored the message all the same (its confirmation lost on the
    way): sending again is allowed and may deliver it twice, which idempotent consumers
    (the inbox of ``messaging/store.py``) absorb."""


class Overloaded(Unavailable):
    """A node refused the call before running it: the method's bulkhead was full (its
    ``max_concurrency`` calls running and ``max_queue`` waiting). Callers send such a call
    to another node of the service, idempotent or not, and raise this only when every
    node they tried was full: it is always safe to try again later."""


class PayloadTooLarge(WiremeshError):
    status = Status.PAYLOAD_TOO_LARGE


class RateLimited(WiremeshError):
    status = Status.RATE_LIMITED


class Unauthenticated(WiremeshError):
    status = Status.UNAUTHENTICATED


class PermissionDenied(WiremeshError):
    status = Status.PERMISSION_DENIED


_SERVICE_ERRORS: dict[str, type[ServiceError]] = {}


class ServiceError(WiremeshError):
    """Base class for a service's own domain errors.

    Subclass it, raise it in a handler, and a caller that can import the same class gets
    an instance of it back; other callers get a :class:`ServiceError` whose ``remote_type``
    names the class. Set ``status`` on the subclass to change how it maps to gRPC and HTTP.

    >>> class OutOfStock(ServiceError):
    ...     status = Status.FAILED_PRECONDITION
    """

    status = Status.FAILED_PRECONDITION

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SERVICE_ERRORS[qualified_name(cls)] = cls


class InternalError(WiremeshError):
    """A handler raised an exception that is not a wiremesh error."""

    status = Status.INTERNAL


_BY_STATUS: dict[Status, type[WiremeshError]] = {
    Status.INVALID_PAYLOAD: InvalidPayload,
    Status.NOT_FOUND: NotFound,
    Status.DEADLINE_EXCEEDED: DeadlineExceeded,
    Status.CANCELLED: Cancelled,
    Status.UNAVAILABLE: Unavailable,
    Status.PAYLOAD_TOO_LARGE: PayloadTooLarge,
    Status.RATE_LIMITED: RateLimited,
    Status.UNAUTHENTICATED: Unauthenticated,
    Status.PERMISSION_DENIED: PermissionDenied,
    Status.FAILED_PRECONDITION: ServiceError,
    Status.INTERNAL: InternalError,
}

_BUILTIN: dict[str, type[WiremeshError]] = {
    qualified_name_: cls
    for cls in (
        WiremeshError,
        ConfigError,
        InvalidPayload,
        NotFound,
        ServiceNotFound,
        MethodNotFound,
        NodeNotFound,
        DeadlineExceeded,
        Cancelled,
        Unavailable,
        BrokerUnavailable,
        Overloaded,
        PayloadTooLarge,
        RateLimited,
        Unauthenticated,
        PermissionDenied,
        ServiceError,
        InternalError,
    )
    for qualified_name_ in (f"wiremesh.errors.{cls.__name__}", f"wiremesh.{cls.__name__}")
}

_BY_GRPC_NAME: dict[str, Status] = {
    "INVALID_ARGUMENT": Status.INVALID_PAYLOAD,
    "NOT_FOUND": Status.NOT_FOUND,
    "UNIMPLEMENTED": Status.NOT_FOUND,
    "DEADLINE_EXCEEDED": Status.DEADLINE_EXCEEDED,
    "CANCELLED": Status.CANCELLED,
    "UNAVAILABLE": Status.UNAVAILABLE,
    "RESOURCE_EXHAUSTED": Status.PAYLOAD_TOO_LARGE,
    "UNAUTHENTICATED": Status.UNAUTHENTICATED,
    "PERMISSION_DENIED": Status.PERMISSION_DENIED,
    "FAILED_PRECONDITION": Status.FAILED_PRECONDITION,
}


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def status_for_grpc_name(name: str) -> Status:
    """The wiremesh status a plain gRPC status code, by its name (``"NOT_FOUND"``), stands
    for (INTERNAL when unknown)."""
    return _BY_GRPC_NAME.get(name, Status.INTERNAL)


def error_class_for(type_name: str | None, status: Status) -> type[WiremeshError]:
    """The class to rebuild a remote error as: the exact class when this side knows it,
    else the class of its status."""
    if type_name:
        known = _SERVICE_ERRORS.get(type_name) or _BUILTIN.get(type_name)
        if known is not None:
            return known
    return _BY_STATUS[status]


def rebuild(
    type_name: str | None,
    status: Status,
    message: str,
    *,
    node: str | None = None,
    details: dict[str, Any] | None = None,
) -> WiremeshError:
    """Rebuild an error that arrived from a remote node, without calling a subclass's
    ``__init__`` (whose signature is the user's business)."""
    cls = error_class_for(type_name, status)
    exc = cls.__new__(cls)
    is_exact = type_name is not None and qualified_name(cls) == type_name
    WiremeshError.__init__(
        exc,
        message,
        remote_type=None if is_exact else type_name,
        node=node,
        details=details,
    )
    exc.args = (message,)
    return exc

"""Errors as HTTP answers: ``application/problem+json`` bodies (RFC 9457).

Every HTTP error the gateway answers is built here and carries one problem object of one
shape: the HTTP door's (:mod:`.http_rpc`), the router's, the static files' and the
dashboard's (:mod:`.app`), and refused WebSocket upgrades (:mod:`.websocket`)::

    {"type": "urn:wiremesh:problem:invalid_payload", "title": "Invalid payload",
     "status": 422, "detail": "qty: Input should be a valid integer",
     "instance": "/rpc/orders/place", "error": "wiremesh.errors.InvalidPayload",
     "errors": [{"field": "qty", "message": "Input should be a valid integer"}]}

The status of a wiremesh error is the HTTP column of :data:`wiremesh.errors.STATUS_TABLE`,
the one table that also gives its gRPC code and WebSocket close code; an answer known
only by its HTTP status (a refused upgrade) is the error of that row
(:func:`problem_for_status`). A few answers are HTTP's own and have no wiremesh status: a
body that is not JSON (400), a malformed header (400), a wrong HTTP method (405), a body
that arrives too slowly (408), a body declared as something else than JSON (415) and a
plain request for a WebSocket (426); their ``type`` is
``urn:wiremesh:problem:http-<status>`` and their ``error`` ``http.HTTPStatus.<NAME>``.

Members (RFC 9457 §3.1, then wiremesh's extensions, §3.2):

- ``type``: ``urn:wiremesh:problem:<wiremesh status>``, one per row of the status table;
- ``title``: the same short text for every problem of that type;
- ``status``: the HTTP status, repeated;
- ``detail``: what went wrong this time (for ``internal``, a fixed text: what a handler
  raised unexpectedly stays in the node's log);
- ``instance``: the request path;
- ``error``: the wiremesh error type, ``module.QualName`` (``wiremesh.errors.NotFound``,
  ``shop.errors.OutOfStock``), or for HTTP's own answers the name of their status
  (``http.HTTPStatus.METHOD_NOT_ALLOWED``);
- ``errors``: for ``invalid_payload``, the failing fields, ``[{"field", "message"}]``;
- ``details``: the error's own JSON-safe extras (a service error's, the services
  ``/readyz`` misses), when it has any;
- ``node``: the node that answered, when one did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

import pydantic_core

from wiremesh.errors import STATUS_TABLE, InternalError, Status, WiremeshError, error_class_for

__all__ = [
    "CONTENT_TYPE",
    "Problem",
    "bad_request",
    "method_not_allowed",
    "problem_for",
    "problem_for_status",
    "request_timeout",
    "unsupported_media_type",
    "upgrade_required",
]

CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:wiremesh:problem:"

#: the ``title`` of each wiremesh status
TITLES: dict[Status, str] = {
    Status.INVALID_PAYLOAD: "Invalid payload",
    Status.NOT_FOUND: "Not found",
    Status.DEADLINE_EXCEEDED: "Deadline exceeded",
    Status.CANCELLED: "Cancelled",
    Status.UNAVAILABLE: "Unavailable",
    Status.PAYLOAD_TOO_LARGE: "Payload too large",
    Status.RATE_LIMITED: "Rate limited",
    Status.UNAUTHENTICATED: "Unauthenticated",
    Status.PERMISSION_DENIED: "Permission denied",
    Status.FAILED_PRECONDITION: "Service error",
    Status.INTERNAL: "Internal error",
}

#: what an ``internal`` problem says, whatever the handler raised
INTERNAL_DETAIL = "the method failed with an unexpected error; the node's log has the cause"
#: what an ``internal`` problem says when the gateway itself failed
GATEWAY_FAILED = "the gateway failed to answer; its log has the cause"

#: the wiremesh status of each HTTP status of the status table (one each)
_BY_HTTP_STATUS = {info.http_status: status for status, info in STATUS_TABLE.items()}


@dataclass(frozen=True)
class Problem:
    """One problem answer: its status, headers and ``application/problem+json`` body."""

    status: int
    type: str
    title: str
    detail: str
    #: the wiremesh error type, or ``http.HTTPStatus.<NAME>`` for HTTP's own answers
    error: str
    instance: str = ""
    errors: Sequence[dict[str, Any]] = ()
    details: dict[str, Any] = field(default_factory=dict)
    node: str | None = None
    #: seconds after which a retry may succeed (``Retry-After``), for 429 and 503
    retry_after: int | None = None
    #: the methods the path takes (``Allow``), for 405
    allow: str | None = None

    def body(self) -> dict[str, Any]:
        """The problem object (RFC 9457 members first, then wiremesh's)."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.instance:
            body["instance"] = self.instance
        body["error"] = self.error
        if self.errors:
            body["errors"] = list(self.errors)
        if self.details:
            body["details"] = self.details
        if self.node:
            body["node"] = self.node
        return body

    def encode(self) -> bytes:
        return pydantic_core.to_json(self.body())

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The response headers: content type, and ``Retry-After`` when set."""
        headers = [(b"content-type", CONTENT_TYPE.encode())]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        if self.allow is not None:
            headers.append((b"allow", self.allow.encode()))
        return headers

    def at(self, instance: str) -> Problem:
        """This problem with ``instance`` set to the request path."""
        return replace(self, instance=instance)


def problem_for(
    error: WiremeshError,
    instance: str = "",
    *,
    retry_after: int | None = None,
    internal_detail: str = INTERNAL_DETAIL,
) -> Problem:
    """The problem answer for ``error``: its HTTP status from the status table. An
    ``internal`` one says ``internal_detail``, never what was raised."""
    status = error.status
    http_status = STATUS_TABLE[status].http_status
    if status is Status.INTERNAL:
        # what a handler raised unexpectedly is the node's business, not the client's
        return Problem(
            http_status,
            TYPE_PREFIX + status.value,
            TITLES[status],
            internal_detail,
            f"wiremesh.errors.{InternalError.__name__}",
            instance,
            node=error.node,
        )
    extras = dict(error.details)
    errors = extras.pop("errors", ()) if status is Status.INVALID_PAYLOAD else ()
    if not isinstance(errors, list):
        errors = ()
    if retry_after is None and status in (Status.RATE_LIMITED, Status.UNAVAILABLE):
        hint = extras.pop("retry_after", None)
        if isinstance(hint, int | float) and hint >= 0:
            retry_after = max(1, round(hint))
    return Problem(
        http_status,
        TYPE_PREFIX + status.value,
        TITLES[status],
        error.message or type(error).__name__,
        error.type_name,
        instance,
        errors=errors,
        details=extras,
        node=error.node,
        retry_after=retry_after,
    )


def problem_for_status(
    status: int, detail: str, instance: str = "", *, retry_after: int | None = None
) -> Problem:
    """The problem answer of an HTTP ``status`` the gateway chose itself (a refused
    upgrade): the error of the status table's row with that HTTP status, else one of
    HTTP's own answers."""
    wiremesh_status = _BY_HTTP_STATUS.get(status)
    if wiremesh_status is None:
        problem = _http_problem(HTTPStatus(status), detail, instance)
        return replace(problem, retry_after=retry_after)
    error = error_class_for(None, wiremesh_status)(detail)
    return problem_for(error, instance, retry_after=retry_after)


def _http_problem(status: HTTPStatus, detail: str, instance: str) -> Problem:
    return Problem(
        status.value,
        f"{TYPE_PREFIX}http-{status.value}",
        status.phrase,
        detail,
        f"http.HTTPStatus.{status.name}",
        instance,
    )


def bad_request(detail: str, instance: str = "") -> Problem:
    """400: the request itself is malformed (a body that is not JSON, a bad header)."""
    return _http_problem(HTTPStatus.BAD_REQUEST, detail, instance)


def method_not_allowed(allowed: str, instance: str = "") -> Problem:
    """405: the path exists, the HTTP method does not (``Allow`` lists the right ones)."""
    problem = _http_problem(HTTPStatus.METHOD_NOT_ALLOWED, f"use {allowed} on this path", instance)
    return replace(problem, allow=allowed)


def unsupported_media_type(instance: str = "") -> Problem:
    """415: the body is declared as something other than JSON."""
    return _http_problem(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the payload as application/json", instance
    )


def upgrade_required(detail: str, instance: str = "") -> Problem:
    """426: a plain request where a WebSocket upgrade is expected."""
    return _http_problem(HTTPStatus.UPGRADE_REQUIRED, detail, instance)


def request_timeout(seconds: float, instance: str = "") -> Problem:
    """408: the request body did not arrive within ``seconds``."""
    return _http_problem(
        HTTPStatus.REQUEST_TIMEOUT,
        f"the request body did not arrive within {seconds:g}s",
        instance,
    )

"""What travels on the wire besides the payload: metadata keys and errors.

``docs/protocol.md`` is the reader's version of this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import grpc

from wiremesh.errors import (
    STATUS_TABLE,
    DeadlineExceeded,
    InvalidPayload,
    MethodNotFound,
    PayloadTooLarge,
    Status,
    Unavailable,
    WiremeshError,
    qualified_name,
    rebuild,
    status_for_grpc_name,
)

__all__ = [
    "BATCH_KEY",
    "CALLER_KEY",
    "CODEC_KEY",
    "ERROR_KEY",
    "MAX_ERROR_TEXT",
    "WORK_AGE_KEY",
    "custom_metadata",
    "error_from_rpc_error",
    "error_metadata",
    "error_status_message",
    "exception_type_name",
    "raised_by_handler",
]

#: request metadata: the payload codec (``msgpack`` when absent)
CODEC_KEY = "wm-codec"
#: request metadata: the calling node, ``service@node-id`` (absent for outside clients)
CALLER_KEY = "wm-caller"
#: trailing metadata of a failed call: the error as JSON
ERROR_KEY = "wm-error"
#: request metadata of a nested call: milliseconds since its work began, as the caller
#: measures it when it sends (see :mod:`wiremesh.core.drain`); absent: the call begins it
WORK_AGE_KEY = "wm-work-age"
#: on a streaming call between wiremesh peers: each message, both ways, is a batch of
#: items (:func:`wiremesh.core.streams.frame`); without it, one item per message
BATCH_KEY = "wm-batch"

RESERVED_PREFIXES = ("wm-", "grpc-", ":")
#: HTTP/2 and gRPC transport headers: never part of a call's metadata (``accept-encoding``
#: comes from other gRPC libraries, grpc-js and grpc-go, beside their own compression)
RESERVED_KEYS = frozenset(
    {"user-agent", "te", "content-type", "authority", "accept-encoding", "content-encoding"}
)

#: Bytes an error's text may take once encoded, in ``grpc-message`` and again in
#: ``wm-error``. gRPC refuses response metadata past its size limits (already a single
#: value over 16 KiB, by default) and the caller would see RESOURCE_EXHAUSTED, i.e.
#: ``PayloadTooLarge``, instead of the error; so a long message (a validation error over a
#: big list, an exception quoting a large value) is cut, never the call.
MAX_ERROR_TEXT = 2048
#: Bytes the ``details`` of an error may take in ``wm-error``; larger details are dropped.
MAX_ERROR_DETAILS = 1024
_CUT = "... (cut)"

#: what HTTP/2 and gRPC accept as a (non-binary) metadata key
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
#: what a (non-binary) metadata value may hold: printable ASCII
_METADATA_VALUE = re.compile(r"[ -~]*")


def custom_metadata(extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """A caller's custom metadata as wire pairs (keys lowercased).

    Raises :class:`InvalidPayload` naming the first key that is reserved or that gRPC
    would refuse (which it does with an exception of its own, or by failing the call).
    """
    pairs: list[tuple[str, str]] = []
    for key, value in extra.items():
        name = key.lower()
        if name.startswith(RESERVED_PREFIXES) or name in RESERVED_KEYS:
            raise InvalidPayload(
                f"metadata key {key!r} is reserved: keys starting with wm-, grpc- or ':' "
                f"and {', '.join(sorted(RESERVED_KEYS))} are wiremesh's and gRPC's own"
            )
        if not _METADATA_KEY.match(name) or name.endswith("-bin"):
            raise InvalidPayload(
                f"metadata key {key!r} is not a valid one: use letters, digits, '-', '_' "
                "and '.', and no '-bin' suffix (binary metadata is not supported)"
            )
        if not isinstance(value, str) or not _METADATA_VALUE.fullmatch(value):
            raise InvalidPayload(f"the value of metadata key {key!r} must be printable ASCII")
        pairs.append((name, value))
    return pairs


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    if isinstance(exc, WiremeshError):
        return exc.type_name
    return cls.__qualname__ if cls.__module__ == "builtins" else qualified_name(cls)


def _json_cost(char: str) -> int:
    """Bytes ``json.dumps`` (ASCII) spends on one character."""
    code = ord(char)
    if 0x20 <= code < 0x7F:
        return 2 if char in '"\\' else 1
    return 6 if code < 0x10000 else 12


def _percent_cost(char: str) -> int:
    """Bytes gRPC's percent-encoding of ``grpc-message`` spends on one character."""
    code = ord(char)
    if 0x20 <= code < 0x7F and char != "%":
        return 1
    return 3 * len(char.encode("utf-8", "surrogatepass"))


def _clip(text: str, budget: int, cost: Callable[[str], int]) -> str:
    """``text``, cut so that it costs at most ``budget`` bytes on the wire."""
    if len(text) * 12 <= budget:  # fits even if every character were the dearest kind
        return text
    spent = 0
    cut_at = len(text)
    for index, char in enumerate(text):
        spent += cost(char)
        if cut_at == len(text) and spent > budget - len(_CUT):
            cut_at = index
        if spent > budget:
            return text[:cut_at] + _CUT
    return text


def error_status_message(exc: WiremeshError) -> str:
    """The ``grpc-message`` of a failed call: the error's message, cut to the budget."""
    return _clip(exc.message or type(exc).__name__, MAX_ERROR_TEXT, _percent_cost)


def error_metadata(exc: WiremeshError, node_id: str) -> tuple[tuple[str, str], ...]:
    """The ``wm-error`` trailer of a failed call, never larger than gRPC lets through."""
    return ((ERROR_KEY, error_body(exc, node_id)),)


def error_body(exc: WiremeshError, node_id: str) -> str:
    """An error as the JSON object of ``wm-error`` (and of a link's ERROR frame)."""
    body: dict[str, Any] = {
        "type": exception_type_name(exc),
        "status": exc.status.value,
        "message": _clip(exc.message, MAX_ERROR_TEXT, _json_cost),
        "node": exc.node or node_id,
    }
    if exc.details:
        try:
            size = len(json.dumps(exc.details, default=str, separators=(",", ":")))
        except (ValueError, RecursionError):  # a cycle, or nested too deeply: dropped
            size = MAX_ERROR_DETAILS + 1
        if size <= MAX_ERROR_DETAILS:
            body["details"] = exc.details
    return json.dumps(body, default=str, separators=(",", ":"))


def error_from_body(text: str, *, node: str | None) -> WiremeshError:
    """Rebuild the error a ``wm-error`` JSON object describes (:func:`error_body`)."""
    parsed = _parse_error_body(text, node)
    if parsed is None:
        return WiremeshError(f"a malformed error came back: {text[:200]!r}", node=node)
    return parsed


def _parse_error_body(text: str, node: str | None) -> WiremeshError | None:
    """The error in a peer's ``wm-error`` JSON; None when it is not such an object.
    Fields of the wrong type are dropped, so that the error prints and travels on."""
    try:
        body = json.loads(text)
        status = Status(body["status"])
        message = body.get("message", "")
        message = message if isinstance(message, str) else str(message)
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deep nesting
        return None
    type_name, sender, details = body.get("type"), body.get("node"), body.get("details")
    return rebuild(
        type_name if isinstance(type_name, str) else None,
        status,
        message,
        node=sender if isinstance(sender, str) and sender else node,
        details=details if isinstance(details, dict) else None,
    )


#: the gRPC status code of each wiremesh status (errors.py names them; gRPC lives here)
_GRPC_CODES: dict[Status, grpc.StatusCode] = {
    status: grpc.StatusCode[info.grpc_name] for status, info in STATUS_TABLE.items()
}


def grpc_code(exc: WiremeshError) -> grpc.StatusCode:
    return _GRPC_CODES[exc.status]


def raised_by_handler(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call was answered by a node's code (it carries ``wm-error``), as
    opposed to failing in gRPC itself (connection refused, deadline, node shutting down).
    A call a handler answered has run: it must not be retried, whatever its status."""
    trailers = cast("tuple[tuple[str, str | bytes], ...]", error.trailing_metadata() or ())
    return any(key == ERROR_KEY for key, _ in trailers)


def error_from_rpc_error(error: grpc.aio.AioRpcError, *, node: str | None) -> WiremeshError:
    """Translate a failed gRPC call into the wiremesh error it stands for.

    A wiremesh node puts the error in the ``wm-error`` trailer and it is rebuilt exactly;
    otherwise the gRPC status code decides the class.
    """
    trailers = cast("tuple[tuple[str, str | bytes], ...]", error.trailing_metadata() or ())
    for key, value in trailers:
        if key == ERROR_KEY and isinstance(value, str):
            parsed = _parse_error_body(value, node)
            if parsed is not None:
                return parsed
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
    return rebuild(None, status_for_grpc_name(code.name), details, node=node)

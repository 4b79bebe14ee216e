"""Payload shapes: what a method takes and returns, read from its annotations.

A handler ``async def m(self, ctx, req: T) -> R`` takes one payload of type ``T``; one
with several parameters takes a mapping of them by name; one with none takes nothing.
:class:`Shape` turns a decoded plain value into the typed value the handler expects, and
names the offending field when it cannot. Plain types (``bytes``, ``str``, ``int``,
``float``, ``bool``) skip pydantic when the value already has the right type: the hot
path pays nothing for validation it does not need.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import pydantic

from wiremesh.errors import InvalidPayload

__all__ = ["Shape", "format_validation_error", "is_protobuf_type", "signature_shapes"]

_PLAIN = (bytes, str, int, float, bool)


def is_protobuf_type(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "FromString") and hasattr(tp, "DESCRIPTOR")


#: Failing fields named in one message; a payload with thousands of bad items would
#: otherwise give a message of hundreds of kilobytes.
MAX_LISTED_ERRORS = 10


def invalid_payload(error: pydantic.ValidationError, prefix: str = "") -> InvalidPayload:
    """The :class:`InvalidPayload` for a validation error: the message names each failing
    field, and ``details["errors"]`` lists them as ``{"field", "message"}`` (first few)."""
    fields = [
        {
            "field": ".".join(str(p) for p in (prefix, *item["loc"]) if p != "") or "payload",
            "message": item["msg"],
        }
        for item in error.errors(include_url=False)[:MAX_LISTED_ERRORS]
    ]
    return InvalidPayload(format_validation_error(error, prefix), details={"errors": fields})


def format_validation_error(error: pydantic.ValidationError, prefix: str = "") -> str:
    """``field.path: what is wrong`` for each failing field, the first few of them."""
    parts = []
    items = error.errors(include_url=False)
    for item in items[:MAX_LISTED_ERRORS]:
        loc = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        parts.append(f"{loc or 'payload'}: {item['msg']}")
    if len(items) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(items) - MAX_LISTED_ERRORS} more errors")
    return "; ".join(parts)


class Shape:
    """Validation for one value of type ``tp`` (``Any`` validates nothing)."""

    __slots__ = ("_adapter", "_exact", "is_protobuf", "name", "tp")

    def __init__(self, tp: Any, name: str = "") -> None:
        self.tp = tp
        self.name = name
        self.is_protobuf = is_protobuf_type(tp)
        self._exact: type | None = tp if tp in _PLAIN else None
        self._adapter: pydantic.TypeAdapter[Any] | None = (
            None if tp is Any or self.is_protobuf else pydantic.TypeAdapter(tp)
        )

    def validate(self, value: Any) -> Any:
        if self._exact is not None and type(value) is self._exact:
            return value
        if self.is_protobuf:
            if isinstance(value, self.tp):
                return value
            try:
                return self.tp.FromString(value)
            except Exception as exc:
                raise InvalidPayload(f"payload is not a valid {self.tp.__name__}: {exc}") from exc
        if self._adapter is None:
            return value
        try:
            return self._adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise invalid_payload(exc, self.name) from exc


class _Params:
    """Validation for a mapping of several named parameters."""

    def __init__(self, params: dict[str, tuple[Any, Any]]) -> None:
        self.names = tuple(params)
        fields: dict[str, Any] = {
            name: (tp, ... if default is inspect.Parameter.empty else default)
            for name, (tp, default) in params.items()
        }
        config = pydantic.ConfigDict(extra="forbid")
        self._model = pydantic.create_model("Params", __config__=config, **fields)

    def validate(self, value: Any) -> dict[str, Any]:
        if value is None:
            value = {}  # no payload: every parameter takes its default, or is reported missing
        if not isinstance(value, dict):
            raise InvalidPayload(
                f"payload must be a mapping of {', '.join(self.names)}, not {type(value).__name__}"
            )
        try:
            model = self._model.model_validate(value)
        except pydantic.ValidationError as exc:
            raise invalid_payload(exc) from exc
        return {name: getattr(model, name) for name in self.names}


class SignatureShapes:
    """How to turn a request payload into a handler's arguments, and its result type."""

    def __init__(
        self,
        single: Shape | None,
        params: _Params | None,
        returns: Any,
        param_types: dict[str, Any],
        single_default: Any = inspect.Parameter.empty,
    ) -> None:
        self._single = single
        self._single_default = single_default
        self._params = params
        self.returns = returns
        self.param_types = param_types
        self.takes_protobuf = single is not None and single.is_protobuf
        self.returns_protobuf = is_protobuf_type(returns)

    def arguments(self, payload: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments for the handler, validated."""
        if self._single is not None:
            if payload is None and self._single_default is not inspect.Parameter.empty:
                return (self._single_default,), {}
            try:
                return (self._single.validate(payload),), {}
            except InvalidPayload as exc:
                (name,) = self.param_types
                if not (isinstance(payload, dict) and name in payload):
                    raise
                # {"sku": "A-1"} for ``stock(self, ctx, sku: str)``: the likeliest mistake
                raise InvalidPayload(
                    f"{exc.message} (the method takes one parameter, {name}: send its value "
                    "itself, not an object that names it)",
                    details=exc.details,
                ) from exc
        if self._params is not None:
            return (), self._params.validate(payload)
        return (), {}


def signature_shapes(func: Callable[..., Any], skip: int, stream: Any = None) -> SignatureShapes:
    """Read ``func``'s annotations, skipping its first ``skip`` parameters (self, ctx).
    For a streaming method (``stream``: its :class:`~wiremesh.core.streams.StreamShapes`)
    the streamed parameter is no payload, and the result is the type of each item."""
    try:
        hints = get_type_hints(func)
    except Exception as exc:  # a forward reference that does not resolve
        raise TypeError(f"cannot read the annotations of {func.__qualname__}: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())[skip:]
    if stream is not None:
        if stream.takes is not None:
            params = []
        if stream.gives is not None:
            hints = {**hints, "return": stream.gives.tp}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"{func.__qualname__}: parameter {p.name!r} must be a plain one")
    types = {p.name: hints.get(p.name, Any) for p in params}
    returns = hints.get("return", Any)
    if returns is type(None):
        returns = None
    if len(params) == 1:
        only = params[0]
        return SignatureShapes(Shape(types[only.name]), None, returns, types, only.default)
    if not params:
        return SignatureShapes(None, None, returns, types)
    spec = {p.name: (types[p.name], p.default) for p in params}
    return SignatureShapes(None, _Params(spec), returns, types)

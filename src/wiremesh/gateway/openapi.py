"""The OpenAPI 3.1 document of the HTTP door, generated from the services' annotations.

Where the schemas come from: the gateway imports the service classes that the mesh
configuration names (``[services.<name>] target``), as ``wiremesh run`` does, and reads
each ``@rpc`` method's signature the way a node does (:mod:`wiremesh.core.shape`). The
registry stays as small as it is: it only says which methods each service has. A gateway
on another machine runs with the same configuration file and the same code, so it finds
the same classes. A service whose class the gateway cannot import (another language, or
code not installed there) is still documented, from the registry's method list, with
untyped bodies (``{}``: any JSON value).

One operation per method, ``POST /rpc/{service}/{method}``:

- request body: the method's payload as JSON: the single parameter's type for
  ``m(self, ctx, req: T)``, an object of the named parameters for ``m(self, ctx, a: A,
  b: B)``, none for ``m(self, ctx)``;
- ``200``: the return type's schema (``null`` for ``-> None``); for a server-streaming
  method, its items' schema under ``application/x-ndjson`` and ``text/event-stream``
  (client-streaming and bidirectional methods are not served over HTTP: left out);
- problem answers (``application/problem+json``, :mod:`.problem`) for every status the
  door gives;
- ``node`` query parameter and ``Wiremesh-Timeout`` header;
- the bearer security scheme when the gateway requires a token.

Models shared by several methods appear once, under ``components/schemas``.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from pydantic.json_schema import JsonSchemaMode

from wiremesh.core.defaults import HTTP_MAX_TIMEOUT, HTTP_TIMEOUT
from wiremesh.core.model import MeshSnapshot
from wiremesh.errors import ConfigError
from wiremesh.service import MethodSpec, ServiceSpec

__all__ = [
    "OPENAPI_VERSION",
    "TIMEOUT_HEADER",
    "DocumentSettings",
    "openapi_document",
    "service_specs",
]

log = logging.getLogger("wiremesh.gateway")

OPENAPI_VERSION = "3.1.0"
#: the request header that sets a call's deadline, in seconds
TIMEOUT_HEADER = "Wiremesh-Timeout"
_REF = "#/components/schemas/{model}"
_PROBLEM = "application/problem+json"

#: the problem answers of an operation: status -> when
_PROBLEMS: dict[str, str] = {
    "400": "The body is not JSON, or a header is malformed",
    "401": "No token, or a bad or expired one",
    "403": "The token is valid, but the access rules refuse this service",
    "404": "No such service, method or node",
    "408": "The body did not arrive in time",
    "409": "The service's own domain error (``error`` names it)",
    "413": "The body is larger than the gateway accepts",
    "422": "The payload does not validate (``errors`` lists the fields)",
    "429": "Too many requests from this principal (see ``Retry-After``)",
    "500": "The method failed with an unexpected error",
    "503": "No live node of the service, or the gateway is at its limit",
    "504": "The deadline passed before the answer came",
}


@dataclass(frozen=True)
class DocumentSettings:
    """What the document says about the gateway itself."""

    title: str = "wiremesh gateway"
    version: str = "0.0.0"
    #: the gateway requires a bearer token on ``/rpc``
    auth: bool = True
    #: the largest ``Wiremesh-Timeout`` accepted, seconds
    max_timeout: float = HTTP_MAX_TIMEOUT
    #: the deadline when the header is absent, seconds
    default_timeout: float = HTTP_TIMEOUT


def service_specs(
    targets: Mapping[str, str], python_path: Iterable[Path] = ()
) -> dict[str, ServiceSpec]:
    """The specs of the services named ``{name: "module:Class"}``, for those whose class
    imports; each one that does not is logged and left out (the document then describes
    it from the registry alone)."""
    from wiremesh.runtime.targets import load_service_class

    folders = tuple(python_path)
    specs: dict[str, ServiceSpec] = {}
    for name, target in targets.items():
        try:
            specs[name] = ServiceSpec.of(load_service_class(target, folders))
        except ConfigError as exc:
            log.warning("service %s: no schemas in the OpenAPI document (%s)", name, exc)
    return specs


def openapi_document(
    specs: Mapping[str, ServiceSpec],
    snapshot: MeshSnapshot | None = None,
    settings: DocumentSettings | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``specs`` and, for services the specs do not cover,
    the methods the registry lists in ``snapshot``."""
    settings = settings or DocumentSettings()
    methods: dict[tuple[str, str], MethodSpec | None] = {}
    #: the server-streaming methods
    streamed: set[tuple[str, str]] = set()
    for service, service_spec in sorted(specs.items()):
        for name, method_spec in sorted(service_spec.methods.items()):
            shapes = method_spec.shapes
            kind = "" if method_spec.stream is None else method_spec.stream.kind
            if not (shapes.takes_protobuf or shapes.returns_protobuf) and kind in ("", "server"):
                methods[(service, name)] = method_spec
                if kind:
                    streamed.add((service, name))
    if snapshot is not None:
        for node in snapshot.nodes:
            if node.service in specs:
                continue
            for name, info in node.methods.items():
                if not info.returns_protobuf and info.streaming in ("", "server"):
                    methods.setdefault((node.service, name), None)
                    if info.streaming:
                        streamed.add((node.service, name))

    schemas, components = _schemas(methods, specs)
    paths: dict[str, Any] = {}
    for (service, name), method in sorted(methods.items()):
        spec = specs.get(service)
        request, response = schemas.get((service, name), (None, {}))
        operation = _operation(service, name, method, spec, request, response)
        if (service, name) in streamed:
            operation["responses"]["200"] = {
                "description": (
                    "The method's items as they come, each as this schema: one JSON value "
                    "a line (`application/x-ndjson`, the default), or server-sent events "
                    "for `Accept: text/event-stream` (`data: <item>`). An error after the "
                    'first item ends the body with `{"error": <problem>}` (an `error` event)'
                ),
                "content": {
                    "application/x-ndjson": {"schema": response},
                    "text/event-stream": {"schema": response},
                },
            }
        paths[f"/rpc/{service}/{name}"] = {"post": operation}
    problem = "Problem" if "Problem" not in components else "WiremeshProblem"
    components[problem] = _PROBLEM_SCHEMA
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": settings.title,
            "version": settings.version,
            "description": (
                "Every `@rpc` method of the mesh's services, as `POST /rpc/{service}/{method}`"
                " with a JSON body. Errors are `application/problem+json` (RFC 9457)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": {
                status: {
                    "description": text,
                    "content": {_PROBLEM: {"schema": {"$ref": _REF.format(model=problem)}}},
                }
                for status, text in _PROBLEMS.items()
            },
            "parameters": _parameters(settings),
        },
    }
    if settings.auth:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        }
        document["security"] = [{"bearer": []}]
    return document


def _operation(
    service: str,
    name: str,
    method: MethodSpec | None,
    spec: ServiceSpec | None,
    request: dict[str, Any] | None,
    response: dict[str, Any],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{service}.{name}",
        "tags": [service],
        "summary": f"{service}.{name}",
        "parameters": [
            {"$ref": "#/components/parameters/node"},
            {"$ref": "#/components/parameters/timeout"},
        ],
        "responses": {
            "200": {
                "description": "The method's result",
                "content": {"application/json": {"schema": response}},
            },
            **{status: {"$ref": f"#/components/responses/{status}"} for status in _PROBLEMS},
        },
    }
    if method is not None and spec is not None:
        doc = inspect.getdoc(getattr(spec.cls, method.attribute, None))
        if doc:
            operation["summary"] = doc.splitlines()[0]
            operation["description"] = doc
        if method.idempotent:
            operation["description"] = (
                operation.get("description", "") + "\n\nIdempotent: retried on another node "
                "when one is unavailable."
            ).strip()
    if request is not None:
        operation["requestBody"] = {
            "required": request.pop("x-required", True),
            "content": {"application/json": {"schema": request}},
        }
    return operation


def _parameters(settings: DocumentSettings) -> dict[str, Any]:
    return {
        "node": {
            "name": "node",
            "in": "query",
            "required": False,
            "description": "Call this node of the service (a node id) rather than any",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_:-]+$"},
        },
        "timeout": {
            "name": TIMEOUT_HEADER,
            "in": "header",
            "required": False,
            "description": (
                f"The call's deadline in seconds (default {settings.default_timeout:g}, "
                f"at most {settings.max_timeout:g}); nested calls inherit what remains"
            ),
            "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": settings.max_timeout},
        },
    }


def _schemas(
    methods: Mapping[tuple[str, str], MethodSpec | None],
    specs: Mapping[str, ServiceSpec],
) -> tuple[dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, Any]]], dict[str, Any]]:
    """Per method, its request schema (``None``: no body) and response schema; and the
    shared definitions. A type with no JSON Schema gives ``{}`` (any JSON value)."""
    inputs: list[tuple[tuple[str, str, str], JsonSchemaMode, pydantic.TypeAdapter[Any]]] = []
    bodies: dict[tuple[str, str], tuple[bool, bool]] = {}  # (has a body, body required)
    for (service, name), method in methods.items():
        if method is None:
            bodies[(service, name)] = (True, False)
            continue
        adapters = _adapters(service, name, method, getattr(specs[service].cls, method.attribute))
        if adapters is None:
            bodies[(service, name)] = (True, False)
            continue
        request, required, response = adapters
        bodies[(service, name)] = (request is not None, required)
        if request is not None:
            inputs.append(((service, name, "request"), "validation", request))
        if response is not None:
            inputs.append(((service, name, "response"), "serialization", response))

    generated, definitions = _generate(inputs)
    result: dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, Any]]] = {}
    for (service, name), method in methods.items():
        has_body, required = bodies[(service, name)]
        response_schema: dict[str, Any] = (
            {"type": "null"} if method is not None and method.shapes.returns is None else {}
        )
        response_schema = generated.get((service, name, "response"), response_schema)
        request_schema: dict[str, Any] | None = None
        if has_body:
            request_schema = dict(generated.get((service, name, "request"), {}))
            request_schema["x-required"] = required
        result[(service, name)] = (request_schema, response_schema)
    return result, definitions


def _adapters(
    service: str, name: str, method: MethodSpec, func: Any
) -> tuple[pydantic.TypeAdapter[Any] | None, bool, pydantic.TypeAdapter[Any] | None] | None:
    """The request adapter (``None``: no body), whether the body is required, and the
    response adapter (``None``: no schema) of one method; ``None`` when unreadable."""
    types = method.shapes.param_types
    returns = method.shapes.returns
    try:
        response = None if returns is None or returns is Any else pydantic.TypeAdapter(returns)
        if not types:
            return None, False, response
        defaults = _defaults(func)
        if len(types) == 1:
            ((param, tp),) = types.items()
            return pydantic.TypeAdapter(tp), param not in defaults, response
        fields: dict[str, Any] = {
            param: (tp, defaults.get(param, ...)) for param, tp in types.items()
        }
        model = pydantic.create_model(
            f"{_camel(service)}{_camel(name)}Params",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
        required = any(param not in defaults for param in types)
        return pydantic.TypeAdapter(model), required, response
    except Exception as exc:  # an annotation pydantic cannot build a validator for
        log.warning("%s.%s: no schema in the OpenAPI document (%s)", service, name, exc)
        return None


def _defaults(func: Any) -> dict[str, Any]:
    """The parameters of ``func`` that have a default, and their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(func).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def _generate(
    inputs: list[tuple[tuple[str, str, str], JsonSchemaMode, pydantic.TypeAdapter[Any]]],
) -> tuple[dict[tuple[str, str, str], dict[str, Any]], dict[str, Any]]:
    """JSON Schemas for every input with shared definitions; an input that has none
    (a type with no JSON form) is left out, the others still get theirs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a default that has no JSON form
        try:
            schemas, top = pydantic.TypeAdapter.json_schemas(inputs, ref_template=_REF)
        except Exception:
            good = []
            for item in inputs:
                try:
                    item[2].json_schema(mode=item[1])
                except Exception as exc:
                    log.warning("%s: no schema in the OpenAPI document (%s)", item[0][:2], exc)
                else:
                    good.append(item)
            schemas, top = pydantic.TypeAdapter.json_schemas(good, ref_template=_REF)
    return {key: dict(schema) for (key, _), schema in schemas.items()}, dict(top.get("$defs", {}))


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]+", name) if part)


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An error (RFC 9457 problem details)",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "urn:wiremesh:problem:<status>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "error": {"type": "string", "description": "the wiremesh error type"},
        "errors": {
            "type": "array",
            "description": "the fields of an invalid payload",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "details": {"type": "object", "description": "a service error's own extras"},
        "node": {"type": "string", "description": "the node that answered"},
    },
}

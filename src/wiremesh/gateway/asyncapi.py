"""The AsyncAPI 3 document of the mesh's messages, generated from the services' annotations.

The OpenAPI document (:mod:`.openapi`) describes the calls; this one describes what
travels without an answer. Its point of view is the services': each handler is a
``receive`` operation on a channel, and a socket service has ``send`` operations too.
What the document says of the transports themselves (servers, socket frames, headers)
is in :mod:`.asyncapi_transports`.

======================  ==========================  ===========================  =========
wiremesh                channel address             server (protocol)            binding
======================  ==========================  ===========================  =========
``@on_event(pattern)``  the topic pattern           ``broker`` (amqp)            amqp
``@command``            ``service.command``         ``broker`` (amqp)            amqp
``@subscribe(pattern)`` the topic pattern           ``mesh`` (grpc mesh links)   none
``@on_socket``          ``/ws/<service>``           ``gateway`` (ws or wss)      ws
======================  ==========================  ===========================  =========

- A channel per address and kind (``event.orders.created``, ``command.billing.charge``,
  ``publish.prices.eu._star_``, ``socket.chat``); each handler that takes it adds its
  message to the channel, and an operation ``<service>.<method>`` that points at it.
- A message's payload schema is the handler's payload type as pydantic sees it
  (``TypeAdapter(...).json_schema()``), read the way a node reads it
  (:mod:`wiremesh.core.shape`): the one parameter's type, an object of the parameters by
  name, or nothing. Shared models appear once, under ``components/schemas``.
- The AMQP bindings say what ``docs/protocol.md`` §16 says: events are published to the
  topic exchange ``wm.<mesh>.events`` with the topic as routing key, commands to the direct
  exchange ``wm.<mesh>.commands`` with ``service.command``; each operation names its queue
  (``x-wiremesh-queue``). They apply on RabbitMQ; the embedded broker carries the same
  messages over wiremesh's own gRPC protocol (§15), for which AsyncAPI has no binding.
- Publish rides the mesh links (§12, a PUBLISH frame per message, at most once): gRPC,
  for which AsyncAPI has no binding either; the channel says what it can in prose.
- A socket channel carries the browser's binary frames (text ones too when the service
  takes text) both ways, and the gateway's JSON control messages (§13.3).

A service whose class the gateway cannot import is still listed from the registry: its
``@subscribe`` patterns and its socket, with untyped payloads; its event and command
handlers are not in the registry, so not in the document.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic.json_schema import JsonSchemaMode

from wiremesh.core.model import MeshSnapshot
from wiremesh.core.shape import SignatureShapes
from wiremesh.gateway import asyncapi_transports as transports
from wiremesh.gateway.socket_hub import SOCKET_KEY
from wiremesh.messaging.base import Binding
from wiremesh.service import ServiceSpec

__all__ = ["ASYNCAPI_VERSION", "AsyncApiSettings", "asyncapi_document", "asyncapi_servers"]

log = logging.getLogger("wiremesh.gateway")

ASYNCAPI_VERSION = "3.0.0"
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class AsyncApiSettings:
    """What the document says about the mesh around the services."""

    title: str = "wiremesh mesh"
    version: str = "0.0.0"
    #: the gateway requires a token on ``/ws``
    auth: bool = True
    #: ``[mesh] name``: the ``M`` of the AMQP names ``wm.M.*`` (empty: not known here,
    #: the bindings then leave the names out)
    mesh: str = ""
    #: ``[broker] url``: ``"embedded"``, ``amqp://…`` (its user and password are never
    #: shown), or empty when not known here
    broker: str = ""
    #: the gateway's base URL (``http(s)://host:port``) that browsers reach
    gateway: str = "http://127.0.0.1:8080"
    #: services whose sockets take text messages by the gateway's settings
    #: (``[gateway.services.<name>] text``)
    text_sockets: frozenset[str] = field(default_factory=frozenset)


def asyncapi_document(
    specs: Mapping[str, ServiceSpec],
    snapshot: MeshSnapshot | None = None,
    settings: AsyncApiSettings | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for ``specs`` and, for services the specs do not cover,
    the publish subscriptions and sockets the registry lists in ``snapshot``."""
    return _Document(settings or AsyncApiSettings()).build(specs, snapshot)


def asyncapi_servers(settings: AsyncApiSettings) -> dict[str, Any]:
    """The document's ``servers``: the broker, the gateway and the mesh links."""
    return transports.servers(settings.broker, settings.gateway, auth=settings.auth)


@dataclass
class _Message:
    id: str
    name: str
    content_type: str
    kind: str  # event, command, publish
    doc: str | None
    schema: dict[str, Any] | None = None  # fixed: no adapter
    adapter: pydantic.TypeAdapter[Any] | None = None


class _Document:
    def __init__(self, settings: AsyncApiSettings) -> None:
        # here, not at the top: the package wiremesh.messaging.amqp loads aio-pika, which
        # a gateway needs only when someone asks for this document
        from wiremesh.messaging.amqp import topology

        self.settings = settings
        self.amqp = topology
        self.names = topology.Topology(settings.mesh) if settings.mesh else None
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: list[_Message] = []
        self.fixed_messages: dict[str, dict[str, Any]] = {}
        self._channel_ids: dict[tuple[str, str], str] = {}

    def build(
        self, specs: Mapping[str, ServiceSpec], snapshot: MeshSnapshot | None
    ) -> dict[str, Any]:
        for name, spec in sorted(specs.items()):
            self._service(name, spec)
        for service, patterns, socket in _registry_only(specs, snapshot):
            if patterns:
                untyped = self._message(f"{service}.publish", "publish", None)
                untyped.schema = {}
                for pattern in patterns:
                    self._subscription(service, "publish", pattern, untyped)
            if socket is not None:
                self._socket(service, socket or service in self.settings.text_sockets, None)
        schemas, definitions = self._schemas()
        components: dict[str, Any] = {
            "schemas": dict(sorted(definitions.items())),
            "messages": {**self._message_objects(schemas), **self.fixed_messages},
            "messageTraits": {"wiremesh": transports.headers_trait()},
        }
        if self.settings.auth:
            components["securitySchemes"] = transports.SECURITY_SCHEMES
        document: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {
                "title": self.settings.title,
                "version": self.settings.version,
                "description": transports.INFO,
            },
            "defaultContentType": self.amqp.CONTENT_TYPES["msgpack"],
            "servers": asyncapi_servers(self.settings),
            "channels": self.channels,
            "operations": self.operations,
            "components": components,
        }
        return document

    # ----------------------------------------------------------------- services

    def _message(self, wanted: str, kind: str, doc: str | None) -> _Message:
        """A new message, its id unique (a method may be a handler of two kinds)."""
        taken = {m.id: m for m in self.messages}
        message = _Message(
            _unique(wanted, taken), "", self.amqp.CONTENT_TYPES["msgpack"], kind, doc
        )
        self.messages.append(message)
        return message

    def _service(self, service: str, spec: ServiceSpec) -> None:
        for handler in sorted(spec.handlers, key=lambda h: h.attribute):
            func = getattr(spec.cls, handler.attribute)
            message = self._typed(service, handler.attribute, handler.shapes, func, handler.kind)
            operation: dict[str, Any] = {
                "x-wiremesh-delivery": handler.delivery,
                "x-wiremesh-concurrency": handler.concurrency,
                "bindings": {"amqp": {"ack": True, "bindingVersion": "0.3.0"}},
            }
            if self.names is not None:
                binding = Binding(
                    service,
                    handler.attribute,
                    handler.kind,
                    handler.patterns,
                    handler.delivery,
                    node_id="<node>",
                    prefetch=handler.concurrency,
                )
                operation["x-wiremesh-queue"] = self.names.queue(binding)
            for pattern in handler.patterns:
                channel = self._broker_channel(handler.kind, pattern)
                self._receive(service, handler.attribute, channel, message, operation)
        typed: dict[str, _Message] = {}
        for pattern, subscription in spec.subscriptions:
            attribute = subscription.attribute
            if attribute not in typed:
                func = getattr(spec.cls, attribute)
                typed[attribute] = self._typed(
                    service, attribute, subscription.shapes, func, "publish"
                )
            self._subscription(service, attribute, pattern, typed[attribute])
        if spec.socket is not None:
            text = spec.socket.text or service in self.settings.text_sockets
            self._socket(service, text, inspect.getdoc(getattr(spec.cls, spec.socket.attribute)))

    def _typed(
        self, service: str, attribute: str, shapes: SignatureShapes, func: Any, kind: str
    ) -> _Message:
        """The message of one handler, with the adapter its payload schema comes from."""
        message = self._message(f"{service}.{attribute}", kind, inspect.getdoc(func))
        types = shapes.param_types
        if shapes.takes_protobuf:
            (tp,) = types.values()
            message.name = tp.DESCRIPTOR.full_name
            message.content_type = self.amqp.CONTENT_TYPES["proto"]
            message.schema = {**transports.BINARY, "description": f"a protobuf {message.name}"}
            return message
        try:
            if not types:
                message.name = "Nothing"
                message.schema = {"description": "no payload: the handler takes none"}
            elif len(types) == 1:
                (tp,) = types.values()
                message.name = (
                    tp.__name__
                    if isinstance(tp, type)
                    else f"{_camel(service)}{_camel(attribute)}Payload"
                )
                message.adapter = pydantic.TypeAdapter(tp)
            else:
                defaults = {
                    p.name: p.default
                    for p in inspect.signature(func).parameters.values()
                    if p.default is not inspect.Parameter.empty
                }
                fields: dict[str, Any] = {
                    name: (tp, defaults.get(name, ...)) for name, tp in types.items()
                }
                message.name = f"{_camel(service)}{_camel(attribute)}Params"
                model = pydantic.create_model(
                    message.name, __config__=pydantic.ConfigDict(extra="forbid"), **fields
                )
                message.adapter = pydantic.TypeAdapter(model)
        except Exception as exc:  # an annotation pydantic cannot build a validator for
            log.warning("%s.%s: no schema in the AsyncAPI document (%s)", service, attribute, exc)
            message.schema = {}
        return message

    def _subscription(self, service: str, attribute: str, pattern: str, message: _Message) -> None:
        channel = self._channel(
            "publish",
            pattern,
            {
                "address": pattern,
                "title": f"publish {pattern}",
                "description": transports.PUBLISH,
                "servers": [{"$ref": "#/servers/mesh"}],
            },
        )
        self._receive(service, attribute, channel, message, {})

    def _socket(self, service: str, text: bool, doc: str | None) -> None:
        channel_id = self._channel(
            "socket",
            service,
            {
                "address": f"/ws/{service}",
                "title": f"socket {service}",
                "description": transports.SOCKET.format(service=service),
                "servers": [{"$ref": "#/servers/gateway"}],
                "bindings": {"ws": transports.WS_BINDING},
            },
        )
        messages = transports.socket_messages(text)
        for key, message in messages.items():
            self.fixed_messages[f"{service}.socket.{key}"] = message
            self.channels[channel_id]["messages"][key] = {
                "$ref": f"#/components/messages/{service}.socket.{key}"
            }
        frames = [key for key in ("binary", "text") if key in messages]
        for suffix, action, keys, summary in transports.SOCKET_OPERATIONS:
            refs = [ref for key in keys for ref in (frames if key == "frames" else [key])]
            operation: dict[str, Any] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "messages": [{"$ref": f"#/channels/{channel_id}/messages/{r}"} for r in refs],
                "summary": summary,
                "tags": [{"name": service}],
            }
            if suffix == "receive" and doc:
                operation["description"] = doc
            self.operations[_unique(f"{service}.socket.{suffix}", self.operations)] = operation

    def _receive(
        self,
        service: str,
        attribute: str,
        channel_id: str,
        message: _Message,
        extra: dict[str, Any],
    ) -> None:
        self.channels[channel_id]["messages"][message.id] = {
            "$ref": f"#/components/messages/{message.id}"
        }
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message.id}"}],
            "tags": [{"name": service}],
            **extra,
        }
        if message.doc:
            operation["summary"] = message.doc.splitlines()[0]
            operation["description"] = message.doc
        self.operations[_unique(f"{service}.{attribute}", self.operations)] = operation

    # ------------------------------------------------------------------ channels

    def _channel(self, kind: str, address: str, channel: dict[str, Any]) -> str:
        """The id of the channel of ``kind`` at ``address``, made from ``channel`` the
        first time."""
        found = self._channel_ids.get((kind, address))
        if found is not None:
            return found
        wanted = f"{kind}.{address.replace('*', '_star_').replace('#', '_hash_')}"
        channel_id = _unique(wanted.replace(":", "_colon_"), self.channels)
        self._channel_ids[(kind, address)] = channel_id
        self.channels[channel_id] = {**channel, "messages": {}}
        return channel_id

    def _broker_channel(self, kind: str, pattern: str) -> str:
        exchange: dict[str, Any] = {}
        if self.names is not None:
            exchange["name"] = self.names.events if kind == "event" else self.names.commands
        exchange.update(type="topic" if kind == "event" else "direct", durable=True)
        exchange["autoDelete"] = False
        description = (transports.EVENT if kind == "event" else transports.COMMAND).format(
            mesh=self.settings.mesh or "<mesh>", address=pattern
        )
        return self._channel(
            kind,
            pattern,
            {
                "address": pattern,
                "title": f"{kind} {pattern}",
                "description": description,
                "servers": [{"$ref": "#/servers/broker"}],
                "bindings": {
                    "amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0"}
                },
            },
        )

    # ------------------------------------------------------------------ messages

    def _schemas(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """Each typed message's payload schema, and the shared definitions; a type with
        no JSON Schema is left out (its payload is then any value), the others keep theirs."""
        mode: JsonSchemaMode = "validation"
        inputs = [(m.id, mode, m.adapter) for m in self.messages if m.adapter is not None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a default that has no JSON form
            try:
                found, top = pydantic.TypeAdapter.json_schemas(inputs, ref_template=_REF)
            except Exception:
                good = []
                for item in inputs:
                    try:
                        item[2].json_schema(mode=mode)
                    except Exception as exc:
                        log.warning("%s: no schema in the AsyncAPI document (%s)", item[0], exc)
                    else:
                        good.append(item)
                found, top = pydantic.TypeAdapter.json_schemas(good, ref_template=_REF)
        schemas = {key: _asyncapi_schema(dict(schema)) for (key, _), schema in found.items()}
        definitions = {name: _asyncapi_schema(s) for name, s in top.get("$defs", {}).items()}
        return schemas, definitions

    def _message_objects(self, schemas: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        objects: dict[str, Any] = {}
        for message in self.messages:
            payload = message.schema if message.schema is not None else schemas.get(message.id, {})
            found: dict[str, Any] = {
                "name": message.name or "Any",
                "title": message.id,
                "payload": payload,
            }
            if message.content_type:
                found["contentType"] = message.content_type
            if message.kind in ("event", "command"):
                found["traits"] = [{"$ref": "#/components/messageTraits/wiremesh"}]
                found["bindings"] = {
                    "amqp": {"messageType": message.kind, "bindingVersion": "0.3.0"}
                }
            if message.doc:
                found["summary"] = message.doc.splitlines()[0]
            objects[message.id] = found
        return objects


def _registry_only(
    specs: Mapping[str, ServiceSpec], snapshot: MeshSnapshot | None
) -> list[tuple[str, tuple[str, ...], bool | None]]:
    """``(service, publish patterns, socket takes text or None)`` for each service the
    registry lists and the specs do not cover."""
    if snapshot is None:
        return []
    found: dict[str, tuple[set[str], bool | None]] = {}
    for node in snapshot.nodes:
        if node.service in specs:
            continue
        patterns, socket = found.get(node.service, (set(), None))
        patterns.update(node.subscriptions)
        mark = node.metadata.get(SOCKET_KEY)
        if mark is not None:
            socket = bool(socket) or mark == "text"
        found[node.service] = (patterns, socket)
    return [(name, tuple(sorted(p)), s) for name, (p, s) in sorted(found.items())]


def _asyncapi_schema(schema: Any) -> Any:
    """``schema`` as an AsyncAPI Schema Object (JSON Schema draft 07 and a few words):
    pydantic's OpenAPI-style ``discriminator`` object becomes ``x-discriminator``, since
    AsyncAPI's ``discriminator`` is a property name only."""
    if isinstance(schema, list):
        return [_asyncapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "discriminator" and isinstance(value, dict) and "propertyName" in value:
            out["x-discriminator"] = value
        else:
            out[key] = _asyncapi_schema(value)
    return out


def _unique(wanted: str, taken: Mapping[str, Any]) -> str:
    found, n = wanted, 1
    while found in taken:
        n += 1
        found = f"{wanted}-{n}"
    return found


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]+", name) if part)

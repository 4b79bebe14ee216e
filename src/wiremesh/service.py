"""Services: a class, decorated methods, and the spec the runtime reads from them.

>>> class Inventory(Service):
...     name = "inventory"
...
...     @rpc(idempotent=True)
...     async def stock(self, ctx: Context, sku: str) -> int:
...         return 3

Each ``@rpc`` method becomes a real gRPC method at ``/<service>/<method>``. Its payload
type is read from its annotations (see :mod:`wiremesh.core.shape`). Each ``@subscribe``
method receives the messages published to the topics its patterns match (see
``docs/publish.md``). The ``@on_socket`` method receives the messages of browser sessions
that a gateway pinned to the node (see ``docs/gateway.md``); ``on_session_open`` and
``on_session_close`` see those sessions begin and end. ``on_start`` and ``on_stop`` are the
service's own lifecycle hooks, for the resources it owns.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from wiremesh.core.model import MethodInfo
from wiremesh.core.names import SERVICE_NAME, is_method_name
from wiremesh.core.shape import SignatureShapes, signature_shapes
from wiremesh.core.topics import check_pattern
from wiremesh.errors import ConfigError, InvalidPayload

if TYPE_CHECKING:
    from wiremesh.context import MeshCaller
    from wiremesh.session import Session, Sessions

__all__ = [
    "MethodSpec",
    "Service",
    "ServiceProxy",
    "ServiceSpec",
    "SocketSpec",
    "SubscriptionSpec",
    "on_socket",
    "rpc",
    "subscribe",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_RPC_MARK = "__wiremesh_rpc__"
_SUBSCRIBE_MARK = "__wiremesh_subscribe__"
_SOCKET_MARK = "__wiremesh_socket__"


@dataclass(frozen=True)
class _RpcOptions:
    name: str | None
    idempotent: bool


@overload
def rpc(func: F, /) -> F: ...
@overload
def rpc(*, idempotent: bool = False, name: str | None = None) -> Callable[[F], F]: ...


def rpc(
    func: F | None = None, /, *, idempotent: bool = False, name: str | None = None
) -> F | Callable[[F], F]:
    """Mark an ``async def`` method of a :class:`Service` as callable over the mesh.

    ``idempotent=True`` lets a caller retry it on another node when one is unavailable;
    ``name`` overrides the method name on the wire.
    """

    def mark(f: F) -> F:
        is_async = inspect.iscoroutinefunction(f)
        if not is_async:
            raise TypeError(f"@rpc method {f.__qualname__} must be 'async def'")
        setattr(f, _RPC_MARK, _RpcOptions(name, idempotent))
        return f

    if func is not None:
        return mark(func)
    return mark


def subscribe(pattern: str, /, *patterns: str) -> Callable[[F], F]:
    """Mark an ``async def`` method of a :class:`Service` as a handler of published messages.

    The method receives every message published to a topic that one of the patterns
    matches (``*`` is exactly one word, ``#`` any number of words), at most once per
    message, in order per sender. Its payload is typed and validated like an ``@rpc``
    payload; a message that does not validate is logged and counted, never delivered::

        @subscribe("prices.*", "stock.eu.#")
        async def on_price(self, ctx: Context, price: Price) -> None: ...
    """
    checked = tuple(_checked_pattern(p, "@subscribe") for p in (pattern, *patterns))

    def mark(f: F) -> F:
        is_async = inspect.iscoroutinefunction(f)  # (no TypeGuard narrowing of F)
        if not is_async:
            raise TypeError(f"@subscribe method {f.__qualname__} must be 'async def'")
        # stacked decorators add up: @subscribe("a") @subscribe("b") takes both
        before: tuple[str, ...] = getattr(f, _SUBSCRIBE_MARK, ())
        setattr(f, _SUBSCRIBE_MARK, tuple(dict.fromkeys((*before, *checked))))
        return f

    return mark


@overload
def on_socket(func: F, /) -> F: ...
@overload
def on_socket(*, text: bool = False) -> Callable[[F], F]: ...


def on_socket(func: F | None = None, /, *, text: bool = False) -> F | Callable[[F], F]:
    """Mark the ``async def`` method of a :class:`Service` that receives browser messages.

    A gateway pins each browser session (``wss://<gateway>/ws/<service>``) to one node of
    the service; that node's method gets every binary message of the session, in order,
    with the :class:`~wiremesh.Session`::

        @on_socket
        async def socket(self, session: Session, frame: bytes) -> None:
            await session.send(frame)

    ``text=True`` lets text messages through too (as ``str``); otherwise the gateway closes
    a session that sends one with 1003. One ``@on_socket`` method per service.
    """

    def mark(f: F) -> F:
        is_async = inspect.iscoroutinefunction(f)
        if not is_async:
            raise TypeError(f"@on_socket method {f.__qualname__} must be 'async def'")
        setattr(f, _SOCKET_MARK, SocketSpec(f.__name__, text))
        return f

    if func is not None:
        return mark(func)
    return mark


def _checked_pattern(pattern: object, where: str) -> str:
    if not isinstance(pattern, str):
        hint = ' (write @subscribe("topic.pattern"), with the pattern)' if callable(pattern) else ""
        raise ConfigError(f"{where}: a topic pattern is a string, not {pattern!r}{hint}")
    try:
        return check_pattern(pattern)
    except InvalidPayload as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    attribute: str
    idempotent: bool
    shapes: SignatureShapes

    @property
    def info(self) -> MethodInfo:
        return MethodInfo(self.name, self.idempotent, self.shapes.returns_protobuf)


@dataclass(frozen=True)
class SubscriptionSpec:
    """One ``@subscribe`` method: its attribute, its patterns and its payload shape."""

    attribute: str
    patterns: tuple[str, ...]
    shapes: SignatureShapes


@dataclass(frozen=True)
class SocketSpec:
    """The ``@on_socket`` method: its attribute, and whether it takes text messages."""

    attribute: str
    text: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    cls: type[Service]
    methods: dict[str, MethodSpec]
    #: ``(pattern, handler)`` for every pattern of every ``@subscribe`` method, in the
    #: order the methods are defined (base classes first)
    subscriptions: tuple[tuple[str, SubscriptionSpec], ...] = ()
    #: the ``@on_socket`` method, if the service has one
    socket: SocketSpec | None = None

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every topic pattern the service subscribes to, once each, sorted."""
        return tuple(sorted({pattern for pattern, _ in self.subscriptions}))

    @classmethod
    def of(cls, service_cls: type[Service]) -> ServiceSpec:
        name = getattr(service_cls, "name", None)
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            raise ConfigError(
                f"{service_cls.__qualname__}.name must be a lowercase service name "
                f"(letters, digits, '-' and '_', starting with a letter), not {name!r}"
            )
        methods: dict[str, MethodSpec] = {}
        for attribute, member in inspect.getmembers(service_cls, inspect.isfunction):
            options = getattr(member, _RPC_MARK, None)
            if not isinstance(options, _RpcOptions):
                continue
            wire_name = options.name or attribute
            if not is_method_name(wire_name):
                raise ConfigError(f"{service_cls.__qualname__}: bad method name {wire_name!r}")
            try:
                shapes = signature_shapes(member, skip=2)
            except TypeError as exc:
                raise ConfigError(str(exc)) from exc
            taken = methods.get(wire_name)
            if taken is not None:  # one of them would silently never be served
                raise ConfigError(
                    f"{service_cls.__qualname__}: methods {taken.attribute!r} and "
                    f"{attribute!r} are both served as {wire_name!r}"
                )
            methods[wire_name] = MethodSpec(wire_name, attribute, options.idempotent, shapes)
        return cls(
            name, service_cls, methods, _subscriptions_of(service_cls), _socket_of(service_cls)
        )


def _socket_of(service_cls: type[Service]) -> SocketSpec | None:
    found: list[SocketSpec] = []
    for attribute, member in inspect.getmembers(service_cls, inspect.isfunction):
        spec = getattr(member, _SOCKET_MARK, None)
        if isinstance(spec, SocketSpec):
            found.append(SocketSpec(attribute, spec.text))
    if len(found) > 1:
        names = ", ".join(repr(s.attribute) for s in found)
        raise ConfigError(
            f"{service_cls.__qualname__}: one @on_socket method per service, not {names}"
        )
    return found[0] if found else None


def _subscriptions_of(service_cls: type[Service]) -> tuple[tuple[str, SubscriptionSpec], ...]:
    """The ``@subscribe`` methods of ``service_cls`` in definition order, base classes first;
    a method overridden without ``@subscribe`` subscribes to nothing."""
    attributes: dict[str, None] = {}
    for klass in reversed(service_cls.__mro__):
        for attribute, value in vars(klass).items():
            if inspect.isfunction(value):
                attributes[attribute] = None
    found: list[tuple[str, SubscriptionSpec]] = []
    for attribute in attributes:
        member = getattr(service_cls, attribute, None)
        marked = getattr(member, _SUBSCRIBE_MARK, None)
        if member is None or not isinstance(marked, tuple):
            continue
        where = f"{service_cls.__qualname__}.{attribute}"
        if not marked:
            raise ConfigError(f"{where}: @subscribe needs at least one topic pattern")
        patterns = tuple(_checked_pattern(p, where) for p in marked)
        try:
            shapes = signature_shapes(member, skip=2)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        spec = SubscriptionSpec(attribute, patterns, shapes)
        found.extend((pattern, spec) for pattern in patterns)
    return tuple(found)


class Service:
    """Base class of every service. Set ``name``; mark methods with :func:`rpc` and
    :func:`subscribe`.

    Set by the runtime before ``on_start``: ``node_id``, ``data_dir`` (this service's own
    folder under the mesh's data folder), ``mesh`` (a caller for calls made outside a
    handler, e.g. from a background task; inside a handler prefer ``ctx.call``) and
    ``sessions`` (the browser sessions: push to one by id, or to every session of a
    principal, wherever they are held; see :class:`~wiremesh.session.Sessions`).
    """

    name: ClassVar[str]
    node_id: str = ""
    data_dir: Path = Path(".")
    mesh: MeshCaller
    sessions: Sessions

    async def on_start(self) -> None:
        """Called once before the node takes calls: open what the service owns."""

    async def on_stop(self) -> None:
        """Called once after the last in-flight call has finished: close what it owns."""

    async def on_session_open(self, session: Session) -> None:
        """A browser session was pinned to this node, before its first message arrives.

        ``session.principal`` and ``session.claims`` say who it is; raise
        :class:`~wiremesh.PermissionDenied` to refuse it (the browser sees close code 4003).
        """

    async def on_session_close(self, session: Session, code: int, reason: str) -> None:
        """A session of this node ended (``code`` is the WebSocket close code), after its
        last message was handled."""


class ServiceProxy:
    """A dependency on another service: ``await self.pricing.quote(payload)``.

    Inside a handler, the call inherits the handler's deadline. Replace it in tests with
    any object that has the same async methods (see :mod:`wiremesh.testing`).

    >>> class Flows(Service):
    ...     name = "flows"
    ...     connectors = ServiceProxy("connectors")
    """

    def __init__(self, service: str, *, returns: dict[str, Any] | None = None) -> None:
        self.service = service
        self._returns = returns or {}

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = name

    def __get__(self, instance: Service | None, owner: type) -> Any:
        if instance is None:
            return self
        return _BoundProxy(self.service, instance, self._returns)


class _BoundProxy:
    def __init__(self, service: str, owner: Service, returns: dict[str, Any]) -> None:
        self._service = service
        self._owner = owner
        self._returns = returns

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        from wiremesh.context import current_context

        async def call(payload: Any = None, **options: Any) -> Any:
            options.setdefault("returns", self._returns.get(method))
            target = f"{self._service}.{method}"
            ctx = current_context()
            if ctx is not None:
                return await ctx.call(target, payload, **options)
            return await self._owner.mesh.call(target, payload, **options)

        return call

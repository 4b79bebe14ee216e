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
``docs/publish.md``). Each ``@on_event`` method consumes the durable events whose topics
its patterns match, and each ``@command`` method the commands sent to
``<service>.<command>`` (see ``docs/messaging.md``). Each ``@timer`` and ``@cron`` method
runs on a schedule, once per mesh or on every node (see ``docs/timers.md``). The
``@on_socket`` method receives the messages of browser sessions that a gateway pinned to
the node (see ``docs/gateway.md``); ``on_session_open`` and ``on_session_close`` see
those sessions begin and end. ``on_start`` and ``on_stop`` are the service's own
lifecycle hooks, for the resources it owns.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

from wiremesh.core.channels import ChannelRules, check_channel_pattern
from wiremesh.core.delivery import Delivery
from wiremesh.core.model import MethodInfo
from wiremesh.core.names import SERVICE_NAME, is_method_name
from wiremesh.core.schedule import TICK_PREFIX, Cron, Every, Schedule
from wiremesh.core.shape import SignatureShapes, signature_shapes
from wiremesh.core.streams import StreamShapes, stream_shapes
from wiremesh.core.topics import check_pattern
from wiremesh.errors import ConfigError, InvalidPayload
from wiremesh.middleware import Middleware, check_middleware

if TYPE_CHECKING:
    from wiremesh.channels import SubscribeRequest
    from wiremesh.channels.node import Channels
    from wiremesh.context import MeshCaller
    from wiremesh.messaging.store import Store
    from wiremesh.session import Session, Sessions

__all__ = [
    "HandlerSpec",
    "MethodSpec",
    "Service",
    "ServiceProxy",
    "ServiceSpec",
    "SocketSpec",
    "SubscriptionSpec",
    "TimerSpec",
    "command",
    "cron",
    "on_event",
    "on_socket",
    "rpc",
    "subscribe",
    "timer",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_RPC_MARK = "__wiremesh_rpc__"
_SUBSCRIBE_MARK = "__wiremesh_subscribe__"
_HANDLER_MARK = "__wiremesh_handler__"

_DELIVERIES = ("pool", "broadcast", "singleton")
#: handler runs at once per node when a decorator does not say
DEFAULT_CONCURRENCY = 8
_SOCKET_MARK = "__wiremesh_socket__"
_TIMER_MARK = "__wiremesh_timer__"

#: ``"once"``: one node of the whole mesh runs each tick; ``"every_node"``: each node does
TimerDelivery = Literal["once", "every_node"]
_TIMER_DELIVERIES = ("once", "every_node")


@dataclass(frozen=True)
class _RpcOptions:
    name: str | None
    idempotent: bool
    max_concurrency: int | None = None
    max_queue: int = 0


@overload
def rpc(func: F, /) -> F: ...
@overload
def rpc(
    *,
    idempotent: bool = False,
    name: str | None = None,
    max_concurrency: int | None = None,
    max_queue: int = 0,
) -> Callable[[F], F]: ...


def rpc(
    func: F | None = None,
    /,
    *,
    idempotent: bool = False,
    name: str | None = None,
    max_concurrency: int | None = None,
    max_queue: int = 0,
) -> F | Callable[[F], F]:
    """Mark an ``async def`` method of a :class:`Service` as callable over the mesh.

    ``idempotent=True`` lets a caller retry it on another node when one is unavailable;
    ``name`` overrides the method name on the wire. ``max_concurrency`` is the method's
    bulkhead: a node runs at most that many of its calls at once, and lets ``max_queue``
    more wait (each until its deadline); past both it refuses a call at once, unrun, with
    :class:`~wiremesh.errors.Overloaded`, and the caller tries another node
    (:mod:`wiremesh.core.bulkhead`). Without it, a method's calls are not limited.

    A method that returns an async iterator (``-> AsyncIterator[Item]``, or an ``async
    def`` with ``yield``) streams its answer; one whose only parameter is an
    ``AsyncIterator[Item]`` takes a stream; both is a bidirectional stream (see
    ``docs/streams.md``; callers use ``ctx.stream``).
    """
    if max_concurrency is None:
        if max_queue:
            raise TypeError("@rpc: max_queue needs max_concurrency")
    elif isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise TypeError(
            f"@rpc: max_concurrency must be a whole number from 1, not {max_concurrency!r}"
        )
    if isinstance(max_queue, bool) or max_queue < 0:
        raise TypeError(f"@rpc: max_queue must be a whole number from 0, not {max_queue!r}")

    def mark(f: F) -> F:
        is_async = inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
        if not is_async:
            raise TypeError(f"@rpc method {f.__qualname__} must be 'async def'")
        setattr(f, _RPC_MARK, _RpcOptions(name, idempotent, max_concurrency, max_queue))
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


@dataclass(frozen=True)
class _HandlerOptions:
    kind: Literal["event", "command"]
    patterns: tuple[str, ...]
    delivery: Delivery
    concurrency: int
    name: str | None = None


def on_event(
    pattern: str,
    /,
    *patterns: str,
    delivery: Delivery = "pool",
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Callable[[F], F]:
    """Mark an ``async def`` method of a :class:`Service` as a handler of durable events.

    It receives every event emitted to a topic that one of the patterns matches (``*`` is
    one word, ``#`` any number of words), at least once: the message is acknowledged
    after the method returns, retried with backoff when it raises, and dead-lettered
    after the configured attempts. ``delivery``: ``"pool"`` (one node of the service
    handles each event), ``"broadcast"`` (every node of the service does) or
    ``"singleton"`` (one node at a time handles them all). ``concurrency``: most events
    this method handles at once on one node::

        @on_event("orders.created", "orders.updated", concurrency=4)
        async def order_changed(self, ctx: Context, order: Order) -> None: ...
    """
    checked = tuple(_checked_pattern(p, "@on_event") for p in (pattern, *patterns))
    if delivery not in _DELIVERIES:
        raise ConfigError(f"@on_event: delivery must be one of {', '.join(_DELIVERIES)}")
    _check_concurrency(concurrency, "@on_event")
    return _mark_handler(_HandlerOptions("event", checked, delivery, concurrency), "@on_event")


@overload
def command(func: F, /) -> F: ...
@overload
def command(
    *, name: str | None = None, concurrency: int = DEFAULT_CONCURRENCY
) -> Callable[[F], F]: ...


def command(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> F | Callable[[F], F]:
    """Mark an ``async def`` method of a :class:`Service` as the handler of a durable
    command: ``await ctx.send("<service>.<name>", payload)`` reaches one node of the
    service, at least once, with the same retries and dead letters as events. ``name``
    defaults to the method's name."""
    if name is not None and not is_method_name(name):
        raise ConfigError(f"@command: bad command name {name!r}")
    _check_concurrency(concurrency, "@command")
    mark = _mark_handler(_HandlerOptions("command", (), "pool", concurrency, name), "@command")

    if func is not None:
        return mark(func)
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


def timer(*, every: float | timedelta, delivery: TimerDelivery = "once") -> Callable[[F], F]:
    """Run an ``async def`` method of a :class:`Service` every ``every`` seconds (a
    number, 1 or more, or a :class:`~datetime.timedelta`), at the whole multiples of it
    since the Unix epoch: ``every=60`` ticks at the start of each UTC minute.

    ``delivery="once"`` (the default): one node of the whole mesh runs each tick, however
    many replicas run on however many hosts; the tick goes through the broker, so a node
    killed mid-tick hands it to another (at least once) and a tick that fell due while
    every node was down runs once when one returns. ``"every_node"``: each node runs
    each tick by itself. The method takes only the context; ``ctx.tick`` is the tick's
    time (an aware :class:`~datetime.datetime`), the same on every try of it::

        @timer(every=30)
        async def poll(self, ctx: Context) -> None: ...
    """
    schedule = Every.of(every)
    return _mark_timer(schedule, delivery, "@timer")


def cron(
    expression: str, /, *, tz: str = "UTC", delivery: TimerDelivery = "once"
) -> Callable[[F], F]:
    """Run an ``async def`` method of a :class:`Service` at the times a five-field cron
    expression matches on the wall clock of ``tz`` (an IANA time zone name)::

        @cron("*/5 * * * *", tz="Europe/Berlin")
        async def sync(self, ctx: Context) -> None: ...

    ``delivery`` and ``ctx.tick`` as for :func:`timer`.
    """
    return _mark_timer(Cron(expression, tz), delivery, "@cron")


def _mark_timer(schedule: Schedule, delivery: str, where: str) -> Callable[[F], F]:
    if delivery not in _TIMER_DELIVERIES:
        raise ConfigError(f"{where}: delivery must be 'once' or 'every_node', not {delivery!r}")
    return _mark_once(_TIMER_MARK, (schedule, delivery), where, "@timer or @cron")


def _check_concurrency(concurrency: object, where: str) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"{where}: concurrency must be a positive integer, not {concurrency!r}")


def _mark_handler(options: _HandlerOptions, where: str) -> Callable[[F], F]:
    return _mark_once(_HANDLER_MARK, options, where, "@on_event or @command")


def _mark_once(attribute: str, value: object, where: str, which: str) -> Callable[[F], F]:
    """A decorator (``where``) that sets ``attribute`` of an ``async def`` method to
    ``value``; a method takes one of ``which``."""

    def mark(f: F) -> F:
        is_async = inspect.iscoroutinefunction(f)
        if not is_async:
            raise TypeError(f"{where} method {f.__qualname__} must be 'async def'")
        if getattr(f, attribute, None) is not None:
            raise ConfigError(f"{f.__qualname__}: one {which} per method")
        setattr(f, attribute, value)
        return f

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
    #: the bulkhead (``@rpc(max_concurrency=…, max_queue=…)``); None: no limit
    max_concurrency: int | None = None
    max_queue: int = 0
    #: a streaming method's kind and item types (:func:`wiremesh.core.streams.stream_kind`)
    stream: StreamShapes | None = None

    @property
    def info(self) -> MethodInfo:
        streaming = "" if self.stream is None else self.stream.kind
        return MethodInfo(self.name, self.idempotent, self.shapes.returns_protobuf, streaming)


@dataclass(frozen=True)
class SubscriptionSpec:
    """One ``@subscribe`` method: its attribute, its patterns and its payload shape."""

    attribute: str
    patterns: tuple[str, ...]
    shapes: SignatureShapes


@dataclass(frozen=True)
class HandlerSpec:
    """One ``@on_event`` or ``@command`` method: what it consumes and how."""

    #: the method's name, also the handler's name in its queue (``service/handler``)
    attribute: str
    kind: Literal["event", "command"]
    #: event topic patterns, or ``("<service>.<command>",)``
    patterns: tuple[str, ...]
    delivery: Delivery
    concurrency: int
    shapes: SignatureShapes


@dataclass(frozen=True)
class TimerSpec:
    """One ``@timer`` or ``@cron`` method: when it ticks and where it runs."""

    #: the method's name, also its handler's name (``service/tick:<attribute>``)
    attribute: str
    schedule: Schedule
    delivery: TimerDelivery
    shapes: SignatureShapes

    def target(self, service: str) -> str:
        """The command its ticks travel as (``once``): ``<service>.tick:<attribute>``."""
        return f"{service}.{TICK_PREFIX}{self.attribute}"


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
    #: the ``@on_event`` and ``@command`` methods
    handlers: tuple[HandlerSpec, ...] = ()
    #: the ``@on_socket`` method, if the service has one
    socket: SocketSpec | None = None
    #: the service's middleware, outermost first (:mod:`wiremesh.middleware`)
    middleware: tuple[Middleware, ...] = ()
    #: the ``@timer`` and ``@cron`` methods
    timers: tuple[TimerSpec, ...] = ()

    @property
    def needs_broker(self) -> bool:
        """Whether the service's nodes consume from a broker: for its event and command
        handlers, and its timers that run once per mesh."""
        return bool(self.handlers) or any(t.delivery == "once" for t in self.timers)

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
                stream = stream_shapes(member, skip=2)
                shapes = signature_shapes(member, skip=2, stream=stream)
            except TypeError as exc:
                raise ConfigError(str(exc)) from exc
            if stream is not None and options.max_concurrency is not None:
                raise ConfigError(
                    f"{service_cls.__qualname__}.{attribute}: a streaming method has no "
                    "bulkhead (max_concurrency): its streams last as long as their callers"
                )
            taken = methods.get(wire_name)
            if taken is not None:  # one of them would silently never be served
                raise ConfigError(
                    f"{service_cls.__qualname__}: methods {taken.attribute!r} and "
                    f"{attribute!r} are both served as {wire_name!r}"
                )
            methods[wire_name] = MethodSpec(
                wire_name,
                attribute,
                options.idempotent,
                shapes,
                options.max_concurrency,
                options.max_queue,
                stream,
            )
        handlers = _handlers_of(service_cls, name)
        _check_owned_channels(service_cls)
        return cls(
            name,
            service_cls,
            methods,
            _subscriptions_of(service_cls),
            handlers,
            _socket_of(service_cls),
            check_middleware(service_cls.__qualname__, service_cls.middleware),
            _timers_of(service_cls),
        )


def _timers_of(service_cls: type[Service]) -> tuple[TimerSpec, ...]:
    found: list[TimerSpec] = []
    for attribute, member in inspect.getmembers(service_cls, inspect.isfunction):
        marked = getattr(member, _TIMER_MARK, None)
        if marked is None:
            continue
        where = f"{service_cls.__qualname__}.{attribute}"
        if getattr(member, _RPC_MARK, None) or getattr(member, _HANDLER_MARK, None):
            raise ConfigError(f"{where}: a timer is not also an @rpc, @on_event or @command")
        if not is_method_name(attribute):
            raise ConfigError(f"{where}: a timer's name is a plain identifier")
        try:
            shapes = signature_shapes(member, skip=2)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        if shapes.param_types:
            names = ", ".join(shapes.param_types)
            raise ConfigError(f"{where}: a timer takes only (self, ctx), not {names}")
        schedule, delivery = marked
        found.append(TimerSpec(attribute, schedule, delivery, shapes))
    return tuple(found)


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


def _check_owned_channels(service_cls: type[Service]) -> None:
    """``owns_channels`` maps channel name patterns to :class:`ChannelRules`."""
    owned = getattr(service_cls, "owns_channels", {})
    where = f"{service_cls.__qualname__}.owns_channels"
    if not isinstance(owned, Mapping):
        raise ConfigError(f"{where} maps channel patterns to Channel(...), not {owned!r}")
    for pattern, rules in owned.items():
        if not isinstance(rules, ChannelRules):
            raise ConfigError(f"{where}[{pattern!r}] must be a Channel(...), not {rules!r}")
        try:
            check_channel_pattern(pattern)
        except InvalidPayload as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        if rules.history_size < 0 or not rules.history_ttl > 0:
            raise ConfigError(
                f"{where}[{pattern!r}]: history_size is 0 or more and history_ttl more than 0"
            )


def _handlers_of(service_cls: type[Service], service: str) -> tuple[HandlerSpec, ...]:
    found: list[HandlerSpec] = []
    commands: dict[str, str] = {}
    for attribute, member in inspect.getmembers(service_cls, inspect.isfunction):
        options = getattr(member, _HANDLER_MARK, None)
        if not isinstance(options, _HandlerOptions):
            continue
        try:
            shapes = signature_shapes(member, skip=2)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        patterns = options.patterns
        if options.kind == "command":
            command_name = options.name or attribute
            taken = commands.get(command_name)
            if taken is not None:
                raise ConfigError(
                    f"{service_cls.__qualname__}: methods {taken!r} and {attribute!r} both "
                    f"handle the command {command_name!r}"
                )
            commands[command_name] = attribute
            patterns = (f"{service}.{command_name}",)
        found.append(
            HandlerSpec(
                attribute, options.kind, patterns, options.delivery, options.concurrency, shapes
            )
        )
    return tuple(found)


class Service:
    """Base class of every service. Set ``name``; mark methods with :func:`rpc` and
    :func:`subscribe`.

    Set by the runtime before ``on_start``: ``node_id``, ``data_dir`` (this service's own
    folder under the mesh's data folder), ``mesh`` (a caller for calls made outside a
    handler, e.g. from a background task; inside a handler prefer ``ctx.call``) and
    ``store`` (the service's own database, see :class:`wiremesh.messaging.store.Store`).
    ``sessions`` (the browser sessions: push to one by id, or to every session of a
    principal, wherever they are held; see :class:`~wiremesh.session.Sessions`).
    ``channels`` (publish to a channel, subscribe a session, presence; see
    :class:`~wiremesh.channels.node.Channels`).

    ``owns_channels`` declares the channels the service owns, by name pattern (``*``
    stands for any run of characters), with their rules (history, presence, who may
    subscribe: :class:`~wiremesh.channels.Channel`); its nodes' ``on_subscribe`` decides
    who may subscribe to them.

    ``middleware`` lists hooks that run before, after and on the error of every handler
    of the service, outermost first (:mod:`wiremesh.middleware`).
    """

    name: ClassVar[str]
    owns_channels: ClassVar[Mapping[str, ChannelRules]] = {}
    middleware: ClassVar[Sequence[Middleware]] = ()
    node_id: str = ""
    data_dir: Path = Path(".")
    mesh: MeshCaller
    store: Store
    sessions: Sessions
    channels: Channels

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

    async def on_subscribe(self, request: SubscribeRequest) -> bool:
        """May ``request.principal`` subscribe to ``request.channel``, a channel this
        service owns? Asked by the gateway for every subscription (unless the channel's
        rules say ``anyone``); return True to allow. The default allows nobody. Raising
        :class:`~wiremesh.PermissionDenied` refuses too, with its message as the reason."""
        return False


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

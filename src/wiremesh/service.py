"""Services: a class, decorated methods, and the spec the runtime reads from them.

>>> class Inventory(Service):
...     name = "inventory"
...
...     @rpc(idempotent=True)
...     async def stock(self, ctx: Context, sku: str) -> int:
...         return 3

Each ``@rpc`` method becomes a real gRPC method at ``/<service>/<method>``. Its payload
type is read from its annotations (see :mod:`wiremesh.core.shape`). ``on_start`` and
``on_stop`` are the service's own lifecycle hooks, for the resources it owns.
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
from wiremesh.errors import ConfigError

if TYPE_CHECKING:
    from wiremesh.context import MeshCaller

__all__ = ["MethodSpec", "Service", "ServiceProxy", "ServiceSpec", "rpc"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_RPC_MARK = "__wiremesh_rpc__"


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
class ServiceSpec:
    name: str
    cls: type[Service]
    methods: dict[str, MethodSpec]

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
        return cls(name, service_cls, methods)


class Service:
    """Base class of every service. Set ``name``; mark methods with :func:`rpc`.

    Set by the runtime before ``on_start``: ``node_id``, ``data_dir`` (this service's own
    folder under the mesh's data folder) and ``mesh`` (a caller for calls made outside a
    handler, e.g. from a background task; inside a handler prefer ``ctx.call``).
    """

    name: ClassVar[str]
    node_id: str = ""
    data_dir: Path = Path(".")
    mesh: MeshCaller

    async def on_start(self) -> None:
        """Called once before the node takes calls: open what the service owns."""

    async def on_stop(self) -> None:
        """Called once after the last in-flight call has finished: close what it owns."""


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

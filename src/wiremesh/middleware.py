"""Middleware: hooks before, after and on the error of every handler of a service.

A service lists its middleware, outermost first; each one overrides the hooks it needs::

    class AuditLog(Middleware):
        async def after(self, run: Invocation, result: object) -> None:
            audit.info("%s %s.%s by %s", run.kind, run.service, run.handler, run.principal)

    class Orders(Service):
        name = "orders"
        middleware = (AuditLog(), PerPrincipalRate(per_second=5))

The hooks run around every entrypoint of the service's nodes: calls (``@rpc``, from the
mesh, a foreign gRPC client or the HTTP door), streaming calls (around the whole
stream), ``@subscribe`` messages, ``@on_event`` and ``@command`` messages, the ticks of
``@timer`` and ``@cron`` methods, and the frames of browser sessions (``@on_socket``).
Each sees one :class:`Invocation`: the kind of entrypoint, the handler, its decoded
arguments, the
:class:`~wiremesh.Context` (None for a socket frame, whose ``session`` it has instead)
and the principal when one is known.

Order, as nested wrappers: every ``before`` in the listed order, then the handler, then
every ``after`` in reverse order; when the handler (or a ``before``, or an ``after``)
raises, the ``on_error`` of each middleware whose ``before`` had run, in reverse order,
then the error goes on to the entrypoint as if the handler had raised it. So a ``before``
that raises refuses the run: :class:`~wiremesh.RateLimited` from a call's middleware
reaches its caller as ``rate_limited`` (HTTP 429), fails a message (which is retried
later, as any failed handling), or closes a browser session with code 4029. ``on_error``
cannot swallow the error; an exception it raises itself replaces the error. A cancelled
handler (its caller went away, its deadline passed) runs no ``after`` and no
``on_error``.

A service without middleware pays nothing: its handlers are called as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from wiremesh.errors import ConfigError

if TYPE_CHECKING:
    from wiremesh.context import Context
    from wiremesh.session import Session

__all__ = ["Invocation", "Kind", "Middleware", "around", "chain_of", "check_middleware"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: what brought the work: a call, a streaming call, a published message, a durable event
#: or command, a timer's tick, a browser session's frame
Kind = Literal["call", "stream", "publish", "event", "command", "timer", "socket"]

#: the metadata key under which the HTTP door (and any caller that sets it) names the
#: principal of a call
_PRINCIPAL_KEY = "principal"


@dataclass(slots=True)
class Invocation:
    """One run of a handler, as its middleware sees it."""

    #: the kind of entrypoint
    kind: Kind
    #: the service and the handler (a call's method name on the wire, else the
    #: handler's attribute name)
    service: str
    handler: str
    #: the handler's context (None for a socket frame)
    ctx: Context | None
    #: the handler's arguments after the context (a socket frame's: the session and the
    #: frame's data), decoded and validated
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: the browser session of a socket frame
    session: Session | None = None
    #: what the middleware wants to keep between its hooks for this run (a start time…)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def principal(self) -> str | None:
        """Who asked, when known: a browser session's principal, or the ``principal``
        metadata of a call (which the HTTP door sets from the token's subject)."""
        if self.session is not None:
            return self.session.principal
        if self.ctx is not None:
            value = self.ctx.metadata.get(_PRINCIPAL_KEY)
            if isinstance(value, str):
                return value
        return None


class Middleware:
    """Base class of a middleware: override any of the three hooks (each a no-op here)."""

    async def before(self, run: Invocation) -> None:
        """Before the handler; raise to refuse the run."""

    async def after(self, run: Invocation, result: Any) -> None:
        """After the handler returned ``result``."""

    async def on_error(self, run: Invocation, error: Exception) -> None:
        """After the handler (or a hook) raised ``error``; it goes on after this."""


def check_middleware(owner: str, middleware: object) -> tuple[Middleware, ...]:
    """``middleware`` as a tuple, or a :class:`ConfigError` naming ``owner``."""
    if isinstance(middleware, Middleware) or not isinstance(middleware, Sequence):
        raise ConfigError(f"{owner}.middleware is a sequence of Middleware(), not {middleware!r}")
    for item in middleware:
        if not isinstance(item, Middleware):
            raise ConfigError(
                f"{owner}.middleware holds {item!r}: each must be an instance of a "
                "wiremesh.Middleware subclass"
            )
    return tuple(middleware)


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


class _Chain:
    """The middleware of one service, with which hooks each one overrides (a hook left
    as the base class's is not awaited)."""

    __slots__ = ("after", "befores", "errors", "wraps")

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.wraps = tuple(middleware)
        #: for each, in order, whether it has a before
        self.befores = [_overrides(m, "before") for m in self.wraps]
        #: those with an after, innermost first
        self.after = [m for m in reversed(self.wraps) if _overrides(m, "after")]
        #: for each, in order, whether it has an on_error
        self.errors = [_overrides(m, "on_error") for m in self.wraps]

    async def run(self, run: Invocation, handler: Callable[[], Awaitable[Any]]) -> Any:
        entered = 0  # how many befores have run (or had none to run)
        try:
            for middleware, has_before in zip(self.wraps, self.befores, strict=True):
                if has_before:
                    await middleware.before(run)
                entered += 1
            result = await handler()
            for middleware in self.after:
                await middleware.after(run, result)
            return result
        except Exception as error:
            failure: Exception = error
            for index in reversed(range(entered)):
                if self.errors[index]:
                    try:
                        await self.wraps[index].on_error(run, failure)
                    except Exception as raised:
                        failure = raised
            if failure is error:
                raise
            raise failure from error


def chain_of(middleware: Sequence[Middleware]) -> _Chain | None:
    """What runs ``middleware`` around a handler: ``await chain.run(invocation, work)``,
    ``work`` an awaitable's factory (a whole stream, where :func:`around` takes a
    function to call); None when there is no middleware."""
    return _Chain(middleware) if middleware else None


def around(
    middleware: Sequence[Middleware],
    kind: Kind,
    service: str,
    handler: str,
    func: F,
) -> F:
    """``func`` (a handler, called ``func(ctx, *args, **kwargs)``, or
    ``func(session, data)`` for ``kind`` ``"socket"``) with ``middleware`` around it;
    ``func`` itself when there is none."""
    if not middleware:
        return func
    chain = _Chain(middleware)
    if kind == "socket":

        async def socket_frame(session: Session, data: Any) -> Any:
            run = Invocation(kind, service, handler, None, (session, data), session=session)
            return await chain.run(run, lambda: func(session, data))

        return cast("F", socket_frame)

    async def handle(ctx: Context, *args: Any, **kwargs: Any) -> Any:
        run = Invocation(kind, service, handler, ctx, args, kwargs)
        return await chain.run(run, lambda: func(ctx, *args, **kwargs))

    return cast("F", handle)

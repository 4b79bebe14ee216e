"""The gateway's ASGI application: ``websocket`` scopes to the WebSocket door, ``http``
scopes to the ASGI endpoints mounted on it, then to a small router.

The application is given its doors as plain ASGI callables and knows nothing else of
them: the WebSocket door (:class:`wiremesh.gateway.websocket.SocketDoor`) takes every
``websocket`` scope and the plain requests under ``/ws/`` (what an upgrade would get);
the HTTP door's endpoints (``POST /rpc/<service>/<method>``, ``/openapi.json``,
``/docs``, ``/readyz``; see :mod:`wiremesh.gateway.http_rpc`) are mounted at their paths
and asked first: they read and answer on their own. Routes are exact paths or path
prefixes, per method. Built in: ``GET /healthz``, ``GET /_wiremesh/wiremesh.js`` (the
JavaScript client), ``GET /metrics`` (Prometheus text), the mesh dashboard under
``/_mesh/`` (its data at ``/_mesh/state`` needs a token) and the static folder at ``/``.
Every HTTP answer is counted in the gateway's meter; every error is a problem
(:mod:`.problem`).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from wiremesh.errors import InternalError, NotFound, PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import TokenVerifier, check_access, find_token
from wiremesh.gateway.meter import GatewayMeter
from wiremesh.gateway.problem import (
    CONTENT_TYPE,
    GATEWAY_FAILED,
    Problem,
    method_not_allowed,
    problem_for,
)
from wiremesh.gateway.settings import GatewaySettings, SocketServiceSettings
from wiremesh.observability.dashboard import DASHBOARD_ASSETS, MeshState, asset

__all__ = [
    "Asgi",
    "GatewayApp",
    "Mount",
    "Request",
    "Response",
    "Router",
    "json_response",
    "problem_response",
]

log = logging.getLogger("wiremesh.gateway")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: an ASGI application or endpoint
Asgi = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]
#: an ASGI endpoint at a path: ``(path, endpoint, prefix)``, with ``prefix`` when it
#: takes every path under ``path`` too; it answers every method on its own
Mount = tuple[str, Asgi, bool]


class Request:
    """An HTTP request as a handler sees it (the body is read on demand)."""

    def __init__(self, scope: Mapping[str, Any], receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None

    async def body(self, limit: int) -> bytes | None:
        """The whole body, or None when it is over ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


class Response:
    def __init__(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.headers = [("content-type", content_type), *headers]

    async def __call__(self, send: Send, *, head: bool = False) -> None:
        headers = [(k.encode(), v.encode()) for k, v in self.headers]
        headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else self.body})


def json_response(status: int, value: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(
        status, json.dumps(value).encode(), content_type="application/json", headers=headers
    )


def problem_response(problem: Problem, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """``problem`` as an answer (with its ``Retry-After`` and ``Allow``), and ``headers``."""
    own = [(k.decode(), v.decode()) for k, v in problem.headers() if k != b"content-type"]
    return Response(
        problem.status, problem.encode(), content_type=CONTENT_TYPE, headers=[*own, *headers]
    )


def not_found(request: Request, detail: str = "") -> Response:
    """404: nothing at the request's path."""
    error = NotFound(detail or "nothing at this path")
    return problem_response(problem_for(error, request.path))


RouteHandler = Callable[[Request], Awaitable[Response]]


class Router:
    """HTTP handlers by method and path: exact paths first, then the longest prefix."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], RouteHandler] = {}
        self._prefixes: list[tuple[str, str, RouteHandler]] = []

    def add(self, method: str, path: str, handler: RouteHandler, *, prefix: bool = False) -> None:
        """Serve ``method`` requests for ``path`` (or every path under it, with ``prefix``)
        with ``handler``; ``GET`` routes answer ``HEAD`` too."""
        if prefix:
            self._prefixes.append((method.upper(), path, handler))
            self._prefixes.sort(key=lambda route: -len(route[1]))
        else:
            self._exact[(method.upper(), path)] = handler

    def find(self, method: str, path: str) -> tuple[RouteHandler | None, bool]:
        """The handler of a request, and whether the path is known under another method."""
        lookup = "GET" if method == "HEAD" else method
        handler = self._exact.get((lookup, path))
        if handler is not None:
            return handler, True
        known = any(p == path for _, p in self._exact)
        for route_method, route_prefix, route_handler in self._prefixes:
            if path.startswith(route_prefix):
                if route_method == lookup:
                    return route_handler, True
                known = True
        return None, known

    def allowed(self, path: str) -> str:
        """The methods ``path`` takes, for an ``Allow`` header (``GET`` brings ``HEAD``)."""
        methods = {m for m, p in self._exact if p == path}
        methods.update(m for m, prefix, _ in self._prefixes if path.startswith(prefix))
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))


class GatewayApp:
    """The ASGI application of one gateway (``gateway_id``).

    ``websocket`` is the WebSocket door: it takes every ``websocket`` scope, and the plain
    requests under ``/ws/``. ``mounts`` are the other ASGI endpoints, asked before the
    built-in routes (the HTTP door's, see
    :meth:`~wiremesh.gateway.http_rpc.HttpDoor.mounts`). ``settings`` say which built-in
    routes there are (``metrics``, ``dashboard``) and where the dashboard's token may
    travel, ``verifier`` checks it and ``dashboard`` is the document it opens; ``meter``
    counts every answer (and is ``/metrics``); ``static`` is the folder served at ``/``,
    ``client_js`` the JavaScript client.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        gateway_id: str,
        meter: GatewayMeter,
        verifier: TokenVerifier,
        dashboard: MeshState,
        websocket: Asgi,
        mounts: Iterable[Mount] = (),
        static: Path | None = None,
        client_js: Path | None = None,
    ) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.meter = meter
        self.verifier = verifier
        self.dashboard = dashboard
        self.websocket = websocket
        self._exact: dict[str, Asgi] = {}
        self._prefixes: list[tuple[str, Asgi]] = []
        for path, endpoint, prefix in [*mounts, ("/ws/", websocket, True)]:
            if prefix:
                self._prefixes.append((path, endpoint))
            else:
                self._exact[path] = endpoint
        self._prefixes.sort(key=lambda mount: -len(mount[0]))
        self.router = Router()
        self.static = static.resolve() if static is not None else None
        self.client_js = client_js
        self.router.add("GET", "/healthz", self._healthz)
        self.router.add("GET", "/_wiremesh/wiremesh.js", self._client_js)
        if settings.metrics:
            self.router.add("GET", "/metrics", self._metrics)
        if settings.dashboard.enabled:
            self.router.add("GET", "/_mesh", self._dashboard_home)
            self.router.add("GET", "/_mesh/", self._dashboard_asset, prefix=True)
        self.router.add("GET", "/", self._static, prefix=True)

    def mounted(self, path: str) -> Asgi | None:
        """The mounted endpoint that answers ``path``, if any (exact paths first, then
        the longest prefix)."""
        endpoint = self._exact.get(path)
        if endpoint is not None:
            return endpoint
        for prefix, prefixed in self._prefixes:
            if path.startswith(prefix):
                return prefixed
        return None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self.websocket(scope, receive, send)
            return
        if kind == "http":
            send = self._counted(send)
            endpoint = self.mounted(scope["path"])
            if endpoint is not None:  # it reads and answers on its own
                await endpoint(scope, receive, send)
                return
            request = Request(scope, receive)
            handler, known = self.router.find(request.method, request.path)
            if handler is None and known:
                allowed = self.router.allowed(request.path)
                response = problem_response(method_not_allowed(allowed, request.path))
            elif handler is None:
                response = not_found(request)
            else:
                try:
                    response = await handler(request)
                except Exception:
                    log.exception("HTTP handler for %s %s failed", request.method, request.path)
                    problem = problem_for(
                        InternalError(), request.path, internal_detail=GATEWAY_FAILED
                    )
                    response = problem_response(problem)
            await response(send, head=request.method == "HEAD")
            return
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _counted(self, send: Send) -> Send:
        """``send``, counting the answer's status and latency in the gateway's meter."""
        meter = self.meter
        started = time.perf_counter()

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                meter.http[message["status"]] += 1
                meter.http_seconds.observe(time.perf_counter() - started)
            await send(message)

        return counted

    # ------------------------------------------------------------------ built-in routes

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.meter.text(), content_type=CONTENT_TYPE_LATEST)

    async def _dashboard_home(self, request: Request) -> Response:
        return Response(307, b"", headers=(("location", "/_mesh/"),))

    async def _dashboard_asset(self, request: Request) -> Response:
        name = request.path.removeprefix("/_mesh/") or "dashboard.html"
        if name == "state":
            return await self._dashboard_state(request)
        content_type = DASHBOARD_ASSETS.get(name)
        if content_type is None:
            return not_found(request)
        return Response(
            200, asset(name), content_type=content_type, headers=(("cache-control", "no-cache"),)
        )

    async def _dashboard_state(self, request: Request) -> Response:
        """The dashboard's document, for a token that may see the mesh."""
        settings = self.settings
        token = find_token(request.headers, (), b"", cookie=settings.cookie_token)
        try:
            if token is None:
                raise Unauthenticated("no token: send 'Authorization: Bearer <JWT>'")
            identity = self.verifier.verify(token)
            rules = settings.dashboard
            check_access(
                identity.claims, SocketServiceSettings(scopes=rules.scopes, roles=rules.roles)
            )
        except (Unauthenticated, PermissionDenied) as exc:
            return problem_response(problem_for(exc, request.path))
        return json_response(200, await self.dashboard.document(), (("cache-control", "no-store"),))

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", "gateway": self.gateway_id})

    async def _client_js(self, request: Request) -> Response:
        path = self.client_js
        if path is None or not path.is_file():
            return not_found(request, "the JavaScript client is not installed")
        return Response(
            200,
            path.read_bytes(),
            content_type="text/javascript; charset=utf-8",
            headers=(("cache-control", "no-cache"),),
        )

    async def _static(self, request: Request) -> Response:
        root = self.static
        if root is None:
            return not_found(request)
        relative = request.path.lstrip("/")
        if any(part.startswith(".") for part in relative.split("/") if part):
            return not_found(request)
        target = (root / relative).resolve()
        if target != root and root not in target.parents:
            return not_found(request)
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            return not_found(request)
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in (
            "application/javascript",
            "application/json",
        ):
            content_type += "; charset=utf-8"
        return Response(
            200,
            target.read_bytes(),
            content_type=content_type,
            headers=(("cache-control", "no-cache"), ("x-content-type-options", "nosniff")),
        )

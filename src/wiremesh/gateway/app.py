"""The gateway's ASGI application: ``websocket`` scopes to the WebSocket door, ``http``
scopes to a small router.

Routes are exact paths or path prefixes, per method. The HTTP door
(``POST /rpc/<service>/<method>``, ``/openapi.json``, ``/docs``, ``/readyz``; see
:mod:`wiremesh.gateway.http_rpc`) is asked first: its endpoints read and answer on their
own. Built in: ``GET /healthz``, ``GET /ws/...`` (what an upgrade would get, see
:func:`wiremesh.gateway.websocket.check`), ``GET /_wiremesh/wiremesh.js`` (the JavaScript
client), ``GET /metrics`` (Prometheus text), the mesh dashboard under ``/_mesh/`` (its
data at ``/_mesh/state`` needs a token) and the static folder at ``/``. Every HTTP
answer is counted in the gateway's meter; every error is a problem (:mod:`.problem`).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from wiremesh.errors import InternalError, NotFound, PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import check_access, find_token
from wiremesh.gateway.problem import (
    CONTENT_TYPE,
    GATEWAY_FAILED,
    Problem,
    method_not_allowed,
    problem_for,
    upgrade_required,
)
from wiremesh.gateway.settings import SocketServiceSettings
from wiremesh.gateway.websocket import Refusal, check, refuse, serve_websocket
from wiremesh.observability import tracing
from wiremesh.observability.dashboard import DASHBOARD_ASSETS, asset

if TYPE_CHECKING:
    from wiremesh.gateway.server import Gateway

__all__ = ["GatewayApp", "Request", "Response", "Router", "json_response", "problem_response"]

log = logging.getLogger("wiremesh.gateway")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


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


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """HTTP handlers by method and path: exact paths first, then the longest prefix."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler, *, prefix: bool = False) -> None:
        """Serve ``method`` requests for ``path`` (or every path under it, with ``prefix``)
        with ``handler``; ``GET`` routes answer ``HEAD`` too."""
        if prefix:
            self._prefixes.append((method.upper(), path, handler))
            self._prefixes.sort(key=lambda route: -len(route[1]))
        else:
            self._exact[(method.upper(), path)] = handler

    def find(self, method: str, path: str) -> tuple[Handler | None, bool]:
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
    """The ASGI application of one :class:`~wiremesh.gateway.server.Gateway`."""

    def __init__(self, gateway: Gateway, *, static: Path | None, client_js: Path | None) -> None:
        self.gateway = gateway
        self.router = Router()
        self.static = static.resolve() if static is not None else None
        self.client_js = client_js
        self.router.add("GET", "/healthz", self._healthz)
        self.router.add("GET", "/ws/", self._probe, prefix=True)
        self.router.add("GET", "/_wiremesh/wiremesh.js", self._client_js)
        if gateway.settings.metrics:
            self.router.add("GET", "/metrics", self._metrics)
        if gateway.settings.dashboard.enabled:
            self.router.add("GET", "/_mesh", self._dashboard_home)
            self.router.add("GET", "/_mesh/", self._dashboard_asset, prefix=True)
        self.router.add("GET", "/", self._static, prefix=True)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if _is_socket_path(scope["path"]):
                await serve_websocket(self.gateway, scope, receive, send)
                return
            await receive()
            error = NotFound("no WebSocket here: use /ws/<service> or /ws/<service>/<node>")
            await refuse(send, scope, problem_for(error, scope["path"]))
            return
        if kind == "http":
            send = self._counted(send)
            door = self.gateway.http
            endpoint = door.route(scope["path"]) if door is not None else None
            if endpoint is not None:  # the HTTP door reads and answers on its own
                if tracing.enabled():
                    await self._traced(endpoint, scope, receive, send)
                else:
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
        meter = self.gateway.meter
        started = time.perf_counter()

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                meter.http[message["status"]] += 1
                meter.http_seconds.observe(time.perf_counter() - started)
            await send(message)

        return counted

    async def _traced(
        self,
        endpoint: Callable[..., Awaitable[None]],
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
    ) -> None:
        """The HTTP door's ``endpoint`` in a span that continues the request's trace (W3C
        ``traceparent`` header) or starts one; the call it makes is that span's child."""
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope.get("headers") or ()
            if key in (b"traceparent", b"tracestate")
        }
        span = tracing.server_span(f"{scope['method']} {scope['path']}", carrier)
        status = 0

        async def seen(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await endpoint(scope, receive, seen)
        finally:
            if span is not None:
                span.set("http.response.status_code", status)
                span.end("ok" if 0 < status < 500 else f"http_{status or 'aborted'}")

    # ------------------------------------------------------------------ built-in routes

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.gateway.meter.text(), content_type=CONTENT_TYPE_LATEST)

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
        gateway = self.gateway
        settings = gateway.settings
        token = find_token(request.headers, (), b"", cookie=settings.cookie_token)
        try:
            if token is None:
                raise Unauthenticated("no token: send 'Authorization: Bearer <JWT>'")
            identity = gateway.verifier.verify(token)
            rules = settings.dashboard
            check_access(
                identity.claims, SocketServiceSettings(scopes=rules.scopes, roles=rules.roles)
            )
        except (Unauthenticated, PermissionDenied) as exc:
            return problem_response(problem_for(exc, request.path))
        return json_response(
            200, await gateway.dashboard.document(), (("cache-control", "no-store"),)
        )

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", "gateway": self.gateway.gateway_id})

    async def _probe(self, request: Request) -> Response:
        if not _is_socket_path(request.path):
            return not_found(request, "use /ws/<service> or /ws/<service>/<node>")
        result = check(self.gateway, request.scope, count=False)
        if isinstance(result, Refusal):
            return problem_response(result.problem(request.path))
        accepted = upgrade_required(
            "this endpoint takes a WebSocket, which would be accepted", request.path
        )
        return problem_response(accepted, (("upgrade", "websocket"),))

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


def _is_socket_path(path: str) -> bool:
    parts = path.split("/")
    return len(parts) in (3, 4) and parts[1] == "ws" and all(parts[2:])

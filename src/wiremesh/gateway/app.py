"""The gateway's ASGI application: ``websocket`` scopes to the WebSocket door, ``http``
scopes to a small router.

Routes are exact paths or path prefixes, per method. The HTTP door
(``POST /rpc/<service>/<method>``, ``/openapi.json``, ``/docs``, ``/readyz``; see
:mod:`wiremesh.gateway.http_rpc`) is asked first: its endpoints read and answer on their
own. Built in: ``GET /healthz``, ``GET /ws/...`` (what an upgrade would get, see
:func:`wiremesh.gateway.websocket.check`), ``GET /_wiremesh/wiremesh.js`` (the JavaScript
client), ``GET /metrics`` (Prometheus text), the mesh dashboard under ``/_mesh/`` (its
data at ``/_mesh/state`` needs a token) and the static folder at ``/``. Every HTTP
answer is counted in the gateway's meter.
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

from wiremesh.errors import PermissionDenied, Unauthenticated
from wiremesh.gateway.auth import check_access, find_token
from wiremesh.gateway.websocket import Refusal, check, problem, serve_websocket
from wiremesh.observability import tracing
from wiremesh.observability.dashboard import DASHBOARD_ASSETS, asset
from wiremesh.runtime.gateway_settings import SocketServiceSettings

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


def problem_response(status: int, detail: str, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(
        status,
        problem(status, detail),
        content_type="application/problem+json",
        headers=headers,
    )


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
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/problem+json")],
                }
            )
            await send(
                {
                    "type": "websocket.http.response.body",
                    "body": problem(404, "no WebSocket here: use /ws/<service>"),
                }
            )
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
            if handler is None:
                status = 405 if known else 404
                response = problem_response(status, "method not allowed" if known else "not found")
            else:
                try:
                    response = await handler(request)
                except Exception:
                    log.exception("HTTP handler for %s %s failed", request.method, request.path)
                    response = problem_response(500, "internal error")
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
            return problem_response(404, "not found")
        return Response(
            200, asset(name), content_type=content_type, headers=(("cache-control", "no-cache"),)
        )

    async def _dashboard_state(self, request: Request) -> Response:
        """The dashboard's document, for a token that may see the mesh."""
        gateway = self.gateway
        settings = gateway.settings
        token = find_token(request.headers, (), b"", cookie=settings.cookie_token)
        if token is None:
            return problem_response(401, "no token: send 'Authorization: Bearer <JWT>'")
        try:
            identity = gateway.verifier.verify(token)
            rules = settings.dashboard
            check_access(
                identity.claims, SocketServiceSettings(scopes=rules.scopes, roles=rules.roles)
            )
        except Unauthenticated as exc:
            return problem_response(401, exc.message)
        except PermissionDenied as exc:
            return problem_response(403, exc.message)
        return json_response(
            200, await gateway.dashboard.document(), (("cache-control", "no-store"),)
        )

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", "gateway": self.gateway.gateway_id})

    async def _probe(self, request: Request) -> Response:
        if not _is_socket_path(request.path):
            return problem_response(404, "not found: use /ws/<service> or /ws/<service>/<node>")
        result = check(self.gateway, request.scope, count=False)
        if isinstance(result, Refusal):
            return problem_response(result.status, result.detail, result.headers)
        return problem_response(
            426,
            "upgrade required: this endpoint takes a WebSocket, which would be accepted",
            (("upgrade", "websocket"),),
        )

    async def _client_js(self, request: Request) -> Response:
        path = self.client_js
        if path is None or not path.is_file():
            return problem_response(404, "the JavaScript client is not installed")
        return Response(
            200,
            path.read_bytes(),
            content_type="text/javascript; charset=utf-8",
            headers=(("cache-control", "no-cache"),),
        )

    async def _static(self, request: Request) -> Response:
        root = self.static
        if root is None:
            return problem_response(404, "not found")
        relative = request.path.lstrip("/")
        if any(part.startswith(".") for part in relative.split("/") if part):
            return problem_response(404, "not found")
        target = (root / relative).resolve()
        if target != root and root not in target.parents:
            return problem_response(404, "not found")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            return problem_response(404, "not found")
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

"""The HTTP door: ``POST /rpc/<service>/<method>`` and the pages around it.

The door is an ASGI application (:meth:`HttpDoor.__call__`), mounted on the gateway's
application at the paths :meth:`HttpDoor.mounts` names, which are asked first; its
endpoints read and answer on their own (a body read under a deadline, a problem before the
body is read, ``Connection: close`` when the rest of a request is left unread), each in a
span that continues the request's trace when tracing is on. ``GET /healthz`` (the process
is up) is the gateway's. Paths:

- ``POST /rpc/<service>/<method>[?node=<id>]``: the JSON body is the method's payload; the
  answer is its result as JSON, or a problem (:mod:`.problem`). The call goes over the
  gateway's mesh links exactly as ``wiremesh call`` would (load balanced, retried on
  another node when the method is idempotent, to one node with ``?node=``); the node
  validates the payload as for any gRPC call. ``Wiremesh-Timeout: <seconds>`` sets the
  deadline (capped by ``[gateway.http] max_timeout``), and nested calls inherit it. The
  handler finds the token's subject in ``ctx.metadata["principal"]``. A server-streaming
  method answers with its items as they come (:meth:`HttpDoor._relay`): NDJSON, or
  server-sent events for ``Accept: text/event-stream``; the deadline covers the whole
  stream, a client that goes away cancels it, and an error after the first item ends
  the body with an error line (or event). A client-streaming or bidirectional method is
  not served (405, with an empty ``Allow``).
- ``GET /openapi.json``: the OpenAPI 3.1 document (:mod:`.openapi`).
- ``GET /asyncapi.json``: the AsyncAPI 3 document of the events, commands, publish topics
  and sockets (:mod:`.asyncapi`).
- ``GET /docs``: a page that renders both documents, served from the package (no CDN).
- ``GET /readyz``: 200 when every configured service has a live node in the gateway's view
  of the mesh; 503 with a problem naming what is missing otherwise. The view is the last
  one the registry gave: an outage of the registry alone never makes a gateway unready
  (it would take every gateway out of its load balancer at once); the body says
  ``"registry": "reachable"`` or ``"unreachable"``.

While the gateway stops (:meth:`HttpDoor.drain`), a new request gets a 503 problem; one
already running finishes within the drain's grace, or gets a 503 problem when the grace
ends (its call is cancelled), never a bare 500. Its calls belong to work that began when
the request arrived (``wm-work-age``): a draining node still takes them.

Order of the checks on ``/rpc``: method (405), token and access rules (401, 403), rate of
the principal (429), the principal's requests in flight (429), media type (415), declared
body size (413), body read within ``body_timeout`` (408, 413), deadline header (400), JSON
(400, also for a body nested deeper than the decoder's bound), a client-streaming or
bidirectional method (405), the gateway's concurrency (503: only a request whose body is
read takes a place), then the call (404, 422, 409, 503, 504, 500 come from it; for a
stream, from what happens before its first item).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import replace
from typing import Any, Final
from urllib.parse import parse_qsl

import grpc
import pydantic_core

from wiremesh.core.breaker import BreakerSettings
from wiremesh.core.defaults import HTTP_BODY_TIMEOUT, MAX_MESSAGE_BYTES
from wiremesh.core.drain import enter_work, leave_work
from wiremesh.core.model import MeshSnapshot
from wiremesh.errors import (
    InternalError,
    NotFound,
    PayloadTooLarge,
    ServiceNotFound,
    Unavailable,
    WiremeshError,
)
from wiremesh.gateway.admission import Admission, BadHeader
from wiremesh.gateway.asyncapi import AsyncApiSettings, asyncapi_document, asyncapi_servers
from wiremesh.gateway.auth import TokenVerifier
from wiremesh.gateway.docs_page import docs_page
from wiremesh.gateway.frame_stream import GATEWAY_NODES
from wiremesh.gateway.http_auth import BearerCheck
from wiremesh.gateway.openapi import DocumentSettings, openapi_document
from wiremesh.gateway.problem import (
    GATEWAY_FAILED,
    Problem,
    bad_request,
    method_not_allowed,
    problem_for,
    request_timeout,
    unsupported_media_type,
)
from wiremesh.gateway.settings import GatewaySettings
from wiremesh.gateway.socket_hub import SOCKET_KEY
from wiremesh.observability import tracing
from wiremesh.registry.view import MeshView
from wiremesh.service import ServiceSpec
from wiremesh.transport.client import Caller, channel_options
from wiremesh.transport.peer_links import Links
from wiremesh.transport.streams import Stream

__all__ = ["Authorize", "HttpDoor", "gateway_door"]

log = logging.getLogger("wiremesh.gateway.http")

Scope = MutableMapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``(Authorization header or None, service) -> principal``: the gateway's token check and
#: access rules; raises ``Unauthenticated`` (401) or ``PermissionDenied`` (403)
Authorize = Callable[[str | None, str], str]

_RPC_PATH = re.compile(r"^/rpc/([a-z][a-z0-9_-]{0,62})/([A-Za-z_][A-Za-z0-9_]*)$")
_JSON = (b"content-type", b"application/json")
#: a ``Host`` header the AsyncAPI document may repeat: a name or address, and a port
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
#: the AsyncAPI document's JSON is kept for this many gateway URLs at most
_URLS_KEPT = 8
#: a response body over this size is written under ``write_timeout``; a smaller one goes
#: straight into the socket's buffer, which never makes a write wait
_BUFFERED = 64 * 1024
#: the media types of a streamed answer: one JSON value a line, or server-sent events
_NDJSON: Final = b"application/x-ndjson"
_EVENT_STREAM: Final = b"text/event-stream"
#: the headers of a streamed answer besides its type (no length: chunked); the last one
#: asks a proxy that buffers answers (nginx) to pass each chunk on as it comes
_STREAMED = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


class _Disconnected(Exception):
    """The client went away before its answer was written."""


class _Stalled(Exception):
    """The client read nothing of a streamed answer for ``write_timeout`` seconds."""


class _Watch:
    """Cancels ``task`` when its client goes away (``http.disconnect``), for an answer
    that takes long: a streamed one. Once the request is read, ``receive`` waits for
    nothing but that."""

    __slots__ = ("_watcher", "gone")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        #: the client went away (and ``task`` was cancelled for it)
        self.gone = False
        self._watcher = asyncio.get_running_loop().create_task(self._watch(receive, task))

    async def _watch(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # the server's receive failed: nothing more to watch
            return
        self.gone = True
        task.cancel()

    def stop(self) -> None:
        """Watch no more (before the answer ends: ``receive`` then says disconnected)."""
        self._watcher.cancel()


class HttpDoor:
    """The HTTP endpoints of one gateway, over one mesh :class:`Caller`.

    ``authorize`` checks a request's token and the service's access rules (``None``: no
    authentication, every request is the principal ``anonymous@<client address>``);
    ``specs`` are the services whose classes the gateway could import (schemas for the
    OpenAPI and AsyncAPI documents); ``services`` the ones ``/readyz`` waits for;
    ``asyncapi`` what the AsyncAPI document says of the mesh; ``docs=False`` leaves out
    ``/openapi.json``, ``/asyncapi.json`` and ``/docs``.
    """

    def __init__(
        self,
        caller: Caller,
        admission: Admission,
        *,
        authorize: Authorize | None = None,
        specs: Mapping[str, ServiceSpec] | None = None,
        services: Sequence[str] = (),
        document: DocumentSettings | None = None,
        asyncapi: AsyncApiSettings | None = None,
        body_timeout: float = HTTP_BODY_TIMEOUT,
        write_timeout: float = 10.0,
        docs: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.caller = caller
        self.admission = admission
        self.authorize = authorize
        self.specs = dict(specs or {})
        self.services = tuple(services)
        self.document_settings = document or DocumentSettings(
            auth=authorize is not None,
            default_timeout=admission.default_timeout,
            max_timeout=admission.max_timeout,
        )
        self.body_timeout = body_timeout
        self.write_timeout = write_timeout
        self.clock = clock
        self._document: tuple[object, bytes] | None = None
        #: what the AsyncAPI document says of the mesh (``gateway``: empty, the URL each
        #: request came to)
        self.asyncapi_settings = asyncapi or AsyncApiSettings(
            version=self.document_settings.version, auth=authorize is not None, gateway=""
        )
        #: the AsyncAPI document of a mesh and settings, and its JSON per gateway URL
        self._asyncapi: tuple[object, dict[str, Any], dict[str, bytes]] | None = None
        self._routes: dict[str, Endpoint] = {"/readyz": self.readyz}
        if docs:
            self._routes.update(
                {"/openapi.json": self.openapi, "/asyncapi.json": self.asyncapi, "/docs": self.docs}
            )
        #: what :meth:`close` closes: the links and caller the door made for itself
        self._owned: list[Any] = []
        #: set once the gateway stops (:meth:`drain`): a new request gets a 503 problem
        self.draining = False
        # the requests running now, and whether the grace ended under them (see drain)
        self._running: set[asyncio.Task[Any]] = set()
        self._cut = False

    def route(self, path: str) -> Endpoint | None:
        """The endpoint that serves ``path``, or ``None`` when the door has none."""
        if path.startswith("/rpc/"):
            return self.rpc
        return self._routes.get(path)

    def mounts(self) -> list[tuple[str, Endpoint, bool]]:
        """Where the door answers, as an application mounts it: ``(path, the door,
        prefix)``, ``prefix`` when every path under ``path`` is the door's too."""
        return [("/rpc/", self, True), *((path, self, False) for path in self._routes)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The door as an ASGI application: the endpoint of the request's path (a 404
        problem when there is none), in a span that continues the request's trace (W3C
        ``traceparent`` header) or starts one when tracing is on; the call it makes is
        that span's child."""
        path: str = scope["path"]
        endpoint = self.route(path)
        if endpoint is None:
            await send_problem(send, problem_for(NotFound("nothing at this path"), path))
        elif tracing.enabled():
            await _traced(endpoint, scope, receive, send)
        else:
            await endpoint(scope, receive, send)

    async def drain(self, timeout: float) -> None:
        """Take no new request (503 problem) and let the running ones finish within
        ``timeout`` seconds; then cancel the calls of those still running, whose clients
        get a 503 problem."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:  # noqa: ASYNC110 - polls
            await asyncio.sleep(0.05)
        if self._running:
            self._cut = True
            running = list(self._running)
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=1.0)

    async def close(self) -> None:
        """Close the mesh caller and links the door opened (see :func:`gateway_door`)."""
        owned, self._owned = self._owned, []
        for resource in owned:
            await resource.close()

    # ------------------------------------------------------------------------- /rpc

    async def rpc(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()  # when the work this request sets going began
        path: str = scope["path"]
        if scope["method"] != "POST":
            await send_problem(send, method_not_allowed("POST", path))
            return
        if self.draining:
            await send_problem(send, _stopping(path), close=True)
            return
        admission = self.admission
        headers = dict(scope["headers"])
        match = _RPC_PATH.match(path)
        try:
            principal = self._principal(scope, headers, match.group(1) if match else "")
            admission.rate(principal, self.clock())
            if match is None:
                raise ServiceNotFound(f"no method at {path}: use /rpc/<service>/<method>")
            admission.begin(principal)
        except WiremeshError as exc:
            await send_problem(send, problem_for(exc, path))
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        work = enter_work(arrived)
        try:
            who = principal if self.authorize is not None else None
            await self._call(scope, receive, send, headers, match.group(1), match.group(2), who)
        finally:
            leave_work(work)
            if task is not None:
                self._running.discard(task)
            admission.end(principal)

    def _principal(self, scope: Scope, headers: dict[bytes, bytes], service: str) -> str:
        if self.authorize is None:
            client = scope.get("client")
            return f"anonymous@{client[0] if client else ''}"
        header = headers.get(b"authorization")
        return self.authorize(None if header is None else header.decode("latin-1"), service)

    async def _call(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        service: str,
        method: str,
        principal: str | None,
    ) -> None:
        path: str = scope["path"]
        try:
            content_type = headers.get(b"content-type")
            if content_type is not None and not _is_json(content_type):
                await send_problem(send, unsupported_media_type(path), close=True)
                return
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit():
                self.admission.body_size(int(declared))
            try:
                body = await self._body(receive)
            except TimeoutError:
                await send_problem(send, request_timeout(self.body_timeout, path), close=True)
                return
            timeout_header = headers.get(b"wiremesh-timeout")
            timeout = self.admission.deadline(
                None if timeout_header is None else timeout_header.decode("latin-1")
            )
            try:
                # depth-bounded: a body nested too deeply is a ValueError here, never a
                # RecursionError
                payload = pydantic_core.from_json(body) if body else None
            except ValueError as exc:
                await send_problem(send, bad_request(f"the body is not JSON: {exc}", path))
                return
            node = _node_of(scope["query_string"]) if scope["query_string"] else None
            kind = _stream_kind(self.caller.view.snapshot, service, method, node)
            if kind and kind != "server":
                await send_problem(send, _not_served(service, method, kind, path))
                return
            metadata = None if principal is None else {"principal": principal}
            # a place among the gateway's calls only now that the body is here: a body
            # that does not come holds its principal's place, never the gateway's
            self.admission.enter()
            try:
                if kind:
                    stream = self.caller.stream(
                        f"{service}.{method}",
                        payload,
                        timeout=timeout,
                        node=node,
                        codec="json",
                        metadata=metadata,
                    )
                    await self._relay(receive, send, path, stream, _wants_events(headers))
                    return
                result = await self.caller.call(
                    f"{service}.{method}",
                    payload,
                    timeout=timeout,
                    node=node,
                    codec="json",
                    metadata=metadata,
                )
            finally:
                self.admission.leave()
        except _Disconnected:
            return
        except asyncio.CancelledError:
            if not self._cut:
                raise
            # the drain's grace ended before the call did: a problem, never a bare 500
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await send_problem(send, _stopping(path, running=True), close=True)
            return
        except BadHeader as exc:
            await send_problem(send, bad_request(exc.message, path))
            return
        except PayloadTooLarge as exc:
            await send_problem(send, problem_for(exc, path), close=True)
            return
        except WiremeshError as exc:
            await send_problem(send, problem_for(exc, path))
            return
        except Exception as exc:  # a bug of the gateway's: the client still gets a problem
            log.exception("POST %s failed", path)
            error = InternalError(str(exc))
            await send_problem(send, problem_for(error, path, internal_detail=GATEWAY_FAILED))
            return
        await self._send_json(send, 200, pydantic_core.to_json(result))

    async def _relay(
        self, receive: Receive, send: Send, path: str, stream: Stream, events: bool
    ) -> None:
        """Answer with the items of ``stream`` as they come: NDJSON, or server-sent events
        (``events``); each item in a chunk of its own, written at once.

        What ends the stream before its first item raises, as a unary call's error does
        (the caller answers with its problem). After it the status is sent, and nothing
        raises but a disconnect: an error ends the body with an error line (or event)
        holding its problem, and so does the end of the drain's grace. A client that goes
        away cancels the stream (:class:`_Disconnected`); one that reads nothing for
        ``write_timeout`` seconds gets its connection closed. Whenever the answer ends
        before the stream does, the call is cancelled at both ends."""
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, task)
        started = False
        try:
            data = await _next_frame(stream, events)
            headers = [(b"content-type", _EVENT_STREAM if events else _NDJSON), *_STREAMED]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            started = True
            problem = await self._pump(send, path, stream, events, data, watch)
            watch.stop()  # (once the answer ends, receive says the client went away)
            if problem is not None:
                await self._write(send, _error_frame(problem, events))
            await self._write(send, b"", more=False)
        except _Stalled:
            log.info("POST %s: the client read nothing for %gs", path, self.write_timeout)
        except asyncio.CancelledError:
            if watch.gone:
                task.uncancel()
                raise _Disconnected from None
            if not (started and self._cut):
                raise
            # the drain's grace ended as the answer ended: it stays unfinished
            task.uncancel()
        finally:
            watch.stop()
            await stream.aclose()

    async def _pump(
        self, send: Send, path: str, stream: Stream, events: bool, data: bytes | None, watch: _Watch
    ) -> Problem | None:
        """Write ``data`` and the next items of ``stream`` until it ends; the problem to
        end the body with when it fails (or the drain's grace ends under it)."""
        try:
            while data is not None:
                await self._write(send, data)
                try:
                    data = await _next_frame(stream, events)
                except WiremeshError as exc:
                    return problem_for(exc, path)
                except Exception as exc:  # a bug of the gateway's, as for a unary call
                    log.exception("POST %s failed while it streamed", path)
                    error = InternalError(str(exc))
                    return problem_for(error, path, internal_detail=GATEWAY_FAILED)
        except asyncio.CancelledError:
            if watch.gone or not self._cut:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return _stopping(path, running=True)
        return None

    async def _write(self, send: Send, data: bytes, *, more: bool = True) -> None:
        """One chunk of a streamed answer (the last one unless ``more``); :class:`_Stalled`
        when the client reads nothing for ``write_timeout`` seconds."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await send({"type": "http.response.body", "body": data, "more_body": more})
        except TimeoutError:
            raise _Stalled from None

    async def _body(self, receive: Receive) -> bytes:
        """The request body, read within ``body_timeout``; :class:`PayloadTooLarge` past
        the limit, :class:`_Disconnected` when the client leaves, ``TimeoutError`` when
        it is too slow."""
        chunks: list[bytes] = []
        size = 0
        async with asyncio.timeout(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk: bytes = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    self.admission.body_size(size)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _send_json(self, send: Send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode())],
            }
        )
        if len(body) <= _BUFFERED:
            await send({"type": "http.response.body", "body": body})
            return
        # a client that does not read its answer gets its connection closed
        async with asyncio.timeout(self.write_timeout):
            await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------- documents

    def document(self) -> bytes:
        """The OpenAPI document as JSON, rebuilt when the mesh's methods change."""
        snapshot = self.caller.view.snapshot
        key = _methods_key(snapshot, self.specs)
        cached = self._document
        if cached is None or cached[0] != key:
            document = openapi_document(self.specs, snapshot, self.document_settings)
            cached = self._document = (key, pydantic_core.to_json(document))
        return cached[1]

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_problem(send, method_not_allowed("GET, HEAD", scope["path"]))
            return
        await self._send_json(send, 200, self.document())

    def asyncapi_json(self, gateway: str = "") -> bytes:
        """The AsyncAPI document as JSON, rebuilt when the mesh's subscriptions or
        sockets change; ``gateway``: the URL the request came to, the gateway's address in
        the document when the settings name none (a new one costs its servers only, so a
        client sending many ``Host`` headers never makes the schemas be built again)."""
        snapshot = self.caller.view.snapshot
        settings = self.asyncapi_settings
        key = (_messages_key(snapshot, self.specs), settings)
        cached = self._asyncapi
        if cached is None or cached[0] != key:
            cached = self._asyncapi = (key, asyncapi_document(self.specs, snapshot, settings), {})
        document, by_url = cached[1], cached[2]
        url = settings.gateway or gateway
        body = by_url.get(url)
        if body is None:
            if len(by_url) >= _URLS_KEPT:
                by_url.clear()
            servers = asyncapi_servers(replace(settings, gateway=url))
            body = by_url[url] = pydantic_core.to_json({**document, "servers": servers})
        return body

    async def asyncapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_problem(send, method_not_allowed("GET, HEAD", scope["path"]))
            return
        await self._send_json(send, 200, self.asyncapi_json(_base_url(scope)))

    async def docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_problem(send, method_not_allowed("GET, HEAD", scope["path"]))
            return
        body, policy = docs_page()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-cache"),
                    (b"content-security-policy", policy),
                    (b"x-content-type-options", b"nosniff"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # --------------------------------------------------------------------- health

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready: each configured service has a live node in the view. The view is the
        registry's last word, so a registry outage alone leaves the answer as it was; the
        body says whether the registry answers now. A stopping gateway is not ready."""
        if self.draining:
            await send_problem(send, _stopping(scope["path"]))
            return
        view = self.caller.view
        snapshot = view.snapshot
        registry = "reachable" if view.reachable else "unreachable"
        missing = [name for name in self.services if not snapshot.serving(name)]
        if missing:
            error = Unavailable(
                f"no live node of {', '.join(missing)}",
                details={"missing": missing, "registry": registry},
            )
            await send_problem(send, problem_for(error, scope["path"], retry_after=1))
            return
        names = self.services or sorted(snapshot.services - {GATEWAY_NODES})
        nodes = {name: len(snapshot.serving(name)) for name in names}
        body = {"status": "ready", "registry": registry, "nodes": nodes}
        await self._send_json(send, 200, pydantic_core.to_json(body))


def gateway_door(
    settings: GatewaySettings,
    view: MeshView,
    verifier: TokenVerifier,
    *,
    gateway_id: str,
    specs: Mapping[str, ServiceSpec] | None = None,
    services: Sequence[str] = (),
    credentials: grpc.ChannelCredentials | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    mesh: str = "",
    broker: str = "",
    breaker: BreakerSettings | None = None,
    breakers: Mapping[str, BreakerSettings] | None = None,
) -> HttpDoor:
    """The door of a gateway: its ``[gateway.http]`` limits, its token verifier and access
    rules, and a mesh caller of its own over ``view`` (calls travel on mesh links, as
    ``wiremesh call``'s do); :meth:`HttpDoor.close` closes them. ``mesh`` (``[mesh]
    name``) and ``broker`` (``[broker] url``) are what the AsyncAPI document names the
    broker's exchanges and server by (empty: not known here). ``breaker`` and ``breakers``
    are the circuit breaker's settings (``[mesh.breaker]``, ``[services.<name>.breaker]``)."""
    from wiremesh import __version__

    http = settings.http
    links = Links(
        local_id=gateway_id,
        credentials=credentials,
        options=channel_options(max_message_bytes),
        max_message_bytes=max_message_bytes,
    )
    caller = Caller(
        view,
        identity=None,
        default_timeout=http.default_timeout,
        max_message_bytes=max_message_bytes,
        credentials=credentials,
        links=links,
        breaker=breaker,
        breakers=breakers,
    )
    admission = Admission(
        rate=http.rate,
        burst=http.burst,
        concurrency=http.concurrency,
        concurrency_per_principal=http.concurrency_per_principal,
        max_body=http.max_body,
        default_timeout=http.default_timeout,
        max_timeout=http.max_timeout,
    )
    door = HttpDoor(
        caller,
        admission,
        authorize=BearerCheck(verifier, settings.services),
        specs=specs,
        services=services,
        document=DocumentSettings(
            version=__version__,
            default_timeout=admission.default_timeout,
            max_timeout=admission.max_timeout,
        ),
        asyncapi=AsyncApiSettings(
            version=__version__,
            mesh=mesh,
            broker=broker,
            gateway=settings.public_url,
            text_sockets=frozenset(name for name, rules in settings.services.items() if rules.text),
        ),
        body_timeout=http.body_timeout,
        docs=http.docs,
    )
    door._owned = [links, caller]
    return door


async def _traced(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """``endpoint`` in a server span named after the request, with its status."""
    carrier = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope.get("headers") or ()
        if key in (b"traceparent", b"tracestate")
    }
    span = tracing.server_span(f"{scope['method']} {scope['path']}", carrier)
    status = 0

    async def seen(message: Message) -> None:
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


def _stopping(path: str, *, running: bool = False) -> Problem:
    """The 503 problem of a request the stopping gateway does not see through."""
    if running:
        error = Unavailable("the gateway stopped before the call ended: its drain's grace is over")
    else:
        error = Unavailable("the gateway is stopping: send the request to another gateway")
    return problem_for(error, path, retry_after=1)


def _stream_kind(snapshot: MeshSnapshot, service: str, method: str, node: str | None) -> str:
    """The stream kind of ``service.method`` (of ``node`` when given) as the registry
    lists it: ``server``, ``client``, ``bidi``, or ``""`` for a unary method and for
    one the mesh does not have (the call then says what is missing)."""
    if node is None:
        info = snapshot.method(service, method)
    else:
        found = snapshot.by_id.get(node)
        info = None if found is None or found.service != service else found.methods.get(method)
    return "" if info is None else info.streaming


def _not_served(service: str, method: str, kind: str, path: str) -> Problem:
    """The 405 problem of a method that takes a stream: no HTTP method reaches it (an
    empty ``Allow``)."""
    what = "client-streaming" if kind == "client" else "bidirectional streaming"
    detail = (
        f"{service}.{method} is a {what} method: the HTTP door serves unary and "
        "server-streaming methods only; call it from a mesh client (stream())"
    )
    return replace(method_not_allowed("", path), detail=detail)


def _wants_events(headers: Mapping[bytes, bytes]) -> bool:
    """Whether the request's ``Accept`` prefers ``text/event-stream`` to
    ``application/x-ndjson`` (by ``q``, then by order); NDJSON is the default, also for
    an ``Accept`` that names neither."""
    accept = headers.get(b"accept", b"").lower()
    if b"event-stream" not in accept:
        return False
    best: tuple[float, int] | None = None
    chosen = b""
    for index, part in enumerate(accept.split(b",")):
        media, *params = part.split(b";")
        media = media.strip()
        if media not in (_EVENT_STREAM, _NDJSON):
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition(b"=")
            if name.strip() == b"q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
        rank = (weight, -index)
        if weight > 0 and (best is None or rank > best):
            best, chosen = rank, media
    return chosen == _EVENT_STREAM


async def _next_frame(stream: Stream, events: bool) -> bytes | None:
    """The next item of ``stream`` as a chunk of the answer (None at the end): a line of
    JSON, or a server-sent event whose data is the JSON."""
    try:
        item = await anext(stream)
    except StopAsyncIteration:
        return None
    data = pydantic_core.to_json(item)
    return b"data: " + data + b"\n\n" if events else data + b"\n"


def _error_frame(problem: Problem, events: bool) -> bytes:
    """The last chunk of a streamed answer that failed: ``{"error": <problem>}`` as a line,
    or an ``error`` event whose data is the problem."""
    body = problem.encode()
    if events:
        return b"event: error\ndata: " + body + b"\n\n"
    return b'{"error":' + body + b"}\n"


def _node_of(query_string: bytes) -> str | None:
    """The ``node`` query parameter; :class:`BadHeader` for any other parameter (a typo
    such as ``?nod=`` would otherwise call any node)."""
    query = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    others = sorted({name for name, _ in query if name != "node"})
    if others:
        raise BadHeader(f"unknown query parameter(s) {', '.join(others)[:200]}: only 'node'")
    nodes = [value for _, value in query]
    return nodes[-1] if nodes else None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _messages_key(snapshot: MeshSnapshot, specs: Mapping[str, ServiceSpec]) -> object:
    """What the AsyncAPI document depends on in ``snapshot``: the subscriptions and
    sockets of unimported services."""
    return frozenset(
        (node.service, node.subscriptions, node.metadata.get(SOCKET_KEY))
        for node in snapshot.nodes
        if node.service not in specs
    )


def _base_url(scope: Scope) -> str:
    """The URL the request came to (its ``Host`` header when it names a host), for
    the gateway's own address in the AsyncAPI document."""
    host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        server = scope.get("server") or ("127.0.0.1", 0)
        host = f"[{server[0]}]:{server[1]}" if ":" in server[0] else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _methods_key(snapshot: MeshSnapshot, specs: Mapping[str, ServiceSpec]) -> object:
    """What the document depends on in ``snapshot``: the methods of unimported services."""
    return frozenset(
        (node.service, tuple(sorted(node.methods)))
        for node in snapshot.nodes
        if node.service not in specs
    )


async def send_problem(send: Send, problem: Problem, *, close: bool = False) -> None:
    """Answer with ``problem``; ``close``: the request was not read to its end, so the
    connection cannot carry another one."""
    body = problem.encode()
    headers = [*problem.headers(), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""A node's ``/metrics`` endpoint, served on the process's event loop.

No thread per connection: one request per connection, a timeout on every connection and a
bound on their number (:class:`MetricsEndpoint`'s docstring has the rules);
:func:`read_request` is what a request's head asks, without I/O. The scrape itself is
rendered on one thread of the endpoint's, so that a large registry never stalls the loop.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import logging
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from wiremesh.core.defaults import HOST

__all__ = [
    "METRICS_CONNECTIONS",
    "METRICS_HEAD_LIMIT",
    "METRICS_TIMEOUT",
    "MetricsEndpoint",
    "MetricsRequest",
    "answer",
    "read_request",
]

log = logging.getLogger("wiremesh.metrics")

#: seconds a client of a node's ``/metrics`` has to send its request's head, and again to
#: take the answer, before the connection is closed
METRICS_TIMEOUT = 5.0
#: connections a node's ``/metrics`` holds at once (see :class:`MetricsEndpoint`)
METRICS_CONNECTIONS = 64
#: bytes a request's head may take (request line and headers)
METRICS_HEAD_LIMIT = 8192


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class MetricsRequest:
    """What a request's head asks of ``/metrics``, or the status that answers it."""

    status: int
    head_only: bool = False
    accept: str = ""
    accept_encoding: str = ""


def read_request(head: bytes) -> MetricsRequest:
    """The request in ``head`` (its bytes up to, without, the blank line): status 200 for
    ``GET``/``HEAD /metrics``, else the error status to answer (400, 404, 405).

    >>> read_request(b"GET /metrics?x=1 HTTP/1.1\\r\\nAccept-Encoding: gzip").accept_encoding
    'gzip'
    >>> read_request(b"POST /metrics HTTP/1.1").status, read_request(b"GET / HTTP/1.0").status
    (405, 404)
    """
    line, *fields = head.decode("latin-1").split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return MetricsRequest(400)
    method, target, _ = parts
    if target.partition("?")[0] != "/metrics":
        return MetricsRequest(404)
    if method not in ("GET", "HEAD"):
        return MetricsRequest(405)
    headers: dict[str, str] = {}
    for field in fields:
        name, colon, value = field.partition(":")
        if not colon:
            return MetricsRequest(400)
        headers[name.strip().lower()] = value.strip()
    return MetricsRequest(
        200,
        head_only=method == "HEAD",
        accept=headers.get("accept", ""),
        accept_encoding=headers.get("accept-encoding", ""),
    )


def answer(status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """An HTTP/1.1 answer that closes the connection (``body`` as it is: empty for HEAD)."""
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


#: a rendered scrape: the body and its headers
_Rendered = tuple[bytes, list[tuple[str, str]]]


def _render(registry: CollectorRegistry, accept: str, accept_encoding: str) -> _Rendered:
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    return body, headers


class MetricsEndpoint:
    """``GET /metrics`` in Prometheus text, served on the event loop of the process.

    One request per connection, answered with ``Connection: close``. A connection costs a
    descriptor and a small object, never a thread: its request's head must arrive within
    ``timeout`` seconds of connecting (else it is closed, with 408 when a part came), and
    the answer must be taken within ``timeout`` more. At most ``max_connections`` are held
    at once; one more closes the oldest still waiting for its head (a scraper sends its
    head at once, so idle connections never lock it out), or is answered 503 when every
    connection is being answered. ``GET`` and ``HEAD`` of ``/metrics`` (any query) are
    answered, in the format the ``Accept`` header asks for and gzipped when
    ``Accept-Encoding`` allows; any other path is 404 and any other method 405.

    The text is rendered on one thread of the endpoint's own, one scrape at a time: a
    node with a few dozen methods in use has a thousand lines to render, milliseconds
    that the event loop keeps for calls. The thread starts with the first scrape.

    :meth:`start` and :meth:`stop` are called on the event loop that serves it.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = HOST,
        port: int = 0,
        *,
        timeout: float = METRICS_TIMEOUT,
        max_connections: int = METRICS_CONNECTIONS,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_connections = max_connections
        #: the connections held, oldest first
        self._connections: dict[_MetricsConnection, None] = {}
        self._starting: asyncio.Task[asyncio.Server] | None = None
        self._server: asyncio.Server | None = None
        self._renderer: ThreadPoolExecutor | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Listen at once (``port`` is then the bound one); serve from the loop's next turn."""
        loop = asyncio.get_running_loop()
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._stopped = False
        self._renderer = ThreadPoolExecutor(1, thread_name_prefix="wiremesh-metrics")
        self._starting = loop.create_task(
            loop.create_server(lambda: _MetricsConnection(self), sock=sock),
            name="wiremesh-metrics-endpoint",
        )
        self._starting.add_done_callback(functools.partial(self._started, sock))

    def _started(self, sock: socket.socket, task: asyncio.Task[asyncio.Server]) -> None:
        if task.cancelled() or task.exception() is not None:
            sock.close()
        elif self._stopped or task is not self._starting:
            task.result().close()
        else:
            self._server = task.result()

    def stop(self) -> None:
        """Stop listening and close every connection, without waiting."""
        self._stopped = True
        self._starting = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self._connections):
            connection.abort()
        if self._renderer is not None:
            self._renderer.shutdown(wait=False, cancel_futures=True)
            self._renderer = None

    # ---------------------------------------------------------------- connections

    def _admit(self, connection: _MetricsConnection) -> bool:
        """Hold ``connection``, closing the oldest idle one at the bound; False when
        every held connection is being answered (``connection`` is then refused)."""
        if len(self._connections) >= self.max_connections:
            idle = next((c for c in self._connections if not c.answering), None)
            if idle is None:
                return False
            idle.abort()
        self._connections[connection] = None
        return True

    def _forget(self, connection: _MetricsConnection) -> None:
        self._connections.pop(connection, None)

    def _render(self, accept: str, accept_encoding: str) -> asyncio.Future[_Rendered]:
        if self._renderer is None:
            raise RuntimeError("the metrics endpoint is stopped")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._renderer, _render, self.registry, accept, accept_encoding)


def _listen(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket at ``host:port`` (its first address, as
    ``getaddrinfo`` orders them; an empty host is every IPv4 interface)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _MetricsConnection(asyncio.Protocol):
    """One connection to the endpoint: its head within the timeout, then one answer."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self._endpoint = endpoint
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._rendering: asyncio.Future[_Rendered] | None = None
        #: the head arrived: the connection is answered, never evicted
        self.answering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not subclasses of asyncio.Transport)
        self._transport = cast(asyncio.Transport, transport)
        self._arm()
        if not self._endpoint._admit(self):
            self._reply(answer(503, headers=(("Content-Length", "0"),)))

    def data_received(self, data: bytes) -> None:
        if self.answering:
            return  # a body or a second request: one request per connection
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > METRICS_HEAD_LIMIT:
                self._reply(answer(431, headers=(("Content-Length", "0"),)))
            return
        request = read_request(bytes(self._head[:end]))
        self._head.clear()
        if request.status != 200:
            self._reply(answer(request.status, headers=(("Content-Length", "0"),)))
            return
        self.answering = True
        self._arm()  # the rendering, queued behind others, gets a timeout of its own
        try:
            self._rendering = self._endpoint._render(request.accept, request.accept_encoding)
        except RuntimeError:  # stopped meanwhile
            self.abort()
            return
        self._rendering.add_done_callback(functools.partial(self._rendered, request))

    def _rendered(self, request: MetricsRequest, future: asyncio.Future[_Rendered]) -> None:
        self._rendering = None
        if self._transport is None or future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.warning("rendering /metrics failed: %s: %s", type(error).__name__, error)
            self._reply(answer(500, headers=(("Content-Length", "0"),)))
            return
        body, headers = future.result()
        self._reply(answer(200, b"" if request.head_only else body, headers))

    def eof_received(self) -> bool:
        # a client may shut its side once its request is sent: the answer still goes out
        return self.answering

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rendering is not None:
            self._rendering.cancel()
        self._endpoint._forget(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._endpoint.timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        if self.answering or not self._head:
            self.abort()  # an answer not taken, or a connection that never spoke
        else:
            self._reply(answer(408, headers=(("Content-Length", "0"),)))

    def _reply(self, data: bytes) -> None:
        """Write ``data`` and close once it is sent, within the timeout."""
        transport = self._transport
        if transport is None:
            return
        self.answering = True
        transport.write(data)
        transport.close()
        self._arm()

"""The gateway's HTTP connections: uvicorn's HTTP protocol, timed while it waits for a
request head, so that the gateway's timer can close a connection whose head does not
arrive within the handshake timeout (slowloris, on a connection's first request and on
every next one of a keep-alive connection).

:class:`HttpProtocol` stands between the transport and uvicorn's protocol: it is the
transport's protocol, and the transport of uvicorn's protocol. It uses nothing of
uvicorn's but the interface uvicorn's server itself uses to build and drive an HTTP
protocol (the constructor keywords ``config``, ``server_state``, ``app_state``, then
asyncio's ``Protocol`` methods), and it sees what it needs in the bytes that pass:

- a connection waits for a head from its start, and again from the first byte that
  arrives after an answer began (the time between requests is uvicorn's keep-alive
  timeout, not the handshake timeout);
- a head has arrived at its first empty line (h11 ends a head there, ``\\n\\n`` or
  ``\\r\\n\\r\\n``); a body is not a head, until an answer has been written;
- an answer began with the first write that is not an informational ``1xx`` one;
- an upgrade happened when uvicorn makes another protocol the transport's
  (``set_protocol``): the WebSocket protocol then gets the transport itself.

:class:`Handshakes` holds the connections waiting for a head and closes those that wait
too long; :func:`protocol_classes` makes the classes a server passes to uvicorn.

**The parser.** uvicorn parses HTTP/1.1 with h11 (pure Python) or httptools (llhttp, in
C; ``pip install 'wiremesh[speed]'``). The environment variable ``WIREMESH_HTTP_PARSER``
chooses: ``auto`` (the default, also when unset or empty) takes httptools when it is
installed, ``h11`` or ``httptools`` that one (httptools asked for and not installed is a
:class:`~wiremesh.errors.ConfigError` as the gateway starts). The head's clock above is
the same with either (``tests/gateway/test_http_protocol.py`` runs on both); llhttp
answers a request line that cannot begin a method with 400 at once, where h11 waits for
the rest of the line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterable
from typing import Any, cast

from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from wiremesh.core.choices import fast_or_default
from wiremesh.gateway.socket_protocol import SocketProtocol

__all__ = ["PARSER_ENV", "Handshakes", "HttpProtocol", "parser_name", "protocol_classes"]

PARSER_ENV = "WIREMESH_HTTP_PARSER"

#: where an HTTP connection is, as far as request heads go
HEAD = 0  # waiting for a request head (the clock runs)
REQUEST = 1  # the head arrived; no answer written yet
ANSWERED = 2  # an answer began: the next byte begins the next request


class Handshakes:
    """Connections waiting for a request head, and since when (loop time)."""

    def __init__(self) -> None:
        self.pending: dict[HttpProtocol, float] = {}

    def expire(self, now: float, timeout: float) -> int:
        """Close every connection whose head has been awaited for more than ``timeout``
        seconds; how many were closed."""
        late = [p for p, since in self.pending.items() if now - since > timeout]
        for protocol in late:
            del self.pending[protocol]
            protocol.abort()
        return len(late)


class HttpProtocol(asyncio.Protocol, asyncio.Transport):
    """uvicorn's HTTP protocol, timed while it waits for a request head (see the
    module's docstring). To the transport it is the protocol; to uvicorn's protocol,
    the transport."""

    #: the server's connections waiting for a head (set by :func:`protocol_classes`)
    handshakes: Handshakes
    #: uvicorn's protocol class this one drives (set by :func:`protocol_classes`)
    parser: type[asyncio.Protocol] = H11Protocol

    __slots__ = ("http", "state", "tail", "transport")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # (``_loop`` is what uvicorn's server passes; its protocols find the running loop)
        #: uvicorn's protocol (None once the connection upgraded)
        self.http: Any = self.parser(
            config=config,  # type: ignore[call-arg]
            server_state=server_state,
            app_state=app_state,
        )
        self.transport: asyncio.Transport | None = None
        #: HEAD, REQUEST or ANSWERED
        self.state = HEAD
        #: the last two bytes of a head so far (its empty line may straddle two reads)
        self.tail = b""

    # ------------------------------------------------------------------ the protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not subclasses of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        self.handshakes.pending[self] = asyncio.get_running_loop().time()
        assert self.http is not None
        self.http.connection_made(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == ANSWERED:
            # the next request begins: its head must arrive in time, as the first one's
            if _ends_head(data):
                self.state = REQUEST
            else:
                self.state = HEAD
                self.tail = data[-2:]
                self.handshakes.pending[self] = asyncio.get_running_loop().time()
        elif state == HEAD:
            seen = self.tail + data if self.tail else data
            if _ends_head(seen):
                self.state = REQUEST
                self.tail = b""
                self.handshakes.pending.pop(self, None)
            else:
                self.tail = seen[-2:]
        http = self.http
        if http is not None:
            http.data_received(data)

    def eof_received(self) -> bool | None:
        if self.http is not None:
            self.http.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.handshakes.pending.pop(self, None)
        if self.http is not None:
            self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.http is not None:
            self.http.pause_writing()

    def resume_writing(self) -> None:
        if self.http is not None:
            self.http.resume_writing()

    # ------------------------------------------------------------------ the transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != ANSWERED and not _informational(data):
            self.state = ANSWERED
            self.handshakes.pending.pop(self, None)
        self._transport.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """uvicorn upgrades the connection: the new protocol gets the transport itself,
        and the head is no longer awaited."""
        transport = self._transport
        self.handshakes.pending.pop(self, None)
        self.http = None
        transport.set_protocol(protocol)
        if isinstance(protocol, SocketProtocol):
            protocol.transport = transport

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.http if self.http is not None else self._transport.get_protocol()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._transport.write_eof()

    @property
    def _transport(self) -> asyncio.Transport:
        transport = self.transport
        assert transport is not None, "not connected"
        return transport


def _ends_head(data: bytes) -> bool:
    """Whether ``data`` holds the empty line that ends a request head."""
    return b"\n\r\n" in data or b"\n\n" in data


def _informational(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` begins a 1xx answer (``100 Continue``), after which the request's
    body still comes."""
    return bytes(data[:10]) == b"HTTP/1.1 1"


def parser_name(environ: dict[str, str] | None = None) -> str:
    """``"httptools"`` or ``"h11"``: the parser ``WIREMESH_HTTP_PARSER`` chooses, by what is
    installed; :class:`~wiremesh.errors.ConfigError` for a value it does not know, or
    httptools asked for and not installed."""
    env = os.environ if environ is None else environ
    installed = importlib.util.find_spec("httptools") is not None
    return fast_or_default(
        PARSER_ENV, env.get(PARSER_ENV), default="h11", fast="httptools", installed=installed
    )


def protocol_classes(
    handshakes: Handshakes, parser: str | None = None
) -> tuple[type[HttpProtocol], type[SocketProtocol]]:
    """The protocol classes of one server (uvicorn's ``http=`` and ``ws=``), sharing its
    ``handshakes``, on ``parser`` (``"h11"`` or ``"httptools"``; by default the one
    :func:`parser_name` chooses)."""
    inner: type[asyncio.Protocol] = H11Protocol
    if (parser or parser_name()) == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        inner = HttpToolsProtocol
    http = type(
        "GatewayHttpProtocol",
        (HttpProtocol,),
        {"handshakes": handshakes, "parser": inner, "__slots__": ()},
    )
    return http, SocketProtocol

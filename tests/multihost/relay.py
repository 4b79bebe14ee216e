"""TCP relays from the bridge address to services on the root namespace's loopback.

A host (a network namespace) cannot reach ``127.0.0.1`` of the root namespace, where the
shared Redis, RabbitMQ and PostgreSQL listen. A :class:`Relay` listens on the bridge's
address and copies bytes both ways to such a service, which sees its client on loopback
(RabbitMQ admits ``guest`` from there only).

One background thread runs one event loop for every relay of a network, so relays keep
working while a test blocks, or runs, its own loop. Each direction reads a chunk, writes it
and waits on ``drain()``: a slow reader holds the writer back, and nothing buffers more than
a chunk plus the transport's high-water mark.
"""

from __future__ import annotations

import asyncio
import functools
import threading

CHUNK = 64 * 1024
CONNECT_TIMEOUT = 5.0  # seconds to reach the service behind a relay
CONTROL_TIMEOUT = 5.0  # seconds for the loop thread to open or close relays


class Relay:
    """Every relay of one network, served by one background thread.

    Call :meth:`close` once done: it closes the listening sockets and every relayed
    connection, then stops the thread.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="multihost-relay", daemon=True
        )
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    def open(self, listen_host: str, target_host: str, target_port: int) -> int:
        """Relay connections to ``listen_host`` to the target; return the port listened on.

        The port is the target's own when it is free on ``listen_host``, any free one else.
        """
        if not self._thread.is_alive():
            self._thread.start()
        listening = self._listen(listen_host, (target_host, target_port))
        return asyncio.run_coroutine_threadsafe(listening, self._loop).result(CONTROL_TIMEOUT)

    def close(self) -> None:
        if self._thread.is_alive():
            closing = asyncio.run_coroutine_threadsafe(self._close_all(), self._loop)
            closing.result(CONTROL_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONTROL_TIMEOUT)
        self._loop.close()

    async def _listen(self, host: str, target: tuple[str, int]) -> int:
        on_connection = functools.partial(self._relay, target=target)
        try:
            server = await asyncio.start_server(on_connection, host, target[1])
        except OSError:  # the target's port is taken on this address
            server = await asyncio.start_server(on_connection, host, 0)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        *,
        target: tuple[str, int],
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        writers = [client_writer]
        try:
            opening = asyncio.open_connection(*target)
            target_reader, target_writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT)
            writers.append(target_writer)
            await asyncio.gather(
                _copy(client_reader, target_writer, writers),
                _copy(target_reader, client_writer, writers),
            )
        except (OSError, TimeoutError):
            pass  # the service is away: the client sees its connection close
        except asyncio.CancelledError:
            # The network is closing: a peer that was cut off would never take the rest.
            # Not raised again: asyncio calls exception() on this connection's task when it
            # is done, which would log a cancelled one as an error.
            for writer in writers:
                writer.transport.abort()
        finally:
            for writer in writers:
                writer.close()
            self._connections.discard(task)

    async def _close_all(self) -> None:
        for server in self._servers:
            server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # the closed transports release their sockets


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    writers: list[asyncio.StreamWriter],
) -> None:
    """Copy one direction until its end, which half-closes the other side."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:  # one side broke: the whole connection goes
        for each in writers:
            each.close()

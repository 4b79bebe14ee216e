"""The gateway's streams to the nodes: one ``Gateway/Connect`` stream per node, kept open.

The gateway follows the registry: it opens a stream to every node that joins (every node
serves the gateway stream, so that any node can push to the sessions this gateway holds),
closes the stream of a node that leaves, and reopens a stream that failed while its node
is still in the mesh (after a short backoff). Sessions pinned to a node whose stream
ended are closed by the gateway (1012) through ``on_ended``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc

from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.gateway.frame_stream import CONNECT, GATEWAY_NODES, FrameStream
from wiremesh.proto import gateway_pb2 as pb
from wiremesh.transport.peer_links import message_limit
from wiremesh.transport.tls import open_channel

__all__ = ["NodeStreams"]

log = logging.getLogger("wiremesh.gateway")

_RETRY_DELAY = 0.25
_RETRY_MAX = 5.0


class NodeStreams:
    """Every node's stream, by node id."""

    def __init__(
        self,
        *,
        gateway_id: str,
        on_batch: Callable[[FrameStream, Any], None],
        on_ended: Callable[[str, FrameStream], None],
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.gateway_id = gateway_id
        self._on_batch = on_batch
        self._on_ended = on_ended
        self._credentials = credentials
        self._options = options or []
        self._max_message_bytes = max_message_bytes
        self.by_node: dict[str, FrameStream] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retries: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def get(self, node_id: str) -> FrameStream | None:
        stream = self.by_node.get(node_id)
        return stream if stream is not None and not stream.closed else None

    def sync(self, snapshot: MeshSnapshot) -> None:
        """Open streams to nodes that joined; close those of nodes that left."""
        if self.closed:
            return
        live = {n.node_id: n for n in snapshot.nodes if n.service != GATEWAY_NODES}
        for node_id in list(self._nodes):
            if node_id not in live:
                self._nodes.pop(node_id)
                self._retries.pop(node_id, None)
                stream = self.by_node.pop(node_id, None)
                if stream is not None:
                    stream.close()
                    self._on_ended(node_id, stream)
                self._close_channel(node_id)
        for node_id, node in live.items():
            known = self._nodes.get(node_id)
            self._nodes[node_id] = node
            if known is None or node_id not in self.by_node:
                self._open(node)

    def _open(self, node: NodeInfo) -> None:
        channel = self._channels.get(node.node_id)
        if channel is None:
            channel = self._channels[node.node_id] = open_channel(
                node.address, self._credentials, self._options
            )
        limit = message_limit(node, self._max_message_bytes)
        call = channel.stream_stream(
            CONNECT,
            request_serializer=pb.Batch.SerializeToString,
            response_deserializer=pb.Batch.FromString,
        )(None)
        stream = FrameStream(
            call,
            local_id=self.gateway_id,
            on_batch=self._on_batch,
            max_message_bytes=limit,
        )
        stream.remote_id = node.node_id
        self.by_node[node.node_id] = stream
        stream.on_close(self._ended)
        self._spawn(stream.run(), f"wiremesh-gateway-stream-{node.node_id}")

    def _ended(self, stream: FrameStream) -> None:
        node_id = stream.remote_id
        if self.by_node.get(node_id) is stream:
            del self.by_node[node_id]
            self._on_ended(node_id, stream)
            if not self.closed and node_id in self._nodes:
                delay = self._retries.get(node_id, 0.0)
                delay = min(_RETRY_MAX, delay * 2) if delay else _RETRY_DELAY
                if stream.hello.is_set():
                    delay = _RETRY_DELAY
                self._retries[node_id] = delay
                self._spawn(self._reopen(node_id, delay), f"wiremesh-gateway-reopen-{node_id}")

    async def _reopen(self, node_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        node = self._nodes.get(node_id)
        if node is not None and node_id not in self.by_node and not self.closed:
            log.debug("reopening the stream to %s", node_id)
            self._open(node)

    def _close_channel(self, node_id: str) -> None:
        channel = self._channels.pop(node_id, None)
        if channel is not None:
            self._spawn(channel.close(grace=0.5), "wiremesh-gateway-channel-close")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self, timeout: float = 1.0) -> None:
        """Wait (at most ``timeout`` seconds) until every stream has written its frames."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        streams = self.by_node.values()
        while any(s.queued for s in streams) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.closed = True
        for stream in list(self.by_node.values()):
            stream.close()
        self.by_node.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

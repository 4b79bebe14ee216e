"""One end of a gateway stream: ``wiremesh.gateway.v1.Gateway/Connect``.

The same class serves both ends (the gateway opens the stream, the node accepts it). It
is a :class:`~wiremesh.transport.batching.BatchedStream`, as mesh links are: batching,
no latency when idle, reading, byte limits and bounds are that module's (the rules are
:mod:`wiremesh.core.batching`'s). What a gateway stream adds:

- **Lingering under load.** When frames were queued during a write, the writer lets a
  few loop turns pass before the next one, so that the browsers' messages read meanwhile
  join it (``benchmarks/gateway.py`` measures the pipelined throughput this is for).
- **Sizes.** A sender that does not say how large its frame is gets it measured (its
  whole encoded size), so that every batch fits in a message however many sessions send
  at once; a frame too large to travel alone is refused
  (:class:`~wiremesh.errors.PayloadTooLarge`) before it is queued, and never costs the
  other sessions of the stream their connection.
- **Reading.** Each batch read is handed over whole to ``on_batch(stream, frames)`` (no
  task per frame). A gateway stream never stops reading: what its peer sends brings no
  answers on it (a browser that fills it is held instead, and a node's handlers wait for
  room).
- **Bounds.** At most ``max_frames`` frames and four messages' worth of bytes wait to be
  written: :attr:`FrameStream.full` says so, and :meth:`FrameStream.wait_for_room` waits
  for the writer to take them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from wiremesh.core.batching import BatchLimits
from wiremesh.core.defaults import MAX_MESSAGE_BYTES
from wiremesh.proto import gateway_pb2 as pb
from wiremesh.transport.batching import BatchedStream, Stream

__all__ = [
    "CLOSE",
    "CONNECT",
    "DATA",
    "GATEWAY_NODES",
    "GATEWAY_SERVICE",
    "GATEWAY_URL_KEY",
    "HELLO",
    "JOIN",
    "LEAVE",
    "OPEN",
    "PUSH",
    "SUBSCRIBE",
    "Frame",
    "FrameStream",
]

log = logging.getLogger("wiremesh.gateway")

GATEWAY_SERVICE = "wiremesh.gateway.v1.Gateway"
CONNECT = f"/{GATEWAY_SERVICE}/Connect"
#: the service name gateways register under in the registry, and their metadata key
#: holding their URL
GATEWAY_NODES = "wm-gateway"
GATEWAY_URL_KEY = "wm.gateway"
Frame = pb.Frame
HELLO, OPEN, DATA, CLOSE, PUSH, SUBSCRIBE, JOIN, LEAVE = (
    pb.Frame.HELLO,
    pb.Frame.OPEN,
    pb.Frame.DATA,
    pb.Frame.CLOSE,
    pb.Frame.PUSH,
    pb.Frame.SUBSCRIBE,
    pb.Frame.JOIN,
    pb.Frame.LEAVE,
)
#: under load (frames queued while a write was in flight), loop turns the writer lets
#: pass before its next write, so that more frames join it ...
LINGER_TURNS = 6
#: ... unless this many already wait
LINGER_FRAMES = 128


class FrameStream(BatchedStream[pb.Frame]):
    """Batched frames over one gRPC stream. Call :meth:`run`; it returns when the stream
    ends or fails, after which :attr:`closed` is true and ``on_close`` has been called."""

    log = log  # what the batched stream logs goes to this module's logger

    def __init__(
        self,
        stream: Stream,
        *,
        local_id: str,
        on_batch: Callable[[FrameStream, Any], None],
        max_frames: int = 8192,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(
            stream,
            batch=pb.Batch,
            measure=pb.Frame.ByteSize,
            hello=pb.Frame(kind=HELLO, sender=local_id),
            on_batch=self._received,
            limits=BatchLimits(
                max_message_bytes=max_message_bytes,
                max_frames=max_frames,
                linger_turns=LINGER_TURNS,
                linger_frames=LINGER_FRAMES,
            ),
            kind="gateway",
        )
        self.local_id = local_id
        self.remote_id = ""
        self._handle = on_batch
        self.hello = asyncio.Event()

    def __repr__(self) -> str:
        return f"<FrameStream {self.local_id} -> {self.remote_id or '?'}>"

    def _received(self, frames: Sequence[pb.Frame]) -> None:
        if frames and frames[0].kind == HELLO and not self.hello.is_set():
            self.remote_id = frames[0].sender
            self.hello.set()
        self._handle(self, frames)

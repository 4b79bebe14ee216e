"""Frames waiting for a long-lived stream: how they are grouped into batches, when the
queue is full, when a writer lingers. No I/O; everything that decides lives here.

Mesh links (:mod:`wiremesh.transport.link`) and gateway streams
(:mod:`wiremesh.gateway.frame_stream`) send many small frames in one gRPC message (a *batch*),
because grpc.aio costs about the same per message whatever its size. The I/O shell,
:class:`wiremesh.transport.batching.BatchedStream`, pushes each frame it is given into an
:class:`Outbox` and writes what :meth:`Outbox.take` returns, one batch at a time.

Rules:

1. **What a frame costs.** The caller says how many bytes the frame's payload holds (it
   knows: it just encoded it). Everything else a frame carries (its kind, ids, names,
   trace context, its framing inside the batch) is counted as :data:`FRAME_COST` bytes.
   Counting is one addition per frame; nothing is measured again later.
2. **A batch fits in one message.** A batch counts at most ``batch_bytes`` bytes (the
   message limit less :data:`HEADROOM`) and holds at most :data:`BATCH_FRAMES` frames.
   Frames are cut into batches as they are pushed, in order: a frame that does not fit in
   the last batch opens the next one, and a frame that fills a batch alone travels alone.
3. **A frame too large to travel alone is never queued.** ``max_payload`` is the most a
   frame may carry; the shell refuses more with its own error, so that one oversized
   frame can never make a write fail for the frames queued beside it.
4. **The queue is bounded.** It is *full* at ``max_frames`` frames or ``max_queued_bytes``
   counted bytes. Senders that can wait then wait for room; the reader of a stream whose
   peer's messages bring answers stops reading while the frames queued and the answers it
   owes reach the bound (:meth:`Outbox.stops_reading`): a peer that does not read stops
   being read.
5. **Lingering.** After a write that had company (frames were queued while it was in
   flight), a writer may let up to ``linger_turns`` event-loop turns pass before the next
   write, so that frames arriving meanwhile join it, unless ``linger_frames`` frames or a
   whole batch already wait. An idle stream never lingers: its first frame leaves at once.

Every rule is a comparison of integers; an example, with tiny limits::

    >>> limits = BatchLimits(max_message_bytes=HEADROOM + 1000, max_frames=8)
    >>> limits.batch_bytes
    1000
    >>> outbox = Outbox(limits)
    >>> for name, size in [("a", 500), ("b", 300), ("c", 10), ("d", 900), ("e", 0)]:
    ...     outbox.push(name, size)
    >>> [outbox.take() for _ in range(4)]
    [['a'], ['b', 'c'], ['d'], ['e']]
    >>> len(outbox), outbox.full
    (0, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from wiremesh.core.defaults import MAX_MESSAGE_BYTES

__all__ = [
    "BATCH_FRAMES",
    "FRAME_COST",
    "HEADROOM",
    "QUEUED_FRAMES",
    "QUEUED_MESSAGES",
    "BatchLimits",
    "Outbox",
]

F = TypeVar("F")

#: bytes counted for what a frame carries beside its payload (kind, ids, names, trace
#: context, its own framing in the batch): generously, so that a batch's estimate holds
FRAME_COST = 128
#: bytes of a gRPC message kept free beside the frames' counted bytes
HEADROOM = 16 * 1024
#: the most frames one batch holds
BATCH_FRAMES = 2048
#: by default, a queue is full at this many messages' worth of bytes
QUEUED_MESSAGES = 4
#: by default, a queue is full at this many frames (a mesh link's bound)
QUEUED_FRAMES = 4096


@dataclass(frozen=True)
class BatchLimits:
    """The bounds of one batched stream, all derived from a few settings."""

    #: the largest gRPC message either end accepts
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: frames that may wait to be written before the queue is full
    max_frames: int = QUEUED_FRAMES
    #: bytes that may wait (payloads plus FRAME_COST each); 0: QUEUED_MESSAGES messages
    max_queued_bytes: int = 0
    #: loop turns a writer may let pass after a busy write (0: it never lingers)
    linger_turns: int = 0
    #: ... unless this many frames already wait
    linger_frames: int = 128

    @property
    def max_payload(self) -> int:
        """The most bytes one frame's payload may hold (it then travels alone)."""
        return self.max_message_bytes - HEADROOM

    @property
    def batch_bytes(self) -> int:
        """The most bytes a batch counts (payloads, and :data:`FRAME_COST` per frame)."""
        return max(1, self.max_message_bytes - HEADROOM)

    @property
    def queued_bytes(self) -> int:
        """The bytes at which a queue is full (see :attr:`max_queued_bytes`)."""
        return self.max_queued_bytes or QUEUED_MESSAGES * self.max_message_bytes


class Outbox(Generic[F]):
    """The frames waiting to be written on one stream, cut into batches as they come.

    :meth:`take` returns the frames queued first, as many as fit in one message (rule 2);
    the frames of the next batches stay queued (they count against the bound) until their
    own :meth:`take`. :attr:`full` says whether the queue is at its bound (rule 4).
    """

    __slots__ = (
        "_batch_bytes",
        "_check_at",
        "_check_frames",
        "_counted",
        "_cut_at",
        "_cut_frames",
        "_cuts",
        "_linger_frames",
        "_linger_turns",
        "_max_frames",
        "_max_queued_bytes",
        "frames",
        "full",
    )

    def __init__(self, limits: BatchLimits) -> None:
        self._max_frames = limits.max_frames
        self._max_queued_bytes = limits.queued_bytes
        self._batch_bytes = limits.batch_bytes
        self._linger_turns = limits.linger_turns
        self._linger_frames = limits.linger_frames
        #: the frames queued, in order (read it; push with :meth:`push`)
        self.frames: list[F] = []
        #: whether the queue is at its bound: a sender that can wait should
        self.full = False
        #: bytes counted for the frames queued: payloads, and FRAME_COST each
        self._counted = 0
        #: where the batches after the first begin: (index into ``frames``, bytes counted
        #: before it)
        self._cuts: list[tuple[int, int]] = []
        #: the last batch is cut before a frame that takes ``_counted`` past this, or that
        #: would be its frame number BATCH_FRAMES + 1
        self._cut_at = self._batch_bytes
        self._cut_frames = BATCH_FRAMES
        #: past either of these, :meth:`push` looks at the cuts and the bound (both lower
        #: than, or equal to, the next cut and the bound: one comparison each per frame)
        self._check_at = 0
        self._check_frames = 0
        self._checks()

    def __len__(self) -> int:
        return len(self.frames)

    def __bool__(self) -> bool:
        return bool(self.frames)

    def push(self, frame: F, size: int) -> None:
        """Queue ``frame``, whose payload holds ``size`` bytes (at most ``max_payload``:
        the caller refuses more, rule 3)."""
        frames = self.frames
        frames.append(frame)
        counted = self._counted = self._counted + size + FRAME_COST
        if counted > self._check_at or len(frames) > self._check_frames:
            self._grew(len(frames) - 1, size + FRAME_COST)

    def _grew(self, index: int, cost: int) -> None:
        """The frame at ``index``, which counts ``cost`` bytes, may have filled the last
        batch or the queue: cut a batch before or after it, then mark the queue full."""
        counted = self._counted
        if counted > self._cut_at or index + 1 > self._cut_frames:
            cuts = self._cuts
            if index > (cuts[-1][0] if cuts else 0):
                # it does not fit in the last batch: it opens the next one
                cuts.append((index, counted - cost))
            self._cut_at = counted - cost + self._batch_bytes
            self._cut_frames = index + BATCH_FRAMES
            if cost >= self._batch_bytes:
                # it fills a batch alone: the frame after it opens the next one
                cuts.append((index + 1, counted))
                self._cut_at = counted + self._batch_bytes
                self._cut_frames = index + 1 + BATCH_FRAMES
        self.full = len(self.frames) >= self._max_frames or counted >= self._max_queued_bytes
        self._checks()

    def _checks(self) -> None:
        self._check_at = min(self._cut_at, self._max_queued_bytes - 1)
        self._check_frames = min(self._cut_frames, self._max_frames - 1)

    def take(self) -> list[F]:
        """The first batch to write (every frame queued, unless they make several); those
        frames leave the outbox, which holds the rest, in order."""
        frames = self.frames
        cuts = self._cuts
        if not cuts:  # one batch: the cut and check marks are still those of an empty queue
            self.frames = []
            self._counted = 0
            self.full = False
            return frames
        if cuts[0][0] >= len(frames):  # one batch, which a large frame ends
            self.frames = []
            self._counted = 0
            self._cuts = []
            self._cut_at = self._batch_bytes
            self._cut_frames = BATCH_FRAMES
            self.full = False
            self._checks()
            return frames
        first, before = cuts[0]
        rest = self.frames = frames[first:]
        counted = self._counted = self._counted - before
        self._cuts = [(index - first, bytes_ - before) for index, bytes_ in cuts[1:]]
        self._cut_at -= before
        self._cut_frames -= first
        self.full = len(rest) >= self._max_frames or counted >= self._max_queued_bytes
        self._checks()
        return frames[:first]

    def clear(self) -> None:
        """Drop every frame queued (the stream is over)."""
        while self.frames:
            self.take()

    @property
    def queued_bytes(self) -> int:
        """The bytes the queue holds, as counted: payloads, and :data:`FRAME_COST` each."""
        return self._counted

    def stops_reading(self, owed: int) -> bool:
        """Whether a reader should stop reading from the peer, ``owed`` being the answers
        it owes for what it read already (calls being served): the frames queued and
        those answers reach the bound (rule 4)."""
        return (
            len(self.frames) + owed >= self._max_frames or self._counted >= self._max_queued_bytes
        )

    def lingers(self, turns: int) -> bool:
        """Whether a writer that has let ``turns`` loop turns pass since its last write
        (one that had company) lets one more pass before writing (rule 5)."""
        return (
            turns < self._linger_turns
            and len(self.frames) < self._linger_frames
            and not self._cuts  # a whole batch waits already
        )

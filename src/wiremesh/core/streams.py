"""Streaming methods: which kind a method is, and how its items travel. No I/O.

An ``@rpc`` method that returns an async iterator streams its answer (``server``), one
whose only parameter is an async iterator takes a stream (``client``), one that does both
is ``bidi``::

    async def prices(self, ctx: Context, sku: str) -> AsyncIterator[Price]: ...   # server
    async def upload(self, ctx: Context, chunks: AsyncIterator[bytes]) -> int: ... # client
    async def chat(self, ctx: Context, lines: AsyncIterator[str]) -> AsyncIterator[str]: ...

Each item is a value of the annotated type, encoded alone with the call's codec. A gRPC
message carries one item (what any gRPC client sends and gets), or, between wiremesh
peers (the ``wm-batch`` metadata key), a *batch*: each item as a varint of its length
followed by its bytes (:func:`frame`, :func:`unframe`), so that many small items pay for
one message.
"""

from __future__ import annotations

import collections.abc
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from wiremesh.core.codec import CodecName, encode
from wiremesh.core.shape import Shape
from wiremesh.errors import InvalidPayload

__all__ = [
    "BATCH_BYTES",
    "StreamKind",
    "StreamShapes",
    "add_item",
    "frame",
    "split_encode",
    "stream_shapes",
    "unframe",
]

StreamKind = Literal["server", "client", "bidi"]

#: a batch is sent once it holds this many bytes of items (a writer waits while a batch
#: this size is on its way and the next is full: at most two batches per stream)
BATCH_BYTES = 64 * 1024

_STREAMS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


@dataclass(frozen=True, slots=True)
class StreamShapes:
    """A streaming method's kind and the shapes of its items in and out."""

    kind: StreamKind
    #: the shape of each item it takes (client, bidi), else None
    takes: Shape | None
    #: the shape of each item it streams back (server, bidi), else None
    gives: Shape | None
    #: the name of the streamed parameter (client, bidi)
    parameter: str = ""


def _item_of(hint: Any) -> Any | None:
    """``T`` when ``hint`` is ``AsyncIterator[T]`` (or AsyncIterable, AsyncGenerator);
    ``Any`` for a bare one; None when it is no async iterator."""
    origin = get_origin(hint) or hint
    if origin not in _STREAMS:
        return None
    args = get_args(hint)
    return args[0] if args else Any


def stream_shapes(func: Callable[..., Any], skip: int) -> StreamShapes | None:
    """The stream shapes of ``func`` (its first ``skip`` parameters aside: self, ctx), or
    None for a unary method. Raises :class:`TypeError` for a stream it cannot take (a
    streamed parameter that is not the only one)."""
    try:
        hints = get_type_hints(func)
    except Exception as exc:
        raise TypeError(f"cannot read the annotations of {func.__qualname__}: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())[skip:]
    streamed = [p for p in params if _item_of(hints.get(p.name)) is not None]
    takes = None
    name = ""
    if streamed:
        if len(params) != 1:
            raise TypeError(
                f"{func.__qualname__}: a method that takes a stream takes nothing else "
                f"(its parameters: {', '.join(p.name for p in params)})"
            )
        name = streamed[0].name
        takes = Shape(_item_of(hints[name]), "item")
    returned = hints.get("return")
    item = None if returned is None else _item_of(returned)
    if item is None and inspect.isasyncgenfunction(func):
        item = Any
    gives = None if item is None else Shape(item, "item")
    if takes is None and gives is None:
        return None
    kind: StreamKind = "bidi" if takes and gives else "client" if takes else "server"
    return StreamShapes(kind, takes, gives, name)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def add_item(parts: list[bytes], head: bytes, body: bytes) -> int:
    """Add one encoded item (``head`` then ``body``: see :func:`split_encode`) to the
    ``parts`` of a batch, after its length; the bytes added. ``b"".join(parts)`` is then
    the batch, made with one copy of each item."""
    size = len(head) + len(body)
    parts.append(bytes((size,)) if size < 0x80 else _varint(size))
    if head:
        parts.append(head)
    parts.append(body)
    return size


def frame(items: Iterable[bytes]) -> bytes:
    """One batch message of encoded ``items``: each as its length (a varint), then it."""
    parts: list[bytes] = []
    for item in items:
        add_item(parts, b"", item)
    return b"".join(parts)


def split_encode(value: Any, codec: CodecName) -> tuple[bytes, bytes]:
    """``value`` encoded with ``codec`` as (head, body), whose concatenation is the
    encoding: a ``bytes`` value under msgpack is its ``bin`` header and the value itself,
    not a copy of it (a large chunk is then copied once, into its batch)."""
    if codec == "msgpack" and type(value) is bytes:
        size = len(value)
        if size < 0x100:
            head = b"\xc4" + bytes((size,))
        elif size < 0x10000:
            head = b"\xc5" + size.to_bytes(2, "big")
        else:
            head = b"\xc6" + size.to_bytes(4, "big")
        return head, value
    return b"", encode(value, codec)


def unframe(message: bytes) -> list[memoryview]:
    """The encoded items of a batch message, as views into it (no copy); InvalidPayload
    for a broken one."""
    items: list[memoryview] = []
    at = 0
    end = len(message)
    view = memoryview(message)
    while at < end:
        size = message[at]
        at += 1
        if size & 0x80:
            size &= 0x7F
            shift = 7
            while True:
                if at >= end or shift > 35:
                    raise InvalidPayload("a broken stream batch: bad item length")
                byte = message[at]
                at += 1
                size |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
        if at + size > end:
            raise InvalidPayload("a broken stream batch: an item runs past its end")
        items.append(view[at : at + size])
        at += size
    return items

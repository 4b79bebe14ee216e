"""What the fuzz tests share: byte mutations, plain values, an in-memory stream, and a
probe of the memory a decoder allocates."""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from hypothesis import strategies as st

from wiremesh.core.bucket import TokenBucket
from wiremesh.gateway.connection import Connection
from wiremesh.gateway.frame_stream import FrameStream
from wiremesh.gateway.server import Gateway
from wiremesh.testing import gateway_settings

__all__ = [
    "EOF",
    "Pipe",
    "a_gateway",
    "a_session",
    "json_values",
    "msgpack_values",
    "mutated",
    "peak_bytes",
    "protobuf_bytes",
]

EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - the stubs do not know it

#: bytes that sit on the edges of formats: length prefixes, type tags, UTF-8 lead bytes
_EDGE_BYTES = st.sampled_from(
    [0x00, 0x01, 0x7F, 0x80, 0x81, 0xBF, 0xC0, 0xC1, 0xCF, 0xD9, 0xDB, 0xDD, 0xDF, 0xFE, 0xFF]
)


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one change: a byte set, a range cut, a range doubled, bytes put in,
    or the end cut off."""
    size = len(data)
    kind = draw(st.sampled_from(["set", "delete", "duplicate", "insert", "truncate"]))
    at = draw(st.integers(0, size))
    if kind == "set" and size:
        at = min(at, size - 1)
        byte = draw(st.one_of(_EDGE_BYTES, st.integers(0, 255)))
        return data[:at] + bytes((byte,)) + data[at + 1 :]
    if kind == "delete":
        end = draw(st.integers(at, min(size, at + 16)))
        return data[:at] + data[end:]
    if kind == "duplicate":
        end = draw(st.integers(at, min(size, at + 64)))
        return data[:end] + data[at:end] + data[end:]
    if kind == "insert":
        extra = draw(st.binary(min_size=1, max_size=12))
        return data[:at] + extra + data[at:]
    return data[:at]


@st.composite
def mutated(draw: st.DrawFn, data: bytes, most: int = 4) -> bytes:
    """``data`` after one to ``most`` mutations (structure-aware fuzzing: the input is
    nearly a valid message, so the decoder gets past its first checks)."""
    for _ in range(draw(st.integers(1, most))):
        data = draw(_mutation(data))
    return data


def _scalars(*, allow_bytes: bool) -> st.SearchStrategy[Any]:
    base = [
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
    ]
    if allow_bytes:
        base.append(st.binary(max_size=40))
    return st.one_of(*base)


#: values msgpack carries (keys of any hashable scalar kind, bytes as ``bin``)
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    _scalars(allow_bytes=True),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-5, 5)), inner, max_size=6),
    ),
    max_leaves=30,
)

#: values JSON carries (string keys, no bytes)
json_values: st.SearchStrategy[Any] = st.recursive(
    _scalars(allow_bytes=False),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)


def protobuf_bytes(build: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, valid encodings of messages ``build`` makes, and mutations of
    those: what a hostile peer may send in place of one protobuf message."""
    valid = build.map(lambda message: message.SerializeToString())
    return st.one_of(st.binary(max_size=256), valid, valid.flatmap(mutated))


def peak_bytes(decode: Callable[[], object]) -> int:
    """The most memory ``decode()`` held at once (raising or not), in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with contextlib.suppress(Exception):
            decode()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (a decoded NaN is the value that was sent)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


class Pipe:
    """An in-memory gRPC stream: :meth:`read` hands out ``incoming`` one by one, waits
    ``linger`` seconds (for the answers to be written), then ends the stream (grpc.aio's
    ``EOF``); :meth:`write` keeps what is written."""

    def __init__(self, incoming: list[Any], *, linger: float = 0.0) -> None:
        self.incoming = list(incoming)
        self.linger = linger
        self.written: list[Any] = []

    async def read(self) -> Any:
        await asyncio.sleep(0)
        if self.incoming:
            return self.incoming.pop(0)
        if self.linger:
            await asyncio.sleep(self.linger)
        return EOF

    async def write(self, message: Any) -> None:
        self.written.append(message)


@contextlib.asynccontextmanager
async def a_gateway(**settings: Any) -> AsyncIterator[Gateway]:
    """A gateway ``gw-1`` that is built but never started (no socket): its parsers run,
    called directly."""
    with tempfile.TemporaryDirectory(prefix="wiremesh-fuzz-") as folder:
        gateway = Gateway(
            gateway_settings(**settings),
            registry_address="127.0.0.1:9",
            data_dir=Path(folder),
            gateway_id="gw-1",
        )
        try:
            yield gateway
        finally:
            await gateway.registry.close()


def a_session(
    gateway: Gateway,
    stream: FrameStream,
    number: int,
    principal: str,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    text: bool = True,
) -> Connection:
    """Session ``gw-1.<number>`` of ``principal`` at ``gateway``, pinned to ``stream``; what
    its browser is sent goes to ``send`` as ASGI events."""
    return Connection(
        gateway,
        number=number,
        session_id=f"gw-1.{number}",
        principal=principal,
        ip="127.0.0.1",
        node_id="chat-1",
        service="chat",
        stream=stream,
        socket=None,
        asgi_send=send,
        bucket=TokenBucket(1000.0, 1000.0, 0.0),
        expires_at=2e9,
        max_bytes=1 << 20,
        text=text,
    )

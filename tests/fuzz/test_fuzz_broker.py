"""The embedded broker's protocol (messaging/broker_server.py, messaging/journal.py,
proto/wiremesh/broker/v1/broker.proto).

Any local program can open ``Broker/Publish``, ``Consume``, ``ListDead``, ``Replay`` and
``Purge``. What it sends must be stored, delivered, settled or refused as docs/protocol.md
§15 says: a message that does not parse is refused by protobuf (``DecodeError``); a
``Consume`` that does not start with a complete ``subscribe`` ends with
``INVALID_ARGUMENT``; nothing else escapes. The broker's handlers run here on a journal
in a temporary folder, with an in-memory request stream and no gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import peak_bytes, protobuf_bytes
from wiremesh.messaging.broker_server import BrokerServer
from wiremesh.messaging.journal import _SCHEMA, Journal, Stored, envelope_from_proto
from wiremesh.proto import broker_pb2 as pb

FUZZ = settings.get_profile("wiremesh-fuzz")
SCENARIOS = settings.get_profile("wiremesh-fuzz-scenarios")

_words = st.sampled_from(["orders", "created", "billing", "charge", "a", "b"])
_topics = st.one_of(
    st.lists(_words, min_size=1, max_size=4).map(".".join),
    st.text(max_size=20),
)
_patterns = st.one_of(
    st.lists(st.one_of(_words, st.sampled_from(["*", "#"])), min_size=1, max_size=4).map(".".join),
    st.text(max_size=12),
)
_envelopes = st.builds(
    pb.Envelope,
    id=st.one_of(st.uuids().map(lambda u: u.hex), st.text(max_size=10)),
    kind=st.sampled_from(["event", "command", "", "other"]),
    topic=_topics,
    body=st.binary(max_size=32),
    codec=st.sampled_from(["msgpack", "json", "raw", "proto", "", "xml"]),
    headers=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
    attempt=st.integers(0, 2**32 - 1),
)
_publishes = st.builds(pb.PublishRequest, envelopes=st.lists(_envelopes, max_size=4))
_bindings = st.builds(
    pb.Binding,
    service=st.sampled_from(["orders", "billing", "", "a/b"]),
    handler=st.sampled_from(["created", "charge", "", "h@x"]),
    kind=st.sampled_from(["event", "command", "", "other"]),
    patterns=st.lists(_patterns, max_size=3),
    delivery=st.sampled_from(["pool", "broadcast", "singleton", "", "other"]),
    node_id=st.sampled_from(["orders-1", "", "n"]),
    prefetch=st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
)
_delays = st.one_of(
    st.floats(min_value=0, max_value=0.01),
    st.floats(allow_nan=True, allow_infinity=True),
)
_settles = st.builds(
    pb.Settle,
    acks=st.lists(st.integers(0, 6), max_size=4),
    retries=st.lists(
        st.builds(pb.Retry, tag=st.integers(0, 6), delay=_delays, reason=st.text(max_size=20)),
        max_size=3,
    ),
    deads=st.lists(
        st.builds(pb.Dead, tag=st.integers(0, 6), reason=st.text(max_size=20)), max_size=3
    ),
)
_consume_requests = st.one_of(
    _bindings.map(lambda b: pb.ConsumeRequest(subscribe=b)),
    _settles.map(lambda s: pb.ConsumeRequest(settle=s)),
    st.just(pb.ConsumeRequest()),
)
_ids = st.lists(st.one_of(st.uuids().map(lambda u: u.hex), st.text(max_size=8)), max_size=5)
_message_ids = st.builds(pb.MessageIds, ids=_ids, all=st.booleans())
_list_dead = st.builds(pb.ListDeadRequest, limit=st.integers(0, 2**32 - 1), ids=_ids)


# ------------------------------------------------------------------ messages


@FUZZ
@given(
    kind=st.sampled_from(
        [
            (pb.PublishRequest, _publishes),
            (pb.ConsumeRequest, _consume_requests),
            (pb.ListDeadRequest, _list_dead),
            (pb.MessageIds, _message_ids),
        ]
    ).flatmap(lambda pair: st.tuples(st.just(pair[0]), protobuf_bytes(pair[1])))
)
def test_any_bytes_parse_as_a_broker_request_or_fail_with_decode_error(
    kind: tuple[Any, bytes],
) -> None:
    message_type, data = kind
    with contextlib.suppress(DecodeError):
        message_type.FromString(data)


@FUZZ
@given(data=protobuf_bytes(_publishes))
def test_a_published_envelope_is_stored_as_it_came(data: bytes) -> None:
    try:
        request = pb.PublishRequest.FromString(data)
    except DecodeError:
        return
    db = sqlite3.connect(":memory:")
    db.executescript(_SCHEMA)
    copies = [Stored(n, "q", None, wire=m) for n, m in enumerate(request.envelopes, 1)]
    Journal.insert(copies)(db)
    for copy, wire in zip(copies, request.envelopes, strict=True):
        envelope = envelope_from_proto(wire)
        assert envelope.kind in ("event", "command")
        assert envelope.attempt >= 1
        headers = db.execute("SELECT headers FROM messages WHERE seq = ?", (copy.seq,))
        assert json.loads(headers.fetchone()[0]) == dict(wire.headers)


@FUZZ
@given(ids=st.one_of(st.none(), _ids), limit=st.integers(0, 2**32 - 1))
def test_dead_letters_are_found_by_any_ids(ids: list[str] | None, limit: int) -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(_SCHEMA)
    for seq, mid in enumerate(["a", "b", *(ids or [])[:2]], 1):
        db.execute(
            "INSERT INTO dead VALUES (?, 'q', ?, 'event', 't', x'00', 'raw', '{}', 1, 'r', 0)",
            (seq, mid),
        )
    found = Journal.list_dead(min(limit, 2**62), ids)(db)
    if ids is not None:
        assert {d.envelope.id for d in found} <= set(ids)
    moved = Journal.take_dead(ids, {"q"}, iter(range(100, 200)).__next__)(db)
    assert Journal.purge_dead(ids)(db) + len(moved) >= len(found)


def test_a_client_naming_more_dead_letters_than_sqlite_takes_parameters_is_answered() -> None:
    # 300,000 ids are about 1 MB on the wire, within the 4 MiB message limit; SQLite takes
    # at most 250,000 parameters (32,766 in many builds): one parameter per id failed the
    # read, and with it every write of the same group commit
    ids = [f"{n:x}" for n in range(300_000)]
    db = sqlite3.connect(":memory:")
    db.executescript(_SCHEMA)
    assert Journal.list_dead(100, ids)(db) == []
    assert Journal.take_dead(ids, {"q"}, iter(range(10)).__next__)(db) == []
    assert Journal.purge_dead(ids)(db) == 0


# ------------------------------------------------------------------ the broker's handlers


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code


class Context:
    """What the broker's handlers use of a ``ServicerContext``."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def broker_serves(
    publishes: list[pb.PublishRequest],
    consume: list[pb.ConsumeRequest],
    dead: tuple[pb.ListDeadRequest, pb.MessageIds, pb.MessageIds],
) -> None:
    """One consumer's stream (``consume``), while ``publishes`` are sent once it has
    begun and once more after it ended; then the dead-letter requests ``dead``."""
    with tempfile.TemporaryDirectory(prefix="wiremesh-fuzz-") as folder:
        broker = BrokerServer(Path(folder) / "broker.db")
        await asyncio.to_thread(broker.journal.load)
        context = Context()
        routed = 0

        async def publish_all() -> None:
            nonlocal routed
            for request in publishes:
                routed += (await broker.publish(request, context)).routed

        async def requests() -> AsyncIterator[pb.ConsumeRequest]:
            for n, message in enumerate(consume):
                yield message
                if n == 0:
                    await publish_all()
                await asyncio.sleep(0.001)  # the broker delivers meanwhile

        try:
            try:
                async for _ in broker.consume(requests(), context):
                    pass
            except Aborted as exc:  # documented: a stream that does not subscribe first
                assert exc.code is grpc.StatusCode.INVALID_ARGUMENT
            await publish_all()
            assert sum(broker.stats().values()) <= routed
            await broker.list_dead(dead[0], context)
            await broker.replay(dead[1], context)
            await broker.purge(dead[2], context)
        finally:
            await broker.stop(0)


@SCENARIOS
@given(
    publishes=st.lists(_publishes, max_size=2),
    consume=st.lists(_consume_requests, max_size=4),
    dead=st.tuples(_list_dead, _message_ids, _message_ids),
)
def test_the_broker_takes_any_requests_a_client_sends(
    publishes: list[pb.PublishRequest],
    consume: list[pb.ConsumeRequest],
    dead: tuple[pb.ListDeadRequest, pb.MessageIds, pb.MessageIds],
) -> None:
    asyncio.run(asyncio.wait_for(broker_serves(publishes, consume, dead), 20))


def test_a_pattern_of_thousands_of_words_does_not_stop_the_broker_routing() -> None:
    binding = pb.Binding(
        service="orders",
        handler="created",
        kind="event",
        patterns=[".".join(["#"] * 3000)],
        delivery="pool",
        node_id="orders-1",
        prefetch=1,
    )
    publish = pb.PublishRequest(
        envelopes=[pb.Envelope(id="1", kind="event", topic="orders.created", codec="raw")]
    )
    asyncio.run(broker_serves([publish], [pb.ConsumeRequest(subscribe=binding)], DEAD_NONE))


DEAD_NONE = (pb.ListDeadRequest(), pb.MessageIds(), pb.MessageIds())


def test_a_publish_declaring_a_huge_envelope_allocates_nothing_for_it() -> None:
    data = b"\x0a\xff\xff\xff\xff\x0f" + b"\x22\xff\xff\xff\x7f"
    with pytest.raises(DecodeError):
        pb.PublishRequest.FromString(data)
    assert peak_bytes(lambda: pb.PublishRequest.FromString(data)) < 64 * 1024

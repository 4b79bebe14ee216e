"""The gateway stream, both ends (gateway/frame_stream.py, gateway/socket_hub.py, the gateway's
``_on_batch``; proto/wiremesh/gateway/v1/gateway.proto).

A node reads the frames a gateway sends (OPEN, DATA, CLOSE, HELLO); a gateway reads the
frames a node sends (DATA, CLOSE, PUSH). One stream carries every session of one gateway
on one node, so a frame that one end cannot take must cost at most its own session, never
the stream. Both ends run here over an in-memory stream (docs/protocol.md §13.1).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzzing import Pipe, a_gateway, a_session, json_values, mutated, protobuf_bytes
from wiremesh import Service, Session, on_socket
from wiremesh.gateway.frame_stream import FrameStream
from wiremesh.gateway.socket_hub import SocketHub
from wiremesh.gateway.table import SessionTable
from wiremesh.proto import gateway_pb2 as pb
from wiremesh.service import ServiceSpec
from wiremesh.testing import worker

FUZZ = settings.get_profile("wiremesh-fuzz")
SCENARIOS = settings.get_profile("wiremesh-fuzz-scenarios")


class Chat(Service):
    name = "chat"

    @on_socket(text=True)
    async def socket(self, session: Session, frame: bytes | str) -> None:
        await session.send(frame)
        if frame == b"wait":
            await asyncio.sleep(0)  # a handler that waits: the session's next messages queue

    async def on_session_open(self, session: Session) -> None:
        await asyncio.sleep(0)

    async def on_session_close(self, session: Session, code: int, reason: str) -> None:
        pass


CHAT = ServiceSpec.of(Chat)
_instance: list[Chat] = []


def chat_instance() -> Chat:
    if not _instance:
        instance = worker(Chat)
        assert isinstance(instance, Chat)
        _instance.append(instance)
    return _instance[0]


_claims = st.one_of(
    st.just(""),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=30),
    json_values.map(lambda v: json.dumps({"sub": v}).encode())
    .flatmap(mutated)
    .map(lambda b: b.decode("utf-8", "replace")),
)


def _frame(
    kind: int, session: int, payload: bytes, text: bool, as_text: str, **fields: Any
) -> pb.Frame:
    # a text message is UTF-8 (the WebSocket layer checks it): what text frames carry
    return pb.Frame(
        kind=kind,
        session=session,
        payload=as_text.encode() if text else payload,
        text=text,
        **fields,
    )


_frames = st.builds(
    _frame,
    kind=st.integers(0, 6),  # 6: a kind neither end knows
    session=st.integers(0, 4),
    payload=st.one_of(st.binary(max_size=32), st.just(b"wait")),
    text=st.booleans(),
    as_text=st.text(max_size=20),
    code=st.one_of(st.sampled_from([1000, 1006, 1011, 3000, 4999]), st.integers(0, 2**32 - 1)),
    reason=st.text(max_size=30),
    session_id=st.one_of(
        st.text(max_size=12),
        st.sampled_from(["gw-1.1", "gw-1.2", "gw-1.", "gw-1.0", "other.1", ""]),
        st.integers(0, 2**64).map(lambda n: f"gw-1.{n}"),
    ),
    principal=st.sampled_from(["", "ada", "bob", "eve"]),
    claims=_claims,
    service=st.text(max_size=10),
    path=st.text(max_size=20),
    origin=st.text(max_size=20),
    remote=st.text(max_size=20),
    sender=st.sampled_from(["gw-1", "gw-2", ""]),
    trace=st.dictionaries(
        st.sampled_from(["traceparent", "tracestate", "x"]), st.text(max_size=60)
    ),
)
_batches = st.lists(_frames, max_size=6).map(lambda frames: pb.Batch(frames=frames))


# ------------------------------------------------------------------ the node's end


async def node_reads(batches: list[pb.Batch]) -> list[pb.Frame]:
    """Serve one gateway's stream over ``batches`` on a node; the frames it wrote back."""
    hub = SocketHub(CHAT, chat_instance(), node_id="chat-1")
    pipe = Pipe(batches, linger=0.005)
    await asyncio.wait_for(hub.accept(pipe), 10)
    await hub.close(0.5)
    assert not hub.by_id and not hub.by_principal, "a session outlived its stream"
    return [frame for batch in pipe.written for frame in batch.frames]


def once_per_number(batches: list[pb.Batch]) -> list[pb.Batch]:
    """``batches`` without the OPEN frames that reuse a session number still open on the
    stream (a gateway numbers its sessions once; a number reused is tested below)."""
    open_numbers: set[int] = set()
    kept = []
    for batch in batches:
        frames = []
        for frame in batch.frames:
            if frame.kind == pb.Frame.OPEN:
                if frame.session in open_numbers:
                    continue
                open_numbers.add(frame.session)
            elif frame.kind == pb.Frame.CLOSE:
                open_numbers.discard(frame.session)
            frames.append(frame)
        kept.append(pb.Batch(frames=frames))
    return kept


@SCENARIOS
@given(batches=st.lists(_batches, min_size=1, max_size=3).map(once_per_number))
def test_a_node_takes_any_frames_a_gateway_sends(batches: list[pb.Batch]) -> None:
    asyncio.run(node_reads(batches))


@SCENARIOS
@given(data=protobuf_bytes(_batches))
def test_any_bytes_parse_as_a_gateway_batch_or_fail_with_decode_error(data: bytes) -> None:
    try:
        batch = pb.Batch.FromString(data)
    except DecodeError:
        return  # grpc refuses the message before the stream reads it
    for frame in batch.frames:  # what a node reads as text is text (text that is not: below)
        if frame.text:
            frame.payload = frame.payload.decode("utf-8", "replace").encode()
    asyncio.run(node_reads(once_per_number([batch])))


OPEN = pb.Frame(kind=pb.Frame.OPEN, session=1, session_id="gw-1.1", principal="ada")


def test_claims_nested_too_deeply_open_the_session_with_no_claims() -> None:
    deep = pb.Frame(kind=pb.Frame.OPEN, session=1, session_id="gw-1.1", claims="[" * 100_000)
    asyncio.run(node_reads([pb.Batch(frames=[deep])]))


def test_a_text_frame_that_is_not_utf8_costs_only_its_own_session() -> None:
    bad = pb.Frame(kind=pb.Frame.DATA, session=1, text=True, payload=b"\xff\xfe")
    asyncio.run(node_reads([pb.Batch(frames=[OPEN]), pb.Batch(frames=[bad])]))


def test_an_open_that_reuses_a_session_number_leaves_no_session_behind() -> None:
    asyncio.run(node_reads([pb.Batch(frames=[OPEN, OPEN])]))


# ------------------------------------------------------------------ the gateway's end


async def gateway_reads(batches: list[pb.Batch]) -> list[dict[str, Any]]:
    """Hand ``batches`` from a node to a gateway holding three sessions on that node's
    stream (sessions 1 and 2 of ada, 3 of bob); what the browsers were sent."""
    sent: list[dict[str, Any]] = []

    async def asgi_send(event: dict[str, Any]) -> None:
        sent.append(event)

    async with a_gateway() as gateway:
        stream = FrameStream(Pipe([]), local_id="gw-1", on_batch=gateway._on_batch)
        gateway.table = SessionTable(per_principal=10, per_ip=10)
        for number, principal in ((1, "ada"), (2, "ada"), (3, "bob")):
            gateway.table.add(a_session(gateway, stream, number, principal, asgi_send))
        for batch in batches:
            gateway._on_batch(stream, batch.frames)
        await asyncio.sleep(0)
    return sent


@SCENARIOS
@given(batches=st.lists(_batches, min_size=1, max_size=3))
def test_a_gateway_takes_any_frames_a_node_sends(batches: list[pb.Batch]) -> None:
    sent = asyncio.run(gateway_reads(batches))
    for event in sent:
        if event["type"] == "websocket.close":
            assert 1000 <= event["code"] <= 4999


@pytest.mark.parametrize("number", ["²", "9" * 5000], ids=["superscript", "5000-digits"])
def test_a_push_to_a_session_number_that_is_not_one_is_ignored(number: str) -> None:
    push = pb.Frame(kind=pb.Frame.PUSH, session_id=f"gw-1.{number}", payload=b"x")
    asyncio.run(gateway_reads([pb.Batch(frames=[push])]))

"""Batched streams under hostile load, in real processes: byte limits and backpressure.

- Sessions of one principal each sending one 64 KiB message at the same moment add up to
  more than the 4 MiB gRPC message limit on the gateway's stream to their node: the
  stream cuts them into batches that fit, and nobody is closed (before, the batch was
  refused, the stream ended and every session on that node got 1012).
- A link peer that sends CALL frames and never reads their answers stops being read:
  the node's memory stays bounded, and the node keeps serving other callers.

Everything runs under ``wiremesh run``: a real gateway process, real node processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import msgpack
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.fixtures.meshes import RunningMesh, mesh_client, serving_nodes, write_mesh
from wiremesh.core.model import NodeInfo
from wiremesh.proto import link_pb2 as pb
from wiremesh.transport.link import LINK_OPEN

MIB = 1024 * 1024

# ------------------------------------------------------------------ the gateway's stream

GATEWAY = """\
[gateway]
port = 0
"""
#: sessions of one principal, each sending one message of the largest size a browser may
#: send by default, at the same moment: more than one gRPC message holds
SESSIONS = 66
MESSAGE = 64 * 1024
#: bursts in a row (each must close nobody)
BURSTS = 3


async def open_sessions(url: str, token: str, count: int) -> list[ClientConnection]:
    protocols = ["wiremesh.v1", f"bearer.{token}"]
    return list(
        await asyncio.gather(
            *(
                websockets.connect(url, subprotocols=protocols)  # type: ignore[arg-type]
                for _ in range(count)
            )
        )
    )


async def echoed(ws: ClientConnection) -> bytes:
    """The next message from the gateway (the close code in the error if it closes)."""
    try:
        answer = await ws.recv()
    except websockets.ConnectionClosed as closed:
        frame = closed.rcvd
        code = frame.code if frame is not None else None
        raise AssertionError(f"a session was closed ({code}) by another's message") from None
    assert isinstance(answer, bytes)
    return answer


async def test_a_burst_of_64_kib_messages_from_one_principal_closes_nobody(
    tmp_path: Path,
) -> None:
    write_mesh(tmp_path, {"chat": "svc_socket:Chat"}, name="burst", extra=GATEWAY)
    with RunningMesh(tmp_path) as mesh:
        url = (await mesh.line(r"^gateway: (http://\S+)", timeout=30)).group(1)
        base, _, token = url.partition("/#token=")
        sessions = await open_sessions(
            base.replace("http://", "ws://") + "/ws/chat", token, SESSIONS
        )
        try:
            for ws in sessions:  # every session is open at the node
                await ws.send(b"ready")
                assert await echoed(ws) == b"ready"
            for burst in range(BURSTS):
                messages = [bytes([burst, n]) * (MESSAGE // 2) for n in range(SESSIONS)]
                await asyncio.gather(
                    *(ws.send(m) for ws, m in zip(sessions, messages, strict=True))
                )
                async with asyncio.timeout(30):
                    answers = await asyncio.gather(*(echoed(ws) for ws in sessions))
                assert answers == messages
            for ws in sessions:  # and every session still works
                await ws.send(b"still here")
                assert await echoed(ws) == b"still here"
        finally:
            await asyncio.gather(*(ws.close() for ws in sessions), return_exceptions=True)


# ------------------------------------------------------------------ a link peer


#: how long the peer sends calls without reading an answer
ATTACK = 5.0
#: calls per message the peer sends, and the payload of each (its answer is as large)
CALLS_PER_MESSAGE = 256
PAYLOAD = msgpack.packb(b"x" * 4096)
#: the most a node's memory may grow under the attack: a link's queue (16 MiB), the
#: message in its write and the one it reads, gRPC's buffers, and the allocator's slack
#: (without backpressure it grew by about 125 MB/s)
RSS_GROWTH = 80 * MIB


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1)) * 1024


async def never_reading_peer(address: str, stop: asyncio.Event) -> int:
    """Open a link to ``address``, say HELLO, then send CALL frames until ``stop`` and read
    nothing. Returns how many calls were handed to gRPC."""
    sent = 0
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 * MIB)]
    ) as channel:
        call = channel.stream_stream(
            LINK_OPEN,
            request_serializer=pb.Batch.SerializeToString,
            response_deserializer=pb.Batch.FromString,
        )()
        hello = pb.Frame(kind=pb.Frame.HELLO, node_id="attacker-1", service="")
        await call.write(pb.Batch(frames=[hello]))
        next_id = 0
        stopped = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            frames = []
            for _ in range(CALLS_PER_MESSAGE):
                next_id += 1
                frames.append(
                    pb.Frame(
                        kind=pb.Frame.CALL,
                        id=next_id,
                        service="echo",
                        method="echo",
                        payload=PAYLOAD,
                        timeout_ms=60_000,
                    )
                )
            write = asyncio.ensure_future(call.write(pb.Batch(frames=frames)))
            await asyncio.wait([write, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not write.done():  # the node stopped reading: gRPC holds the write
                write.cancel()
                break
            sent += CALLS_PER_MESSAGE
        call.cancel()
    return sent


@pytest.fixture(scope="module")
def echo_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RunningMesh]]:
    folder = tmp_path_factory.mktemp("link-peer-mesh")
    write_mesh(folder, {"echo": "svc_echo:Echo"}, name="peer")
    with RunningMesh(folder) as mesh:
        yield folder, mesh


async def test_a_link_peer_that_never_reads_costs_a_bounded_memory_and_no_other_caller(
    echo_mesh: tuple[Path, RunningMesh],
) -> None:
    folder, _ = echo_mesh
    client = await mesh_client(folder, timeout=30)
    try:
        (node,) = await serving_nodes(client, "echo", 1, timeout=30)
        assert isinstance(node, NodeInfo)
        for _ in range(20):  # warm: the node's own allocations are made
            assert await client.call("echo.echo", b"warm") == b"warm"
        before = rss(node.pid)
        stop = asyncio.Event()
        attacker = asyncio.create_task(never_reading_peer(node.address, stop))
        peak = before
        latencies: list[float] = []
        deadline = time.monotonic() + ATTACK
        while time.monotonic() < deadline:
            # meanwhile, another caller is served
            started = time.monotonic()
            assert await client.call("echo.echo", b"other", timeout=5.0) == b"other"
            latencies.append(time.monotonic() - started)
            peak = max(peak, rss(node.pid))
            await asyncio.sleep(0.1)
        peak = max(peak, rss(node.pid))
        stop.set()
        sent = await asyncio.wait_for(attacker, 10)
        assert sent > 0
        assert peak - before < RSS_GROWTH, (
            f"the node grew by {(peak - before) / MIB:.0f} MiB while a peer that does not "
            f"read sent it {sent} calls"
        )
        assert len(latencies) >= 5 and max(latencies) < 5.0
        # the attacker gone, the node still answers
        assert await client.call("echo.echo", b"after") == b"after"
    finally:
        with contextlib.suppress(Exception):
            await client.close()

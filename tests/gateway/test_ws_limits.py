"""Limits and bad input: each gets its documented status or close code, and nothing else
is disturbed (a bystander session keeps working through every case)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from tests.gateway.ws_mesh import ROOMY, chat_mesh, closed_with, connect
from wiremesh.gateway.server import Gateway
from wiremesh.testing import TestMesh, gateway_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")
mesh = chat_mesh


@asynccontextmanager
async def gateway_with(mesh: TestMesh, **limits: Any) -> AsyncIterator[Gateway]:
    settings = gateway_settings(
        limits={**ROOMY, **limits}, services={"chat": {"max_message_bytes": 4096}}
    )
    gateway = await mesh.add_gateway(settings)
    try:
        yield gateway
    finally:
        await mesh.stop_gateway(gateway)


def bearer(mesh: TestMesh, subject: str = "ada") -> list[Any]:
    return ["wiremesh.v1", f"bearer.{mesh.token(subject)}"]


async def echoes(ws: Any) -> bool:
    payload = b"echo " + os.urandom(8).hex().encode()  # not a command nor an envelope
    await ws.send(payload)
    return bool(await ws.recv() == payload)


async def status_of(url: str, **options: Any) -> int:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url, **options):
            pass
    status: int = caught.value.response.status_code
    return status


# ------------------------------------------------------------------------ sizes


async def test_a_message_over_the_service_limit_closes_with_1009(mesh: TestMesh) -> None:
    async with connect(mesh) as ws, connect(mesh) as bystander:
        await ws.send(b"x" * 4096)
        assert len(await ws.recv()) == 4096
        await ws.send(b"x" * 4097)
        assert (await closed_with(ws))[0] == 1009
        assert await echoes(bystander)


async def test_a_frame_over_the_gateway_limit_closes_with_1009(mesh: TestMesh) -> None:
    async with connect(mesh, "notes", max_size=None) as ws, connect(mesh) as bystander:
        await ws.send(b"x" * (64 * 1024 + 1))
        assert (await closed_with(ws))[0] == 1009
        assert await echoes(bystander)


async def test_compression_is_off_by_default_and_bounded_when_on(mesh: TestMesh) -> None:
    async with connect(mesh, compression="deflate") as ws:
        assert "permessage-deflate" not in ws.response.headers.get("Sec-WebSocket-Extensions", "")
    async with gateway_with(mesh, compression=True) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        async with websockets.connect(url, subprotocols=bearer(mesh), compression="deflate") as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            assert await echoes(ws)
            # 1 MB of zeros deflates to about 1 KB: the limit holds on what it inflates to
            await ws.send(bytes(1_000_000))
            assert (await closed_with(ws))[0] == 1009


# ------------------------------------------------------------------------ rates and counts


async def test_a_flood_of_messages_closes_with_4029(mesh: TestMesh) -> None:
    async with gateway_with(mesh, messages_per_second=5.0, burst=10) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        async with (
            websockets.connect(url, subprotocols=bearer(mesh)) as ws,
            websockets.connect(url, subprotocols=bearer(mesh)) as bystander,
        ):
            for _ in range(50):
                await ws.send(b"x")
            assert (await closed_with(ws))[0] == 4029
            assert await echoes(bystander)


async def test_connections_per_address_are_limited_and_others_undisturbed(mesh: TestMesh) -> None:
    async with gateway_with(mesh, connections_per_ip=40) as gateway:
        url = f"{gateway.ws_url}/ws/chat"

        async def attempt() -> Any:
            try:
                return await websockets.connect(url, subprotocols=bearer(mesh))
            except websockets.InvalidStatus as exc:
                return exc.response

        outcomes = await asyncio.gather(*(attempt() for _ in range(300)))
        opened = [o for o in outcomes if isinstance(o, websockets.ClientConnection)]
        refused = [o for o in outcomes if not isinstance(o, websockets.ClientConnection)]
        try:
            assert len(opened) == 40
            assert {r.status_code for r in refused} == {429}
            assert all(r.headers["Retry-After"] for r in refused)
            # another address is not affected, nor are the sessions already open
            async with websockets.connect(
                url, subprotocols=bearer(mesh), local_addr=("127.0.0.2", 0)
            ) as other:
                assert await echoes(other)
            assert all(await asyncio.gather(*(echoes(ws) for ws in opened)))
        finally:
            await asyncio.gather(*(ws.close() for ws in opened))
        # closed sessions give their places back
        async with websockets.connect(url, subprotocols=bearer(mesh)) as again:
            assert await echoes(again)


async def test_connections_per_principal_are_limited(mesh: TestMesh) -> None:
    async with gateway_with(mesh, connections_per_principal=3) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        sockets = [await websockets.connect(url, subprotocols=bearer(mesh)) for _ in range(3)]
        try:
            assert await status_of(url, subprotocols=bearer(mesh)) == 429
            async with websockets.connect(url, subprotocols=bearer(mesh, "bob")) as bob:
                assert await echoes(bob)
        finally:
            for ws in sockets:
                await ws.close()


# ------------------------------------------------------------------------ slow consumers


async def test_a_browser_that_does_not_read_is_closed_with_4008(mesh: TestMesh) -> None:
    async with gateway_with(mesh, max_queued=16) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        node = mesh.nodes_of("chat")[0].node_id
        # max_queue=1: the client stops reading from its socket at once
        async with (
            websockets.connect(f"{url}/{node}", subprotocols=bearer(mesh), max_queue=1) as slow,
            websockets.connect(f"{url}/{node}", subprotocols=bearer(mesh)) as bystander,
        ):
            await slow.send(b"!flood 2000 16384")  # 32 MB, more than the kernel buffers
            for _ in range(50):  # meanwhile the same node's stream serves others
                assert await echoes(bystander)
            async with asyncio.timeout(30):  # reads what was queued, then the close
                assert (await closed_with(slow))[0] == 4008
            assert await echoes(bystander)


# ------------------------------------------------------------------------ timeouts


async def test_idle_connections_close_with_4000(mesh: TestMesh) -> None:
    async with gateway_with(mesh, idle_timeout=0.3) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        async with websockets.connect(url, subprotocols=bearer(mesh)) as ws:
            assert await closed_with(ws) == (4000, "idle timeout")


async def raw_upgrade(port: int, token: str, *, complete: bool = True) -> socket.socket:
    """A TCP connection that sent an upgrade request (or only part of one)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: wiremesh.v1, bearer.{token}\r\n"
    )
    await loop.sock_sendall(
        sock, (request + "\r\n").encode() if complete else request[:60].encode()
    )
    if complete:
        head = b""
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in head:
                head += await loop.sock_recv(sock, 1)
        assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sent until it closed the connection (b"" if it reset it)."""
    loop = asyncio.get_running_loop()
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


async def test_a_half_open_handshake_is_closed(mesh: TestMesh) -> None:
    async with gateway_with(mesh, handshake_timeout=0.3) as gateway:
        sock = await raw_upgrade(gateway.port, mesh.token("ada"), complete=False)
        await until_closed(sock)
        async with websockets.connect(f"{gateway.ws_url}/ws/chat", subprotocols=bearer(mesh)) as ws:
            assert await echoes(ws)


async def test_a_peer_that_never_answers_pings_is_dropped(mesh: TestMesh) -> None:
    async with gateway_with(mesh, ping_interval=0.2, ping_timeout=0.3) as gateway:
        sock = await raw_upgrade(gateway.port, mesh.token("ada"))
        received = await until_closed(sock)
        assert received[:1] == b"\x89"  # it was pinged (FIN + PING), then dropped
        url = f"{gateway.ws_url}/ws/chat"
        async with websockets.connect(url, subprotocols=bearer(mesh)) as ws:
            await asyncio.sleep(0.8)  # websockets answers pings: the session lives on
            assert await echoes(ws)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def test_invalid_utf8_in_a_close_reason(mesh: TestMesh) -> None:
    async with connect(mesh) as bystander:
        sock = await raw_upgrade(mesh.gateway.port, mesh.token("ada"))
        await asyncio.get_running_loop().sock_sendall(
            sock, masked_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe bad")
        )
        received = await until_closed(sock)
        assert received[0] == 0x88  # a close frame, with code 1007 (invalid data)
        assert struct.unpack("!H", received[2:4])[0] == 1007
        assert await echoes(bystander)


@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_place(
    mesh: TestMesh, trusted: bool
) -> None:
    settings = gateway_settings(
        limits={**ROOMY, "connections_per_ip": 1},
        trusted_proxies=["127.0.0.0/8"] if trusted else [],
    )
    gateway = await mesh.add_gateway(settings)
    url = f"{gateway.ws_url}/ws/chat"

    def via(client: str) -> dict[str, Any]:  # as a reverse proxy on this machine says
        return {"subprotocols": bearer(mesh), "additional_headers": {"X-Forwarded-For": client}}

    try:
        async with websockets.connect(url, **via("203.0.113.7")) as first:
            assert await echoes(first)
            if trusted:  # another client behind the same proxy has a place of its own ...
                async with websockets.connect(url, **via("203.0.113.8")) as second:
                    assert await echoes(second)
                # ... and the same client has no second one
                assert await status_of(url, **via("203.0.113.7")) == 429
            else:  # the header is a client's word, not the proxy's: not believed
                assert await status_of(url, **via("203.0.113.8")) == 429
    finally:
        await mesh.stop_gateway(gateway)

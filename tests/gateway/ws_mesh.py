"""The WebSocket tests' mesh: real nodes (registry, Chat, Notes, Plain) and a real gateway.

Test modules import it as ``tests.gateway.ws_mesh``. Clients are real
``websockets`` clients; :func:`connect` opens one with a token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from tests.fixtures.svc_socket import Chat, Notes, Plain
from wiremesh.testing import TestMesh, gateway_settings

#: limits high enough that only the tests meant to hit them do
ROOMY = {"messages_per_second": 100000.0, "burst": 100000}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chat_mesh() -> AsyncIterator[TestMesh]:
    """Chat (2 nodes), Notes and Plain, and one gateway, shared by a test module."""
    settings = gateway_settings(limits=ROOMY, services={"chat": {"max_message_bytes": 4096}})
    async with TestMesh(Chat, Notes, Plain, replicas={"chat": 2}, gateway=settings) as running:
        yield running


def connect(
    mesh: TestMesh,
    service: str = "chat",
    *,
    token: str | None = None,
    subject: str = "ada",
    node: str | None = None,
    gateway: int = 0,
    **options: Any,
) -> websockets.asyncio.client.connect:
    """A ``websockets`` client of ``/ws/<service>``, with a token for ``subject``."""
    token = token if token is not None else mesh.token(subject)
    return websockets.connect(
        mesh.ws_url(service, node, gateway=gateway),
        subprotocols=["wiremesh.v1", f"bearer.{token}"],  # type: ignore[list-item]
        **options,
    )


async def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the connection closes; the close code and reason the server sent."""
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed:
        pass
    frame = ws.protocol.close_rcvd
    return (frame.code, frame.reason) if frame is not None else (None, "")

"""The two channel engines, as the tests open them.

``embedded_mesh``: a real :class:`RegistryServer` (which serves the embedded engine) on a
free port, real gRPC. ``redis_mesh``: the machine's Redis (127.0.0.1:6379), in a mesh of
the test's own whose keys go afterwards; skipped with the reason when that Redis is not
there (never under CI=true: ``tests/conftest.py``). Each opens engines as the gateways and
nodes hold them, records what each engine's callback got, and closes them at the end.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import pytest
from redis import asyncio as aioredis

from wiremesh.channels import channel_server
from wiremesh.channels.base import ChannelEngine
from wiremesh.channels.embedded import EmbeddedChannelEngine
from wiremesh.channels.redis import RedisChannelEngine
from wiremesh.core.channels import ChannelRules, Member, Publication
from wiremesh.registry.embedded import RegistryServer

SECRET = "the-mesh-join-secret"
SHARED_REDIS = "redis://127.0.0.1:6379/0"
KEEP_10 = ChannelRules(history_size=10, history_ttl=60.0)
NO_HISTORY = ChannelRules()

E = TypeVar("E", bound=ChannelEngine)


def member(session: str, gateway: str = "gw-1") -> Member:
    return Member(session=session, principal=f"user-{session}", gateway=gateway)


class Engines(Generic[E]):
    """The engines a test opened, each with the publications its callback got."""

    def __init__(self) -> None:
        self.opened: list[E] = []
        self.got: dict[ChannelEngine, list[Publication]] = {}

    def open(self, owner: str = "") -> E:
        """An engine for the gateway named ``owner``."""
        raise NotImplementedError

    def _record(self, engine: E) -> E:
        received: list[Publication] = []
        engine.on_publication(received.append)
        self.opened.append(engine)
        self.got[engine] = received
        return engine

    async def close(self) -> None:
        for engine in self.opened:
            await engine.close()


class EmbeddedMesh(Engines[EmbeddedChannelEngine]):
    """A registry server and embedded engines on it; the server stops at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.server = RegistryServer(join_secret=SECRET)

    @property
    def channels(self) -> channel_server.ChannelServer:
        return self.server.channels

    def open(self, owner: str = "", secret: str | None = SECRET) -> EmbeddedChannelEngine:
        return self._record(
            EmbeddedChannelEngine(self.server.address, join_secret=secret, owner=owner)
        )

    async def restart(self) -> None:
        """Stop the server and start another (empty) one on the same port."""
        port = self.server.port
        await self.server.stop(0)
        self.server = RegistryServer(port=port, join_secret=SECRET)
        await self.server.start()

    async def close(self) -> None:
        await super().close()
        await self.server.stop(0)


class RedisMesh(Engines[RedisChannelEngine]):
    """Redis engines on the mesh ``name`` of the Redis at ``url``."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__()
        self.url = url
        self.name = name

    def open(self, owner: str = "") -> RedisChannelEngine:
        # a Redis engine names no owner: its members' gateways are in the members alone
        return self._record(RedisChannelEngine(self.url, mesh=self.name))


def shared_redis_runs() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
async def embedded_mesh() -> AsyncIterator[EmbeddedMesh]:
    made = EmbeddedMesh()
    await made.server.start()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def redis_mesh() -> AsyncIterator[RedisMesh]:
    if not shared_redis_runs():
        pytest.skip("no Redis on 127.0.0.1:6379: the Redis channel engine is NOT TESTED")
    made = RedisMesh(SHARED_REDIS, f"channels-{secrets.token_hex(4)}")
    try:
        yield made
    finally:
        await made.close()
        async with aioredis.Redis(host="127.0.0.1", port=6379) as client:
            keys = [key async for key in client.scan_iter(match=f"wm:{{{made.name}}}:*")]
            if keys:
                await client.delete(*keys)

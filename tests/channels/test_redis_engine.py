"""The Redis channel engine on its own, against a real Redis: the machine's (127.0.0.1:6379,
each test in a mesh of its own, whose keys it removes: ``conftest.py``) and, for the tests
that take Redis away, a private redis-server of the test's own. What it promises as every
engine does is in ``test_engine_contract.py``."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.channels.conftest import KEEP_10, RedisMesh, member
from tests.fixtures.meshes import eventually
from tests.fixtures.redis_server import RedisServer, free_port, redis_available
from wiremesh.channels.redis import RedisChannelEngine
from wiremesh.core.channels import ChannelRules
from wiremesh.errors import Unavailable
from wiremesh.registry.redis import mesh_prefix


def pttl(mesh: RedisMesh, key: str) -> int:
    """How many milliseconds the mesh's ``key`` has left, from the machine's Redis."""
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        left: int = client.pttl(mesh_prefix(mesh.name) + key)
    return left


# ------------------------------------------------------------------------- expiry


async def test_a_channel_read_and_never_published_to_expires_with_its_ttl(
    redis_mesh: RedisMesh,
) -> None:
    engine = redis_mesh.open()
    rules = ChannelRules(history_size=10, history_ttl=30.0)
    assert (await engine.history("fresh", None, rules)).position.offset == 0
    assert 0 < pttl(redis_mesh, "channel:fresh") <= 30_000  # it does not stay


async def test_presence_keys_expire_when_unused(redis_mesh: RedisMesh) -> None:
    engine = redis_mesh.open()
    await engine.join("room", member("s1"), ttl=5)
    ttls = [pttl(redis_mesh, k) for k in ("presence:room", "members:room")]
    assert all(60_000 < t <= 65_000 for t in ttls)  # the member's 5 s, and a minute


# ------------------------------------------------------------------------- Redis away


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.skip("redis-server is not installed here: Redis going away is NOT TESTED")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


async def test_redis_restarting_makes_errors_unavailable_then_watched_channels_deliver_again(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-" + secrets.token_hex(6)
    # a password for ``default``: a Redis without one takes any
    url = f"redis://default:{secret}@127.0.0.1:{private_redis.port}/0"
    opened = RedisMesh(url, f"channels-{secrets.token_hex(4)}")
    publisher, watcher = opened.open(), opened.open()
    got = opened.got[watcher]
    caplog.set_level(logging.WARNING, logger="wiremesh.channels")
    try:
        await watcher.watch("room")
        await publisher.publish("room", b"1", KEEP_10)
        await eventually(lambda: len(got) == 1, 5, "the first publication")

        private_redis.kill()
        await asyncio.sleep(0.3)  # the reader saw it go
        attempts = [
            publisher.publish("room", b"2", KEEP_10),
            publisher.history("room", None, KEEP_10),
            publisher.join("room", member("s1"), ttl=5),
            publisher.presence("room"),
            watcher.watch("another"),
        ]
        for attempt in attempts:
            with pytest.raises(Unavailable) as caught:
                await attempt
            assert secret not in str(caught.value)
            assert "default:***@127.0.0.1" in str(caught.value)
        await asyncio.sleep(0.7)  # a few reconnection attempts

        private_redis.start()  # empty: the log starts again with another epoch

        async def delivered_again() -> bool:
            await publisher.publish("room", b"again", KEEP_10)
            await asyncio.sleep(0.1)
            return any(p.data == b"again" for p in got)

        deadline = asyncio.get_running_loop().time() + 5
        while not await delivered_again():
            assert asyncio.get_running_loop().time() < deadline, "not delivered again"
        assert got[-1].offset >= 1 and got[-1].epoch != got[0].epoch
        await watcher.watch("another")  # watch works again too
    finally:
        await opened.close()

    lines = [r for r in caplog.records if r.name == "wiremesh.channels"]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # one line for the outage
    assert secret not in lines[0].getMessage()


async def test_an_unreachable_redis_is_unavailable_without_the_password() -> None:
    port = free_port()  # nobody listens there
    engine = RedisChannelEngine(f"redis://app:hunter2@127.0.0.1:{port}/0", mesh="m")
    try:
        with pytest.raises(Unavailable) as caught:
            await engine.publish("room", b"1", KEEP_10)
        assert "hunter2" not in str(caught.value) and "app:***@" in str(caught.value)
        with pytest.raises(Unavailable) as caught:
            await engine.watch("room")
        assert "hunter2" not in str(caught.value)
    finally:
        await engine.close()

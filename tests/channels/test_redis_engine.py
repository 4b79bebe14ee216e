"""The Redis channel engine against a real Redis: the machine's (127.0.0.1:6379, each test
in a mesh of its own, whose keys it removes) and, for the tests that take Redis away, a
private redis-server of the test's own."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from tests.fixtures.meshes import eventually
from tests.fixtures.redis_server import RedisServer, redis_available
from wiremesh.channels.redis import RedisChannelEngine
from wiremesh.core.channels import ChannelRules, Member, Position, Publication
from wiremesh.errors import Unavailable
from wiremesh.registry.redis import mesh_prefix

SHARED = "redis://127.0.0.1:6379/0"
KEEP_10 = ChannelRules(history_size=10, history_ttl=60.0)
NO_HISTORY = ChannelRules()


def shared_redis_runs() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def mesh() -> Iterator[str]:
    """A mesh name of this test's own on the machine's Redis; its keys go afterwards."""
    if not shared_redis_runs():
        pytest.skip("no Redis on 127.0.0.1:6379: the Redis channel engine is NOT TESTED")
    name = f"channels-{secrets.token_hex(4)}"
    yield name
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        keys = list(client.scan_iter(match=f"wm:{{{name}}}:*"))
        if keys:
            client.delete(*keys)


class Engines:
    """Engines on one mesh, each with the publications its callback got; all closed at
    the end."""

    def __init__(self, url: str, mesh: str) -> None:
        self.url = url
        self.mesh = mesh
        self.opened: list[RedisChannelEngine] = []
        self.got: dict[RedisChannelEngine, list[Publication]] = {}

    def open(self) -> RedisChannelEngine:
        engine = RedisChannelEngine(self.url, mesh=self.mesh)
        received: list[Publication] = []
        engine.on_publication(received.append)
        self.opened.append(engine)
        self.got[engine] = received
        return engine

    async def close(self) -> None:
        for engine in self.opened:
            await engine.close()


@pytest.fixture
async def engines(mesh: str) -> AsyncIterator[Engines]:
    opened = Engines(SHARED, mesh)
    try:
        yield opened
    finally:
        await opened.close()


def member(session: str, gateway: str = "gw-1") -> Member:
    return Member(session=session, principal=f"user-{session}", gateway=gateway)


# ------------------------------------------------------------------------- publications


async def test_two_publishers_at_once_give_a_watcher_every_offset_in_order(
    engines: Engines,
) -> None:
    a, b, watcher = engines.open(), engines.open(), engines.open()
    await watcher.watch("flow-run:42")

    async def publish_from(engine: RedisChannelEngine, name: str) -> list[Position]:
        return [
            await engine.publish("flow-run:42", f'{{"n":"{name}{i}"}}'.encode(), KEEP_10)
            for i in range(100)
        ]

    from_a, from_b = await asyncio.gather(publish_from(a, "a"), publish_from(b, "b"))
    got = engines.got[watcher]
    await eventually(lambda: len(got) == 200, 5, "every publication delivered")

    assert [p.offset for p in got] == list(range(1, 201))
    assert {p.epoch for p in got} == {from_a[0].epoch}
    assert all(p.kind == "pub" and p.channel == "flow-run:42" for p in got)
    # each publisher's own publications come in the order it made them
    assert [p.offset for p in from_a] == sorted(p.offset for p in from_a)
    assert {p.offset for p in from_a} | {p.offset for p in from_b} == set(range(1, 201))
    by_offset = {p.offset: p.data for p in got}
    assert by_offset[from_b[-1].offset] == b'{"n":"b99"}'


async def test_channels_count_their_offsets_apart(engines: Engines) -> None:
    engine = engines.open()
    await engine.publish("a", b"1", NO_HISTORY)
    await engine.publish("a", b"2", NO_HISTORY)
    assert (await engine.publish("b", b"1", NO_HISTORY)).offset == 1
    assert (await engine.publish("a", b"3", NO_HISTORY)).offset == 3


# ------------------------------------------------------------------------- history


async def test_history_recovers_what_came_after_a_position(engines: Engines) -> None:
    engine = engines.open()
    positions = [await engine.publish("chat", f"{i}".encode(), KEEP_10) for i in range(1, 6)]

    found = await engine.history("chat", positions[1], KEEP_10)

    assert found.recovered and found.reason == ""
    assert found.position == positions[-1]
    assert [(p.offset, p.data) for p in found.publications] == [(3, b"3"), (4, b"4"), (5, b"5")]
    assert all(p.epoch == positions[-1].epoch for p in found.publications)
    # at the top: recovered, nothing missed
    latest = await engine.history("chat", positions[-1], KEEP_10)
    assert latest.recovered and latest.publications == ()
    # with no position: where the channel is
    assert (await engine.history("chat", None, KEEP_10)).position == positions[-1]


async def test_history_answers_gone_once_the_size_trimmed_the_position(
    engines: Engines,
) -> None:
    rules = ChannelRules(history_size=3, history_ttl=60.0)
    engine = engines.open()
    top = Position(0, "")
    for i in range(1, 8):
        top = await engine.publish("chat", f"{i}".encode(), rules)

    gone = await engine.history("chat", Position(3, top.epoch), rules)
    assert (gone.recovered, gone.reason, gone.publications) == (False, "gone", ())
    kept = await engine.history("chat", Position(4, top.epoch), rules)
    assert kept.recovered and [p.offset for p in kept.publications] == [5, 6, 7]


async def test_history_tells_another_epoch_a_future_position_and_no_history(
    engines: Engines,
) -> None:
    engine = engines.open()
    top = await engine.publish("chat", b"1", KEEP_10)

    assert (await engine.history("chat", Position(1, "another"), KEEP_10)).reason == "epoch"
    assert (await engine.history("chat", Position(5, top.epoch), KEEP_10)).reason == "future"
    await engine.publish("plain", b"1", NO_HISTORY)
    none = await engine.history("plain", Position(0, top.epoch), NO_HISTORY)
    assert (none.recovered, none.reason, none.position.offset) == (False, "no_history", 1)


async def test_a_publication_older_than_the_ttl_is_not_recovered_and_an_idle_log_is_forgotten(
    engines: Engines,
) -> None:
    rules = ChannelRules(history_size=10, history_ttl=1.0)
    engine = engines.open()
    first = await engine.publish("chat", b"1", rules)
    await asyncio.sleep(0.6)
    second = await engine.publish("chat", b"2", rules)  # the log now lives 1 s from here
    await asyncio.sleep(0.6)  # the first is 1.2 s old, the second 0.6 s

    gone = await engine.history("chat", Position(0, first.epoch), rules)
    assert (gone.recovered, gone.reason) == (False, "gone")
    kept = await engine.history("chat", first, rules)
    assert kept.recovered and [p.offset for p in kept.publications] == [2]

    await asyncio.sleep(0.6)  # 1.2 s since the last publication: the log is forgotten
    again = await engine.history("chat", second, rules)
    assert (again.reason, again.position.offset) == ("epoch", 0)
    assert again.position.epoch != second.epoch
    assert (await engine.publish("chat", b"3", rules)) == Position(1, again.position.epoch)


async def test_reading_a_channel_never_published_to_starts_an_epoch_that_expires(
    engines: Engines,
) -> None:
    rules = ChannelRules(history_size=10, history_ttl=30.0)
    engine = engines.open()
    found = await engine.history("fresh", None, rules)
    assert found.recovered and found.position.offset == 0 and found.position.epoch

    assert (await engine.history("fresh", None, rules)).position == found.position
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        ttl = client.pttl(mesh_prefix(engines.mesh) + "channel:fresh")
    assert 0 < ttl <= 30_000  # a channel read and never published to does not stay
    assert await engine.publish("fresh", b"1", rules) == Position(1, found.position.epoch)


# ------------------------------------------------------------------------- watching


async def test_watch_delivers_publications_joins_and_leaves_until_unwatch(
    engines: Engines,
) -> None:
    publisher, watcher = engines.open(), engines.open()
    got = engines.got[watcher]
    await watcher.watch("room")
    await watcher.watch("other")

    position = await publisher.publish("room", b'{"hi":1}', NO_HISTORY)
    await publisher.announce("room", "join", member("s1"))
    await publisher.announce("room", "leave", member("s1"))
    await eventually(lambda: len(got) == 3, 5, "a publication, a join and a leave")
    assert got[0] == Publication("room", b'{"hi":1}', position.offset, position.epoch, "pub")
    assert [(p.kind, p.offset, p.epoch) for p in got[1:]] == [("join", 0, ""), ("leave", 0, "")]
    assert got[1].data == b'{"session":"s1","principal":"user-s1","gateway":"gw-1"}'

    await watcher.unwatch("room")
    await publisher.publish("room", b"2", NO_HISTORY)
    await publisher.publish("other", b"3", NO_HISTORY)  # after it: the room's is here too
    await eventually(lambda: len(got) == 4, 5, "the other channel's publication")
    assert [p.channel for p in got[3:]] == ["other"]
    assert len(engines.got[publisher]) == 0  # it watches nothing


async def test_a_publication_right_after_watch_returns_is_delivered(engines: Engines) -> None:
    publisher, watcher = engines.open(), engines.open()
    got = engines.got[watcher]
    for i in range(20):
        await watcher.watch(f"c{i}")
        await publisher.publish(f"c{i}", b"1", NO_HISTORY)
    await eventually(lambda: len(got) == 20, 5, "one publication per channel")
    assert sorted(p.channel for p in got) == sorted(f"c{i}" for i in range(20))


async def test_close_is_idempotent_and_a_closed_engine_refuses(engines: Engines) -> None:
    engine = engines.open()
    await engine.watch("room")
    await engine.close()
    await engine.close()
    with pytest.raises(Unavailable, match="closed"):
        await engine.publish("room", b"1", NO_HISTORY)
    with pytest.raises(Unavailable, match="closed"):
        await engine.watch("room")


# ------------------------------------------------------------------------- presence


async def test_presence_with_two_gateways_join_leave_and_refresh(engines: Engines) -> None:
    one, two = engines.open(), engines.open()
    assert await one.join("room", member("s1", "gw-1"), ttl=10) is True
    assert await one.join("room", member("s1", "gw-1"), ttl=10) is False
    assert await two.join("room", member("s2", "gw-2"), ttl=10) is True

    present = sorted(await two.presence("room"), key=lambda m: m.session)
    assert present == [member("s1", "gw-1"), member("s2", "gw-2")]

    assert await two.leave("room", "s1") == member("s1", "gw-1")
    assert await one.leave("room", "s1") is None
    assert await one.presence("room") == [member("s2", "gw-2")]
    assert await one.presence("empty") == []

    # a short presence, kept by refreshes; a refresh puts back what Redis lost
    await one.join("short", member("s3"), ttl=0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await one.refresh([("short", member("s3")), ("lost", member("s4"))], ttl=0.4)
    assert await two.presence("short") == [member("s3")]
    assert await two.presence("lost") == [member("s4")]


async def test_members_whose_gateway_died_are_swept_by_exactly_one_gateway(
    engines: Engines,
) -> None:
    one, two = engines.open(), engines.open()
    dying = [member(f"d{i}", "gw-dead") for i in range(30)]
    for m in dying:
        await one.join("room", m, ttl=0.3)
    await two.join("room", member("alive", "gw-2"), ttl=10)

    await asyncio.sleep(0.5)  # gw-dead never refreshed
    assert await two.presence("room") == [member("alive", "gw-2")]  # even before a sweep
    swept = await asyncio.gather(*(e.sweep("room") for e in (one, two, one, two)))

    removed = [m for part in swept for m in part]
    assert sorted(removed, key=lambda m: m.session) == sorted(dying, key=lambda m: m.session)
    assert len(removed) == len(set(removed))  # none swept twice
    assert await one.sweep("room") == []
    assert await two.presence("room") == [member("alive", "gw-2")]
    assert await one.leave("room", "d0") is None


async def test_presence_keys_expire_when_unused(engines: Engines) -> None:
    engine = engines.open()
    await engine.join("room", member("s1"), ttl=5)
    prefix = mesh_prefix(engines.mesh)
    with redis.Redis(host="127.0.0.1", port=6379) as client:
        ttls = [client.pttl(prefix + k) for k in ("presence:room", "members:room")]
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
    opened = Engines(url, f"channels-{secrets.token_hex(4)}")
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
    port = _closed_port()
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


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port

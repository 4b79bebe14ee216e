"""What every channel engine promises (:class:`wiremesh.channels.base.ChannelEngine`), each
test run on both: the embedded engine and Redis (see ``conftest.py``). What one engine
does on its own is in ``test_embedded_engine.py`` and ``test_redis_engine.py``."""

from __future__ import annotations

import asyncio

import pytest

from tests.channels.conftest import KEEP_10, NO_HISTORY, Engines, member
from tests.fixtures.meshes import eventually
from wiremesh.channels.base import ChannelEngine
from wiremesh.core.channels import ChannelRules, Position, Publication
from wiremesh.errors import Unavailable


@pytest.fixture(params=["embedded", "redis"])
def mesh(request: pytest.FixtureRequest) -> Engines[ChannelEngine]:
    """``embedded_mesh`` or ``redis_mesh``: the test once on each engine."""
    opened: Engines[ChannelEngine] = request.getfixturevalue(f"{request.param}_mesh")
    return opened


# ------------------------------------------------------------------------- publications


async def test_two_publishers_at_once_give_a_watcher_every_offset_in_order(
    mesh: Engines[ChannelEngine],
) -> None:
    a, b, watcher = mesh.open(), mesh.open(), mesh.open()
    await watcher.watch("flow-run:42")

    async def publish_from(engine: ChannelEngine, name: str) -> list[Position]:
        return [
            await engine.publish("flow-run:42", f'{{"n":"{name}{i}"}}'.encode(), KEEP_10)
            for i in range(100)
        ]

    from_a, from_b = await asyncio.gather(publish_from(a, "a"), publish_from(b, "b"))
    got = mesh.got[watcher]
    await eventually(lambda: len(got) == 200, 5, "every publication delivered")

    assert [p.offset for p in got] == list(range(1, 201))
    assert {p.epoch for p in got} == {from_a[0].epoch}
    assert all(p.kind == "pub" and p.channel == "flow-run:42" for p in got)
    # each publisher's own publications come in the order it made them
    assert [p.offset for p in from_a] == sorted(p.offset for p in from_a)
    assert {p.offset for p in from_a} | {p.offset for p in from_b} == set(range(1, 201))
    assert {p.offset: p.data for p in got}[from_b[-1].offset] == b'{"n":"b99"}'


async def test_channels_count_their_offsets_apart_with_or_without_history(
    mesh: Engines[ChannelEngine],
) -> None:
    engine = mesh.open()
    await engine.publish("a", b"1", NO_HISTORY)
    await engine.publish("a", b"2", NO_HISTORY)
    assert (await engine.publish("b", b"1", NO_HISTORY)).offset == 1
    assert (await engine.publish("c", b"1", KEEP_10)).offset == 1
    assert (await engine.publish("a", b"3", NO_HISTORY)).offset == 3


# ------------------------------------------------------------------------- history


async def test_history_recovers_what_came_after_a_position(mesh: Engines[ChannelEngine]) -> None:
    engine = mesh.open()
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
    mesh: Engines[ChannelEngine],
) -> None:
    rules = ChannelRules(history_size=3, history_ttl=60.0)
    engine = mesh.open()
    top = Position(0, "")
    for i in range(1, 8):
        top = await engine.publish("chat", f"{i}".encode(), rules)

    gone = await engine.history("chat", Position(3, top.epoch), rules)
    assert (gone.recovered, gone.reason, gone.publications) == (False, "gone", ())
    kept = await engine.history("chat", Position(4, top.epoch), rules)
    assert kept.recovered and [p.offset for p in kept.publications] == [5, 6, 7]


async def test_history_tells_another_epoch_a_future_position_and_no_history(
    mesh: Engines[ChannelEngine],
) -> None:
    engine = mesh.open()
    top = await engine.publish("chat", b"1", KEEP_10)

    other = await engine.history("chat", Position(1, "another"), KEEP_10)
    assert (other.recovered, other.reason, other.position) == (False, "epoch", top)
    ahead = await engine.history("chat", Position(top.offset + 1, top.epoch), KEEP_10)
    assert (ahead.recovered, ahead.reason, ahead.position) == (False, "future", top)

    plain = await engine.publish("plain", b"1", NO_HISTORY)
    for since in (Position(0, plain.epoch), Position(0, top.epoch)):
        none = await engine.history("plain", since, NO_HISTORY)
        assert (none.recovered, none.reason, none.position) == (False, "no_history", plain)


async def test_a_publication_older_than_the_ttl_is_not_recovered_and_an_idle_log_is_forgotten(
    mesh: Engines[ChannelEngine],
) -> None:
    rules = ChannelRules(history_size=10, history_ttl=0.6)
    engine = mesh.open()
    first = await engine.publish("chat", b"1", rules)
    await asyncio.sleep(0.5)
    second = await engine.publish("chat", b"2", rules)  # the log now lives 0.6 s from here
    await asyncio.sleep(0.2)  # the first is 0.7 s old, the second 0.2 s (0.4 s to spare)

    gone = await engine.history("chat", Position(0, first.epoch), rules)
    assert (gone.recovered, gone.reason) == (False, "gone")
    kept = await engine.history("chat", first, rules)
    assert kept.recovered and [p.offset for p in kept.publications] == [2]

    await asyncio.sleep(0.5)  # the last publication is 0.7 s old: the log is forgotten
    again = await engine.history("chat", second, rules)
    assert (again.reason, again.position.offset) == ("epoch", 0)
    assert again.position.epoch != second.epoch
    assert await engine.publish("chat", b"3", rules) == Position(1, again.position.epoch)


async def test_reading_a_channel_never_published_to_starts_an_epoch_it_keeps(
    mesh: Engines[ChannelEngine],
) -> None:
    engine = mesh.open()
    found = await engine.history("fresh", None, KEEP_10)
    assert found.recovered and found.position.offset == 0 and found.position.epoch
    assert (await engine.history("fresh", None, KEEP_10)).position == found.position
    assert await engine.publish("fresh", b"1", KEEP_10) == Position(1, found.position.epoch)


# ------------------------------------------------------------------------- watching


async def test_watch_delivers_publications_joins_and_leaves_until_unwatch(
    mesh: Engines[ChannelEngine],
) -> None:
    publisher, watcher = mesh.open(), mesh.open()
    got = mesh.got[watcher]
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
    assert mesh.got[publisher] == []  # it watches nothing


async def test_a_publication_right_after_watch_returns_is_delivered(
    mesh: Engines[ChannelEngine],
) -> None:
    publisher, watcher = mesh.open(), mesh.open()
    got = mesh.got[watcher]
    for i in range(20):
        await watcher.watch(f"c{i}")
        await publisher.publish(f"c{i}", b"1", NO_HISTORY)
    await eventually(lambda: len(got) == 20, 5, "one publication per channel")
    assert sorted(p.channel for p in got) == sorted(f"c{i}" for i in range(20))


async def test_close_is_idempotent_and_a_closed_engine_refuses(
    mesh: Engines[ChannelEngine],
) -> None:
    engine = mesh.open()
    await engine.watch("room")
    await engine.close()
    await engine.close()
    with pytest.raises(Unavailable, match="closed"):
        await engine.publish("room", b"1", NO_HISTORY)
    with pytest.raises(Unavailable, match="closed"):
        await engine.watch("room")


# ------------------------------------------------------------------------- presence


async def test_presence_with_two_gateways_join_leave_and_refresh(
    mesh: Engines[ChannelEngine],
) -> None:
    one, two = mesh.open("gw-1"), mesh.open("gw-2")
    assert await one.join("room", member("s1", "gw-1"), ttl=10) is True
    assert await one.join("room", member("s1", "gw-1"), ttl=10) is False
    assert await two.join("room", member("s2", "gw-2"), ttl=10) is True

    present = sorted(await two.presence("room"), key=lambda m: m.session)
    assert present == [member("s1", "gw-1"), member("s2", "gw-2")]

    assert await two.leave("room", "s1") == member("s1", "gw-1")
    assert await one.leave("room", "s1") is None
    assert await one.presence("room") == [member("s2", "gw-2")]
    assert await one.presence("empty") == []

    # a short presence, kept by refreshes; a refresh puts back what the engine lost
    await one.join("short", member("s3"), ttl=0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await one.refresh([("short", member("s3")), ("lost", member("s4"))], ttl=0.4)
    assert await two.presence("short") == [member("s3")]
    assert await two.presence("lost") == [member("s4")]


async def test_members_whose_gateway_died_are_swept_by_exactly_one_gateway(
    mesh: Engines[ChannelEngine],
) -> None:
    one, two = mesh.open("gw-1"), mesh.open("gw-2")
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

"""The embedded channel engine: a real :class:`RegistryServer` (which serves it) on a free
port, real gRPC, engines as the gateways and nodes hold them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.fixtures.meshes import eventually
from wiremesh.channels import channel_server, embedded
from wiremesh.channels.embedded import EmbeddedChannelEngine, member_json
from wiremesh.core.channels import ChannelRules, Member, Position, Publication
from wiremesh.errors import InvalidPayload, PayloadTooLarge, Unauthenticated, Unavailable
from wiremesh.proto import channels_pb2 as pb
from wiremesh.registry import embedded as registry
from wiremesh.registry.embedded import RegistryServer

SECRET = "the-mesh-join-secret"
KEEP_10 = ChannelRules(history_size=10, history_ttl=60.0)
NO_HISTORY = ChannelRules()


def member(session: str, gateway: str = "gw-1") -> Member:
    return Member(session=session, principal=f"user-{session}", gateway=gateway)


class Mesh:
    """A registry server, and engines on it that each record what their callback got; all
    closed at the end."""

    def __init__(self) -> None:
        self.server = RegistryServer(join_secret=SECRET)
        self.opened: list[EmbeddedChannelEngine] = []
        self.got: dict[EmbeddedChannelEngine, list[Publication]] = {}

    @property
    def channels(self) -> channel_server.ChannelServer:
        return self.server.channels

    def open(self, owner: str = "", secret: str | None = SECRET) -> EmbeddedChannelEngine:
        engine = EmbeddedChannelEngine(self.server.address, join_secret=secret, owner=owner)
        received: list[Publication] = []
        engine.on_publication(received.append)
        self.opened.append(engine)
        self.got[engine] = received
        return engine

    async def restart(self) -> None:
        """Stop the server and start another (empty) one on the same port."""
        port = self.server.port
        await self.server.stop(0)
        self.server = RegistryServer(port=port, join_secret=SECRET)
        await self.server.start()

    async def close(self) -> None:
        for engine in self.opened:
            await engine.close()
        await self.server.stop(0)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    made = Mesh()
    await made.server.start()
    try:
        yield made
    finally:
        await made.close()


def raw_watch(mesh: Mesh) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:  # type: ignore[type-arg]
    """A Watch stream of a plain grpcio client, as another language would open one."""
    channel = grpc.aio.insecure_channel(mesh.server.address)
    call = channel.stream_stream(
        f"/{embedded.SERVICE}/Watch",
        request_serializer=pb.WatchRequest.SerializeToString,
        response_deserializer=pb.WatchReply.FromString,
    )(metadata=((registry.JOIN_KEY, SECRET),))
    return channel, call


# ------------------------------------------------------------------------- publications


async def test_two_publishers_at_once_give_a_watcher_every_offset_in_order(mesh: Mesh) -> None:
    a, b, watcher = mesh.open(), mesh.open(), mesh.open()
    await watcher.watch("flow-run:42")

    async def publish_from(engine: EmbeddedChannelEngine, name: str) -> list[Position]:
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
    assert [p.offset for p in from_a] == sorted(p.offset for p in from_a)
    assert {p.offset for p in from_a} | {p.offset for p in from_b} == set(range(1, 201))
    assert {p.offset: p.data for p in got}[from_b[-1].offset] == b'{"n":"b99"}'


async def test_channels_count_their_offsets_apart_with_or_without_history(mesh: Mesh) -> None:
    engine = mesh.open()
    await engine.publish("a", b"1", NO_HISTORY)
    await engine.publish("a", b"2", NO_HISTORY)
    assert (await engine.publish("b", b"1", KEEP_10)).offset == 1
    assert (await engine.publish("a", b"3", NO_HISTORY)).offset == 3


async def test_a_raw_client_is_acknowledged_and_gets_one_turns_publications_in_one_reply(
    mesh: Mesh,
) -> None:
    channel, call = raw_watch(mesh)
    try:
        await call.write(pb.WatchRequest(id=1, owner="raw-gw"))
        await call.write(pb.WatchRequest(id=2, watch="room"))
        acks: list[int] = []
        while len(acks) < 2:
            acks += (await call.read()).acks
        assert acks == [1, 2]

        request = pb.PublishRequest(channel="room", rules=pb.Rules(history_ttl=60))
        for i in range(20):  # one loop turn: one reply
            request.data = b"%d" % i
            mesh.channels.publish(request)
        reply = await call.read()
        assert [(p.offset, p.data) for p in reply.publications] == [
            (i + 1, b"%d" % i) for i in range(20)
        ]
    finally:
        call.cancel()
        await channel.close(None)


# ------------------------------------------------------------------------- history


async def test_history_recovers_what_came_after_a_position(mesh: Mesh) -> None:
    engine = mesh.open()
    positions = [await engine.publish("chat", f"{i}".encode(), KEEP_10) for i in range(1, 6)]

    found = await engine.history("chat", positions[1], KEEP_10)

    assert found.recovered and found.reason == ""
    assert found.position == positions[-1]
    assert [(p.offset, p.data) for p in found.publications] == [(3, b"3"), (4, b"4"), (5, b"5")]
    assert all(p.epoch == positions[-1].epoch for p in found.publications)
    latest = await engine.history("chat", positions[-1], KEEP_10)
    assert latest.recovered and latest.publications == ()
    assert (await engine.history("chat", None, KEEP_10)).position == positions[-1]


async def test_history_answers_gone_epoch_future_and_no_history(mesh: Mesh) -> None:
    rules = ChannelRules(history_size=3, history_ttl=60.0)
    engine = mesh.open()
    top = Position(0, "")
    for i in range(1, 8):
        top = await engine.publish("chat", f"{i}".encode(), rules)

    gone = await engine.history("chat", Position(3, top.epoch), rules)
    assert (gone.recovered, gone.reason, gone.publications) == (False, "gone", ())
    kept = await engine.history("chat", Position(4, top.epoch), rules)
    assert kept.recovered and [p.offset for p in kept.publications] == [5, 6, 7]
    assert (await engine.history("chat", Position(1, "another"), rules)).reason == "epoch"
    assert (await engine.history("chat", Position(9, top.epoch), rules)).reason == "future"

    plain = await engine.publish("plain", b"1", NO_HISTORY)
    none = await engine.history("plain", Position(0, plain.epoch), NO_HISTORY)
    assert (none.recovered, none.reason, none.position) == (False, "no_history", plain)


async def test_a_publication_older_than_the_ttl_is_not_recovered_and_an_idle_log_is_forgotten(
    mesh: Mesh,
) -> None:
    rules = ChannelRules(history_size=10, history_ttl=0.4)
    engine = mesh.open()
    first = await engine.publish("chat", b"1", rules)
    await asyncio.sleep(0.25)
    second = await engine.publish("chat", b"2", rules)  # the log now lives 0.4 s from here
    await asyncio.sleep(0.25)  # the first is 0.5 s old, the second 0.25 s

    gone = await engine.history("chat", Position(0, first.epoch), rules)
    assert (gone.recovered, gone.reason) == (False, "gone")
    kept = await engine.history("chat", first, rules)
    assert kept.recovered and [p.offset for p in kept.publications] == [2]

    await asyncio.sleep(0.45)  # the last publication is older than the ttl: forgotten
    again = await engine.history("chat", second, rules)
    assert (again.reason, again.position.offset) == ("epoch", 0)
    assert again.position.epoch != second.epoch
    assert await engine.publish("chat", b"3", rules) == Position(1, again.position.epoch)


async def test_reading_a_channel_never_published_to_starts_an_epoch_it_keeps(mesh: Mesh) -> None:
    engine = mesh.open()
    found = await engine.history("fresh", None, KEEP_10)
    assert found.recovered and found.position.offset == 0 and found.position.epoch
    assert (await engine.history("fresh", None, KEEP_10)).position == found.position
    assert await engine.publish("fresh", b"1", KEEP_10) == Position(1, found.position.epoch)


async def test_expired_logs_are_dropped_by_the_sweep(mesh: Mesh) -> None:
    engine = mesh.open()
    await engine.publish("short", b"1", ChannelRules(history_size=1, history_ttl=0.2))
    await engine.publish("long", b"1", KEEP_10)
    assert set(mesh.channels.logs) == {"short", "long"}
    await eventually(lambda: set(mesh.channels.logs) == {"long"}, 3, "the short log dropped")


# ------------------------------------------------------------------------- watching


async def test_watch_delivers_publications_joins_and_leaves_until_unwatch(mesh: Mesh) -> None:
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
    assert "room" not in mesh.channels.watchers  # acknowledged: the server forgot it
    await publisher.publish("room", b"2", NO_HISTORY)
    await publisher.publish("other", b"3", NO_HISTORY)
    await eventually(lambda: len(got) == 4, 5, "the other channel's publication")
    assert [p.channel for p in got[3:]] == ["other"]
    assert mesh.got[publisher] == []


async def test_a_publication_right_after_watch_returns_is_delivered(mesh: Mesh) -> None:
    publisher, watcher = mesh.open(), mesh.open()
    got = mesh.got[watcher]
    for i in range(20):
        await watcher.watch(f"c{i}")
        await publisher.publish(f"c{i}", b"1", NO_HISTORY)
    await eventually(lambda: len(got) == 20, 5, "one publication per channel")
    assert sorted(p.channel for p in got) == sorted(f"c{i}" for i in range(20))


async def test_close_is_idempotent_and_a_closed_engine_refuses(mesh: Mesh) -> None:
    engine = mesh.open()
    await engine.watch("room")
    await engine.close()
    await engine.close()
    with pytest.raises(Unavailable, match="closed"):
        await engine.publish("room", b"1", NO_HISTORY)
    with pytest.raises(Unavailable, match="closed"):
        await engine.watch("room")
    await eventually(lambda: not mesh.channels.streams, 3, "its stream ended")


# ------------------------------------------------------------------------- presence


async def test_presence_with_two_gateways_join_leave_and_refresh(mesh: Mesh) -> None:
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


async def test_members_whose_gateway_died_are_swept_by_exactly_one_gateway(mesh: Mesh) -> None:
    one, two = mesh.open("gw-1"), mesh.open("gw-2")
    dying = [member(f"d{i}", "gw-dead") for i in range(30)]
    for m in dying:
        await one.join("room", m, ttl=0.3)
    await two.join("room", member("alive", "gw-2"), ttl=10)

    await asyncio.sleep(0.4)  # gw-dead never refreshed
    assert await two.presence("room") == [member("alive", "gw-2")]  # even before a sweep
    swept = await asyncio.gather(*(e.sweep("room") for e in (one, two, one, two)))

    removed = [m for part in swept for m in part]
    assert sorted(removed, key=lambda m: m.session) == sorted(dying, key=lambda m: m.session)
    assert await one.sweep("room") == []
    assert await one.leave("room", "d0") is None


async def test_members_no_gateway_swept_are_forgotten_a_ttl_later(mesh: Mesh) -> None:
    engine = mesh.open()
    await engine.join("room", member("s1", "gw-dead"), ttl=0.2)
    assert mesh.channels.presence.count == 1
    await eventually(lambda: mesh.channels.presence.count == 0, 3, "the member forgotten")
    assert mesh.channels.presence.of_gateway == {}


async def test_a_watch_stream_that_ends_takes_its_owners_members_away_with_a_leave(
    mesh: Mesh,
) -> None:
    dying, staying = mesh.open("gw-a"), mesh.open("gw-b")
    await dying.join("room", member("a1", "gw-a"), ttl=30)
    await dying.join("hall", member("a2", "gw-a"), ttl=30)
    await staying.join("room", member("b1", "gw-b"), ttl=30)
    await staying.watch("room")
    await eventually(lambda: mesh.channels.owners.get("gw-a") == 1, 3, "gw-a's stream open")

    await dying.close()

    got = mesh.got[staying]
    await eventually(lambda: len(got) == 1, 3, "a leave for gw-a's member")
    leave = got[0]
    assert (leave.kind, leave.channel) == ("leave", "room")
    assert leave.data == member_json(member("a1", "gw-a"))
    assert await staying.presence("room") == [member("b1", "gw-b")]
    assert await staying.presence("hall") == []
    assert "gw-a" not in mesh.channels.owners


# ------------------------------------------------------------------------- admission


async def test_every_call_needs_the_join_secret(mesh: Mesh) -> None:
    for secret in (None, "not-the-secret"):
        stranger = mesh.open(secret=secret)
        with pytest.raises(Unauthenticated, match="join secret"):
            await stranger.publish("room", b"1", NO_HISTORY)
        with pytest.raises(Unauthenticated):
            await stranger.presence("room")
        with pytest.raises(Unauthenticated):
            await stranger.watch("room")
    assert mesh.channels.logs == {}
    assert mesh.channels.refusals is not None
    assert mesh.channels.refusals.total == 6  # type: ignore[attr-defined]
    assert embedded.JOIN_KEY == registry.JOIN_KEY


async def test_bad_arguments_are_refused_typed(mesh: Mesh) -> None:
    engine = mesh.open()
    with pytest.raises(InvalidPayload, match="channel name"):
        await engine.publish("two words", b"1", NO_HISTORY)
    with pytest.raises(PayloadTooLarge):
        await engine.publish("room", b"x" * (embedded.MAX_DATA_BYTES + 1), NO_HISTORY)
    with pytest.raises(InvalidPayload, match="history_size"):
        await engine.publish("room", b"1", ChannelRules(history_size=10**6))
    with pytest.raises(InvalidPayload, match="ttl"):
        await engine.join("room", member("s1"), ttl=-1)


# ------------------------------------------------------------------------- outages


async def test_a_restarted_engine_answers_epoch_and_watchers_are_delivered_again(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    publisher, watcher = mesh.open(), mesh.open("gw-w")
    await watcher.watch("room")
    before = await publisher.publish("room", b"1", KEEP_10)
    got = mesh.got[watcher]
    await eventually(lambda: len(got) == 1, 3, "the first publication")

    caplog.set_level(logging.WARNING, logger="wiremesh.channels")
    await mesh.server.stop(0)
    with pytest.raises(Unavailable):
        await publisher.publish("room", b"lost", KEEP_10)
    await asyncio.sleep(0.5)  # the watcher tries again meanwhile
    await mesh.restart()

    async def recovered_reason() -> str:
        try:
            return (await publisher.history("room", before, KEEP_10)).reason
        except Unavailable:
            return ""

    async def delivered_again() -> bool:
        await asyncio.sleep(0.1)
        try:
            await publisher.publish("room", b"2", KEEP_10)
        except Unavailable:
            return False
        return any(p.data == b"2" for p in got)

    deadline = asyncio.get_running_loop().time() + 8
    while not await delivered_again():
        assert asyncio.get_running_loop().time() < deadline, "the watcher never came back"
    assert await recovered_reason() == "epoch"  # its history went with the old server
    fresh = [p for p in got if p.data == b"2"]
    assert fresh[0].epoch != before.epoch
    lines = [r for r in caplog.records if r.name == "wiremesh.channels"]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # one line for the outage
    assert "channel engine at" in lines[0].getMessage()


# ------------------------------------------------------------------------- bounds


async def test_past_the_bound_on_channels_a_publish_is_refused(mesh: Mesh) -> None:
    mesh.channels.max_channels = 3
    engine = mesh.open()
    for name in ("a", "b", "c"):
        await engine.publish(name, b"1", NO_HISTORY)
    with pytest.raises(Unavailable, match="3 channels at most"):
        await engine.publish("d", b"1", KEEP_10)
    await engine.publish("a", b"2", NO_HISTORY)  # a channel it keeps still takes more
    await engine.announce("d", "join", member("s1"))  # kept nowhere: no channel needed


async def test_a_watcher_that_does_not_read_is_dropped_and_the_others_are_not(
    mesh: Mesh,
) -> None:
    mesh.channels.max_pending = 50
    publisher, reader = mesh.open(), mesh.open()
    await reader.watch("room")
    channel, call = raw_watch(mesh)
    try:
        await call.write(pb.WatchRequest(id=1, watch="room"))
        assert list((await call.read()).acks) == [1]  # then it reads no more
        payload = b'"' + b"x" * 4000 + b'"'
        for _ in range(20):  # batches of 100, the reader reads between them
            await asyncio.gather(
                *(publisher.publish("room", payload, NO_HISTORY) for _ in range(100))
            )
            if len(mesh.channels.streams) == 1:
                break
        await eventually(lambda: len(mesh.channels.streams) == 1, 5, "the non-reader dropped")
        # what gRPC had taken before still arrives, then the status
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await asyncio.wait_for(call.read(), 5) is not grpc.aio.EOF:
                pass
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "behind" in (ended.value.details() or "")
    finally:
        call.cancel()
        await channel.close(None)
    sent = (await publisher.history("room", None, NO_HISTORY)).position.offset
    got = mesh.got[reader]
    await eventually(lambda: len(got) == sent, 5, "every publication to the reader")
    assert [p.offset for p in got] == list(range(1, sent + 1))

"""The embedded channel engine on its own: a real :class:`RegistryServer` (which serves it)
on a free port, real gRPC, engines as the gateways and nodes hold them. What it promises as
every engine does is in ``test_engine_contract.py``."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from tests.channels.conftest import KEEP_10, NO_HISTORY, SECRET, EmbeddedMesh, member
from tests.fixtures.meshes import eventually
from wiremesh.channels import embedded
from wiremesh.channels.embedded import member_json
from wiremesh.core.channels import ChannelRules
from wiremesh.errors import InvalidPayload, PayloadTooLarge, Unauthenticated, Unavailable
from wiremesh.proto import channels_pb2 as pb
from wiremesh.registry import embedded as registry


def raw_watch(mesh: EmbeddedMesh) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:  # type: ignore[type-arg]
    """A Watch stream of a plain grpcio client, as another language would open one."""
    channel = grpc.aio.insecure_channel(mesh.server.address)
    call = channel.stream_stream(
        f"/{embedded.SERVICE}/Watch",
        request_serializer=pb.WatchRequest.SerializeToString,
        response_deserializer=pb.WatchReply.FromString,
    )(metadata=((registry.JOIN_KEY, SECRET),))
    return channel, call


# ------------------------------------------------------------------------- publications


async def test_a_raw_client_is_acknowledged_and_gets_one_turns_publications_in_one_reply(
    embedded_mesh: EmbeddedMesh,
) -> None:
    channel, call = raw_watch(embedded_mesh)
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
            embedded_mesh.channels.publish(request)
        reply = await call.read()
        assert [(p.offset, p.data) for p in reply.publications] == [
            (i + 1, b"%d" % i) for i in range(20)
        ]
    finally:
        call.cancel()
        await channel.close(None)


# ------------------------------------------------------------------------- history


async def test_expired_logs_are_dropped_by_the_sweep(embedded_mesh: EmbeddedMesh) -> None:
    engine = embedded_mesh.open()
    await engine.publish("short", b"1", ChannelRules(history_size=1, history_ttl=0.2))
    await engine.publish("long", b"1", KEEP_10)
    assert set(embedded_mesh.channels.logs) == {"short", "long"}
    await eventually(
        lambda: set(embedded_mesh.channels.logs) == {"long"}, 3, "the short log dropped"
    )


# ------------------------------------------------------------------------- watching


async def test_unwatch_is_acknowledged_and_a_closed_engines_stream_ends(
    embedded_mesh: EmbeddedMesh,
) -> None:
    engine = embedded_mesh.open()
    await engine.watch("room")
    await engine.watch("other")
    assert set(embedded_mesh.channels.watchers) == {"room", "other"}
    await engine.unwatch("room")
    assert "room" not in embedded_mesh.channels.watchers  # acknowledged: the server forgot it
    await engine.close()
    await eventually(lambda: not embedded_mesh.channels.streams, 3, "its stream ended")
    assert embedded_mesh.channels.watchers == {}


# ------------------------------------------------------------------------- presence


async def test_members_no_gateway_swept_are_forgotten_a_ttl_later(
    embedded_mesh: EmbeddedMesh,
) -> None:
    engine = embedded_mesh.open()
    await engine.join("room", member("s1", "gw-dead"), ttl=0.2)
    assert embedded_mesh.channels.presence.count == 1
    await eventually(lambda: embedded_mesh.channels.presence.count == 0, 3, "the member forgotten")
    assert embedded_mesh.channels.presence.of_gateway == {}


async def test_a_watch_stream_that_ends_takes_its_owners_members_away_with_a_leave(
    embedded_mesh: EmbeddedMesh,
) -> None:
    dying, staying = embedded_mesh.open("gw-a"), embedded_mesh.open("gw-b")
    await dying.join("room", member("a1", "gw-a"), ttl=30)
    await dying.join("hall", member("a2", "gw-a"), ttl=30)
    await staying.join("room", member("b1", "gw-b"), ttl=30)
    await staying.watch("room")
    await eventually(
        lambda: embedded_mesh.channels.owners.get("gw-a") == 1, 3, "gw-a's stream open"
    )

    await dying.close()

    got = embedded_mesh.got[staying]
    await eventually(lambda: len(got) == 1, 3, "a leave for gw-a's member")
    leave = got[0]
    assert (leave.kind, leave.channel) == ("leave", "room")
    assert leave.data == member_json(member("a1", "gw-a"))
    assert await staying.presence("room") == [member("b1", "gw-b")]
    assert await staying.presence("hall") == []
    assert "gw-a" not in embedded_mesh.channels.owners


# ------------------------------------------------------------------------- admission


async def test_every_call_needs_the_join_secret(embedded_mesh: EmbeddedMesh) -> None:
    for secret in (None, "not-the-secret"):
        stranger = embedded_mesh.open(secret=secret)
        with pytest.raises(Unauthenticated, match="join secret"):
            await stranger.publish("room", b"1", NO_HISTORY)
        with pytest.raises(Unauthenticated):
            await stranger.presence("room")
        with pytest.raises(Unauthenticated):
            await stranger.watch("room")
    assert embedded_mesh.channels.logs == {}
    assert embedded_mesh.channels.refusals is not None
    assert embedded_mesh.channels.refusals.total == 6  # type: ignore[attr-defined]
    assert embedded.JOIN_KEY == registry.JOIN_KEY


async def test_bad_arguments_are_refused_typed(embedded_mesh: EmbeddedMesh) -> None:
    engine = embedded_mesh.open()
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
    embedded_mesh: EmbeddedMesh, caplog: pytest.LogCaptureFixture
) -> None:
    publisher, watcher = embedded_mesh.open(), embedded_mesh.open("gw-w")
    await watcher.watch("room")
    before = await publisher.publish("room", b"1", KEEP_10)
    got = embedded_mesh.got[watcher]
    await eventually(lambda: len(got) == 1, 3, "the first publication")

    caplog.set_level(logging.WARNING, logger="wiremesh.channels")
    await embedded_mesh.server.stop(0)
    with pytest.raises(Unavailable):
        await publisher.publish("room", b"lost", KEEP_10)
    await asyncio.sleep(0.5)  # the watcher tries again meanwhile
    await embedded_mesh.restart()

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


async def test_past_the_bound_on_channels_a_publish_is_refused(embedded_mesh: EmbeddedMesh) -> None:
    embedded_mesh.channels.max_channels = 3
    engine = embedded_mesh.open()
    for name in ("a", "b", "c"):
        await engine.publish(name, b"1", NO_HISTORY)
    with pytest.raises(Unavailable, match="3 channels at most"):
        await engine.publish("d", b"1", KEEP_10)
    await engine.publish("a", b"2", NO_HISTORY)  # a channel it keeps still takes more
    await engine.announce("d", "join", member("s1"))  # kept nowhere: no channel needed


async def test_a_watcher_that_does_not_read_is_dropped_and_the_others_are_not(
    embedded_mesh: EmbeddedMesh,
) -> None:
    embedded_mesh.channels.max_pending = 50
    publisher, reader = embedded_mesh.open(), embedded_mesh.open()
    await reader.watch("room")
    channel, call = raw_watch(embedded_mesh)
    try:
        await call.write(pb.WatchRequest(id=1, watch="room"))
        assert list((await call.read()).acks) == [1]  # then it reads no more
        payload = b'"' + b"x" * 4000 + b'"'
        for _ in range(20):  # batches of 100, the reader reads between them
            await asyncio.gather(
                *(publisher.publish("room", payload, NO_HISTORY) for _ in range(100))
            )
            if len(embedded_mesh.channels.streams) == 1:
                break
        await eventually(
            lambda: len(embedded_mesh.channels.streams) == 1, 5, "the non-reader dropped"
        )
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
    got = embedded_mesh.got[reader]
    await eventually(lambda: len(got) == sent, 5, "every publication to the reader")
    assert [p.offset for p in got] == list(range(1, sent + 1))

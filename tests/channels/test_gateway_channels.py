"""Channels through real gateways: two gateways, a real node of a service that owns the
channels (``tests/fixtures/svc_channels.py``), the embedded engine in the test mesh's
registry, and real ``websockets`` clients speaking the control channel
(``docs/protocol.md``, "Channels")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from tests.fixtures.svc_channels import Rooms
from tests.gateway.ws_mesh import ROOMY, closed_with, connect
from wiremesh.core.channels import Position
from wiremesh.errors import NotFound, PayloadTooLarge
from wiremesh.testing import TestMesh, gateway_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = {**ROOMY, "channels": {"max_subscriptions": 4, "max_publish_bytes": 200}}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh() -> AsyncIterator[TestMesh]:
    """Rooms, and two gateways."""
    async with TestMesh(Rooms, gateway=gateway_settings(limits=LIMITS)) as running:
        await running.add_gateway(gateway_settings(limits=LIMITS))
        yield running


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def expect(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next control message of ``kind`` (binary frames and other kinds are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                found: dict[str, Any] = json.loads(message)
                if found.get("wm") == kind:
                    return found


async def subscribe(ws: ClientConnection, channel: str, request: int = 1, **more: Any) -> Any:
    await send(ws, wm="subscribe", channel=channel, id=request, **more)
    return await expect(ws, "subscribed")


async def say(mesh: TestMesh, channel: str, text: str) -> int:
    offset: int = await mesh.call("rooms.say", {"channel": channel, "text": text})
    return offset


async def texts(ws: ClientConnection, count: int) -> list[tuple[int, str]]:
    found = []
    for _ in range(count):
        pub = await expect(ws, "pub")
        found.append((pub["offset"], pub["data"]["text"]))
    return found


async def test_a_publication_reaches_every_subscriber_on_every_gateway_in_order(
    mesh: TestMesh,
) -> None:
    async with (
        connect(mesh, "rooms", subject="ada", gateway=0) as first,
        connect(mesh, "rooms", subject="bob", gateway=1) as second,
    ):
        for ws in (first, second):
            answer = await subscribe(ws, "room:order")
            assert answer["id"] == 1 and answer["recovered"] is False and answer["epoch"]
        start = answer["offset"]
        offsets = [await say(mesh, "room:order", f"m{i}") for i in range(20)]
        assert offsets == list(range(start + 1, start + 21))
        expected = [(start + 1 + i, f"m{i}") for i in range(20)]
        assert await texts(first, 20) == expected
        assert await texts(second, 20) == expected


async def test_a_client_that_comes_back_recovers_what_it_missed_in_order(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms", gateway=0) as ws:
        answer = await subscribe(ws, "room:recover")
        await say(mesh, "room:recover", "seen")
        seen = (await expect(ws, "pub"))["offset"]
        epoch = answer["epoch"]
    missed = [await say(mesh, "room:recover", f"missed{i}") for i in range(5)]
    # back, on the other gateway
    async with connect(mesh, "rooms", gateway=1) as ws:
        answer = await subscribe(ws, "room:recover", since={"offset": seen, "epoch": epoch})
        assert answer["recovered"] is True, answer
        assert [p["offset"] for p in answer["publications"]] == missed
        assert [p["data"]["text"] for p in answer["publications"]] == [
            f"missed{i}" for i in range(5)
        ]
        # and live from there, nothing twice
        await say(mesh, "room:recover", "live")
        assert (await expect(ws, "pub"))["data"]["text"] == "live"


async def test_recovery_that_cannot_be_told_says_why(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms") as ws:
        answer = await subscribe(ws, "tiny:1")
        epoch = answer["epoch"]
        for i in range(6):
            await say(mesh, "tiny:1", f"t{i}")
        top = (await texts(ws, 6))[-1][0]
    async with connect(mesh, "rooms") as ws:
        # only the last 3 are kept: from the first one on, recovery is gone
        gone = await subscribe(ws, "tiny:1", since={"offset": top - 5, "epoch": epoch})
        assert (gone["recovered"], gone["reason"], gone["publications"]) == (False, "gone", [])
        await send(ws, wm="unsubscribe", channel="tiny:1", id=2)
        assert (await expect(ws, "unsubscribed"))["id"] == 2
        other = await subscribe(ws, "tiny:1", 3, since={"offset": 1, "epoch": "another"})
        assert (other["recovered"], other["reason"]) == (False, "epoch")
        await send(ws, wm="unsubscribe", channel="tiny:1")
        await expect(ws, "unsubscribed")
        future = await subscribe(ws, "tiny:1", 4, since={"offset": top + 10, "epoch": epoch})
        assert (future["recovered"], future["reason"]) == (False, "future")
        await send(ws, wm="unsubscribe", channel="tiny:1")
        await expect(ws, "unsubscribed")
        recent = await subscribe(ws, "tiny:1", 5, since={"offset": top - 2, "epoch": epoch})
        assert recent["recovered"] is True
        assert [p["offset"] for p in recent["publications"]] == [top - 1, top]
        nothing = await subscribe(ws, "open:x", 6, since={"offset": 0, "epoch": epoch})
        assert (nothing["recovered"], nothing["reason"]) == (False, "no_history")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"channel": "room:secret"}, 4403),  # on_subscribe raised PermissionDenied
        ({"channel": "tinyroom"}, 4404),  # no service owns it
        ({"channel": "two words"}, 4400),
        ({"channel": 7}, 4400),
        ({"channel": "room:a", "since": {"offset": -1, "epoch": "e"}}, 4400),
        ({"channel": "room:a", "since": "yesterday"}, 4400),
        ({"channel": "scoped:x"}, 4403),  # the token lacks the scope
    ],
)
async def test_a_refused_subscription_gets_its_code_and_the_session_stays(
    mesh: TestMesh, message: dict[str, Any], code: int
) -> None:
    async with connect(mesh, "rooms") as ws:
        await send(ws, wm="subscribe", id=9, **message)
        error = await expect(ws, "error")
        assert (error["id"], error["code"]) == (9, code), error
        assert error["reason"]
        await ws.send(b"still here")
        assert await ws.recv() == b"still here"


async def test_the_secret_rooms_refusal_carries_the_nodes_reason(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms", subject="eve") as ws:
        await send(ws, wm="subscribe", channel="room:secret", id=1)
        assert (await expect(ws, "error"))["reason"] == "eve may not read room:secret"


async def test_a_scope_lets_a_session_in(mesh: TestMesh) -> None:
    token = mesh.token("ada", scopes=["rooms:read"])
    async with connect(mesh, "rooms", token=token) as ws:
        assert (await subscribe(ws, "scoped:x"))["channel"] == "scoped:x"


async def test_limits_of_one_session(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms") as ws:
        for i in range(4):
            await subscribe(ws, f"open:{i}", i)
        await send(ws, wm="subscribe", channel="open:0", id=10)
        assert (await expect(ws, "error"))["code"] == 4409
        await send(ws, wm="subscribe", channel="open:4", id=11)
        too_many = await expect(ws, "error")
        assert (too_many["id"], too_many["code"]) == (11, 4429)
        # publish: on a channel browsers may not publish to, too big, not subscribed
        await send(ws, wm="publish", channel="open:0", data="hi", id=12)
        assert (await expect(ws, "error"))["code"] == 4403
        await send(ws, wm="unsubscribe", channel="open:0")
        await expect(ws, "unsubscribed")
        await subscribe(ws, "room:limits", 13)
        await send(ws, wm="publish", channel="room:limits", data="x" * 300, id=14)
        assert (await expect(ws, "error"))["code"] == 4413
        await send(ws, wm="publish", channel="room:else", data="x", id=15)
        assert (await expect(ws, "error"))["code"] == 4403
        await send(ws, wm="unsubscribe", channel="room:else", id=16)
        assert (await expect(ws, "error"))["code"] == 4403


async def test_a_browser_publishes_where_the_rules_allow(mesh: TestMesh) -> None:
    async with (
        connect(mesh, "rooms", subject="ada", gateway=0) as writer,
        connect(mesh, "rooms", subject="bob", gateway=1) as reader,
    ):
        await subscribe(writer, "room:talk")
        await subscribe(reader, "room:talk")
        await send(writer, wm="publish", channel="room:talk", data={"text": "hello"}, id=5)
        published = await expect(writer, "published")
        assert published["id"] == 5 and published["offset"] >= 1
        pub = await expect(reader, "pub")
        assert (pub["offset"], pub["data"]) == (published["offset"], {"text": "hello"})


async def test_presence_joins_and_leaves(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms", subject="ada", gateway=0) as ada:
        await subscribe(ada, "room:presence")
        async with connect(mesh, "rooms", subject="bob", gateway=1) as bob:
            await subscribe(bob, "room:presence")
            joined = await expect(ada, "join")
            assert joined["member"]["principal"] == "bob"
            await send(ada, wm="presence", channel="room:presence", id=3)
            members = (await expect(ada, "presence"))["members"]
            assert sorted(m["principal"] for m in members) == ["ada", "bob"]
            assert {m["gateway"] for m in members} == {g.gateway_id for g in mesh.gateways}
            assert await mesh.call("rooms.present", "room:presence") == [
                "ada",
                "bob",
            ]
        left = await expect(ada, "leave")
        assert left["member"]["principal"] == "bob"
        assert await mesh.call("rooms.present", "room:presence") == ["ada"]


async def test_a_node_subscribes_and_unsubscribes_a_session(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms", gateway=1) as ws:
        await ws.send(b"who am i")
        assert await ws.recv() == b"who am i"
        session = next(iter(mesh.gateways[1].table)).session_id
        assert await mesh.call("rooms.enrol", {"session": session, "channel": "room:enrolled"})
        answer = await expect(ws, "subscribed")
        assert answer["channel"] == "room:enrolled" and "id" not in answer
        await say(mesh, "room:enrolled", "for you")
        assert (await expect(ws, "pub"))["data"]["text"] == "for you"
        assert await mesh.call("rooms.expel", {"session": session, "channel": "room:enrolled"})
        ended = await expect(ws, "unsubscribed")
        assert ended["reason"] == "unsubscribed by the node"


async def test_a_subscriber_that_does_not_read_is_closed_and_the_others_are_not(
    mesh: TestMesh,
) -> None:
    big = "x" * 8000
    async with (
        connect(mesh, "rooms", subject="slow", max_size=None) as slow,
        connect(mesh, "rooms", subject="fast") as fast,
    ):
        await subscribe(slow, "room:flood")
        await subscribe(fast, "room:flood")
        slow.transport.pause_reading()  # type: ignore[attr-defined]
        gateway = mesh.gateways[0]

        def slow_is_held() -> bool:
            return any(c.principal == "slow" and not c.closed for c in gateway.table)

        offsets: list[int] = []
        wanted = [4000 + 50]  # how many to read: known once the publishing ends

        async def read() -> None:
            while len(offsets) < wanted[0]:
                offsets.append((await expect(fast, "pub", timeout=30))["offset"])

        reader = asyncio.create_task(read())
        # publish until the gateway gave up on the one that does not read (bounded)
        sent = 0
        while slow_is_held() and sent < 4000:
            await asyncio.gather(*(say(mesh, "room:flood", f"{big}{sent + j}") for j in range(50)))
            sent += 50
        assert not slow_is_held(), f"still held after {sent} publications"
        # the one that reads gets every one of them, in order
        wanted[0] = sent
        if len(offsets) < sent:
            await asyncio.wait_for(reader, 30)
        reader.cancel()
        assert offsets == sorted(offsets) and len(set(offsets)) == sent
        slow.transport.resume_reading()  # type: ignore[attr-defined]
        code, _ = await closed_with(slow)
        assert code == 4008


async def test_a_gateway_that_dies_leaves_presence(mesh: TestMesh) -> None:
    extra = await mesh.add_gateway(gateway_settings(limits={**LIMITS}))
    index = mesh.gateways.index(extra)
    async with connect(mesh, "rooms", subject="ada", gateway=0) as ada:
        await subscribe(ada, "room:dies")
        ws = await connect(mesh, "rooms", subject="gone", gateway=index)
        await subscribe(ws, "room:dies")
        assert (await expect(ada, "join"))["member"]["principal"] == "gone"
        await mesh.stop_gateway(extra)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
        left = await expect(ada, "leave", timeout=10)
        assert left["member"]["principal"] == "gone"
        assert await mesh.call("rooms.present", "room:dies") == ["ada"]


async def test_publications_a_gateway_missed_are_filled_from_history(mesh: TestMesh) -> None:
    async with connect(mesh, "rooms", gateway=0) as ws:
        await subscribe(ws, "room:gap")
        await say(mesh, "room:gap", "before")
        first = (await expect(ws, "pub"))["offset"]
        # as if the gateway's connection to the engine broke for a while
        engine = mesh.gateways[0].channels.engine
        await engine.unwatch("room:gap")
        for i in range(3):
            await say(mesh, "room:gap", f"lost{i}")
        await engine.watch("room:gap")
        await say(mesh, "room:gap", "after")
        expected = [(first + 1 + i, f"lost{i}") for i in range(3)] + [(first + 4, "after")]
        assert await texts(ws, 4) == expected
        await say(mesh, "room:gap", "live")
        assert await texts(ws, 1) == [(first + 5, "live")]


async def test_a_session_whose_recovery_ran_ahead_of_its_gateway_gets_nothing_twice(
    mesh: TestMesh,
) -> None:
    # the answer reads the history, which may hold publications this gateway has not had
    # live yet (a many-hosts scenario saw one delivered twice): they come live later,
    # and must not reach the session again
    async with connect(mesh, "rooms", gateway=1) as bob:
        epoch = (await subscribe(bob, "room:ahead"))["epoch"]
        await say(mesh, "room:ahead", "seen")
        seen = (await expect(bob, "pub"))["offset"]
        engine = mesh.gateways[1].channels.engine
        await engine.unwatch("room:ahead")  # the gateway's live feed lags behind
        ahead = [await say(mesh, "room:ahead", f"ahead{i}") for i in range(2)]
        async with connect(mesh, "rooms", gateway=1) as ada:
            since = {"offset": seen, "epoch": epoch}
            answer = await subscribe(ada, "room:ahead", since=since)
            assert [p["offset"] for p in answer["publications"]] == ahead
            await engine.watch("room:ahead")
            after = await say(mesh, "room:ahead", "after")
            assert await texts(bob, 3) == [
                (ahead[0], "ahead0"),
                (ahead[1], "ahead1"),
                (after, "after"),
            ]
            assert await texts(ada, 1) == [(after, "after")]


async def test_a_client_outside_the_mesh_publishes_and_reads_history_and_presence(
    mesh: TestMesh,
) -> None:
    async with connect(mesh, "rooms", subject="ada") as ws:
        await subscribe(ws, "room:client")
        position = await mesh.client.channels.publish("room:client", {"text": "from outside"})
        pub = await expect(ws, "pub")
        assert (pub["offset"], pub["epoch"]) == (position.offset, position.epoch)
        found = await mesh.client.channels.history("room:client", Position(0, position.epoch))
        assert [p.data for p in found.publications][-1] == b'{"text":"from outside"}'
        members = await mesh.client.channels.presence("room:client")
        assert [m.principal for m in members] == ["ada"]
        with pytest.raises(NotFound, match="no service declares"):
            await mesh.client.channels.publish("nobody:1", 1)
        with pytest.raises(PayloadTooLarge):
            await mesh.client.channels.publish("room:client", "x" * 70_000)


async def test_the_gateway_counts_channels_subscriptions_publications_and_refusals(
    mesh: TestMesh,
) -> None:
    gateway = mesh.gateways[0]
    before = gateway.meter.publications
    async with connect(mesh, "rooms") as ws:
        await subscribe(ws, "room:counted")
        assert gateway.channels.counts()[1] >= 1
        await say(mesh, "room:counted", "one")
        await expect(ws, "pub")
        await send(ws, wm="subscribe", channel="nobody:1", id=2)
        await expect(ws, "error")
        text = gateway.meter.text().decode()
    assert gateway.meter.publications > before
    assert 'wiremesh_channel_refused_total{code="4404"}' in text
    assert "wiremesh_channel_subscriptions " in text and "wiremesh_channels " in text


async def test_a_browser_publishing_faster_than_its_sessions_rate_is_closed_4029(
    mesh: TestMesh,
) -> None:
    strict = await mesh.add_gateway(
        gateway_settings(limits={"messages_per_second": 5.0, "burst": 5})
    )
    index = mesh.gateways.index(strict)
    try:
        async with connect(mesh, "rooms", gateway=index) as ws:
            await subscribe(ws, "room:fast")
            for i in range(20):
                await send(ws, wm="publish", channel="room:fast", data=i, id=i + 2)
            code, _ = await closed_with(ws)
            assert code == 4029
    finally:
        await mesh.stop_gateway(strict)

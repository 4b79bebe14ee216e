"""The JS client's channels in a real Chromium against real gateways: a ``TestMesh`` of the
``Rooms`` service (``tests/fixtures/svc_channels.py``) with two gateways behind a TCP
balancer, as a deployment puts a load balancer in front of its gateways.

The page knows one URL, the balancer's, which sends each new connection to the first
gateway still running; stopping that gateway (``mesh.stop_gateway``) sends the client's
reconnection to the other one. The balancer can also refuse connections for a moment
(``paused``: no gateway in service), so that a test publishes while the page is away.

The mesh runs in an event loop of its own thread: Playwright's sync API holds the test's.
What the page sends on each WebSocket is read from Chromium itself (``framesent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.fixtures.svc_channels import Rooms
from tests.gateway.ws_mesh import ROOMY
from wiremesh.testing import TestMesh, gateway_settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, WebSocket

    from wiremesh.gateway.server import Gateway
    from wiremesh.gateway.settings import GatewaySettings

T = TypeVar("T")

LIMITS = {**ROOMY, "channels": {"max_publish_bytes": 200, "subscribe_timeout": 1.0}}

# Every connection the page opens is a `client`: its connection, and what reached each of
# its callbacks (`log`: `[tag, what, ...]` from `handlers(client, tag)`, and the fallback).
PAGE = """<!doctype html>
<meta charset="utf-8"><title>channels</title>
<script type="module">
import * as wm from "/_wiremesh/wiremesh.js";
window.wm = wm;
window.clients = {};
window.start = (name, options) => {
  const client = { log: [], controls: [], frames: [] };
  client.conn = wm.connect({
    service: "rooms",
    backoff: { initial: 50, max: 300 },
    onControl: (message) => client.controls.push(message),
    onFrame: (frame) => client.frames.push(new TextDecoder().decode(frame)),
    onPublication: (channel, data, info) => client.log.push(["fallback", channel, data, info]),
    ...options,
  });
  window.clients[name] = client;
  return client;
};
window.handlers = (client, tag) => ({
  onMessage: (data, info) => client.log.push([tag, "message", data, info.offset, info.recovered]),
  onSubscribed: (info) => client.log.push([tag, "subscribed", info]),
  onUnsubscribed: (info) => client.log.push([tag, "unsubscribed", info]),
  onError: (error) => client.log.push([tag, "error", error.kind, error.code]),
  onJoin: (member) => client.log.push([tag, "join", member.principal]),
  onLeave: (member) => client.log.push([tag, "leave", member.principal]),
});
window.ready = true;
</script>
"""


class Balancer:
    """A TCP balancer on loopback: each new connection goes to the first of ``targets``
    (gateways) still running, byte for byte both ways; none while ``paused``."""

    def __init__(self) -> None:
        self.targets: list[Gateway] = []
        self.paused = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.paused or not self.targets:
                return
            upstream, to_gateway = await asyncio.open_connection("127.0.0.1", self.targets[0].port)
            self._writers.add(to_gateway)
            try:
                await asyncio.gather(_pipe(reader, to_gateway), _pipe(upstream, writer))
            finally:
                self._writers.discard(to_gateway)
        except OSError:
            pass  # the gateway went away: so does the connection
        finally:
            writer.close()
            self._writers.discard(writer)

    async def close(self) -> None:
        """Stop listening and end every connection (their pipes see them close)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        async with asyncio.timeout(5):
            while self._writers:  # noqa: ASYNC110 - the pipes end on their own
                await asyncio.sleep(0.01)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class Mesh:
    """``Rooms`` and two gateways behind a :class:`Balancer`, in a thread's event loop;
    :meth:`run` runs a coroutine there and waits for its result."""

    def __init__(self, static: Path) -> None:
        self.static = static
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.balancer = Balancer()
        self.mesh: TestMesh | None = None
        self.settings: GatewaySettings | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> Mesh:
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        await self.balancer.start()
        self.settings = gateway_settings(
            limits=LIMITS, static=str(self.static), origins=[self.balancer.url]
        )
        self.mesh = TestMesh(Rooms, gateway=self.settings)
        await self.mesh.__aenter__()
        await self.mesh.add_gateway(self.settings)
        self.balancer.targets = self.mesh.gateways

    def stop(self) -> None:
        async def stop() -> None:
            await self.balancer.close()
            if self.mesh is not None:
                await self.mesh.close()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    @property
    def url(self) -> str:
        """Where the page is, and where the client connects: the balancer."""
        return self.balancer.url

    @property
    def gateways(self) -> list[Gateway]:
        assert self.mesh is not None
        return self.mesh.gateways

    def token(self, subject: str = "ada", **claims: Any) -> str:
        assert self.mesh is not None
        return self.mesh.token(subject, **claims)

    def call(self, target: str, payload: Any = None) -> Any:
        assert self.mesh is not None
        return self.run(self.mesh.call(target, payload))

    def say(self, channel: str, text: str) -> int:
        offset: int = self.call("rooms.say", {"channel": channel, "text": text})
        return offset

    def fail_over(self) -> str:
        """Stop the gateway that new connections reach (the page's), and start another one
        for the tests after (the balancer now sends connections to the one left); the
        stopped gateway's id."""

        async def fail_over() -> str:
            assert self.mesh is not None
            serving = self.mesh.gateways[0]
            await self.mesh.stop_gateway(serving)
            await self.mesh.add_gateway(self.settings)
            return serving.gateway_id

        return self.run(fail_over())

    @contextlib.contextmanager
    def away(self) -> Iterator[str]:
        """The page's gateway stops and no gateway takes connections until the block
        ends; gives the stopped gateway's id."""
        self.balancer.paused = True
        try:
            yield self.fail_over()
        finally:
            self.balancer.paused = False


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    static = tmp_path_factory.mktemp("channels-site")
    (static / "index.html").write_text(PAGE)
    running = Mesh(static).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def site(browser: Browser, mesh: Mesh) -> Iterator[Page]:
    """The test page, served through the balancer, with the client loaded: one page for
    the module (each test makes its own connections); each of its WebSockets' sent text
    messages in ``page.sent`` (one list per socket, in order)."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        sent: list[list[dict[str, Any]]] = []

        def opened(socket: WebSocket) -> None:
            frames: list[dict[str, Any]] = []
            sent.append(frames)
            socket.on("framesent", lambda data: _record(frames, data))

        page.on("websocket", opened)
        page.sent = sent  # type: ignore[attr-defined]
        page.errors = errors  # type: ignore[attr-defined]
        page.goto(mesh.url + "/")
        page.wait_for_function("window.ready === true")
        yield page
    finally:
        context.close()


def _record(frames: list[dict[str, Any]], data: str | bytes) -> None:
    if isinstance(data, str):
        frames.append(json.loads(data))


@pytest.fixture
def tab(site: Page) -> Iterator[Page]:
    """The module's page, for one test: it starts with no connection and no socket."""
    yield site
    site.evaluate(
        "() => { for (const client of Object.values(window.clients)) client.conn.close();"
        " window.clients = {}; }"
    )
    site.sent.clear()  # type: ignore[attr-defined]
    assert site.errors == []  # type: ignore[attr-defined]


def js(page: Page, script: str, arg: Any = None) -> Any:
    """Run an async function body with ``wm``, ``clients`` and ``arg`` in scope."""
    return page.evaluate(
        f"async (arg) => {{ const wm = window.wm, clients = window.clients; {script} }}", arg
    )


def start(page: Page, mesh: Mesh, name: str = "c", subject: str = "ada", **options: Any) -> None:
    options = {"token": mesh.token(subject), **options}
    page.evaluate("([name, options]) => { window.start(name, options); }", [name, options])


def wait_open(page: Page, name: str = "c") -> None:
    page.wait_for_function("(name) => window.clients[name].conn.state === 'open'", arg=name)


def log(page: Page, name: str = "c") -> list[Any]:
    entries: list[Any] = page.evaluate("(name) => window.clients[name].log", name)
    return entries


def messages(page: Page, tag: str, name: str = "c") -> list[tuple[str, int, bool]]:
    """What ``tag``'s ``onMessage`` got: (text, offset, recovered)."""
    return [(e[2]["text"], e[3], e[4]) for e in log(page, name) if e[:2] == [tag, "message"]]


def subscribed(page: Page, tag: str, name: str = "c") -> list[dict[str, Any]]:
    return [e[2] for e in log(page, name) if e[:2] == [tag, "subscribed"]]


def wait_for_messages(page: Page, tag: str, count: int, name: str = "c") -> None:
    page.wait_for_function(
        "([name, tag, count]) => window.clients[name].log"
        ".filter((e) => e[0] === tag && e[1] === 'message').length >= count",
        arg=[name, tag, count],
    )


def wait_for_subscribed(page: Page, tag: str, count: int, name: str = "c") -> None:
    page.wait_for_function(
        "([name, tag, count]) => window.clients[name].log"
        ".filter((e) => e[0] === tag && e[1] === 'subscribed').length >= count",
        arg=[name, tag, count],
    )


def sent(page: Page, socket: int) -> list[tuple[str, str, Any]]:
    """What the page sent on its ``socket``-th WebSocket: (wm, channel, since)."""
    frames: list[dict[str, Any]] = page.sent[socket]  # type: ignore[attr-defined]
    return [(f["wm"], f.get("channel"), f.get("since")) for f in frames]


# ------------------------------------------------------------------------ subscribing


def test_a_subscription_made_before_the_open_holds_and_gets_what_a_node_publishes(
    tab: Page, mesh: Mesh
) -> None:
    info, early, twice = js(
        tab,
        "const client = window.start('c', {token: arg});"
        "const sub = client.conn.subscribe('room:hello', handlers(client, 'a'));"
        "const early = [client.conn.state, sub.state];"
        "let twice;"
        "try { client.conn.subscribe('room:hello'); } catch (e) { twice = [e.kind, e.code]; }"
        "return [await sub.ready, early, twice];",
        mesh.token(),
    )
    assert early == ["connecting", "subscribing"]  # sent once the session opened
    assert twice == ["already_subscribed", 4409]  # refused by the client, nothing sent
    assert info == {
        "channel": "room:hello",
        "offset": info["offset"],
        "epoch": info["epoch"],
        "recovered": False,
        "reason": "",
        "resubscribed": False,
        "publications": 0,
    }
    assert info["epoch"]
    offsets = [mesh.say("room:hello", f"m{i}") for i in range(3)]
    assert offsets == [info["offset"] + 1, info["offset"] + 2, info["offset"] + 3]
    wait_for_messages(tab, "a", 3)
    assert messages(tab, "a") == [(f"m{i}", offsets[i], False) for i in range(3)]
    assert subscribed(tab, "a") == [info]
    assert sent(tab, 0) == [("subscribe", "room:hello", None)]
    # channel messages are the subscription's: none reaches onControl
    assert js(tab, "return clients.c.controls;") == []


@pytest.mark.parametrize(
    ("channel", "kind", "code", "reason"),
    [
        ("room:secret", "forbidden", 4403, "ada may not read room:secret"),  # on_subscribe
        ("scoped:x", "forbidden", 4403, "the token lacks the scope(s) rooms:read"),
        ("nowhere:x", "no_channel", 4404, "no service of the mesh owns this channel"),
        ("two words", "bad_request", 4400, None),
    ],
)
def test_a_refused_subscription_rejects_ready_with_the_kind_of_its_code(
    tab: Page, mesh: Mesh, channel: str, kind: str, code: int, reason: str | None
) -> None:
    start(tab, mesh)
    rejected, left = js(
        tab,
        "const client = clients.c;"
        "const sub = client.conn.subscribe(arg, handlers(client, 'a'));"
        "const rejected = await sub.ready.then(() => null,"
        "  (e) => [e instanceof wm.WiremeshError, e.kind, e.code, e.channel, e.message]);"
        "return [rejected, [sub.state, client.conn.subscriptions.size,"
        "  client.conn.pendingRequests, client.conn.state]];",
        channel,
    )
    assert rejected[:4] == [True, kind, code, channel]
    if reason is not None:
        assert rejected[4] == reason
    assert left == ["unsubscribed", 0, 0, "open"]  # the session stays
    message = rejected[4]
    assert log(tab) == [
        ["a", "error", kind, code],
        ["a", "unsubscribed", {"code": code, "reason": message}],
    ]


def test_a_scope_in_the_token_lets_the_page_in(tab: Page, mesh: Mesh) -> None:
    start(tab, mesh, token=mesh.token("ada", scopes=["rooms:read"]))
    info = js(tab, "return await clients.c.conn.subscribe('scoped:x').ready;")
    assert info["channel"] == "scoped:x"


# ------------------------------------------------------------------------ publish, presence


def test_the_page_publishes_sees_presence_joins_and_leaves_and_unsubscribes(
    tab: Page, mesh: Mesh
) -> None:
    # ada through the balancer, bob straight to the other gateway
    start(tab, mesh, "ada", "ada")
    start(tab, mesh, "bob", "bob", url=mesh.gateways[1].url)
    js(
        tab,
        "clients.ada.sub = clients.ada.conn.subscribe('room:talk', handlers(clients.ada, 'a'));"
        "await clients.ada.sub.ready;"
        "clients.bob.sub = clients.bob.conn.subscribe('room:talk', handlers(clients.bob, 'b'));"
        "await clients.bob.sub.ready;",
    )
    tab.wait_for_function("window.clients.ada.log.some((e) => e[1] === 'join')")
    published, members = js(
        tab,
        "const sub = clients.ada.sub;"
        "return [await sub.publish({text: 'hello'}), await sub.presence()];",
    )
    assert published["offset"] >= 1 and published["epoch"]
    assert sorted((m["principal"], m["gateway"]) for m in members) == [
        ("ada", mesh.gateways[0].gateway_id),
        ("bob", mesh.gateways[1].gateway_id),
    ]
    wait_for_messages(tab, "b", 1, "bob")
    wait_for_messages(tab, "a", 1, "ada")  # the page's own publication comes back too
    assert messages(tab, "b", "bob") == [("hello", published["offset"], False)]
    assert messages(tab, "a", "ada") == [("hello", published["offset"], False)]

    js(tab, "await clients.bob.sub.unsubscribe();")
    tab.wait_for_function("window.clients.ada.log.some((e) => e[1] === 'leave')")
    mesh.say("room:talk", "after bob left")
    wait_for_messages(tab, "a", 2, "ada")
    assert [e[1:] for e in log(tab, "ada") if e[1] in ("join", "leave")] == [
        ["join", "bob"],
        ["leave", "bob"],
    ]
    assert log(tab, "bob")[-1] == [
        "b",
        "unsubscribed",
        {"code": 1000, "reason": "unsubscribed by the page"},
    ]
    assert messages(tab, "b", "bob") == [("hello", published["offset"], False)]
    assert mesh.call("rooms.present", "room:talk") == ["ada"]
    assert js(tab, "return [clients.ada.controls, clients.bob.controls];") == [[], []]


def test_refusals_and_a_closing_connection_fail_channel_requests(tab: Page, mesh: Mesh) -> None:
    kinds = js(
        tab,
        "const conn = window.start('c', {token: arg}).conn;"
        "const kind = (p) => p.then(() => 'ok', (e) => [e.kind, e.code ?? null]);"
        "const early = await kind(conn.publish('room:rules', 1));"
        "await conn.opened();"
        "const room = conn.subscribe('room:rules'); await room.ready;"
        "const open = conn.subscribe('open:rules'); await open.ready;"
        "const result = [early,"
        "  await kind(conn.publish('room:rules', undefined)),"
        "  await kind(room.publish('x'.repeat(300))),"  # over max_publish_bytes
        "  await kind(open.publish('not allowed here')),"
        "  await kind(open.presence()),"
        "  await kind(conn.publish('room:elsewhere', 'not subscribed'))];"
        "const cut = kind(room.publish('cut'));"
        "conn.close();"
        "return [...result, await cut, conn.pendingRequests];",
        mesh.token(),
    )
    assert kinds == [
        ["not_open", None],
        ["bad_argument", None],
        ["too_big", 4413],
        ["forbidden", 4403],
        ["forbidden", 4403],
        ["forbidden", 4403],
        ["closed", None],
        0,
    ]


def test_a_subscription_the_node_made_goes_to_the_fallback_until_the_node_ends_it(
    tab: Page, mesh: Mesh
) -> None:
    start(tab, mesh)
    wait_open(tab)
    session = js(tab, "return new TextDecoder().decode(await clients.c.conn.request('who'));")
    assert mesh.call("rooms.enrol", {"session": session, "channel": "room:enrolled"})
    tab.wait_for_function("window.clients.c.conn.subscriptions.has('room:enrolled')")
    offset = mesh.say("room:enrolled", "for you")
    tab.wait_for_function("window.clients.c.log.length === 1")
    origin = js(
        tab,
        "const sub = clients.c.conn.subscriptions.get('room:enrolled');"
        "clients.c.enrolled = sub; return [sub.origin, sub.state];",
    )
    assert origin == ["node", "subscribed"]
    assert log(tab) == [
        [
            "fallback",
            "room:enrolled",
            {"text": "for you"},
            {
                "channel": "room:enrolled",
                "offset": offset,
                "epoch": log(tab)[0][3]["epoch"],
                "recovered": False,
            },
        ]
    ]
    assert mesh.call("rooms.expel", {"session": session, "channel": "room:enrolled"})
    tab.wait_for_function("window.clients.c.conn.subscriptions.size === 0")
    assert js(tab, "return clients.c.enrolled.state;") == "unsubscribed"
    assert js(tab, "return clients.c.controls;") == []


# ------------------------------------------------------------------------ reconnecting


def test_after_its_gateway_stops_the_page_recovers_on_the_other_every_publication_once(
    tab: Page, mesh: Mesh
) -> None:
    start(tab, mesh)
    js(tab, "await clients.c.conn.subscribe('room:recover', handlers(clients.c, 'a')).ready;")
    first = mesh.say("room:recover", "m0")
    wait_for_messages(tab, "a", 1)
    with mesh.away() as stopped:
        tab.wait_for_function("window.clients.c.conn.state !== 'open'")
        missed = [mesh.say("room:recover", f"m{i}") for i in range(1, 6)]
    wait_for_subscribed(tab, "a", 2)
    live = mesh.say("room:recover", "m6")
    wait_for_messages(tab, "a", 7)

    assert messages(tab, "a") == [
        ("m0", first, False),
        *((f"m{i}", missed[i - 1], True) for i in range(1, 6)),
        ("m6", live, False),
    ]
    again = subscribed(tab, "a")[1]
    assert (again["resubscribed"], again["recovered"], again["publications"]) == (True, True, 5)
    # the page asked for what came after the last publication it saw
    epoch = subscribed(tab, "a")[0]["epoch"]
    assert sent(tab, -1) == [("subscribe", "room:recover", {"offset": first, "epoch": epoch})]
    members = js(tab, "return await clients.c.conn.presence('room:recover');")
    assert [m["gateway"] for m in members] == [mesh.gateways[0].gateway_id]
    assert stopped not in {g.gateway_id for g in mesh.gateways}


def test_publications_racing_a_reconnection_arrive_each_once_in_order(
    tab: Page, mesh: Mesh
) -> None:
    start(tab, mesh)
    js(tab, "await clients.c.conn.subscribe('room:race', handlers(clients.c, 'a')).ready;")
    done = threading.Event()

    async def chatter() -> list[int]:
        assert mesh.mesh is not None
        offsets = []
        while not done.is_set():
            offsets.append(await mesh.mesh.call("rooms.say", {"channel": "room:race", "text": "x"}))
            await asyncio.sleep(0.005)
        return offsets

    publishing = asyncio.run_coroutine_threadsafe(chatter(), mesh.loop)
    time.sleep(0.2)
    mesh.fail_over()  # no pause: the page comes back while the node publishes
    wait_for_subscribed(tab, "a", 2)
    time.sleep(0.2)
    done.set()
    offsets = publishing.result(10)
    wait_for_messages(tab, "a", len(offsets))
    seen = messages(tab, "a")
    assert [offset for _, offset, _ in seen] == offsets
    assert subscribed(tab, "a")[1]["recovered"] is True


def test_when_what_was_missed_cannot_be_told_the_page_is_told_to_reload(
    tab: Page, mesh: Mesh
) -> None:
    start(tab, mesh)
    js(tab, "await clients.c.conn.subscribe('tiny:reload', handlers(clients.c, 'a')).ready;")
    mesh.say("tiny:reload", "seen")
    wait_for_messages(tab, "a", 1)
    with mesh.away():
        tab.wait_for_function("window.clients.c.conn.state !== 'open'")
        top = [mesh.say("tiny:reload", f"lost{i}") for i in range(5)][-1]  # 3 are kept
    wait_for_subscribed(tab, "a", 2)
    again = subscribed(tab, "a")[1]
    assert (again["resubscribed"], again["recovered"], again["reason"]) == (True, False, "gone")
    assert again["offset"] == top
    live = mesh.say("tiny:reload", "live")
    wait_for_messages(tab, "a", 2)
    assert messages(tab, "a") == [("seen", top - 5, False), ("live", live, False)]
    # a later visit with the position it kept recovers what is still kept
    since = {"offset": top - 2, "epoch": again["epoch"]}
    start(tab, mesh, "later")
    later = js(
        tab,
        "const client = clients.later;"
        "return await client.conn.subscribe('tiny:reload',"
        "  {...handlers(client, 'b'), since: arg}).ready;",
        since,
    )
    assert (later["recovered"], later["publications"]) == (True, 3)
    wait_for_messages(tab, "b", 3, "later")
    assert messages(tab, "b", "later") == [
        ("lost3", top - 1, True),
        ("lost4", top, True),
        ("live", live, True),  # published before this subscription: recovered too
    ]


def test_without_recover_a_resubscription_asks_for_nothing_missed(tab: Page, mesh: Mesh) -> None:
    start(tab, mesh)
    js(
        tab,
        "const sub = clients.c.conn.subscribe('room:norecover',"
        "  {...handlers(clients.c, 'a'), recover: false}); await sub.ready;",
    )
    mesh.say("room:norecover", "seen")
    wait_for_messages(tab, "a", 1)
    with mesh.away():
        tab.wait_for_function("window.clients.c.conn.state !== 'open'")
        mesh.say("room:norecover", "missed")
    wait_for_subscribed(tab, "a", 2)
    live = mesh.say("room:norecover", "live")
    wait_for_messages(tab, "a", 2)
    assert [text for text, _, _ in messages(tab, "a")] == ["seen", "live"]
    assert messages(tab, "a")[1] == ("live", live, False)
    again = subscribed(tab, "a")[1]
    assert (again["resubscribed"], again["recovered"], again["reason"]) == (True, False, "")
    assert sent(tab, -1) == [("subscribe", "room:norecover", None)]


def test_while_disconnected_subscribe_and_unsubscribe_wait_for_the_next_session(
    tab: Page, mesh: Mesh
) -> None:
    start(tab, mesh)
    js(
        tab,
        "clients.c.gone = clients.c.conn.subscribe('open:gone');"
        "await clients.c.conn.subscribe('open:kept').ready; await clients.c.gone.ready;",
    )
    with mesh.away():
        tab.wait_for_function("window.clients.c.conn.state !== 'open'")
        js(tab, "await clients.c.gone.unsubscribe(); clients.c.conn.subscribe('open:new');")
    tab.wait_for_function("window.clients.c.conn.state === 'open'")
    tab.wait_for_function(
        "[...window.clients.c.conn.subscriptions.values()].every((s) => s.state === 'subscribed')"
    )
    assert js(tab, "return [...clients.c.conn.subscriptions.keys()];") == ["open:kept", "open:new"]
    assert [(wm, channel) for wm, channel, _ in sent(tab, -1)] == [
        ("subscribe", "open:kept"),
        ("subscribe", "open:new"),
    ]


def test_a_resubscription_the_gateway_cannot_decide_in_time_is_tried_again(
    tab: Page, mesh: Mesh
) -> None:
    start(tab, mesh)
    js(tab, "await clients.c.conn.subscribe('room:retry', handlers(clients.c, 'a')).ready;")
    mesh.call("rooms.hold", True)
    try:
        with mesh.away():
            tab.wait_for_function("window.clients.c.conn.state !== 'open'")
        # the node decides nothing: after subscribe_timeout (1 s), the gateway says 4503
        tab.wait_for_function("window.clients.c.log.some((e) => e[1] === 'error')")
    finally:
        mesh.call("rooms.hold", False)
    wait_for_subscribed(tab, "a", 2)
    assert js(tab, "return clients.c.conn.subscriptions.get('room:retry').state;") == "subscribed"
    assert next(e for e in log(tab) if e[1] == "error") == ["a", "error", "unavailable", 4503]
    again = subscribed(tab, "a")[-1]
    assert (again["resubscribed"], again["recovered"]) == (True, True)
    attempts = [frame for frame in sent(tab, -1) if frame[0] == "subscribe"]
    assert len(attempts) >= 2
    assert all(since == attempts[0][2] for _, _, since in attempts)


def test_a_first_subscription_without_an_answer_in_time_is_undone(tab: Page, mesh: Mesh) -> None:
    start(tab, mesh, requestTimeout=300)
    wait_open(tab)
    mesh.call("rooms.hold", True)
    try:
        rejected, size = js(
            tab,
            "const sub = clients.c.conn.subscribe('room:late');"
            "const rejected = await sub.ready.then(() => null, (e) => e.kind);"
            "return [rejected, clients.c.conn.subscriptions.size];",
        )
    finally:
        mesh.call("rooms.hold", False)
    assert (rejected, size) == ("timeout", 0)
    # a late success must not linger: the client unsubscribed, and the gateway's answer
    # to that (to an id nobody waits for) reaches no callback
    assert [wm for wm, _, _ in sent(tab, 0)] == ["subscribe", "unsubscribe"]
    time.sleep(0.3)
    assert mesh.call("rooms.present", "room:late") == []
    assert js(tab, "return clients.c.controls;") == []

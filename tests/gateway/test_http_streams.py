"""``POST /rpc/<service>/<method>`` on streaming methods: a server-streaming method's items
as NDJSON or server-sent events, written as they come, from a real HTTP client (httpx, or
a raw socket) against a real gateway in front of real nodes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import pytest_asyncio
from openapi_spec_validator import validate
from pydantic import BaseModel

from tests.fixtures.meshes import eventually
from tests.gateway.http_door import OutOfStock, bearer, door, gateway_mesh
from wiremesh import Context, Service, rpc
from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo
from wiremesh.gateway.http_protocol import PARSER_ENV
from wiremesh.gateway.openapi import openapi_document
from wiremesh.gateway.problem import INTERNAL_DETAIL
from wiremesh.testing import TestMesh

PROBLEM = "application/problem+json"
NDJSON = "application/x-ndjson"
EVENTS = "text/event-stream"
#: how long a test waits for what must happen at once
SOON = 5.0
#: the deadline of a stream the test cancels (the most the gateway takes), and how long
#: the test waits for the cancellation: well before the deadline would end the stream
LONG = {"Wiremesh-Timeout": "10"}
CANCELLED_WITHIN = 3.0

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Tick(BaseModel):
    n: int


class Feed(Service):
    """Streams that end every way a stream can end."""

    name = "feed"

    async def on_start(self) -> None:
        self.go = asyncio.Event()  # opens the gate of ``gated``
        self.started = asyncio.Event()  # ``endless`` or ``flood`` began
        self.closed = asyncio.Event()  # ``endless`` or ``flood`` ended (its finally ran)

    @rpc
    async def count(self, ctx: Context, upto: int) -> AsyncIterator[Tick]:
        """Count from 0."""
        for n in range(upto):
            yield Tick(n=n)

    @rpc
    async def gated(self, ctx: Context) -> AsyncIterator[int]:
        """1, then 2 once the test opens the gate."""
        yield 1
        await self.go.wait()
        yield 2

    @rpc
    async def sold_out(self, ctx: Context, items: int) -> AsyncIterator[int]:
        for n in range(items):
            yield n
        raise OutOfStock("nothing left", details={"sku": "A-1"})

    @rpc
    async def crash(self, ctx: Context, items: int) -> AsyncIterator[int]:
        for n in range(items):
            yield n
        raise RuntimeError("a secret the client must not see")

    @rpc
    async def late(self, ctx: Context) -> AsyncIterator[int]:
        """Its first item comes after any deadline the tests set."""
        self.started.set()
        try:
            await asyncio.sleep(30)
            yield 1
        finally:
            self.closed.set()

    @rpc
    async def endless(self, ctx: Context) -> AsyncIterator[int]:
        self.started.set()
        try:
            n = 0
            while True:
                yield n
                n += 1
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()

    @rpc
    async def flood(self, ctx: Context) -> AsyncIterator[str]:
        """Large items, as fast as they go."""
        self.started.set()
        try:
            while True:
                yield "x" * 100_000
        finally:
            self.closed.set()

    @rpc
    async def whoami(self, ctx: Context) -> AsyncIterator[Any]:
        yield ctx.metadata.get("principal")

    @rpc
    async def ping(self, ctx: Context) -> str:
        return "pong"

    @rpc
    async def upload(self, ctx: Context, chunks: AsyncIterator[str]) -> int:
        return len([chunk async for chunk in chunks])

    @rpc
    async def chat(self, ctx: Context, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        async for line in lines:
            yield line


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared() -> AsyncIterator[TestMesh]:
    """One mesh and gateway for the tests that change nothing in them."""
    async with gateway_mesh(Feed) as mesh:
        yield mesh


@pytest_asyncio.fixture(loop_scope="module")
async def client(shared: TestMesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=shared.gateway.url, headers=bearer(), timeout=10
    ) as client:
        yield client


def feed(mesh: TestMesh) -> Feed:
    instance: Feed = mesh.instance("feed")
    return instance


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["instance"] == response.request.url.path
    return body


def idle(mesh: TestMesh) -> bool:
    """Whether the door holds no place for a request now (of the gateway's, or alice's)."""
    admission = door(mesh).admission
    return admission.in_flight == 0 and admission.in_flight_of("alice") == 0


def events_of(body: bytes) -> list[tuple[str, Any]]:
    """The server-sent events of ``body``: ``(event name, JSON data)``, checking that
    each is ``[event: <name>\\n]data: <one line>\\n\\n``."""
    assert body.endswith(b"\n\n"), body
    events = []
    for block in body[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        name = "message"
        if lines[0].startswith(b"event: "):
            name = lines.pop(0).removeprefix(b"event: ").decode()
        assert len(lines) == 1 and lines[0].startswith(b"data: "), block
        events.append((name, json.loads(lines[0].removeprefix(b"data: "))))
    return events


# ------------------------------------------------------------------------------ NDJSON


@pytest.mark.parametrize("parser", ["h11", "httptools"])
async def test_items_are_written_as_they_come(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first item reaches the client while the handler still waits for the test:
    the answer is streamed, not gathered to its end. On both HTTP parsers."""
    monkeypatch.setenv(PARSER_ENV, parser)
    async with (
        gateway_mesh(Feed) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer(), timeout=10) as client,
        client.stream("POST", "/rpc/feed/gated") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == NDJSON
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["cache-control"] == "no-cache"
        assert "content-length" not in response.headers
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), SOON) == "1"
        feed(mesh).go.set()
        assert await asyncio.wait_for(anext(lines), SOON) == "2"
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), SOON)


async def test_ndjson_is_the_default_and_what_accept_asks_for(
    client: httpx.AsyncClient,
) -> None:
    expected = b'{"n":0}\n{"n":1}\n{"n":2}\n'
    for accept in (None, NDJSON, "*/*", "application/json", f"{EVENTS};q=0.5, {NDJSON}"):
        headers = {} if accept is None else {"Accept": accept}
        response = await client.post("/rpc/feed/count", json=3, headers=headers)
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["content-type"] == NDJSON, accept
        assert response.content == expected, accept


async def test_an_empty_stream_is_an_empty_body(client: httpx.AsyncClient) -> None:
    for accept in (NDJSON, EVENTS):
        response = await client.post("/rpc/feed/count", json=0, headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"] == accept
        assert response.content == b""


async def test_the_handler_sees_the_principal(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/feed/whoami", headers=bearer("bob"))
    assert response.content == b'"bob"\n'


async def test_unary_methods_of_the_service_answer_as_before(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/feed/ping", headers={"Accept": EVENTS})
    assert response.headers["content-type"] == "application/json"
    assert response.json() == "pong"


# ------------------------------------------------------------------------- SSE


async def test_server_sent_events(client: httpx.AsyncClient) -> None:
    for accept in (EVENTS, f"{NDJSON};q=0.5, {EVENTS}", f"{EVENTS}, {NDJSON}"):
        response = await client.post("/rpc/feed/count", json=2, headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"] == EVENTS
        assert response.content == b'data: {"n":0}\n\ndata: {"n":1}\n\n'


async def test_server_sent_events_are_written_as_they_come(shared: TestMesh) -> None:
    feed(shared).go.clear()
    async with (
        httpx.AsyncClient(base_url=shared.gateway.url, headers=bearer(), timeout=10) as client,
        client.stream("POST", "/rpc/feed/gated", headers={"Accept": EVENTS}) as response,
    ):
        chunks = response.aiter_raw()
        assert await asyncio.wait_for(anext(chunks), SOON) == b"data: 1\n\n"
        feed(shared).go.set()
        assert await asyncio.wait_for(anext(chunks), SOON) == b"data: 2\n\n"


# ---------------------------------------------------------------------- errors


async def test_an_error_after_items_ends_the_ndjson_with_an_error_line(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/rpc/feed/sold_out", json=2)
    assert response.status_code == 200
    *items, last = response.text.splitlines()
    assert [json.loads(item) for item in items] == [0, 1]
    error = json.loads(last)["error"]
    assert error["status"] == 409
    assert error["type"] == "urn:wiremesh:problem:failed_precondition"
    assert error["title"] == "Service error"
    assert error["detail"] == "nothing left"
    assert error["error"] == "tests.gateway.http_door.OutOfStock"
    assert error["details"] == {"sku": "A-1"}
    assert error["instance"] == "/rpc/feed/sold_out"
    assert error["node"].startswith("feed-")


async def test_an_error_after_items_ends_the_events_with_an_error_event(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/rpc/feed/sold_out", json=1, headers={"Accept": EVENTS})
    assert response.status_code == 200
    (first, (name, problem)) = events_of(response.content)
    assert first == ("message", 0)
    assert name == "error"
    assert problem["status"] == 409 and problem["error"] == "tests.gateway.http_door.OutOfStock"


async def test_a_crash_after_items_keeps_its_secret(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/feed/crash", json=1)
    lines = response.text.splitlines()
    assert lines[0] == "0"
    error = json.loads(lines[1])["error"]
    assert error["status"] == 500 and error["detail"] == INTERNAL_DETAIL
    assert "secret" not in response.text


async def test_an_error_before_the_first_item_is_a_problem(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.post("/rpc/feed/sold_out", json=0), 409)
    assert body["error"] == "tests.gateway.http_door.OutOfStock"
    body = problem_of(await client.post("/rpc/feed/crash", json=0, headers={"Accept": EVENTS}), 500)
    assert body["detail"] == INTERNAL_DETAIL
    body = problem_of(await client.post("/rpc/feed/count", json="many"), 422)
    assert body["error"] == "wiremesh.errors.InvalidPayload"
    body = problem_of(await client.post("/rpc/feed/count", json={"upto": 1, "x": 2}), 422)
    problem_of(await client.post("/rpc/feed/count", content=b"{", headers={}), 400)
    body = problem_of(await client.post("/rpc/feed/count", json=1, params={"node": "feed-x"}), 404)
    assert body["error"] == "wiremesh.errors.NodeNotFound"
    body = problem_of(await client.post("/rpc/feed/nosuch", json=1), 404)
    assert body["error"] == "wiremesh.errors.MethodNotFound"


async def test_the_deadline_covers_the_whole_stream(client: httpx.AsyncClient) -> None:
    # before the first item: the problem's status
    response = await client.post("/rpc/feed/late", headers={"Wiremesh-Timeout": "0.3"})
    assert problem_of(response, 504)["error"] == "wiremesh.errors.DeadlineExceeded"
    # after items: the error line
    response = await client.post("/rpc/feed/endless", headers={"Wiremesh-Timeout": "0.5"})
    assert response.status_code == 200
    *items, last = response.text.splitlines()
    assert len(items) > 5 and [int(item) for item in items] == list(range(len(items)))
    assert json.loads(last)["error"]["error"] == "wiremesh.errors.DeadlineExceeded"
    problem_of(await client.post("/rpc/feed/count", json=1, headers={"Wiremesh-Timeout": "x"}), 400)


async def test_no_token_is_401_and_the_access_rules_apply(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/rpc/feed/count", json=1, headers={"Authorization": "Bearer nope"}
    )
    problem_of(response, 401)


# --------------------------------------------------------------- not served


async def test_client_and_bidirectional_streams_are_not_served(client: httpx.AsyncClient) -> None:
    for method, kind in (("upload", "client-streaming"), ("chat", "bidirectional streaming")):
        response = await client.post(f"/rpc/feed/{method}", json=["a", "b"])
        body = problem_of(response, 405)
        assert body["error"] == "http.HTTPStatus.METHOD_NOT_ALLOWED"
        assert body["type"] == "urn:wiremesh:problem:http-405"
        assert f"feed.{method} is a {kind} method" in body["detail"]
        assert response.headers["allow"] == ""


async def test_the_openapi_document_marks_the_streams(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    validate(document)
    paths = document["paths"]
    ok = paths["/rpc/feed/count"]["post"]["responses"]["200"]
    assert set(ok["content"]) == {NDJSON, EVENTS}
    assert ok["content"][NDJSON]["schema"] == {"$ref": "#/components/schemas/Tick"}
    assert paths["/rpc/feed/count"]["post"]["requestBody"]["content"]["application/json"]
    assert "application/json" in paths["/rpc/feed/ping"]["post"]["responses"]["200"]["content"]
    assert "/rpc/feed/upload" not in paths and "/rpc/feed/chat" not in paths


async def test_the_registry_alone_marks_the_streams_too() -> None:
    """A service whose class the gateway cannot import: its kinds come from the registry."""
    methods = {
        name: MethodInfo(name, streaming=kind)
        for name, kind in (("get", ""), ("watch", "server"), ("put", "client"), ("talk", "bidi"))
    }
    node = NodeInfo("remote-1", "remote", "127.0.0.1:1", methods=methods)
    document = openapi_document({}, MeshSnapshot.of(1, [node]))
    validate(document)
    paths = document["paths"]
    assert sorted(paths) == ["/rpc/remote/get", "/rpc/remote/watch"]
    assert set(paths["/rpc/remote/watch"]["post"]["responses"]["200"]["content"]) == {
        NDJSON,
        EVENTS,
    }


# ----------------------------------------------------------------- cancellation


async def test_a_client_that_goes_away_cancels_the_stream() -> None:
    async with (
        gateway_mesh(Feed) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer(), timeout=10) as client,
    ):
        async with client.stream("POST", "/rpc/feed/endless", headers=LONG) as response:
            lines = response.aiter_lines()
            assert await asyncio.wait_for(anext(lines), SOON) == "0"
            assert await asyncio.wait_for(anext(lines), SOON) == "1"
            assert not feed(mesh).closed.is_set()
        # leaving the block before the end closes the connection
        await asyncio.wait_for(feed(mesh).closed.wait(), CANCELLED_WITHIN)
        await eventually(lambda: idle(mesh), SOON, "the door to let go of the request")
        assert (await client.post("/rpc/feed/count", json=1)).content == b'{"n":0}\n'


async def test_a_client_that_goes_away_before_the_first_item_cancels_it() -> None:
    async with gateway_mesh(Feed) as mesh:
        where = urlsplit(mesh.gateway.url)
        reader, writer = await asyncio.open_connection(where.hostname, where.port)
        writer.write(
            b"POST /rpc/feed/late HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n"
            + b"Wiremesh-Timeout: 10\r\n"
            + f"Authorization: {bearer()['Authorization']}\r\n\r\n".encode()
        )
        await writer.drain()
        await asyncio.wait_for(feed(mesh).started.wait(), SOON)
        admission = door(mesh).admission
        assert admission.in_flight == 1
        writer.close()
        await asyncio.wait_for(feed(mesh).closed.wait(), CANCELLED_WITHIN)
        await eventually(lambda: idle(mesh), SOON, "the door to let go of the request")
        assert reader.at_eof() or await reader.read() == b""  # no answer was written


async def test_a_client_that_reads_nothing_has_its_stream_cancelled() -> None:
    async with gateway_mesh(Feed) as mesh:
        door(mesh).write_timeout = 0.3
        where = urlsplit(mesh.gateway.url)
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:  # sends a request, then never reads
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, (where.hostname, where.port))
            await loop.sock_sendall(
                sock,
                b"POST /rpc/feed/flood HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n"
                + b"Wiremesh-Timeout: 10\r\n"
                + f"Authorization: {bearer()['Authorization']}\r\n\r\n".encode(),
            )
            await asyncio.wait_for(feed(mesh).started.wait(), SOON)
            await asyncio.wait_for(feed(mesh).closed.wait(), CANCELLED_WITHIN)
            await eventually(lambda: idle(mesh), SOON, "the door to let go of the request")


async def test_a_stream_holds_its_principals_place_until_it_ends() -> None:
    async with (
        gateway_mesh(Feed, concurrency_per_principal=1) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer(), timeout=10) as client,
    ):
        async with client.stream("POST", "/rpc/feed/endless", headers=LONG) as response:
            assert await asyncio.wait_for(anext(response.aiter_lines()), SOON) == "0"
            busy = await client.post("/rpc/feed/count", json=1)
            assert problem_of(busy, 429)["error"] == "wiremesh.errors.RateLimited"
            other = await client.post("/rpc/feed/count", json=1, headers=bearer("bob"))
            assert other.status_code == 200
        await eventually(lambda: idle(mesh), SOON, "the door to let go of the stream")
        assert (await client.post("/rpc/feed/count", json=1)).status_code == 200


async def test_a_stopping_gateway_ends_a_running_stream_with_an_error_line() -> None:
    async with (
        gateway_mesh(Feed) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer(), timeout=10) as client,
        client.stream("POST", "/rpc/feed/endless", headers=LONG) as response,
    ):
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), SOON) == "0"
        drained = asyncio.create_task(door(mesh).drain(0.2))
        async with asyncio.timeout(SOON):
            last = [line async for line in lines][-1]
        error = json.loads(last)["error"]
        assert error["status"] == 503 and error["error"] == "wiremesh.errors.Unavailable"
        await drained
        await asyncio.wait_for(feed(mesh).closed.wait(), CANCELLED_WITHIN)

"""The HTTP door's limits and health: 413, 429, 503 at the concurrency limit, 408 for a
body that does not come, ``/healthz`` and ``/readyz``; a real gateway, real nodes."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from tests.gateway.http_door import Shop, bearer, gateway_mesh

PROBLEM = "application/problem+json"


async def raw_request(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as it is on a new connection; the answer's head and body, read
    until the door closes the connection."""
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_a_body_over_the_limit_is_413() -> None:
    async with (
        gateway_mesh(Shop, max_body=100) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer()) as client,
    ):
        declared = await client.post("/rpc/shop/quote", json={"sku": "x" * 200, "qty": 1})
        assert declared.status_code == 413, declared.text
        assert declared.headers["content-type"] == PROBLEM
        assert declared.json()["error"] == "wiremesh.errors.PayloadTooLarge"

        # no Content-Length: the body is counted as it is read
        chunked = b"".join(b"32\r\n" + b" " * 50 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
        head, body = await raw_request(
            mesh.gateway.url,
            b"POST /rpc/shop/ping HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Authorization: {bearer()['Authorization']}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunked,
        )
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"connection: close" in head.lower()
        assert b"wiremesh.errors.PayloadTooLarge" in body
        # the door still answers, on a new connection
        fine = await client.post("/rpc/shop/quote", json={"sku": "a", "qty": 1})
        assert fine.is_success


async def test_too_many_requests_from_one_principal_is_429() -> None:
    async with (
        gateway_mesh(Shop, rate=0.01, burst=2) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url) as client,
    ):
        alice = bearer("alice")
        assert (await client.post("/rpc/shop/ping", headers=alice)).is_success
        assert (await client.post("/rpc/shop/ping", headers=alice)).is_success
        limited = await client.post("/rpc/shop/ping", headers=alice)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"] == "wiremesh.errors.RateLimited"
        assert int(limited.headers["retry-after"]) >= 1
        # the bucket is the principal's, not the gateway's
        assert (await client.post("/rpc/shop/ping", headers=bearer("bob"))).is_success


async def test_the_concurrency_limit_answers_503() -> None:
    async with (
        gateway_mesh(Shop, concurrency=1) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer()) as client,
    ):
        slow = asyncio.create_task(client.post("/rpc/shop/slow", json=1.0))
        await mesh.instance("shop").slow_started.wait()
        busy = await client.post("/rpc/shop/ping")
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"] == "wiremesh.errors.Unavailable"
        assert (await slow).json() == 1.0
        assert (await client.post("/rpc/shop/ping")).is_success


async def test_a_body_that_does_not_arrive_is_408() -> None:
    async with gateway_mesh(Shop, body_timeout=0.3) as mesh:
        url = mesh.gateway.url
        head, body = await raw_request(
            url,
            b"POST /rpc/shop/quote HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Authorization: {bearer()['Authorization']}\r\n".encode()
            + b"Content-Length: 40\r\n\r\n"
            + b'{"sku":',
        )
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"connection: close" in head.lower()
        assert b"did not arrive" in body


async def test_healthz_and_readyz() -> None:
    async with (
        gateway_mesh(Shop) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url) as client,
    ):
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "registry": "reachable", "nodes": {"shop": 1}}
        await mesh.registry.stop()
        # the registry alone going away never makes the gateway unready: it answers from
        # its last view, and says the registry is away
        for _ in range(200):
            away = await client.get("/readyz")
            if away.json()["registry"] == "unreachable":
                break
            await asyncio.sleep(0.05)
        assert away.status_code == 200
        assert away.json() == {"status": "ready", "registry": "unreachable", "nodes": {"shop": 1}}
        assert (await client.post("/rpc/shop/ping", headers=bearer())).is_success
        assert (await client.get("/healthz")).status_code == 200


async def test_the_documents_can_be_turned_off() -> None:
    async with (
        gateway_mesh(Shop, docs=False) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer()) as client,
    ):
        assert (await client.get("/openapi.json")).status_code == 404
        assert (await client.get("/docs")).status_code == 404
        assert (await client.post("/rpc/shop/ping")).is_success

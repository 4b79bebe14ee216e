"""Every HTTP error the gateway answers is one problem shape (RFC 9457): the router's, the
dashboard's, a refused WebSocket upgrade's and the HTTP door's, seen by real clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets

from wiremesh import Context, Service, Session, on_socket, rpc
from wiremesh.gateway.app import Request, Response
from wiremesh.gateway.problem import CONTENT_TYPE, GATEWAY_FAILED, TITLES, problem_for_status
from wiremesh.gateway.websocket import Refusal
from wiremesh.testing import TestMesh

#: the async tests share the module's mesh, and so its event loop
in_module_loop = pytest.mark.asyncio(loop_scope="module")

#: the members every problem carries
SHAPE = {"type", "title", "status", "detail", "instance", "error"}


class Shop(Service):
    name = "shop"

    @rpc
    async def quote(self, ctx: Context, qty: int) -> int:
        return qty * 2

    @on_socket
    async def socket(self, session: Session, frame: bytes) -> None:
        await session.send(frame)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def mesh() -> AsyncIterator[TestMesh]:
    async with TestMesh(Shop, gateway=True) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http(mesh: TestMesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mesh.gateway.url) as client:
        yield client


def check(status: int, headers: Any, body: bytes, *, path: str, error: str) -> dict[str, Any]:
    """The problem of one answer, checked for the one shape; returns its body."""
    assert headers["content-type"] == CONTENT_TYPE
    problem: dict[str, Any] = json.loads(body)
    assert set(problem) >= SHAPE, problem
    assert problem["status"] == status
    assert problem["instance"] == path
    assert problem["error"] == error
    assert problem["detail"] and isinstance(problem["detail"], str)
    kind = problem["type"].removeprefix("urn:wiremesh:problem:")
    if kind.startswith("http-"):
        assert (kind, problem["title"]) == (f"http-{status}", HTTPStatus(status).phrase)
        assert error == f"http.HTTPStatus.{HTTPStatus(status).name}"
    else:
        assert problem["title"] in TITLES.values()
    return problem


def checked(response: httpx.Response, *, error: str) -> dict[str, Any]:
    path = response.request.url.path
    return check(response.status_code, response.headers, response.content, path=path, error=error)


@in_module_loop
async def test_a_path_with_no_route_is_a_not_found_problem(http: httpx.AsyncClient) -> None:
    checked(await http.get("/nowhere/at/all"), error="wiremesh.errors.NotFound")
    checked(await http.get("/_mesh/nothing.png"), error="wiremesh.errors.NotFound")


@in_module_loop
async def test_a_known_path_with_another_method_is_a_405_with_allow(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.post("/healthz")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"
    checked(answer, error="http.HTTPStatus.METHOD_NOT_ALLOWED")


@in_module_loop
async def test_the_dashboard_state_without_a_good_token_is_an_unauthenticated_problem(
    http: httpx.AsyncClient,
) -> None:
    checked(await http.get("/_mesh/state"), error="wiremesh.errors.Unauthenticated")
    forged = {"Authorization": "Bearer not.a.token"}
    checked(await http.get("/_mesh/state", headers=forged), error="wiremesh.errors.Unauthenticated")


@in_module_loop
async def test_a_refused_websocket_upgrade_answers_a_problem(mesh: TestMesh) -> None:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(mesh.ws_url("shop")):  # no token
            pass
    answer = caught.value.response
    assert answer.status_code == 401
    check(
        401, answer.headers, answer.body, path="/ws/shop", error="wiremesh.errors.Unauthenticated"
    )

    token = mesh.token("ada")
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(
            mesh.ws_url("nosuch"),
            subprotocols=["wiremesh.v1", f"bearer.{token}"],  # type: ignore[list-item]
        ):
            pass
    answer = caught.value.response
    check(404, answer.headers, answer.body, path="/ws/nosuch", error="wiremesh.errors.NotFound")


@in_module_loop
async def test_an_upgrade_where_no_websocket_is_served_answers_a_problem(mesh: TestMesh) -> None:
    url = f"{mesh.gateway.ws_url}/elsewhere"
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url):
            pass
    answer = caught.value.response
    check(404, answer.headers, answer.body, path="/elsewhere", error="wiremesh.errors.NotFound")


@in_module_loop
async def test_a_plain_get_on_a_websocket_path_answers_as_the_upgrade_would(
    mesh: TestMesh, http: httpx.AsyncClient
) -> None:
    checked(await http.get("/ws/shop"), error="wiremesh.errors.Unauthenticated")
    cookie = {"Cookie": f"wiremesh_token={mesh.token('ada')}"}
    accepted = await http.get("/ws/shop", headers=cookie)
    assert accepted.headers["upgrade"] == "websocket"
    checked(accepted, error="http.HTTPStatus.UPGRADE_REQUIRED")
    checked(await http.get("/ws/nosuch", headers=cookie), error="wiremesh.errors.NotFound")
    checked(await http.get("/ws/a/b/c", headers=cookie), error="wiremesh.errors.NotFound")


@in_module_loop
async def test_an_rpc_error_is_the_same_shape(mesh: TestMesh, http: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {mesh.token('ada')}"}
    invalid = await http.post("/rpc/shop/quote", json={"qty": "many"}, headers=auth)
    assert invalid.status_code == 422
    assert checked(invalid, error="wiremesh.errors.InvalidPayload")["errors"]
    not_json = await http.post("/rpc/shop/quote", content=b"{", headers=auth)
    checked(not_json, error="http.HTTPStatus.BAD_REQUEST")
    checked(await http.post("/rpc/shop/quote"), error="wiremesh.errors.Unauthenticated")
    checked(await http.get("/rpc/shop/quote"), error="http.HTTPStatus.METHOD_NOT_ALLOWED")


@in_module_loop
async def test_a_route_that_fails_answers_an_internal_problem_not_its_exception(
    mesh: TestMesh, http: httpx.AsyncClient
) -> None:
    async def failing(request: Request) -> Response:
        raise RuntimeError("a secret of the gateway's")

    mesh.gateway.app.router.add("GET", "/failing", failing)
    answer = await http.get("/failing")
    assert answer.status_code == 500
    problem = checked(answer, error="wiremesh.errors.InternalError")
    assert problem["detail"] == GATEWAY_FAILED


def test_a_refusal_keeps_its_retry_after_and_names_its_error() -> None:
    busy = Refusal(429, "too many connections", (("retry-after", "5"),)).problem("/ws/chat")
    assert (busy.status, busy.error, busy.retry_after) == (429, "wiremesh.errors.RateLimited", 5)
    assert (b"retry-after", b"5") in busy.headers()
    down = Refusal(503, "no node of 'chat' is serving", (("retry-after", "1"),)).problem("/ws/c")
    assert (down.error, down.retry_after) == ("wiremesh.errors.Unavailable", 1)


def test_a_status_of_no_wiremesh_error_is_http_s_own() -> None:
    upgrade = problem_for_status(426, "send a WebSocket upgrade", "/ws/chat")
    assert upgrade.body() == {
        "type": "urn:wiremesh:problem:http-426",
        "title": "Upgrade Required",
        "status": 426,
        "detail": "send a WebSocket upgrade",
        "instance": "/ws/chat",
        "error": "http.HTTPStatus.UPGRADE_REQUIRED",
    }

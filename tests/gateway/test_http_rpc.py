"""``POST /rpc/<service>/<method>``: every answer of the status table, from a real HTTP
client (httpx) against a real gateway in front of real nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.gateway.http_door import Clock, Shop, Vault, bearer, gateway_mesh, token
from wiremesh.errors import STATUS_TABLE, Status
from wiremesh.testing import TestMesh

PROBLEM = "application/problem+json"


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared() -> AsyncIterator[TestMesh]:
    """One mesh and gateway for the tests that change nothing in them."""
    async with gateway_mesh(Shop, Clock, Vault) as mesh:
        yield mesh


@pytest_asyncio.fixture(loop_scope="module")
async def client(shared: TestMesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=shared.gateway.url, headers=bearer(), timeout=10
    ) as client:
        yield client


def problem_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"].startswith("urn:wiremesh:problem:")
    assert body["title"] and body["instance"] == response.request.url.path
    return body


def http_status(status: Status) -> int:
    return STATUS_TABLE[status].http_status


# ------------------------------------------------------------------------------ 200


async def test_a_model_payload_is_answered_as_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/quote", json={"sku": "A-1", "qty": 4})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"sku": "A-1", "qty": 4, "total": 10.0}


async def test_keyword_parameters_and_their_defaults(client: httpx.AsyncClient) -> None:
    assert (await client.post("/rpc/shop/stock", json={"sku": "abc"})).json() == 7
    answer = await client.post("/rpc/shop/stock", json={"sku": "abc", "warehouse": "eu"})
    assert answer.json() == 5


async def test_no_payload_and_a_none_result(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/ping")
    assert response.status_code == 200
    assert response.json() is None


async def test_the_handler_sees_the_principal(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/whoami", headers=bearer("bob"))
    assert response.json()["principal"] == "bob"


async def test_node_parameter_pins_the_call() -> None:
    async with (
        gateway_mesh(Shop, Clock, Vault) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer()) as client,
    ):
        second = await mesh.add_node(Shop)
        answers = [
            (await client.post("/rpc/shop/whoami", params={"node": second.node_id})).json()
            for _ in range(4)
        ]
        assert {a["node"] for a in answers} == {second.node_id}
        response = await client.post("/rpc/shop/whoami", params={"node": "shop-nope"})
        body = problem_of(response, 404)
        assert body["error"] == "wiremesh.errors.NodeNotFound"


# ------------------------------------------------------------------------ 404, 405


async def test_unknown_service_method_and_path(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.post("/rpc/nosuch/m", json=1), http_status(Status.NOT_FOUND))
    assert body["error"] == "wiremesh.errors.ServiceNotFound"
    body = problem_of(await client.post("/rpc/shop/nosuch", json=1), 404)
    assert body["error"] == "wiremesh.errors.MethodNotFound"
    assert "quote" in str(body["detail"])
    problem_of(await client.post("/rpc/shop", json=1), 404)
    problem_of(await client.post("/rpc/Shop!/x", json=1), 404)
    elsewhere = await client.get("/nowhere")  # not the door's: the gateway's own 404
    assert elsewhere.status_code == 404 and elsewhere.headers["content-type"] == PROBLEM


async def test_a_get_on_rpc_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.get("/rpc/shop/quote")
    problem_of(response, 405)
    assert response.headers["allow"] == "POST"


# ------------------------------------------------------------------- 400, 415, 422


async def test_a_body_that_is_not_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/rpc/shop/quote", content=b"{sku: 1", headers={"content-type": "application/json"}
    )
    body = problem_of(response, 400)
    assert "not JSON" in str(body["detail"])


async def test_a_body_that_is_not_declared_json_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/rpc/shop/quote", content=b"sku=1", headers={"content-type": "text/plain"}
    )
    problem_of(response, 415)


async def test_an_invalid_payload_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/quote", json={"sku": "A-1", "qty": 0})
    body = problem_of(response, http_status(Status.INVALID_PAYLOAD))
    assert body["error"] == "wiremesh.errors.InvalidPayload"
    assert body["errors"] == [{"field": "qty", "message": "Input should be greater than 0"}]
    response = await client.post("/rpc/shop/stock", json={"sku": "a", "colour": "red"})
    body = problem_of(response, 422)
    assert [e["field"] for e in body["errors"]] == ["colour"]  # type: ignore[union-attr]


async def test_a_bad_deadline_header_is_400(client: httpx.AsyncClient) -> None:
    for value in ("soon", "-1", "0", "nan"):
        response = await client.post("/rpc/shop/ping", headers={"Wiremesh-Timeout": value})
        body = problem_of(response, 400)
        assert "Wiremesh-Timeout" in str(body["detail"])


# ------------------------------------------------------------------------ 401, 403


async def test_no_or_bad_token_is_401(client: httpx.AsyncClient) -> None:
    no_token = await client.post("/rpc/shop/ping", headers={"Authorization": ""})
    body = problem_of(no_token, http_status(Status.UNAUTHENTICATED))
    assert body["error"] == "wiremesh.errors.Unauthenticated"
    expired = bearer(ttl=-60)
    problem_of(await client.post("/rpc/shop/ping", headers=expired), 401)
    forged = {"Authorization": "Bearer " + token()[:-4] + "AAAA"}
    problem_of(await client.post("/rpc/shop/ping", headers=forged), 401)
    problem_of(await client.post("/rpc/shop/ping", headers={"Authorization": "Basic x"}), 401)
    # an unknown service is not told apart from a known one before authentication
    problem_of(await client.post("/rpc/nosuch/m", headers={"Authorization": ""}), 401)


async def test_the_access_rules_give_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/vault/open")
    body = problem_of(response, http_status(Status.PERMISSION_DENIED))
    assert body["error"] == "wiremesh.errors.PermissionDenied"
    allowed = await client.post("/rpc/vault/open", headers=bearer(scopes=["vault:read"]))
    assert allowed.json() == "opened"


# ------------------------------------------------------------------------ 409, 500


async def test_a_service_error_is_409_with_its_type_and_details(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/rpc/shop/sold_out", json="A-1")
    body = problem_of(response, http_status(Status.FAILED_PRECONDITION))
    assert str(body["error"]).endswith("http_door.OutOfStock")
    assert body["detail"] == "no A-1 left"
    assert body["details"] == {"sku": "A-1"}


async def test_a_handler_crash_is_500_without_its_message(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/crash")
    body = problem_of(response, http_status(Status.INTERNAL))
    assert body["error"] == "wiremesh.errors.InternalError"
    assert "secret" not in response.text


# ------------------------------------------------------------------ deadlines: 504


async def test_the_deadline_header_gives_504_when_it_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/slow", json=2.0, headers={"Wiremesh-Timeout": "0.2"})
    body = problem_of(response, http_status(Status.DEADLINE_EXCEEDED))
    assert body["error"] == "wiremesh.errors.DeadlineExceeded"


async def test_the_deadline_reaches_nested_calls(client: httpx.AsyncClient) -> None:
    response = await client.post("/rpc/shop/nested_deadline", headers={"Wiremesh-Timeout": "3"})
    seen = response.json()
    assert 0 < seen["nested"] <= seen["here"] <= 3


async def test_the_deadline_is_capped_by_configuration() -> None:
    async with (
        gateway_mesh(Clock, max_timeout=1.5, default_timeout=1.0) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url, headers=bearer()) as client,
    ):
        capped = await client.post("/rpc/clock/remaining", headers={"Wiremesh-Timeout": "600"})
        assert 0 < capped.json() <= 1.5
        default = await client.post("/rpc/clock/remaining")
        assert 0 < default.json() <= 1.0


# --------------------------------------------------------------------- no node: 503


async def test_a_service_with_no_live_node_is_503() -> None:
    async with (
        gateway_mesh(Shop, Vault) as mesh,
        httpx.AsyncClient(base_url=mesh.gateway.url) as client,
    ):
        await mesh.stop_node(mesh.nodes_of("vault")[0])
        response = await client.post("/rpc/vault/open", headers=bearer(scopes=["vault:read"]))
        body = problem_of(response, http_status(Status.UNAVAILABLE))
        assert body["error"] == "wiremesh.errors.Unavailable"
        ready = await client.get("/readyz")
        body = problem_of(ready, 503)
        assert body["details"] == {"missing": ["vault"], "registry": "reachable"}
        assert ready.headers["retry-after"] == "1"

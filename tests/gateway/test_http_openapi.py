"""``/openapi.json`` and ``/docs``: the document is valid OpenAPI 3.1 built from the
services' annotations, requests built from it succeed, and schemathesis finds no server
error and no answer that contradicts it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.gateway.http_door import Catalog, Shop, bearer, gateway_in_thread
from wiremesh import Context, Service, rpc
from wiremesh.core.model import MeshSnapshot, MethodInfo, NodeInfo
from wiremesh.gateway.openapi import DocumentSettings, openapi_document, service_specs
from wiremesh.service import ServiceSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def catalog() -> Iterator[str]:
    """The base URL of a gateway in front of a node of :class:`Catalog`."""
    with gateway_in_thread(Catalog) as url:
        yield url


# ------------------------------------------------------------------ the document alone


def test_the_document_of_every_payload_shape_is_valid_openapi() -> None:
    document = openapi_document(
        {"shop": ServiceSpec.of(Shop), "catalog": ServiceSpec.of(Catalog)},
        settings=DocumentSettings(version="1.2.3"),
    )
    validate(document)
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    quote = paths["/rpc/shop/quote"]["post"]
    assert quote["summary"] == "Price an item."
    assert quote["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Item"
    }
    ok = quote["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Quote"}
    schemas = document["components"]["schemas"]
    assert schemas["Item"]["properties"]["qty"] == {
        "exclusiveMinimum": 0,
        "maximum": 1000,
        "title": "Qty",
        "type": "integer",
    }
    # keyword parameters: one object, defaults optional, nothing else allowed
    stock = schemas["ShopStockParams"]
    assert stock["required"] == ["sku"] and stock["additionalProperties"] is False
    # no parameter: no body; `-> None`: null
    ping = paths["/rpc/shop/ping"]["post"]
    assert "requestBody" not in ping
    assert ping["responses"]["200"]["content"]["application/json"]["schema"] == {"type": "null"}
    # a problem answer for every status the door gives, and the bearer scheme
    assert {"400", "401", "403", "404", "409", "413", "422", "429", "500", "503", "504"} <= set(
        quote["responses"]
    )
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_service_known_only_from_the_registry_is_documented_untyped() -> None:
    node = NodeInfo("billing-1", "billing", "127.0.0.1:1", methods={"charge": MethodInfo("charge")})
    document = openapi_document({}, MeshSnapshot.of(1, [node]))
    validate(document)
    charge = document["paths"]["/rpc/billing/charge"]["post"]
    assert charge["requestBody"]["content"]["application/json"]["schema"] == {}
    assert charge["requestBody"]["required"] is False


class Odd(Service):
    name = "odd"

    @rpc
    async def hook(self, ctx: Context, callback: Callable[[], int]) -> int:
        return callback()

    @rpc
    async def double(self, ctx: Context, n: int) -> int:
        return 2 * n


def test_a_type_with_no_json_schema_is_any_json_the_others_keep_theirs() -> None:
    document = openapi_document({"odd": ServiceSpec.of(Odd)})
    validate(document)
    body = document["paths"]["/rpc/odd/hook"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {}
    double = document["paths"]["/rpc/odd/double"]["post"]["requestBody"]["content"]
    assert double["application/json"]["schema"] == {"type": "integer"}


def test_the_gateway_imports_the_configured_service_classes() -> None:
    specs = service_specs({"echo": "svc_echo:Echo", "ghost": "no_such_module:Ghost"}, [FIXTURES])
    assert sorted(specs) == ["echo"]  # the one that does not import is left out, logged
    validate(openapi_document(specs))


# ----------------------------------------------------------------- from the gateway


def test_the_served_document_validates_and_a_request_built_from_it_succeeds(
    catalog: str,
) -> None:
    url = catalog
    document = httpx.get(f"{url}/openapi.json").json()
    validate(document)
    search = document["paths"]["/rpc/catalog/search"]["post"]
    body_schema = search["requestBody"]["content"]["application/json"]["schema"]
    search_schema = resolve(document, body_schema)
    body = {
        name: example(resolve(document, search_schema["properties"][name]))
        for name in search_schema["required"]
    }
    response = httpx.post(f"{url}/rpc/catalog/search", json=body, headers=bearer())
    assert response.status_code == 200, response.text
    assert len(response.json()) == 3  # the default limit, as the document says


def test_the_docs_page_is_self_contained(catalog: str) -> None:
    url = catalog
    page = httpx.get(f"{url}/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere


def test_schemathesis_finds_no_server_error(catalog: str) -> None:
    url = catalog
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {**bearer(), "Wiremesh-Timeout": "5"}  # a 1 µs deadline would be a real 504
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 4
    statuses: dict[str, set[int]] = {}
    for operation, mode in itertools.product(operations, GenerationMode):
        found = statuses.setdefault(f"{mode.value} {operation.label}", set())
        run_cases(operation, mode, url, headers, found)
    assert all(status < 500 for found in statuses.values() for status in found), statuses
    # valid requests built from the document succeed; invalid ones are refused
    for label, found in statuses.items():
        if label.startswith("positive"):
            assert 200 in found, (label, found)
        else:
            assert found & {400, 404, 422}, (label, found)


def run_cases(
    operation: Any, mode: GenerationMode, url: str, headers: dict[str, str], found: set[int]
) -> None:
    """Send a few requests schemathesis makes for ``operation`` and check the answers:
    every check of the document for valid requests; no server error for invalid ones (the
    test adds a real token to every request, which the invalid ones say they lack)."""
    checks = None if mode is GenerationMode.POSITIVE else [not_a_server_error]

    @hypothesis.settings(
        max_examples=12,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers=headers)
        found.add(response.status_code)
        case.validate_response(response, checks=checks)

    check()


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example(schema: dict[str, Any]) -> Any:
    """A value of a plain schema (what a client generated from the document would send)."""
    kind = schema.get("type")
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 0))
    if kind == "integer":
        return schema.get("minimum", 1)
    raise AssertionError(f"no example for {schema}")

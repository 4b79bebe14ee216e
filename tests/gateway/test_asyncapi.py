"""``/asyncapi.json``: an AsyncAPI 3 document of the events, commands, publish topics and
sockets, built from the handlers' annotations, that the AsyncAPI project's own parser
(``@asyncapi/parser``, run with node from ``asyncapi_validator/``) reads without an error,
and that says what ``docs/protocol.md`` says of the AMQP topology; ``/docs`` shows it."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from tests.gateway.http_door import door, gateway_in_thread, gateway_mesh, token
from wiremesh import Context, Service, Session, command, on_event, on_socket, subscribe
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.gateway.asyncapi import AsyncApiSettings, asyncapi_document
from wiremesh.gateway.http_rpc import HttpDoor
from wiremesh.gateway.socket_hub import SOCKET_KEY
from wiremesh.service import ServiceSpec

VALIDATOR = Path(__file__).resolve().parent / "asyncapi_validator"
CHROMIUM = Path("/usr/bin/chromium")

#: the channels' control messages every socket channel lists (docs/protocol.md, 13.5)
CHANNEL_MESSAGES = {
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "subscribed",
    "pub",
    "join",
    "leave",
    "unsubscribed",
    "published",
    "members",
    "channel_error",
}


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"]


class OrderPlaced(BaseModel):
    id: int
    total: float = Field(gt=0)
    pet: Cat | Dog | None = Field(default=None, discriminator="kind")


@dataclass
class Refund:
    order: int
    reason: str = "asked"


class Billing(Service):
    name = "billing"

    @on_event("orders.placed", "orders.*.vip")
    async def order_placed(self, ctx: Context, order: OrderPlaced) -> None:
        """Charge a placed order.

        A VIP order is charged the same way."""

    @on_event("prices.#", delivery="broadcast")
    async def price_changed(self, ctx: Context, price: dict[str, float]) -> None: ...

    @command
    async def charge(self, ctx: Context, order: int, amount: float = 1.0) -> None: ...

    @command(name="refund")
    async def give_back(self, ctx: Context, refund: Refund) -> None: ...


class Storefront(Service):
    name = "storefront"

    @subscribe("stock.eu.*")
    async def stock_changed(self, ctx: Context, sku: str) -> None: ...

    @on_socket(text=True)
    async def socket(self, session: Session, frame: bytes) -> None:
        """Echo every frame."""
        await session.send(frame)


class Ticker(Service):
    """A service the gateway does not import: the registry alone tells of it."""

    name = "ticker"

    @subscribe("ticks.#")
    async def tick(self, ctx: Context, n: int) -> None: ...


# -------------------------------------------------------------------- the validator


def validate(document: dict[str, Any]) -> dict[str, Any]:
    """What ``@asyncapi/parser`` says of ``document`` (see ``validate.mjs``); the test
    fails on any error or warning, naming each."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            "THE ASYNCAPI DOCUMENT IS NOT VALIDATED: node and npm are missing "
            "(`make node`, as root, installs Debian's nodejs and npm)"
        )
    _install(npm)
    done = subprocess.run(
        [node, str(VALIDATOR / "validate.mjs")],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    problems = [d for d in result["diagnostics"] if d["severity"] in ("error", "warning")]
    assert result["valid"] and not problems, json.dumps(problems, indent=2)
    return result


def _install(npm: str) -> None:
    """``npm ci`` in the validator's folder when its packages are missing or older than
    its lock file (``make node`` does the same); one process at a time."""
    installed = VALIDATOR / "node_modules" / ".package-lock.json"
    lock = VALIDATOR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    with (VALIDATOR / ".install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
            return
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=VALIDATOR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
    if done.returncode != 0:
        pytest.skip(
            "THE ASYNCAPI DOCUMENT IS NOT VALIDATED: `npm ci` failed in "
            f"{VALIDATOR}: {done.stderr.strip()[-2000:]}"
        )


# ------------------------------------------------------------------ the document alone


def test_the_document_of_every_kind_is_valid_asyncapi_and_names_the_amqp_topology() -> None:
    document = asyncapi_document(
        {spec.name: spec for spec in map(ServiceSpec.of, (Billing, Storefront))},
        settings=AsyncApiSettings(
            version="1.2.3",
            mesh="shop",
            broker="amqp://wiremesh:s3cret@rabbit.example:5673/prod",
            gateway="https://app.example",
        ),
    )
    parsed = validate(document)
    assert parsed["version"] == document["asyncapi"] == "3.0.0"

    # a command: the routing key `service.command` on the direct exchange, and its queue
    assert parsed["channels"]["command.billing.refund"] == "billing.refund"
    assert parsed["operations"]["billing.give_back"] == {
        "action": "receive",
        "channel": "command.billing.refund",
        "messages": ["billing.give_back"],
    }
    refund = document["channels"]["command.billing.refund"]
    assert refund["bindings"]["amqp"]["exchange"] == {
        "name": "wm.shop.commands",
        "type": "direct",
        "durable": True,
        "autoDelete": False,
    }
    assert document["operations"]["billing.give_back"]["x-wiremesh-queue"] == (
        "wm.shop.command.billing.refund"
    )
    # an event: one channel per pattern on the topic exchange, the handler's queue
    assert parsed["channels"]["event.orders._star_.vip"] == "orders.*.vip"
    placed = document["channels"]["event.orders.placed"]
    assert placed["bindings"]["amqp"]["exchange"]["name"] == "wm.shop.events"
    assert placed["bindings"]["amqp"]["exchange"]["type"] == "topic"
    operation = document["operations"]["billing.order_placed"]
    assert operation["x-wiremesh-queue"] == "wm.shop.event.billing.order_placed"
    assert operation["summary"] == "Charge a placed order."
    broadcast = document["operations"]["billing.price_changed"]
    assert broadcast["x-wiremesh-queue"] == "wm.shop.event.billing.price_changed@<node>"
    assert broadcast["x-wiremesh-delivery"] == "broadcast"

    # payloads: a pydantic model (its discriminator in AsyncAPI's terms), a dataclass,
    # several plain parameters as one object, a plain value
    messages = document["components"]["messages"]
    schemas = document["components"]["schemas"]
    assert messages["billing.order_placed"]["payload"] == {
        "$ref": "#/components/schemas/OrderPlaced"
    }
    assert schemas["OrderPlaced"]["properties"]["total"] == {
        "exclusiveMinimum": 0,
        "title": "Total",
        "type": "number",
    }
    assert "x-discriminator" in json.dumps(schemas["OrderPlaced"])
    assert schemas["Refund"]["required"] == ["order"]
    charge = schemas["BillingChargeParams"]
    assert charge["required"] == ["order"] and charge["additionalProperties"] is False
    assert messages["storefront.stock_changed"]["payload"] == {"type": "string"}
    assert messages["billing.charge"]["bindings"]["amqp"]["messageType"] == "command"
    assert messages["billing.charge"]["contentType"] == "application/msgpack"

    # publish rides the mesh links, sockets the gateway (wss behind https)
    stock = document["channels"]["publish.stock.eu._star_"]
    assert stock["address"] == "stock.eu.*" and stock["servers"] == [{"$ref": "#/servers/mesh"}]
    socket = document["channels"]["socket.storefront"]
    assert socket["address"] == "/ws/storefront"
    assert set(socket["messages"]) == {
        "binary",
        "text",
        "refresh",
        "refreshed",
        "expiring",
        *CHANNEL_MESSAGES,
    }
    assert parsed["operations"]["storefront.socket.receive"]["messages"] == ["binary", "text"]
    assert parsed["operations"]["storefront.socket.channels"]["messages"] == [
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
    ]
    servers = document["servers"]
    assert servers["gateway"]["host"] == "app.example" and servers["gateway"]["protocol"] == "wss"
    # the broker's address without its credentials
    assert servers["broker"]["host"] == "rabbit.example:5673"
    assert servers["broker"]["pathname"] == "/prod"
    assert "s3cret" not in json.dumps(document)


def test_a_service_known_only_from_the_registry_is_listed_untyped() -> None:
    node = NodeInfo(
        "chat-1",
        "chat",
        "127.0.0.1:1",
        metadata={SOCKET_KEY: "binary"},
        subscriptions=("rooms.#",),
    )
    document = asyncapi_document({}, MeshSnapshot.of(1, [node]))
    assert document["channels"]["publish.rooms._hash_"]["address"] == "rooms.#"
    assert document["components"]["messages"]["chat.publish"]["payload"] == {}
    assert set(document["channels"]["socket.chat"]["messages"]) == {
        "binary",
        "refresh",
        "refreshed",
        "expiring",
        *CHANNEL_MESSAGES,
    }
    # not known here: the exchanges are described, not named
    assert document["servers"]["broker"]["host"] == "{broker}"
    # the gateway's settings let text through to the node: text frames too
    settings = AsyncApiSettings(text_sockets=frozenset({"chat"}))
    document = asyncapi_document({}, MeshSnapshot.of(1, [node]), settings)
    assert "text" in document["channels"]["socket.chat"]["messages"]


# ----------------------------------------------------------------- from the gateway


async def test_the_gateway_serves_the_document_and_rebuilds_it_when_the_mesh_changes() -> None:
    async with gateway_mesh(Billing, Storefront) as mesh:
        url = mesh.gateway.url
        async with httpx.AsyncClient(base_url=url) as client:
            # no token asked, as for /openapi.json; the gateway is where the request went
            first = (await client.get("/asyncapi.json")).json()
            host = url.split("://", 1)[1]
            assert first["servers"]["gateway"] == {
                **first["servers"]["gateway"],
                "host": host,
                "protocol": "ws",
            }
            assert "ticker.tick" not in first["operations"]
            proxied = await client.get("/asyncapi.json", headers={"host": "app.example:8443"})
            assert proxied.json()["servers"]["gateway"]["host"] == "app.example:8443"
            odd = await client.get("/asyncapi.json", headers={"host": "a b/<c>"})
            assert odd.json()["servers"]["gateway"]["host"] == host  # not repeated
            assert "name" not in first["channels"]["event.orders.placed"]["bindings"]["amqp"]

            # a node of a service the gateway did not import joins: listed from the
            # registry; the mesh's name and broker, once known, name the exchanges
            await mesh.add_node(Ticker)
            http = door(mesh)
            http.asyncapi_settings = replace(
                http.asyncapi_settings, mesh=mesh.mesh_name, broker="embedded"
            )
            answer = await client.get("/asyncapi.json")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        document = answer.json()
        assert "ticker.publish" in document["operations"]
        events = document["channels"]["event.orders.placed"]["bindings"]["amqp"]["exchange"]
        assert events["name"] == f"wm.{mesh.mesh_name}.events"
        assert document["servers"]["broker"]["protocol"] == "grpc"  # the embedded broker
        parsed = await asyncio.to_thread(validate, document)
        assert parsed["channels"]["command.billing.charge"] == "billing.charge"
        assert parsed["operations"]["storefront.stock_changed"]["channel"] == (
            "publish.stock.eu._star_"
        )
        # served beside /openapi.json, and left out with it
        assert ("/asyncapi.json", http, False) in http.mounts()
        hidden = HttpDoor(http.caller, http.admission, docs=False)
        assert hidden.route("/asyncapi.json") is None


# ------------------------------------------------------------------------- /docs


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with gateway_in_thread(Billing, Storefront) as base:
        yield base


def test_the_docs_page_lists_the_messages_by_service(url: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (make browser)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
            headless=True,
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.goto(f"{url}/docs#token={token('ada')}")
            page.wait_for_selector("#messages details.op")
            assert page.locator("#messages-billing").inner_text() == "Service billing"
            refund = page.locator("#message-billing\\.give_back")
            refund.locator("summary").click()
            text = refund.inner_text()
            assert "RECEIVE" in text and "billing.refund" in text
            assert "(direct)" in text and "routing key" in text
            assert '"reason"' in text  # the dataclass's schema
            socket = page.locator("#message-storefront\\.socket\\.send")
            assert "/ws/storefront" in socket.inner_text()
        finally:
            browser.close()
    assert problems == []  # no script error, no Content-Security-Policy violation

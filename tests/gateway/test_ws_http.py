"""What the gateway serves over plain HTTP beside the WebSockets: the static folder, the
JavaScript client and the health check."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.gateway.ws_mesh import Chat
from wiremesh.gateway.server import default_client_js
from wiremesh.testing import TestMesh, gateway_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


#: what the files that must never be served hold
HIDDEN, OUTSIDE = "the hidden file's text", "the text of a file outside the folder"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    tmp_path = tmp_path_factory.mktemp("static")
    web = tmp_path / "web"
    (web / "app").mkdir(parents=True)
    (web / "index.html").write_text("<h1>home</h1>")
    (web / "app" / "main.js").write_text("export const x = 1;")
    (web / ".secret").write_text(HIDDEN)
    (tmp_path / "outside.txt").write_text(OUTSIDE)
    async with (
        TestMesh(Chat, data_dir=tmp_path, gateway=gateway_settings(static="web")) as mesh,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.gateway.port}") as client,
    ):
        yield client


async def test_static_files(http: httpx.AsyncClient) -> None:
    home = await http.get("/")
    assert home.status_code == 200 and home.text == "<h1>home</h1>"
    assert home.headers["content-type"].startswith("text/html")
    script = await http.get("/app/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    head = await http.head("/index.html")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/nothing.html",
        "/.secret",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/app/../../outside.txt",
    ],
)
async def test_nothing_outside_the_folder_nor_hidden(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 404
    # the problem names the path asked for, never what such a file holds
    assert OUTSIDE not in response.text and HIDDEN not in response.text


async def test_the_javascript_client_and_health(http: httpx.AsyncClient) -> None:
    script = await http.get("/_wiremesh/wiremesh.js")
    shipped = default_client_js()
    assert shipped is not None  # in the package, where a wheel has it too
    assert script.status_code == 200
    assert script.content == shipped.read_bytes()
    assert "javascript" in script.headers["content-type"]
    health = await http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert (await http.post("/")).status_code == 405

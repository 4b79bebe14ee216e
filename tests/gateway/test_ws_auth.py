"""Who may open a session: tokens, carriers, Origin, access rules, and routes.

Every refusal is an HTTP status before the WebSocket opens, seen by a real ``websockets``
client; a plain ``GET`` on the same path says the same (or 426), with a problem body.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.gateway.ws_mesh import ROOMY, chat_mesh, closed_with, connect
from wiremesh.gateway.auth import dev_secret, mint_token
from wiremesh.gateway.server import Gateway
from wiremesh.testing import TestMesh, gateway_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")
mesh = chat_mesh


@asynccontextmanager
async def gateway_with(mesh: TestMesh, **settings: Any) -> AsyncIterator[Gateway]:
    """One more gateway on the mesh, with these settings, for one test."""
    settings.setdefault("limits", ROOMY)
    gateway = await mesh.add_gateway(gateway_settings(**settings))
    try:
        yield gateway
    finally:
        await mesh.stop_gateway(gateway)


async def refused(url: str, **options: Any) -> int:
    """The HTTP status an upgrade to ``url`` is refused with."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url, **options):
            pass
    status: int = caught.value.response.status_code
    return status


def bearer(token: str) -> list[Any]:
    return ["wiremesh.v1", f"bearer.{token}"]


async def accepted(url: str, **options: Any) -> bool:
    async with websockets.connect(url, **options) as ws:
        await ws.send(b"ok?")
        return await ws.recv() == b"ok?"


# ------------------------------------------------------------------------ tokens


async def test_no_token_is_401(mesh: TestMesh) -> None:
    assert await refused(mesh.ws_url("chat"), subprotocols=["wiremesh.v1"]) == 401


@pytest.mark.parametrize(
    "why",
    ["garbage", "wrong secret", "expired", "not yet valid", "no exp", "no sub", "alg none"],
)
async def test_bad_tokens_are_401(mesh: TestMesh, why: str) -> None:
    secret = dev_secret(mesh.data_dir)
    assert secret is not None
    now = time.time()
    claims: dict[str, Any] = {"sub": "ada", "exp": int(now + 60)}
    if why == "garbage":
        token = "not.a.jwt"
    elif why == "wrong secret":
        token = jwt.encode(claims, "another secret of enough length!!", algorithm="HS256")
    elif why == "expired":
        token = jwt.encode({**claims, "exp": int(now - 10)}, secret, algorithm="HS256")
    elif why == "not yet valid":
        token = jwt.encode({**claims, "nbf": int(now + 60)}, secret, algorithm="HS256")
    elif why == "no exp":
        token = jwt.encode({"sub": "ada"}, secret, algorithm="HS256")
    elif why == "no sub":
        token = jwt.encode({"exp": int(now + 60)}, secret, algorithm="HS256")
    else:
        token = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    assert await refused(mesh.ws_url("chat"), subprotocols=bearer(token)) == 401


async def test_audience_and_issuer_are_checked(mesh: TestMesh) -> None:
    secret = dev_secret(mesh.data_dir)
    assert secret is not None
    auth = {"audience": "chat-app", "issuer": "https://id.example"}
    async with gateway_with(mesh, auth={"secret": secret, **auth}) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        good = mint_token(secret, subject="ada", audience="chat-app", issuer="https://id.example")
        other_aud = mint_token(secret, subject="ada", audience="x", issuer="https://id.example")
        other_iss = mint_token(secret, subject="ada", audience="chat-app", issuer="https://evil")
        no_aud = mint_token(secret, subject="ada", issuer="https://id.example")
        assert await accepted(url, subprotocols=bearer(good))
        for token in (other_aud, other_iss, no_aud):
            assert await refused(url, subprotocols=bearer(token)) == 401


def _rsa_pair() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


async def test_rs256_public_key_and_es256_jwks(mesh: TestMesh, tmp_path: Path) -> None:
    rsa_key, rsa_public = _rsa_pair()
    (tmp_path / "rsa.pem").write_bytes(rsa_public)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    auth = {"public_keys": [str(tmp_path / "rsa.pem")], "jwks_file": str(tmp_path / "keys.json")}
    claims = {"sub": "ada", "exp": int(time.time() + 60)}
    async with gateway_with(mesh, auth=auth) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        rs256 = jwt.encode(claims, rsa_key, algorithm="RS256")
        es256 = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "k1"})
        assert await accepted(url, subprotocols=bearer(rs256))
        assert await accepted(url, subprotocols=bearer(es256))
        other_key, _ = _rsa_pair()
        forged = jwt.encode(claims, other_key, algorithm="RS256")
        assert await refused(url, subprotocols=bearer(forged)) == 401
        # an HS256 token signed with the public key (algorithm confusion) is refused
        confused = jwt.encode(claims, "x" * 64, algorithm="HS256")
        assert await refused(url, subprotocols=bearer(confused)) == 401


# ------------------------------------------------------------------------ carriers


async def test_cookie_carrier(mesh: TestMesh) -> None:
    cookie = {"Cookie": f"theme=dark; wiremesh_token={mesh.token('ada')}"}
    assert await accepted(mesh.ws_url("chat"), additional_headers=cookie)


async def test_query_carrier_only_when_enabled(mesh: TestMesh) -> None:
    token = mesh.token("ada")
    assert await refused(f"{mesh.ws_url('chat')}?token={token}") == 401
    async with gateway_with(mesh, query_token=True) as gateway:
        assert await accepted(f"{gateway.ws_url}/ws/chat?token={token}")


async def test_the_bearer_entry_is_never_echoed(mesh: TestMesh) -> None:
    async with connect(mesh) as ws:
        assert ws.subprotocol == "wiremesh.v1"
        assert "bearer" not in str(ws.response.headers)


# ------------------------------------------------------------------------ origin


async def test_unknown_origin_is_403_and_own_origin_passes(mesh: TestMesh) -> None:
    url, token = mesh.ws_url("chat"), mesh.token("ada")
    evil = {"Origin": "https://evil.example"}
    assert await refused(url, subprotocols=bearer(token), additional_headers=evil) == 403
    own = {"Origin": f"http://127.0.0.1:{mesh.gateway.port}"}
    assert await accepted(url, subprotocols=bearer(token), additional_headers=own)
    local = {"Origin": f"http://localhost:{mesh.gateway.port}"}
    assert await accepted(url, subprotocols=bearer(token), additional_headers=local)


async def test_configured_origins_are_exact(mesh: TestMesh) -> None:
    async with gateway_with(mesh, origins=["https://app.example"]) as gateway:
        url, token = f"{gateway.ws_url}/ws/chat", mesh.token("ada")
        ok = {"Origin": "https://app.example"}
        assert await accepted(url, subprotocols=bearer(token), additional_headers=ok)
        for origin in ("https://app.example:443", "http://app.example", "https://x.app.example"):
            headers = {"Origin": origin}
            assert await refused(url, subprotocols=bearer(token), additional_headers=headers) == 403


# ------------------------------------------------------------------------ routes and rules


async def test_unknown_service_node_or_socketless_service_is_404(mesh: TestMesh) -> None:
    token = bearer(mesh.token("ada"))
    assert await refused(mesh.ws_url("nosuch"), subprotocols=token) == 404
    assert await refused(mesh.ws_url("chat", "chat-0000"), subprotocols=token) == 404
    notes_node = mesh.nodes_of("notes")[0].node_id
    assert await refused(mesh.ws_url("chat", notes_node), subprotocols=token) == 404
    assert await refused(mesh.ws_url("plain"), subprotocols=token) == 404
    assert await refused(f"{mesh.gateway.ws_url}/elsewhere", subprotocols=token) == 404


async def test_access_rules_scopes_and_roles(mesh: TestMesh) -> None:
    rules = {"chat": {"scopes": ["chat:read", "chat:write"], "roles": ["member", "admin"]}}
    async with gateway_with(mesh, services=rules) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        good = mesh.token("ada", scopes=["chat:read", "chat:write", "x"], roles=["member"])
        one_scope = mesh.token("ada", scopes=["chat:read"], roles=["member"])
        no_role = mesh.token("ada", scopes=["chat:read", "chat:write"], roles=["guest"])
        assert await accepted(url, subprotocols=bearer(good))
        assert await refused(url, subprotocols=bearer(one_scope)) == 403
        assert await refused(url, subprotocols=bearer(no_role)) == 403
        # another service has no rules
        assert await accepted(f"{gateway.ws_url}/ws/notes", subprotocols=bearer(no_role))


# ------------------------------------------------------------------------ the GET probe


async def test_get_probe_answers_what_the_upgrade_would_get(mesh: TestMesh) -> None:
    base = f"http://127.0.0.1:{mesh.gateway.port}"
    token = mesh.token("ada")
    async with httpx.AsyncClient(base_url=base) as http:
        cases = [
            ("/ws/chat", {}, 401),
            ("/ws/chat", {"Cookie": f"wiremesh_token={token}"}, 426),
            ("/ws/chat", {"Sec-WebSocket-Protocol": f"wiremesh.v1, bearer.{token}"}, 426),
            ("/ws/nosuch", {"Cookie": f"wiremesh_token={token}"}, 404),
            ("/ws/chat", {"Cookie": f"wiremesh_token={token}", "Origin": "https://e.x"}, 403),
        ]
        for path, headers, status in cases:
            response = await http.get(path, headers=headers)
            assert response.status_code == status, (path, headers, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == status


# ------------------------------------------------------------------------ expiry and refresh


async def test_expiry_is_enforced_on_open_connections(mesh: TestMesh) -> None:
    async with gateway_with(mesh, refresh_before=1.0) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        async with websockets.connect(url, subprotocols=bearer(mesh.token("ada", ttl=2))) as ws:
            warning = json.loads(await ws.recv())
            assert warning["wm"] == "expiring" and warning["exp"] <= time.time() + 2
            assert await closed_with(ws) == (4001, "token expired")


async def test_refresh_extends_the_session(mesh: TestMesh) -> None:
    async with gateway_with(mesh, refresh_before=1.0) as gateway:
        url = f"{gateway.ws_url}/ws/chat"
        async with websockets.connect(url, subprotocols=bearer(mesh.token("ada", ttl=2))) as ws:
            assert json.loads(await ws.recv())["wm"] == "expiring"
            fresh = mesh.token("ada", ttl=60)
            await ws.send(json.dumps({"wm": "refresh", "token": fresh}))
            answer = json.loads(await ws.recv())
            assert answer["wm"] == "refreshed" and answer["exp"] > time.time() + 30
            await ws.send(b"still")
            assert await ws.recv() == b"still"


@pytest.mark.parametrize("which", ["invalid", "other principal"])
async def test_a_bad_refresh_closes_with_4001(mesh: TestMesh, which: str) -> None:
    async with connect(mesh) as ws:
        token = "x.y.z" if which == "invalid" else mesh.token("mallory")
        await ws.send(json.dumps({"wm": "refresh", "token": token}))
        assert (await closed_with(ws))[0] == 4001


async def test_refusals_are_logged_without_the_token(
    mesh: TestMesh, caplog: pytest.LogCaptureFixture
) -> None:
    token = mesh.token("ada")
    caplog.set_level(logging.DEBUG)
    async with gateway_with(mesh, query_token=True) as gateway:
        url = f"{gateway.ws_url}/ws/nosuch?token={token}"
        assert await refused(url) == 404
        async with websockets.connect(f"{gateway.ws_url}/ws/chat?token={token}") as ws:
            await ws.send(b"secret payload")
            await ws.recv()
            await ws.send("text is refused")
            assert (await closed_with(ws))[0] == 1003
    text = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("wiremesh", "uvicorn"))  # the server side's logs
    )
    assert "refused /ws/nosuch" in text
    assert token not in text
    assert token.split(".")[2] not in text
    assert "secret payload" not in text and "text is refused" not in text

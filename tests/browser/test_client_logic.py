"""The JS client's pure logic (backoff, close-code decisions, envelope, URLs, JWT claims),
run in the real browser: the module is served to the page by Playwright's router, so no
gateway is needed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CLIENT_JS = Path(__file__).resolve().parents[2] / "clients" / "js" / "wiremesh.js"
ORIGIN = "https://wiremesh.test"


@pytest.fixture(scope="module")
def module(browser: Browser) -> Iterator[Page]:
    """A page on a fake origin whose ``/wiremesh.js`` is the client, imported as ``wm``
    (one page for the module: these checks share no state)."""

    def serve(route: Route) -> None:
        if route.request.url.endswith("/wiremesh.js"):
            route.fulfill(body=CLIENT_JS.read_text(), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>logic</title>", content_type="text/html")

    context = browser.new_context()
    try:
        page = context.new_page()
        page.route(f"{ORIGIN}/**", serve)
        page.goto(f"{ORIGIN}/")
        page.evaluate("async () => { window.wm = await import('/wiremesh.js'); }")
        yield page
    finally:
        context.close()


def run(page: Page, script: str, arg: Any = None) -> Any:
    return page.evaluate(f"(arg) => {{ const wm = window.wm; {script} }}", arg)


def test_backoff_grows_by_the_factor_up_to_the_cap(module: Page) -> None:
    ceilings = run(
        module,
        "return [0, 1, 2, 3, 10, 50].map((n) => wm.backoffDelay(n, "
        "{initial: 100, max: 1000, factor: 2, jitter: 0}));",
    )
    assert ceilings == [100, 200, 400, 800, 1000, 1000]


def test_full_jitter_draws_between_zero_and_the_ceiling(module: Page) -> None:
    low, high, drawn = run(
        module,
        "const o = {initial: 100, max: 1000, factor: 2};"
        "const draws = Array.from({length: 200}, () => wm.backoffDelay(3, o));"
        "return [wm.backoffDelay(3, o, () => 0.999999), wm.backoffDelay(3, o, () => 0), draws];",
    )
    assert low == pytest.approx(0.0008, abs=1e-3)
    assert high == 800
    assert all(0 <= d <= 800 for d in drawn)
    assert len(set(drawn)) > 100  # random, not a constant


def test_partial_jitter_keeps_the_rest_of_the_ceiling(module: Page) -> None:
    smallest = run(module, "return wm.backoffDelay(0, {initial: 1000, jitter: 0.25}, () => 1);")
    assert smallest == 750


def test_close_codes_that_reconnect_follow_the_contract(module: Page) -> None:
    codes = [1000, 1001, 1003, 1006, 1008, 1009, 1011, 1012, 4000, 4001, 4003, 4008, 4029]
    plain, renewable = run(
        module,
        "return [arg.map((c) => wm.shouldReconnect(c)),"
        " arg.map((c) => wm.shouldReconnect(c, {canRenewToken: true}))];",
        codes,
    )
    yes = {1001, 1006, 1011, 1012, 4000, 4008, 4029}
    assert dict(zip(codes, plain, strict=True)) == {c: c in yes for c in codes}
    assert dict(zip(codes, renewable, strict=True)) == {c: c in yes | {4001} for c in codes}


def test_the_probe_status_decides_whether_to_try_again(module: Page) -> None:
    verdicts = run(module, "return [401, 403, 404, 429, 426, 500, null].map(wm.probeVerdict);")
    assert verdicts == [
        "unauthorized",
        "forbidden",
        "not_found",
        "retry",
        "retry",
        "retry",
        "retry",
    ]


def test_envelope_round_trip_is_big_endian(module: Page) -> None:
    frame, decoded, ordinary = run(
        module,
        "const f = wm.encodeEnvelope(wm.Envelope.REQUEST, 0x01020304, new Uint8Array([9, 8]));"
        "const d = wm.decodeEnvelope(f);"
        "return [Array.from(f), [d.marker, d.id, Array.from(d.payload)],"
        " [wm.decodeEnvelope(new Uint8Array([0x41, 1])),"
        "  wm.decodeEnvelope(new Uint8Array([7, 0, 0, 0, 1]))]];",
    )
    assert frame == [0x52, 1, 2, 3, 4, 9, 8]
    assert decoded == [0x52, 0x01020304, [9, 8]]
    assert ordinary == [None, None]


def test_session_urls_map_http_to_ws_and_keep_a_prefix(module: Page) -> None:
    urls = run(
        module,
        "return [wm.sessionUrls(undefined, 'flows'),"
        " wm.sessionUrls('http://127.0.0.1:8080', 'flows', 'flows-1a2b'),"
        " wm.sessionUrls('wss://example.com/edge/', 'chat room')];",
    )
    assert urls == [
        {"ws": "wss://wiremesh.test/ws/flows", "http": "https://wiremesh.test/ws/flows"},
        {
            "ws": "ws://127.0.0.1:8080/ws/flows/flows-1a2b",
            "http": "http://127.0.0.1:8080/ws/flows/flows-1a2b",
        },
        {
            "ws": "wss://example.com/edge/ws/chat%20room",
            "http": "https://example.com/edge/ws/chat%20room",
        },
    ]


def test_jwt_claims_are_read_without_a_library(module: Page) -> None:
    body = {"sub": "ada", "exp": 1700000000, "name": "Adé ☃"}
    part = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    claims = run(
        module,
        "return [wm.jwtClaims(arg), wm.jwtClaims('nonsense'), wm.jwtClaims('a.!!.b')];",
        f"header.{part}.signature",
    )
    assert claims == [body, None, None]


def test_sending_needs_an_open_session(module: Page) -> None:
    kinds = run(
        module,
        "const conn = wm.connect({url: 'ws://127.0.0.1:9', service: 'x', reconnect: false,"
        " probe: false});"
        "const kinds = [];"
        "try { conn.send(new Uint8Array([1])); } catch (e) { kinds.push(e.kind); }"
        "try { conn.send(42); } catch (e) { kinds.push(e.kind); }"
        "return conn.request('x').catch((e) => { kinds.push(e.kind); conn.close();"
        " return conn.opened().catch((e2) => {"
        "   kinds.push(e2.kind, conn.state); return kinds; }); });",
    )
    assert kinds == ["not_open", "bad_argument", "not_open", "closed", "closed"]

"""The JS client in a real Chromium, over ``wss`` with a development certificate, against
a real mesh run by ``wiremesh run``: a gateway process and two node processes of a
service that echoes, answers requests and pushes (``svc_sockets.py``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest

from tests.browser.gateways import Gateway, run_with_gateway

if TYPE_CHECKING:
    from playwright.sync_api import Page

HERE = Path(__file__).resolve().parent

CONFIG = f"""\
[mesh]
name = "browser"
drain_grace = 1
default_timeout = 5
python_path = ["{HERE}"]

[restart]
initial_backoff = 0.2
max_backoff = 1

[gateway]
port = 0
tls = true
static = "{HERE / "site"}"

[services.sockets]
target = "svc_sockets:Sockets"
replicas = 2
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = run_with_gateway(tmp_path_factory.mktemp("browser-mesh"), CONFIG)
    try:
        running.running.wait_for_line(r"^sockets-\S+: serving at ", count=2)
        yield running
    finally:
        running.running.stop()


@pytest.fixture
def tab(page: Page, gateway: Gateway) -> Page:
    """The test page, served by the gateway over https, with the client loaded."""
    page.goto(gateway.url + "/")
    page.wait_for_function("window.ready === true")
    return page


def start(page: Page, gateway: Gateway, name: str = "c", **options: Any) -> None:
    defaults = {"service": "sockets", "token": gateway.token, "backoff": {"initial": 100}}
    page.evaluate("([name, options]) => window.start(name, options)", [name, defaults | options])


def seen(page: Page, name: str = "c") -> Any:
    return page.evaluate("(name) => window.seen(name)", name)


def wait_open(page: Page, name: str = "c") -> None:
    page.wait_for_function("(name) => window.clients[name].conn.state === 'open'", arg=name)


def ask(page: Page, command: dict[str, Any], name: str = "c") -> Any:
    return page.evaluate("([name, command]) => window.ask(name, command)", [name, command])


def test_connects_over_wss_and_gets_its_frames_back(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway)
    wait_open(tab)
    tab.evaluate("window.clients.c.conn.send(new Uint8Array([104, 105, 0, 255]).buffer)")
    tab.evaluate("window.clients.c.conn.send('h\u00e9llo')")
    tab.wait_for_function("window.clients.c.frames.length === 2")
    record = seen(tab)
    assert record["frames"] == ["hi\x00\ufffd", "h\u00e9llo"]
    assert record["opens"][0]["protocol"] == "wiremesh.v1"
    assert record["opens"][0]["url"] == gateway.url.replace("https:", "wss:") + "/ws/sockets"
    assert record["states"] == ["open"]  # "connecting" was the state it started in
    assert tab.errors == []  # type: ignore[attr-defined]


def test_request_gets_the_reply_of_its_own_id(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway)
    wait_open(tab)
    replies = tab.evaluate(
        "Promise.all([0, 1, 2, 3, 4].map(() => window.ask('c', {op: 'whoami'})))"
    )
    nodes = gateway.running.node_pids()
    assert len({r["session"] for r in replies}) == 1
    assert replies[0]["node"] in nodes
    assert replies[0]["principal"] == "dev"
    error = tab.evaluate(
        "window.ask('c', {op: 'nonsense'}).then(() => null, (e) => [e.name, e.kind, e.message])"
    )
    assert error == ["WiremeshError", "remote", "no such op: 'nonsense'"]
    assert tab.evaluate("window.clients.c.conn.pendingRequests") == 0


def test_the_node_pushes_frames_to_the_session(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway)
    wait_open(tab)
    assert ask(tab, {"op": "push", "count": 5}) == {"pushed": 5}
    tab.wait_for_function("window.clients.c.frames.length === 5")
    assert seen(tab)["frames"] == [f'{{"push": {i}}}' for i in range(5)]


def test_a_killed_node_costs_a_reconnection_to_a_live_node(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway)
    wait_open(tab)
    before = ask(tab, {"op": "whoami"})["node"]
    tab.evaluate(
        "window.pending = window.ask('c', {op: 'hang'}, 60000)"
        ".then(() => 'answered', (e) => e.kind); undefined"
    )
    os.kill(gateway.running.node_pids()[before], signal.SIGKILL)
    tab.wait_for_function("window.clients.c.opens.length === 2", timeout=20_000)
    record = seen(tab)
    lost = record["closes"][0]
    assert lost["code"] == 1012, lost
    assert lost["wasOpen"] and lost["reconnect"]
    assert record["states"][:3] == ["open", "waiting", "connecting"]
    assert record["states"][-1] == "open"
    after = ask(tab, {"op": "whoami"})["node"]
    assert after != before
    assert tab.evaluate("window.pending") == "closed"  # a pending request fails with its connection


def test_a_refused_token_is_not_retried(tab: Page, gateway: Gateway) -> None:
    forged = gateway.token[: gateway.token.rindex(".") + 1] + "x" * 43
    start(tab, gateway, token=forged)
    tab.wait_for_function("window.clients.c.conn.state === 'closed'")
    record = seen(tab)
    assert record["closeInfo"]["kind"] == "unauthorized"
    assert record["closeInfo"]["status"] == 401
    assert not record["closeInfo"]["reconnect"]
    assert record["states"].count("connecting") == 0  # the one attempt it started with
    assert record["opens"] == []


def test_a_token_provider_gets_one_more_chance_after_a_401(tab: Page, gateway: Gateway) -> None:
    good = gateway.mint("ada")
    start(tab, gateway, name="fresh", token=None, tokens=["not-a-jwt", good])
    wait_open(tab, "fresh")
    assert seen(tab, "fresh")["asked"] == ["connect", "unauthorized"]
    assert ask(tab, {"op": "whoami"}, "fresh")["principal"] == "ada"
    start(tab, gateway, name="stale", token=None, tokens=["not-a-jwt"])
    tab.wait_for_function("window.clients.stale.conn.state === 'closed'")
    record = seen(tab, "stale")
    assert record["asked"] == ["connect", "unauthorized"]
    assert record["closeInfo"]["kind"] == "unauthorized"


def test_the_token_can_travel_as_a_cookie_instead(tab: Page, gateway: Gateway) -> None:
    tab.context.add_cookies(
        [{"name": "wiremesh_token", "value": gateway.mint("bo"), "url": gateway.url}]
    )
    start(tab, gateway, token=gateway.mint("not-sent"), auth="cookie")
    wait_open(tab)
    assert ask(tab, {"op": "whoami"})["principal"] == "bo"


def test_an_unknown_service_is_not_retried(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway, service="nowhere")
    tab.wait_for_function("window.clients.c.conn.state === 'closed'")
    info = seen(tab)["closeInfo"]
    assert (info["kind"], info["status"], info["reconnect"]) == ("not_found", 404, False)


def test_a_session_can_name_its_node(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway)
    wait_open(tab)
    live = ask(tab, {"op": "whoami"})["node"]
    start(tab, gateway, name="pinned", node=live)
    wait_open(tab, "pinned")
    assert ask(tab, {"op": "whoami"}, "pinned")["node"] == live
    start(tab, gateway, name="gone", node="sockets-0000")
    tab.wait_for_function("window.clients.gone.conn.state === 'closed'")
    info = seen(tab, "gone")["closeInfo"]
    assert (info["kind"], info["status"], info["reconnect"]) == ("not_found", 404, False)


def test_a_session_the_node_ends_stays_closed(tab: Page, gateway: Gateway) -> None:
    start(tab, gateway)
    wait_open(tab)
    ask(tab, {"op": "close", "code": 4321})
    tab.wait_for_function("window.clients.c.conn.state === 'closed'")
    info = seen(tab)["closeInfo"]
    assert (info["code"], info["reason"], info["reconnect"]) == (4321, "asked to", False)


def test_the_gateway_asks_for_a_fresh_token_before_expiry(tab: Page, gateway: Gateway) -> None:
    # expiring in 32 s: the gateway's notice comes 30 s before, after 2 s; the client's own
    # timer is set to the expiry itself, so only the notice can start this refresh
    short, long = gateway.mint("ada", ttl=32), gateway.mint("ada", ttl=3600)
    start(tab, gateway, token=None, tokens=[short, long], refreshBefore=0)
    wait_open(tab)
    tab.wait_for_function(
        "window.clients.c.controls.some((m) => m.wm === 'refreshed')", timeout=15_000
    )
    record = seen(tab)
    assert record["asked"] == ["connect", "refresh"]
    expiring, refreshed = record["controls"][:2]
    assert expiring == {"wm": "expiring", "exp": exp_of(short)}
    assert refreshed == {"wm": "refreshed", "exp": exp_of(long)}
    assert record["expires"] == exp_of(long)
    assert record["state"] == "open"
    assert ask(tab, {"op": "whoami"})["principal"] == "ada"


@pytest.mark.parametrize(
    ("ttl", "within_ms"),
    [
        # expiring in 60 s, refreshed 59 s ahead: long before the gateway's notice (30 s ahead)
        pytest.param(60, 15_000, id="a-second-after-it-opens"),
        # expiring in 45 s: inside the window as the session opens, refreshed at once, well
        # before the gateway's notice (15 s from now)
        pytest.param(45, 5_000, id="as-it-opens-inside-the-window"),
    ],
)
def test_the_client_refreshes_by_itself_from_the_tokens_exp(
    tab: Page, gateway: Gateway, ttl: int, within_ms: int
) -> None:
    first, second = gateway.mint("ada", ttl=ttl), gateway.mint("ada", ttl=3600)
    start(tab, gateway, token=None, tokens=[first, second], refreshBefore=59)
    wait_open(tab)
    tab.wait_for_function(
        "window.clients.c.controls.some((m) => m.wm === 'refreshed')", timeout=within_ms
    )
    record = seen(tab)
    assert record["asked"] == ["connect", "refresh"]
    assert record["controls"] == [{"wm": "refreshed", "exp": exp_of(second)}]


def test_a_token_that_expires_without_a_provider_ends_the_session(
    tab: Page, gateway: Gateway
) -> None:
    start(tab, gateway, token=gateway.mint("ada", ttl=2))
    tab.wait_for_function("window.clients.c.conn.state === 'closed'", timeout=15_000)
    record = seen(tab)
    assert record["opens"] != []
    info = record["closeInfo"]
    assert (info["code"], info["wasOpen"], info["reconnect"]) == (4001, True, False)
    assert record["controls"][0]["wm"] == "expiring"


def exp_of(token: str) -> int:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert isinstance(exp, int)
    return exp

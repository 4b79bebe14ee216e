"""The JS client's channels: the pure logic (positions, duplicates, epochs, recovery, reply
codes, the subscribe message), run in the real browser with the module served by
Playwright's router, so no gateway is needed; and one behaviour of the connection that
only a misbehaving gateway can show (a scripted WebSocket plays it).

Everything else the connection does with channels is shown against real gateways in
``test_channels.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CLIENT_JS = Path(__file__).resolve().parents[2] / "clients" / "js" / "wiremesh.js"
ORIGIN = "https://wiremesh.test"

# A misbehaving gateway played by the test: `gateway()` connects through a scripted
# WebSocket class; `socket(i)` is the i-th socket the client opened (`frames`: what it
# sent, text frames parsed; `open()`, `push(message)`, `drop(code)` play the gateway), and
# `log` what reached the application's callbacks.
HARNESS = """
window.tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));
window.gateway = (options = {}) => {
  const sockets = [];
  const log = [];
  class ScriptedSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.protocol = "";
      this.bufferedAmount = 0;
      this.frames = [];
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }
    send(data) {
      this.frames.push(typeof data === "string" ? JSON.parse(data) : Array.from(data));
    }
    close(code, reason) {
      this.closedWith = [code, reason];
    }
    open() {
      this.protocol = "wiremesh.v1";
      this.onopen({});
    }
    push(message) {
      this.onmessage({ data: typeof message === "string" ? message : JSON.stringify(message) });
    }
    drop(code = 1006) {
      this.onclose({ code, reason: "" });
    }
  }
  const conn = window.wm.connect({
    url: "wss://gateway.test",
    service: "flows",
    WebSocket: ScriptedSocket,
    probe: false,
    backoff: { initial: 0, jitter: 0 },
    ...options,
  });
  const socket = async (index) => {
    for (let i = 0; i < 200 && sockets.length <= index; i += 1) await tick(1);
    return sockets[index];
  };
  const handlers = (name) => ({
    onMessage: (data, info) => log.push([name, "message", data, info.offset, info.recovered]),
    onSubscribed: (info) => log.push([name, "subscribed", info]),
  });
  return { conn, sockets, socket, log, handlers };
};
"""


@pytest.fixture(scope="module")
def module(browser: Browser) -> Iterator[Page]:
    """A page on a fake origin whose ``/wiremesh.js`` is the client, imported as ``wm``,
    with the scripted gateway above (one page: each test makes its own connection)."""

    def serve(route: Route) -> None:
        if route.request.url.endswith("/wiremesh.js"):
            route.fulfill(body=CLIENT_JS.read_text(), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>channels</title>", content_type="text/html")

    context = browser.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.route(f"{ORIGIN}/**", serve)
        page.goto(f"{ORIGIN}/")
        page.evaluate("async () => { window.wm = await import('/wiremesh.js'); }")
        page.evaluate(HARNESS)
        yield page
        assert errors == []
    finally:
        context.close()


def run(page: Page, script: str, arg: Any = None) -> Any:
    """Run an async function body with ``wm`` and ``arg`` in scope."""
    return page.evaluate(f"async (arg) => {{ const wm = window.wm; {script} }}", arg)


# ------------------------------------------------------------------------ pure logic


def test_reply_codes_map_to_error_kinds(module: Page) -> None:
    codes, frozen, kinds, error = run(
        module,
        "const e = wm.channelError({code: 4413, reason: 'over 64 KiB', channel: 'c'});"
        "return [wm.ChannelCode, Object.isFrozen(wm.ChannelCode),"
        " [4400, 4403, 4404, 4409, 4413, 4429, 4503, 4999].map(wm.channelErrorKind),"
        " [e instanceof wm.WiremeshError, e.kind, e.code, e.channel, e.message]];",
    )
    assert codes == {
        "BAD_REQUEST": 4400,
        "FORBIDDEN": 4403,
        "NO_CHANNEL": 4404,
        "ALREADY_SUBSCRIBED": 4409,
        "TOO_BIG": 4413,
        "RATE_LIMITED": 4429,
        "UNAVAILABLE": 4503,
    }
    assert frozen is True
    assert kinds == [
        "bad_request",
        "forbidden",
        "no_channel",
        "already_subscribed",
        "too_big",
        "rate_limited",
        "unavailable",
        "remote",
    ]
    assert error == [True, "too_big", 4413, "c", "over 64 KiB"]


def test_a_position_is_read_defensively_and_counts_once_it_has_an_offset_or_epoch(
    module: Page,
) -> None:
    read, worth = run(
        module,
        "return [[{offset: 7, epoch: 'e'}, {offset: -1, epoch: 3}, {offset: 1.5}, undefined,"
        "  {offset: '9', epoch: 'x'}].map(wm.readPosition),"
        " [{offset: 0, epoch: ''}, {offset: 3, epoch: ''}, {offset: 0, epoch: 'e1'}, undefined]"
        "  .map(wm.hasPosition)];",
    )
    assert read == [
        {"offset": 7, "epoch": "e"},
        {"offset": 0, "epoch": ""},
        {"offset": 0, "epoch": ""},
        {"offset": 0, "epoch": ""},
        {"offset": 0, "epoch": "x"},
    ]
    assert worth == [False, True, True, False]


def test_the_resubscribe_message_asks_since_the_position_only_with_recovery(module: Page) -> None:
    messages = run(
        module,
        "const at = {offset: 41, epoch: 'e7'};"
        "return [wm.subscribeMessage('flow-run:42', 3, at),"
        " wm.subscribeMessage('flow-run:42', 4, at, false),"
        " wm.subscribeMessage('flow-run:42', 5, {offset: 0, epoch: ''}),"
        " wm.subscribeMessage('flow-run:42', 6)];",
    )
    assert messages == [
        {
            "wm": "subscribe",
            "channel": "flow-run:42",
            "id": 3,
            "since": {"offset": 41, "epoch": "e7"},
        },
        {"wm": "subscribe", "channel": "flow-run:42", "id": 4},
        {"wm": "subscribe", "channel": "flow-run:42", "id": 5},
        {"wm": "subscribe", "channel": "flow-run:42", "id": 6},
    ]


def test_publications_at_or_before_the_position_are_duplicates(module: Page) -> None:
    steps = run(
        module,
        "let position = {offset: 5, epoch: 'e1'};"
        "return [5, 3, 6, 6, 8].map((offset) => {"
        "  const step = wm.acceptPublication(position, {offset, epoch: 'e1'});"
        "  position = step.position; return [offset, step.deliver, position.offset]; });",
    )
    assert steps == [[5, False, 5], [3, False, 5], [6, True, 6], [6, False, 6], [8, True, 8]]


def test_a_publication_of_another_epoch_starts_the_position_again(module: Page) -> None:
    step = run(
        module,
        "return wm.acceptPublication({offset: 90, epoch: 'e1'}, {offset: 2, epoch: 'e2'});",
    )
    assert step == {"deliver": True, "position": {"offset": 2, "epoch": "e2"}}


def test_a_channel_without_history_delivers_everything_and_keeps_no_position(module: Page) -> None:
    steps = run(
        module,
        "const none = {offset: 0, epoch: ''};"
        "return [wm.acceptPublication(none, {offset: 0, epoch: ''}),"
        " wm.acceptPublication(none, {data: 1})];",
    )
    none = {"offset": 0, "epoch": ""}
    assert steps == [{"deliver": True, "position": none}, {"deliver": True, "position": none}]


def test_recovered_publications_come_in_offset_order_without_duplicates(module: Page) -> None:
    plan = run(
        module,
        "return wm.planSubscribed({offset: 4, epoch: 'e1'}, {wm: 'subscribed', channel: 'c',"
        " offset: 7, epoch: 'e1', recovered: true, reason: '', publications: ["
        "  {offset: 6, data: 'f'}, {offset: 4, data: 'd'}, {offset: 5, data: 'e'},"
        "  {offset: 7, data: 'g'}, {offset: 6, data: 'f again'}, null]});",
    )
    assert [(p["offset"], p["data"], p["epoch"]) for p in plan["publications"]] == [
        (5, "e", "e1"),
        (6, "f", "e1"),
        (7, "g", "e1"),
    ]
    assert plan["position"] == {"offset": 7, "epoch": "e1"}
    assert plan["recovered"] is True and plan["reason"] == ""


def test_an_answer_that_cannot_recover_moves_the_position_to_the_channels(module: Page) -> None:
    gone, fresh, ahead = run(
        module,
        "const at = {offset: 4, epoch: 'e1'};"
        "return [wm.planSubscribed(at, {offset: 120, epoch: 'e2', recovered: false,"
        "   reason: 'epoch', publications: [{offset: 119, data: 'x'}]}),"
        " wm.planSubscribed({offset: 0, epoch: ''}, {offset: 12, epoch: 'e1',"
        "   recovered: false, reason: ''}),"
        " wm.planSubscribed(at, {offset: 9, epoch: 'e1', recovered: true, publications: []})];",
    )
    assert gone == {
        "publications": [],
        "position": {"offset": 120, "epoch": "e2"},
        "recovered": False,
        "reason": "epoch",
    }
    assert fresh["position"] == {"offset": 12, "epoch": "e1"} and fresh["reason"] == ""
    # recovered, and the channel had moved on by the time the subscription began
    assert ahead["position"] == {"offset": 9, "epoch": "e1"}


# ------------------------------------------------------------------------ a misbehaving gateway


def test_publications_a_gateway_sends_out_of_order_or_twice_are_delivered_in_order_once(
    module: Page,
) -> None:
    """A fake gateway, because a real one cannot be made to misbehave so: it sends a live
    publication before its answer to the resubscription (whose recovered publications come
    before it) and sends one publication twice. docs/protocol.md (§13.5) has the gateway
    hold live publications until its answer and never repeat one; the client must not
    rely on it: what it delivers stays in offset order, each once."""
    resubscribe, log, position = run(
        module,
        "const g = gateway();"
        "const sub = g.conn.subscribe('c', g.handlers('a'));"
        "let s = await g.socket(0); s.open();"
        "s.push({wm: 'subscribed', channel: 'c', id: s.frames[0].id, offset: 3, epoch: 'e1',"
        "  recovered: false, reason: ''});"
        "s.push({wm: 'pub', channel: 'c', offset: 4, epoch: 'e1', data: 'd'});"
        "s.drop(1012);"  # the node drained: reconnect
        "s = await g.socket(1); s.open();"
        "const resubscribe = s.frames[0];"
        # a live publication overtakes the answer: it must wait for the recovered ones
        "s.push({wm: 'pub', channel: 'c', offset: 8, epoch: 'e1', data: 'h'});"
        "s.push({wm: 'subscribed', channel: 'c', id: resubscribe.id, offset: 7, epoch: 'e1',"
        "  recovered: true, reason: '', publications: [{offset: 4, data: 'd'},"
        "  {offset: 5, data: 'e'}, {offset: 6, data: 'f'}, {offset: 7, data: 'g'}]});"
        "s.push({wm: 'pub', channel: 'c', offset: 7, epoch: 'e1', data: 'g'});"  # a duplicate
        "s.push({wm: 'pub', channel: 'c', offset: 9, epoch: 'e1', data: 'i'});"
        "g.conn.close(); return [resubscribe, g.log, sub.position];",
    )
    assert resubscribe["since"] == {"offset": 4, "epoch": "e1"}
    messages = [(entry[2], entry[3], entry[4]) for entry in log if entry[1] == "message"]
    assert messages == [
        ("d", 4, False),
        ("e", 5, True),
        ("f", 6, True),
        ("g", 7, True),
        ("h", 8, False),
        ("i", 9, False),
    ]
    subscribed = [entry[2] for entry in log if entry[1] == "subscribed"]
    assert [(i["resubscribed"], i["recovered"], i["publications"]) for i in subscribed] == [
        (False, False, 0),
        (True, True, 3),
    ]
    assert position == {"offset": 9, "epoch": "e1"}

"""The mesh dashboard at the gateway's ``/_mesh/`` in a real Chromium, on the running
ipaas demo: it shows the demo's nodes, and a killed node disappears then comes back; it
draws the gateway's edges to the nodes its sessions use and charts of the last minutes;
it fits a laptop's and a phone's width; it and the demo page link to each other with the
token."""

from __future__ import annotations

import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.gateways import Gateway, run_with_gateway

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Response

DEMO = Path(__file__).resolve().parents[2] / "examples" / "ipaas"
ROWS = "#nodes tbody tr[data-node-id]"
#: the page's width, laptop then phone
WIDTHS = (1280, 390)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("ipaas-dashboard")
    shutil.copytree(DEMO, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    config = (folder / "wiremesh.toml").read_text()
    config = config.replace("\n[gateway]\n", "\n[gateway]\nport = 0\ntls = true\n", 1)
    gateway = run_with_gateway(folder, config)
    try:
        gateway.running.wait_for_line(r"^connectors-\S+: serving at ", count=2)
        gateway.running.wait_for_line(r"^flows-\S+: serving at ")
        yield gateway
    finally:
        gateway.running.stop()


def shown(page: Page) -> list[str]:
    return sorted(page.eval_on_selector_all(ROWS, "rows => rows.map(r => r.dataset.nodeId)"))


def test_the_dashboard_shows_the_mesh_and_follows_a_node_that_dies(
    page: Page, demo: Gateway, artifacts: Path
) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto(f"{demo.url}/_mesh/#token={demo.token}")
    page.wait_for_selector("#status.live")
    # the demo's nodes: two connectors and one flows, in the table and in the graph
    page.wait_for_function(
        f"document.querySelectorAll('{ROWS}[data-node-id^=\"connectors-\"]').length == 2"
    )
    nodes = shown(page)
    assert sum(n.startswith("connectors-") for n in nodes) == 2
    assert sum(n.startswith("flows-") for n in nodes) == 1
    for node in nodes:
        assert page.locator(f'#graph g.node[data-node-id="{node}"]').count() == 1
    assert page.inner_text("#mesh-name") == "ipaas"  # [mesh] name in the demo's config
    assert page.inner_text("#count-sessions") == "0"
    page.screenshot(path=str(artifacts / "mesh-dashboard.png"), full_page=True)

    # kill one connectors node: it leaves the page, and its replacement comes
    victim = next(n for n in nodes if n.startswith("connectors-"))
    os.kill(demo.running.node_pids()[victim], signal.SIGKILL)
    page.wait_for_function(
        f"!document.querySelector('{ROWS}[data-node-id=\"{victim}\"]')", timeout=15_000
    )
    page.wait_for_function(
        f"document.querySelectorAll('{ROWS}[data-node-id^=\"connectors-\"]').length == 2",
        timeout=20_000,
    )
    after = shown(page)
    assert victim not in after
    assert sum(n.startswith("connectors-") for n in after) == 2
    page.screenshot(path=str(artifacts / "mesh-dashboard-after-restart.png"), full_page=True)
    assert page.errors == []  # type: ignore[attr-defined]


def test_the_dashboard_without_a_token_says_so(page: Page, demo: Gateway) -> None:
    page.goto(f"{demo.url}/_mesh/")
    page.wait_for_selector("#status.down")
    assert "not signed in" in page.inner_text("#status")
    assert page.locator(ROWS).count() == 0


def watched(context: BrowserContext) -> list[str]:
    """What goes wrong in any page of ``context`` from now on: console errors, requests
    that fail and answers of 400 and above (a missing favicon is one)."""
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    def answered(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"{response.status}: {response.url}")

    def on_page(page: Page) -> None:
        page.on("console", console)
        page.on("pageerror", lambda error: problems.append(f"error: {error}"))

    for page in context.pages:
        on_page(page)
    context.on("page", on_page)
    context.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    context.on("response", answered)
    return problems


def fits(page: Page, name: str, artifacts: Path) -> None:
    """At each of :data:`WIDTHS`, the page is no wider than the window; a screenshot each."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_timeout(300)  # a layout and a refresh at the new width
        wide, window = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        page.screenshot(path=str(artifacts / f"{name}-{width}.png"), full_page=True)
        assert wide <= window, f"{name} overflows at {width} px: {wide} px wide"


def test_the_dashboard_draws_sessions_and_charts_and_fits_a_phone(
    page: Page, context: BrowserContext, demo: Gateway, artifacts: Path
) -> None:
    problems = watched(context)
    # a session: the demo page holds one on the flows node, and runs flows through it
    app = context.new_page()
    app.goto(f"{demo.url}/#token={demo.token}")
    app.wait_for_selector("#run:enabled")
    flows_node = app.get_attribute("body", "data-node")
    assert flows_node is not None and flows_node.startswith("flows-")
    app.fill("#pace", "0")

    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{demo.url}/_mesh/#token={demo.token}")
    page.wait_for_selector("#status.live")
    # the gateway is wm-gateway, as in the registry, `wiremesh nodes` and `wiremesh run`
    gateway_row = page.locator(ROWS, has=page.locator('td:text-is("wm-gateway")'))
    gateway_row.wait_for()
    gateway_id = gateway_row.get_attribute("data-node-id")
    assert gateway_id is not None and gateway_id.startswith("gateway-")
    assert "wm-gateway" in page.locator("#graph .service-label").all_text_contents()
    # its edge to the node its session is on, with the number of sessions
    edge = page.locator(f'#graph line.session[data-link="{gateway_id}>{flows_node}"]')
    edge.wait_for(state="attached")  # a level line has no height: "hidden" to Playwright
    assert edge.get_attribute("data-sessions") == "1"

    # a few polls with calls between them: each chart is a line
    for done in range(1, 5):
        app.click("#run")
        app.wait_for_function(
            "n => document.querySelectorAll('#runs .run[data-state=done]').length >= n", arg=done
        )
        page.wait_for_timeout(600)
    for service in ("connectors", "flows"):
        chart = f'#charts .chart-card[data-service="{service}"] .spark.calls svg path[d*="L"]'
        page.wait_for_selector(chart, state="attached")  # a level line is "hidden" too
    # the connectors ran the flows' steps: their line rose off the baseline
    drawn = page.get_attribute('.chart-card[data-service="connectors"] .spark.calls path', "d")
    assert drawn is not None
    assert min(float(y) for y in re.findall(r"[ML][0-9.]+ ([0-9.]+)", drawn)) < 39.0, drawn
    assert page.locator("#charts .spark.sessions b").first.inner_text() == "1"
    assert page.locator("#charts .spark.p99 svg path").count() >= 1

    fits(page, "mesh-dashboard", artifacts)
    fits(app, "ipaas-demo", artifacts)
    assert problems == []


def test_the_page_and_the_dashboard_link_to_each_other_with_the_token(
    page: Page, context: BrowserContext, demo: Gateway
) -> None:
    problems = watched(context)
    page.goto(f"{demo.url}/#token={demo.token}")
    page.wait_for_selector("#run:enabled")
    link = page.locator("#dashboard-link")
    assert link.get_attribute("href") == f"/_mesh/#token={demo.token}"
    # the dashboard opens beside the page, whose session stays open
    with context.expect_page() as opened:
        link.click()
    dashboard = opened.value
    dashboard.wait_for_selector("#status.live")
    dashboard.wait_for_selector(f"{ROWS}[data-node-id^=flows-]")
    home = dashboard.locator("#home-link")
    assert home.is_visible()
    assert home.get_attribute("href") == f"/#token={demo.token}"
    home.click()
    dashboard.wait_for_url(f"{demo.url}/#token=*")
    dashboard.wait_for_selector("#state[data-state=open]")
    dashboard.wait_for_selector("#run:enabled")
    assert problems == []

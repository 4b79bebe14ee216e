"""The mesh dashboard at the gateway's ``/_mesh/`` in a real Chromium, on the running
ipaas demo: it shows the demo's nodes, and a killed node disappears then comes back."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.gateways import Gateway, run_with_gateway

if TYPE_CHECKING:
    from playwright.sync_api import Page

DEMO = Path(__file__).resolve().parents[2] / "examples" / "ipaas"
ROWS = "#nodes tbody tr[data-node-id]"


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

"""The ipaas demo's web page in a real Chromium: served by the demo's own gateway over
``wss``, it starts a flow run through the gateway's HTTP door and shows each step as the
run publishes it to its channel, also when the ``flows`` node dies mid-run."""

from __future__ import annotations

import json
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
    from playwright.sync_api import Page

DEMO = Path(__file__).resolve().parents[2] / "examples" / "ipaas"

#: records every change of a step's state, to tell live progress from a page filled at once
WATCH_STEPS = """
window.stepChanges = [];
new MutationObserver((changes) => {
  for (const change of changes) {
    const steps = [...document.querySelectorAll('#runs .run:first-child .step')];
    window.stepChanges.push(steps.map((step) => step.dataset.state).join(','));
  }
}).observe(document.querySelector('#runs'), {subtree: true, attributes: true,
  attributeFilter: ['data-state'], childList: true});
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("ipaas-web")
    shutil.copytree(DEMO, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    config = (folder / "wiremesh.toml").read_text()
    assert "\n[gateway]\n" in config
    config = config.replace("\n[gateway]\n", "\n[gateway]\nport = 0\ntls = true\n", 1)
    gateway = run_with_gateway(folder, config)
    try:
        gateway.running.wait_for_line(r"^connectors-\S+: serving at ", count=2)
        gateway.running.wait_for_line(r"^flows-\S+: serving at ")
        yield gateway
    finally:
        gateway.running.stop()


def test_the_page_shows_a_flow_run_step_by_step(page: Page, demo: Gateway, artifacts: Path) -> None:
    page.set_viewport_size({"width": 1100, "height": 700})
    page.goto(f"{demo.url}/#token={demo.token}")
    page.wait_for_selector("#state[data-state=open]")
    page.wait_for_selector("#run:enabled")
    flows_node = page.get_attribute("body", "data-node")
    assert flows_node is not None and flows_node.startswith("flows-")
    assert page.locator("#flow option").all_inner_texts() == ["invoice", "onboarding", "welcome"]

    page.select_option("#flow", "welcome")
    page.fill("#input", '{"name": "Ada"}')
    # the page offers the pauses the flows node accepts (pace <= 2 s), no more
    assert page.get_attribute("#pace", "max") == "2000"
    page.fill("#pace", "100")
    page.evaluate(WATCH_STEPS)
    page.click("#run")
    run = page.locator("#runs .run").first
    run.locator(".status", has_text="done").wait_for()

    assert run.get_attribute("data-state") == "done"
    assert run.locator(".title").inner_text() == f"welcome on {flows_node}"
    # each run says which it is and when it started: "run 1a2b3c4d · started 10:41:07"
    assert re.fullmatch(r"run [0-9a-f]{8} · started .*\d\d.*", run.locator(".meta").inner_text())
    assert run.locator(".step .connector").all_inner_texts() == ["greeting", "shout"]
    connectors = {node for node in demo.running.node_pids() if node.startswith("connectors-")}
    assert set(run.locator(".step .node").all_inner_texts()) <= connectors
    assert '"text": "HELLO, ADA!"' in run.locator(".output").inner_text()
    # pushed step by step: the page showed the first step done while the second ran
    changes = page.evaluate("window.stepChanges")
    assert "done,running" in changes, changes
    assert changes[-1] == "done,done"
    assert page.errors == []  # type: ignore[attr-defined]
    page.screenshot(path=str(artifacts / "ipaas-demo.png"), full_page=True)


def test_the_page_shows_why_a_run_fails(page: Page, demo: Gateway) -> None:
    page.goto(f"{demo.url}/#token={demo.token}")
    page.wait_for_selector("#run:enabled")
    page.select_option("#flow", "invoice")
    page.fill("#input", '{"amount": "ten"}')
    page.fill("#pace", "0")
    page.click("#run")
    run = page.locator("#runs .run").first
    run.locator(".status", has_text="could not convert").wait_for()
    assert run.get_attribute("data-state") == "failed"


def test_without_a_token_the_page_says_how_to_get_one(page: Page, demo: Gateway) -> None:
    page.goto(f"{demo.url}/")
    page.wait_for_selector("#state[data-state=closed]")
    assert "wiremesh run" in page.inner_text("#node")
    assert page.is_disabled("#run")


def test_the_page_follows_its_flows_node_through_a_restart(page: Page, demo: Gateway) -> None:
    page.goto(f"{demo.url}/#token={demo.token}")
    page.wait_for_selector("#run:enabled")
    before = page.get_attribute("body", "data-node")
    assert before is not None
    os.kill(demo.running.node_pids()[before], signal.SIGKILL)
    # the demo runs one flows node: the page waits, retrying, until its replacement serves
    page.wait_for_function(
        "(before) => document.body.dataset.node !== before && !document.querySelector('#run')"
        ".disabled",
        arg=before,
        timeout=30_000,
    )
    after = page.get_attribute("body", "data-node")
    assert after is not None and after.startswith("flows-") and after != before
    page.select_option("#flow", "invoice")
    page.fill("#input", '{"amount": 10}')
    page.fill("#pace", "0")
    page.click("#run")
    run = page.locator("#runs .run").first
    run.locator(".status", has_text="done").wait_for()
    assert json.loads(run.locator(".output").inner_text()) == {"amount": 24}


def test_a_run_outlives_its_flows_node_and_the_page_shows_every_step_once(
    page: Page, demo: Gateway
) -> None:
    page.goto(f"{demo.url}/#token={demo.token}")
    page.wait_for_selector("#run:enabled")
    before = page.get_attribute("body", "data-node")
    assert before is not None
    page.select_option("#flow", "onboarding")
    page.fill("#input", '{"name": "Ada", "amount": 10}')
    page.fill("#pace", "300")
    page.click("#run")
    run = page.locator("#runs .run").first
    run.locator('.step[data-state="done"]').first.wait_for()
    os.kill(demo.running.node_pids()[before], signal.SIGKILL)  # mid-run
    # the page waits for the connection, the run stays running: nothing is marked lost
    run.locator(".status", has_text="reconnecting").wait_for()
    assert run.get_attribute("data-state") == "running"
    run.locator(".status", has_text="done").wait_for(timeout=30_000)

    run_id = run.get_attribute("data-run")
    assert run.locator(".step .connector").all_inner_texts() == [
        "greeting",
        "shout",
        "double",
        "add-tax",
    ]
    assert run.locator('.step[data-state="done"]').count() == 4
    assert json.loads(run.locator(".output").inner_text()) == {
        "name": "Ada",
        "text": "HELLO, ADA!",
        "amount": 24.0,
    }
    # what the page was given: every step once, in order, then the end; and one
    # resubscription after the reconnection, which recovered what the channel had meanwhile
    events = page.evaluate("(run) => demo.events.filter((e) => e[0] === run)", run_id)
    published = [(kind, index) for _, kind, index, *_ in events if kind != "subscribed"]
    assert published == [("step", 0), ("step", 1), ("step", 2), ("step", 3), ("done", None)]
    subscribed = [event[2:4] for event in events if event[1] == "subscribed"]
    assert subscribed == [[False, True], [True, True]], events
    # the run went on on the node started in the dead one's place
    after = page.get_attribute("body", "data-node")
    assert after is not None and after != before
    demo.running.wait_for_line(rf"^{after} \| INFO ipaas.flows: run {run_id} resumes after step")
    assert page.errors == []  # type: ignore[attr-defined]

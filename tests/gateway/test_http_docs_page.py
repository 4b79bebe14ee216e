"""``/docs`` in a real browser (Debian's Chromium through Playwright): the page renders
the gateway's OpenAPI document under its own strict Content-Security-Policy, and its
form sends a request that succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.http_door import Catalog, gateway_in_thread, token

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with gateway_in_thread(Catalog) as base:
        yield base


def test_the_docs_page_renders_and_its_form_calls_the_method(url: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM}")
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
            page.wait_for_selector("details.op")
            assert page.locator("#service-catalog").inner_text() == "Service catalog"
            operations = page.locator("details.op .path").all_inner_texts()
            assert "/rpc/catalog/search" in operations and "Search" in operations

            search = page.locator("details.op", has_text="/rpc/catalog/search").first
            search.locator("summary").click()
            assert "Products whose sku contains the text." in search.inner_text()
            body = search.locator("textarea").input_value()
            assert '"text"' in body  # an example built from the schema
            search.locator("button", has_text="Send").click()
            search.locator(".status.ok").wait_for()
            assert search.locator(".status").inner_text().startswith("200")
            assert '"sku"' in search.locator("pre.response").inner_text()
        finally:
            browser.close()
    assert problems == []  # no script error, no Content-Security-Policy violation

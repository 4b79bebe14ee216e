"""A real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright.

One browser serves every browser test (launching costs about a second); each test gets
its own context and page. The browser lives as long as this package's tests (hence the
``__init__.py``), not the session: Playwright's sync API keeps its event loop marked as
running while it is started, which the suite's async tests after this folder must not
see. The tests skip with a reason when Chromium or Playwright is missing
(``tests/conftest.py`` turns that into a failure under CI). Playwright never downloads a
browser here: it drives the system one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
REPO = Path(__file__).resolve().parents[2]
CLIENT_JS = REPO / "clients" / "js" / "wiremesh.js"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (make browser)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser tests need playwright (pip install -e '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile that accepts the development certificate of the test's gateway."""
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    return page


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests keep what a reader may want to look at (``$WIREMESH_ARTIFACTS``)."""
    folder = Path(os.environ.get("WIREMESH_ARTIFACTS") or REPO / "tests" / ".artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder

"""Browser tests: a real Chromium driven by Playwright."""

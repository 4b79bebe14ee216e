"""Suite-wide rules: under CI=true no test may be skipped."""

from __future__ import annotations

import os

import pytest

from wiremesh.transport.grpc_core import prefer_loop_io

# grpc reads its settings once, when it is imported: the suite runs grpc as wiremesh's
# processes do (and the node processes it starts inherit the setting)
prefer_loop_io()

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be skipped: {report.longrepr}"

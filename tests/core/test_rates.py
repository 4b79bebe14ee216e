"""Rates and percentiles from two readings of a node's counters (no I/O)."""

from __future__ import annotations

import math

import pytest

from wiremesh.core.rates import Reading, figures, quantile
from wiremesh.observability.scrape import parse as reading

TEXT = """\
# TYPE wiremesh_calls_handled_total counter
wiremesh_calls_handled_total{{method="buy",service="shop",status="ok"}} {ok}
wiremesh_calls_handled_total{{method="buy",service="shop",status="internal"}} {bad}
# TYPE wiremesh_call_handle_seconds histogram
wiremesh_call_handle_seconds_bucket{{le="0.001",method="buy",service="shop"}} {fast}
wiremesh_call_handle_seconds_bucket{{le="0.01",method="buy",service="shop"}} {total}
wiremesh_call_handle_seconds_bucket{{le="+Inf",method="buy",service="shop"}} {total}
wiremesh_call_handle_seconds_count{{method="buy",service="shop"}} {total}
wiremesh_call_handle_seconds_sum{{method="buy",service="shop"}} 0.5
# TYPE wiremesh_node_publish_dropped_total counter
wiremesh_node_publish_dropped_total 3
# TYPE wiremesh_link_queued_frames gauge
wiremesh_link_queued_frames{{peer="a"}} 5
wiremesh_link_queued_frames{{peer="b"}} 2
"""


def text(ok: int, bad: int, fast: int) -> str:
    return TEXT.format(ok=ok, bad=bad, fast=fast, total=ok + bad)


def test_a_reading_sums_methods_statuses_and_links() -> None:
    found = reading(text(ok=90, bad=10, fast=50), at=1.0)
    assert found.calls == 100
    assert found.errors == 10
    assert found.buckets == {0.001: 50, 0.01: 100, math.inf: 100}
    assert found.publish_dropped == 3
    assert found.link_queued == 7


def test_figures_are_rates_over_the_interval() -> None:
    before = reading(text(ok=90, bad=10, fast=50), at=10.0)
    after = reading(text(ok=170, bad=30, fast=150), at=12.0)
    shown = figures(before, after)
    assert shown.calls_per_s == pytest.approx(50.0)
    assert shown.errors_per_s == pytest.approx(10.0)
    # of the 100 calls in the interval all 100 took <= 1 ms: p50 inside the first bucket
    assert shown.p50 == pytest.approx(0.0005)
    assert shown.p99 == pytest.approx(0.00099)


def test_a_restarted_node_never_shows_negative_rates() -> None:
    before = reading(text(ok=500, bad=0, fast=500), at=0.0)
    after = reading(text(ok=5, bad=0, fast=5), at=1.0)
    shown = figures(before, after)
    assert shown.calls_per_s == 0
    assert shown.p50 is None


def test_quantile_interpolates_inside_a_bucket_and_stops_at_the_last_bound() -> None:
    buckets = {0.1: 0.0, 0.2: 10.0, math.inf: 10.0}
    assert quantile(0.5, buckets) == pytest.approx(0.15)
    assert quantile(0.5, {}) is None
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    # everything past the last finite bound: that bound is all a histogram can say
    assert quantile(0.99, {0.1: 0.0, math.inf: 4.0}) == pytest.approx(0.1)


def test_an_empty_reading_has_no_figures_to_show() -> None:
    shown = figures(Reading(at=0.0), Reading(at=1.0))
    assert shown.calls_per_s == 0
    assert shown.p99 is None

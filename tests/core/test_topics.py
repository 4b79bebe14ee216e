from __future__ import annotations

import pytest

from wiremesh.core.topics import check_pattern, check_topic, matches, matching
from wiremesh.errors import InvalidPayload


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("prices.eu", "prices.eu"),
        ("prices.*", "prices.eu"),
        ("*.eu", "prices.eu"),
        ("prices.#", "prices"),
        ("prices.#", "prices.eu.sku-1"),
        ("#", "anything.at.all"),
        ("#.sku-1", "prices.eu.sku-1"),
        ("#.sku-1", "sku-1"),
        ("prices.#.sku-1", "prices.sku-1"),
        ("prices.#.sku-1", "prices.eu.fr.sku-1"),
        ("*.*.#", "a.b"),
    ],
)
def test_matching_topics(pattern: str, topic: str) -> None:
    assert matches(pattern, topic)


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("prices.eu", "prices.us"),
        ("prices.*", "prices"),
        ("prices.*", "prices.eu.sku-1"),
        ("*.eu", "eu"),
        ("prices.#.sku-1", "prices.eu.sku-2"),
        ("*.*.#", "a"),
        ("prices", "prices.eu"),
    ],
)
def test_topics_that_do_not_match(pattern: str, topic: str) -> None:
    assert not matches(pattern, topic)


def test_matching_any_of_several_patterns() -> None:
    assert matching(["orders.*", "prices.#"], "prices.eu.x")
    assert not matching(["orders.*", "stock.#"], "prices.eu")
    assert not matching([], "prices")


@pytest.mark.parametrize("topic", ["", "a..b", "a.*", "a.#", "has space", ".lead", "trail."])
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidPayload, match="bad topic"):
        check_topic(topic)


@pytest.mark.parametrize("pattern", ["", "a..b", "a.b*", "a.#x", "spa ce"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidPayload, match="bad topic pattern"):
        check_pattern(pattern)


def test_good_names_pass_through() -> None:
    assert check_topic("prices.eu.sku_1:x-2") == "prices.eu.sku_1:x-2"
    assert check_pattern("prices.*.#") == "prices.*.#"

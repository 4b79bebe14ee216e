"""Channels without I/O: names, patterns, the rulebook, the rules' registry text, recovery
answers and the embedded engine's log."""

from __future__ import annotations

import doctest

import pytest

from wiremesh.core import channels as channels_module
from wiremesh.core.channels import (
    ChannelLog,
    ChannelRules,
    MeshRules,
    Position,
    Rulebook,
    check_channel,
    check_channel_pattern,
    rules_from_text,
    rules_to_text,
)
from wiremesh.core.model import MeshSnapshot, NodeInfo
from wiremesh.errors import InvalidPayload


def test_the_modules_examples_hold() -> None:
    assert doctest.testmod(channels_module).failed == 0


@pytest.mark.parametrize("name", ["a", "flow-run:42", "t/acme#feed", "x" * 200, "u@e.org=1,2"])
def test_channel_names(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize("name", ["", "x" * 201, "two words", "é", "a\nb", "{x}", 7, None])
def test_what_is_not_a_channel_name(name: object) -> None:
    with pytest.raises(InvalidPayload, match="channel name"):
        check_channel(name)


def test_patterns() -> None:
    assert check_channel_pattern("*") == "*"
    assert check_channel_pattern("room:*:log") == "room:*:log"
    for bad in ("", "a b*", 3):
        with pytest.raises(InvalidPayload, match="channel pattern"):
            check_channel_pattern(bad)


def test_the_most_specific_pattern_wins_whatever_the_order() -> None:
    book = Rulebook(
        {
            "*": ChannelRules(history_size=1),
            "room:*": ChannelRules(history_size=2),
            "room:vip:*": ChannelRules(history_size=3),
        }
    )
    assert [book.rules_for(c).history_size for c in ("x", "room:1", "room:vip:1")] == [1, 2, 3]  # type: ignore[union-attr]
    assert Rulebook({"room:*": ChannelRules()}).rules_for("hall") is None
    assert not Rulebook()


def test_the_rules_travel_as_text_and_come_back_owned() -> None:
    declared = {
        "room:*": ChannelRules(
            scopes=("a", "b"),
            anyone=True,
            history_size=5,
            history_ttl=9.5,
            presence=True,
            join_leave=True,
            client_publish=True,
        )
    }
    back = rules_from_text("rooms", rules_to_text(declared))
    assert back == {"room:*": ChannelRules(service="rooms", **_fields(declared["room:*"]))}


def _fields(rules: ChannelRules) -> dict[str, object]:
    return {name: getattr(rules, name) for name in rules.__slots__ if name != "service"}


@pytest.mark.parametrize(
    "text", ["", "[]", "{", '{"a": 1}', '{"a": {"history_size": "many"}}', "[" * 10_000]
)
def test_text_that_is_not_declarations_declares_nothing(text: str) -> None:
    assert rules_from_text("rooms", text) == {}


def test_a_pattern_two_services_declare_is_the_first_ones_by_name() -> None:
    one = rules_to_text({"x:*": ChannelRules(history_size=1)})
    two = rules_to_text({"x:*": ChannelRules(history_size=2), "y:*": ChannelRules()})
    book = Rulebook.of_services([("zeta", two), ("alpha", one)])
    assert book.rules_for("x:1") == ChannelRules(service="alpha", history_size=1)
    assert book.rules_for("y:1") == ChannelRules(service="zeta")


def test_the_meshs_rules_are_built_again_only_when_the_view_changes() -> None:
    text = rules_to_text({"room:*": ChannelRules(anyone=True)})
    node = NodeInfo(node_id="rooms-1", service="rooms", address="a:1", metadata={"k": text})
    rules = MeshRules("k")
    first = MeshSnapshot(version=1, nodes=(node,), services=frozenset({"rooms"}))
    book = rules(first)
    assert book.rules_for("room:1") == ChannelRules(service="rooms", anyone=True)
    assert rules(first) is book
    empty = MeshSnapshot(version=2, nodes=(), services=frozenset({"rooms"}))
    assert rules(empty).rules_for("room:1") is None
    own = MeshRules("k", ("rooms", text))
    assert own(empty).rules_for("room:1") is not None


def test_the_log_keeps_its_size_and_age() -> None:
    log = ChannelLog("e", size=10, ttl=5.0)
    for second in range(8):
        log.append(b"1", now=float(second))
    # at 8.0, those of 0.0 to 3.0 (offsets 1 to 4) are 5 s old or more: gone
    found = log.since(Position(4, "e"), now=8.0)
    assert found.recovered and [p.offset for p in found.publications] == [5, 6, 7, 8]
    assert log.since(Position(3, "e"), now=8.0).reason == "gone"
    assert log.since(Position(8, "e"), now=8.0).publications == ()
    assert log.since(Position(9, "e"), now=8.0).reason == "future"
    assert not log.expired(11.9) and log.expired(12.0)  # 5 s after the last one, at 7.0


def test_a_log_without_history_numbers_but_recovers_nothing() -> None:
    log = ChannelLog("e", size=0, ttl=5.0)
    assert [log.append(b"1", now=0.0).offset for _ in range(3)] == [1, 2, 3]
    found = log.since(Position(2, "e"), now=0.0)
    assert (found.recovered, found.reason, found.position) == (
        False,
        "no_history",
        Position(3, "e"),
    )

from __future__ import annotations

import pytest

from wiremesh.core.gather import Gather, Mode, parse_mode, quorum
from wiremesh.errors import Cancelled, DeadlineExceeded, InternalError, InvalidPayload

NODES = ("a", "b", "c")


def test_all_waits_for_every_node_values_and_errors_alike() -> None:
    g = Gather(NODES, parse_mode("all"))
    assert not g.add("a", 1)
    assert not g.add("b", InternalError("boom"))
    assert g.add("c", 3)
    result = g.result(deadline_passed=False)
    assert result.satisfied
    assert result.values == {"a": 1, "c": 3}
    assert isinstance(result.errors["b"], InternalError)


def test_first_ends_at_the_first_value_and_cancels_the_rest() -> None:
    g = Gather(NODES, parse_mode("first"))
    assert not g.add("b", InternalError("boom"))
    assert g.add("c", "hit")
    result = g.result(deadline_passed=False)
    assert result.satisfied and result.first == "hit"
    assert isinstance(result["a"], Cancelled)
    assert result["a"].node == "a"


def test_first_ends_when_every_node_failed() -> None:
    g = Gather(("a", "b"), Mode("first"))
    g.add("a", InternalError("x"))
    assert g.add("b", InternalError("y"))
    result = g.result(deadline_passed=False)
    assert not result.satisfied
    assert result.first is None


def test_quorum_ends_when_reached() -> None:
    g = Gather(NODES, quorum(2))
    assert not g.add("a", 1)
    assert g.add("b", 2)
    assert g.result(deadline_passed=False).satisfied


def test_quorum_ends_early_when_it_can_no_longer_be_reached() -> None:
    g = Gather(NODES, quorum(3))
    assert g.add("a", InternalError("down"))  # 3 successes now impossible
    result = g.result(deadline_passed=False)
    assert not result.satisfied
    assert "could no longer be met" in result["b"].message


def test_the_deadline_marks_the_silent_nodes() -> None:
    g = Gather(NODES, Mode("all"))
    g.add("a", 1)
    result = g.result(deadline_passed=True)
    assert not result.satisfied
    assert result["a"] == 1
    assert isinstance(result["b"], DeadlineExceeded)
    assert isinstance(result["c"], DeadlineExceeded)
    assert set(result) == set(NODES)


def test_late_and_unknown_answers_are_ignored() -> None:
    g = Gather(("a",), Mode("all"))
    assert g.add("a", 1)
    g.add("a", 2)
    g.add("zz", 3)
    assert dict(g.result(deadline_passed=False)) == {"a": 1}


def test_an_empty_multicast_is_done_at_once() -> None:
    assert Gather((), Mode("all")).done
    assert Gather((), Mode("first")).done


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("all", Mode("all")),
        ("FIRST", Mode("first")),
        ("quorum(2)", Mode("quorum", 2)),
        ("quorum:3", Mode("quorum", 3)),
    ],
)
def test_modes_parse(text: str, mode: Mode) -> None:
    assert parse_mode(text) == mode
    assert parse_mode(mode) is mode


@pytest.mark.parametrize("text", ["most", "quorum(0)", "quorum(x)", "quorum(", ""])
def test_bad_modes_are_refused(text: str) -> None:
    with pytest.raises(InvalidPayload):
        parse_mode(text)


def test_mode_names_read_well() -> None:
    assert str(quorum(2)) == "quorum(2)"
    assert str(Mode("all")) == "all"

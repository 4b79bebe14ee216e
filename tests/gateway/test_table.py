"""The session table, with no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from wiremesh.gateway.table import SessionTable


@dataclass(eq=False)
class Entry:
    number: int
    principal: str
    node_id: str


def test_admit_counts_per_address_and_principal() -> None:
    table: SessionTable[Entry] = SessionTable(per_principal=2, per_ip=3)
    assert table.admit("ada", "10.0.0.1")
    assert table.admit("ada", "10.0.0.1")
    assert not table.admit("ada", "10.0.0.2")  # ada is at her limit
    assert table.admit("bob", "10.0.0.1")
    assert not table.admit("cy", "10.0.0.1")  # the address is at its limit
    assert table.ip_full("10.0.0.1") and not table.ip_full("10.0.0.2")
    table.release("ada", "10.0.0.1")
    assert table.admit("ada", "10.0.0.2")
    assert table.count_of_ip("10.0.0.1") == 2


def test_release_forgets_empty_counts() -> None:
    table: SessionTable[Entry] = SessionTable(per_principal=1, per_ip=1)
    assert table.admit("ada", "a")
    table.release("ada", "a")
    table.release("ada", "a")  # once too often: no negative counts
    assert table.admit("ada", "a")


def test_indexes_by_number_principal_and_node() -> None:
    table: SessionTable[Entry] = SessionTable(per_principal=10, per_ip=10)
    entries = [Entry(table.next_number(), p, n) for p, n in [("a", "n1"), ("a", "n2"), ("b", "n1")]]
    for entry in entries:
        table.add(entry)
    assert len(table) == 3
    assert table.get(entries[1].number) is entries[1]
    assert set(map(id, table.of_principal("a"))) == {id(entries[0]), id(entries[1])}
    assert table.count_of_node("n1") == 2
    table.remove(entries[0])
    table.remove(entries[0])
    assert table.of_node("n1") == [entries[2]]
    assert table.get(entries[0].number) is None
    assert len({e.number for e in entries}) == 3


def test_a_principal_with_one_session_holds_it_alone_and_with_more_a_dict() -> None:
    table: SessionTable[Entry] = SessionTable(per_principal=10, per_ip=10)
    first, second, third = (Entry(table.next_number(), "ada", "n1") for _ in range(3))
    table.add(first)
    assert table.of_principal("ada") == [first]
    table.add(second)
    table.add(third)
    assert table.of_principal("ada") == [first, second, third]
    table.remove(second)
    table.remove(first)
    assert table.of_principal("ada") == [third]
    table.remove(third)
    assert table.of_principal("ada") == []
    assert table.count_of_node("n1") == 0
    assert table.of_node("n1") == [] and table.of_node("unknown") == []

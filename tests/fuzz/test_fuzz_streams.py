"""Stream batches from any caller (core/streams.py): a message of a wiremesh streaming
call (docs/protocol.md §3.4) splits into its items or fails with ``InvalidPayload``;
nothing else escapes, and what comes out is never more than what came in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.fuzzing import mutated
from wiremesh.core.streams import frame, unframe
from wiremesh.errors import InvalidPayload


def splits_or_refuses(message: bytes) -> list[bytes] | None:
    try:
        items = unframe(message)
    except InvalidPayload as exc:
        assert exc.message.startswith("a broken stream batch")
        return None
    assert sum(len(item) for item in items) <= len(message)
    return [bytes(item) for item in items]


@given(st.binary(max_size=4096))
def test_any_bytes_split_into_items_or_are_refused(message: bytes) -> None:
    splits_or_refuses(message)


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_a_batch_comes_back_whole_and_a_mutated_one_never_breaks_the_reader(
    items: list[bytes], data: st.DataObject
) -> None:
    message = frame(items)
    assert splits_or_refuses(message) == items
    splits_or_refuses(data.draw(mutated(message)))

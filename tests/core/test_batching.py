"""The batching rules of links and gateway streams: frames in, batches and bounds out (no
sockets, no event loop; frames are plain values and sizes are given)."""

from __future__ import annotations

import doctest
import itertools

from hypothesis import given
from hypothesis import strategies as st

from wiremesh.core import batching
from wiremesh.core.batching import (
    BATCH_FRAMES,
    FRAME_COST,
    HEADROOM,
    QUEUED_MESSAGES,
    BatchLimits,
    Outbox,
)
from wiremesh.core.defaults import MAX_MESSAGE_BYTES

KIB = 1024
DEFAULT = BatchLimits()


def counted(batch: list[tuple[str, int]]) -> int:
    """The bytes a batch of ``(name, size)`` frames counts: payloads and FRAME_COST each."""
    return sum(size for _, size in batch) + FRAME_COST * len(batch)


def all_batches(outbox: Outbox[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Every batch the outbox holds, in the order a writer takes them."""
    taken = []
    while outbox:
        taken.append(outbox.take())
    return taken


def fill(outbox: Outbox[tuple[str, int]], sizes: list[int]) -> list[tuple[str, int]]:
    frames = [(f"f{i}", size) for i, size in enumerate(sizes)]
    for frame in frames:
        outbox.push(frame, frame[1])
    return frames


def test_the_examples_in_the_module_hold() -> None:
    results = doctest.testmod(batching)
    assert results.attempted > 0
    assert results.failed == 0


def test_frames_queued_together_leave_as_one_batch_when_they_fit() -> None:
    outbox: Outbox[tuple[str, int]] = Outbox(DEFAULT)
    frames = fill(outbox, [64] * 100)
    assert len(outbox) == 100
    assert outbox.queued_bytes == 100 * (64 + FRAME_COST)
    assert all_batches(outbox) == [frames]
    assert not outbox and outbox.queued_bytes == 0


def test_sixty_six_messages_of_64_kib_are_cut_into_batches_that_each_fit_a_message() -> None:
    # sessions of one principal each send 64 KiB at once: together more than 4 MiB
    outbox: Outbox[tuple[str, int]] = Outbox(DEFAULT)
    frames = fill(outbox, [64 * KIB] * 66)
    assert counted(frames) > MAX_MESSAGE_BYTES
    taken = all_batches(outbox)
    assert len(taken) == 2
    assert [frame for batch in taken for frame in batch] == frames  # all, in order
    for batch in taken:
        assert counted(batch) <= MAX_MESSAGE_BYTES - HEADROOM


def test_a_batch_holds_at_most_batch_frames_frames_however_small() -> None:
    outbox: Outbox[tuple[str, int]] = Outbox(BatchLimits(max_frames=10 * BATCH_FRAMES))
    frames = fill(outbox, [0] * (2 * BATCH_FRAMES + 1))
    taken = all_batches(outbox)
    assert [len(batch) for batch in taken] == [BATCH_FRAMES, BATCH_FRAMES, 1]
    assert [frame for batch in taken for frame in batch] == frames


def test_a_large_payload_travels_alone_and_the_next_frame_opens_a_batch() -> None:
    limits = BatchLimits(max_message_bytes=HEADROOM + 64 * KIB)
    assert limits.batch_bytes == limits.max_payload == 64 * KIB
    outbox: Outbox[tuple[str, int]] = Outbox(limits)
    small, large, after, last = fill(outbox, [10, limits.max_payload, 10, 10])
    assert all_batches(outbox) == [[small], [large], [after, last]]
    # alone from the start, and as the last frame queued
    fill(outbox, [limits.max_payload, limits.max_payload])
    assert [len(batch) for batch in all_batches(outbox)] == [1, 1]


def test_the_batches_after_the_first_stay_queued_and_count_until_taken() -> None:
    outbox: Outbox[tuple[str, int]] = Outbox(BatchLimits(max_queued_bytes=5 * 1024 * 1024))
    frames = fill(outbox, [1024 * KIB] * 6)
    assert outbox.full
    first = outbox.take()
    assert first == frames[:3]  # 3 MiB of payload fit in a message; the rest waits
    assert len(outbox) == 3 and outbox.queued_bytes == 3 * (1024 * KIB + FRAME_COST)
    assert not outbox.full
    assert outbox.take() == frames[3:]
    assert not outbox


def test_take_empties_the_outbox_and_the_next_frames_start_afresh() -> None:
    outbox: Outbox[tuple[str, int]] = Outbox(DEFAULT)
    fill(outbox, [64 * KIB] * 66)
    assert len(all_batches(outbox)) == 2
    frames = fill(outbox, [64 * KIB] * 50)
    assert all_batches(outbox) == [frames]


def test_clear_drops_every_batch() -> None:
    outbox: Outbox[tuple[str, int]] = Outbox(DEFAULT)
    fill(outbox, [64 * KIB] * 200)
    assert outbox.full is False and len(outbox) == 200
    outbox.clear()
    assert not outbox and outbox.queued_bytes == 0
    frames = fill(outbox, [1])
    assert outbox.take() == frames


def test_the_queue_is_full_at_its_frame_bound() -> None:
    outbox: Outbox[tuple[str, int]] = Outbox(BatchLimits(max_frames=4))
    fill(outbox, [1, 1, 1])
    assert not outbox.full
    fill(outbox, [1])
    assert outbox.full
    all_batches(outbox)
    assert not outbox.full


def test_the_queue_is_full_at_its_byte_bound_however_few_frames_it_holds() -> None:
    limits = BatchLimits(max_message_bytes=HEADROOM + 64 * KIB)
    assert limits.queued_bytes == QUEUED_MESSAGES * limits.max_message_bytes
    outbox: Outbox[tuple[str, int]] = Outbox(limits)
    while not outbox.full:
        outbox.push("x", limits.max_payload)
    assert len(outbox) == QUEUED_MESSAGES + 1
    assert outbox.queued_bytes >= limits.queued_bytes
    assert Outbox(BatchLimits(max_queued_bytes=1000)).full is False
    explicit: Outbox[str] = Outbox(BatchLimits(max_queued_bytes=1000))
    explicit.push("x", 1000 - FRAME_COST)
    assert explicit.full


def test_the_default_bounds_are_the_documented_ones() -> None:
    assert DEFAULT.max_message_bytes == 4 * 1024 * 1024
    assert DEFAULT.max_frames == 4096
    assert DEFAULT.queued_bytes == 16 * 1024 * 1024
    assert DEFAULT.max_payload == 4 * 1024 * 1024 - 16 * 1024


def test_a_reader_stops_when_the_queue_and_the_answers_it_owes_reach_the_bound() -> None:
    outbox: Outbox[str] = Outbox(BatchLimits(max_frames=10))
    for _ in range(4):
        outbox.push("reply", 10)
    assert not outbox.stops_reading(owed=5)
    assert outbox.stops_reading(owed=6)  # 4 queued, 6 calls still being served
    all_batches(outbox)
    assert not outbox.stops_reading(owed=6)
    # bytes count too: a few large answers stop it as well
    large: Outbox[str] = Outbox(BatchLimits(max_frames=10, max_queued_bytes=1000))
    large.push("reply", 1000)
    assert large.stops_reading(owed=0)


def test_a_writer_lingers_a_few_turns_unless_enough_frames_or_a_whole_batch_wait() -> None:
    limits = BatchLimits(linger_turns=3, linger_frames=4)
    outbox: Outbox[str] = Outbox(limits)
    outbox.push("a", 1)
    assert [outbox.lingers(turns) for turns in range(5)] == [True, True, True, False, False]
    for _ in range(3):
        outbox.push("b", 1)
    assert not outbox.lingers(0)  # four frames wait: write them
    big: Outbox[str] = Outbox(limits)
    big.push("a", 3 * 1024 * 1024)
    big.push("b", 3 * 1024 * 1024)  # the first batch is whole
    assert not big.lingers(0)
    never: Outbox[str] = Outbox(BatchLimits())
    never.push("a", 1)
    assert not never.lingers(0)


def test_under_a_small_message_limit_every_frame_that_fills_a_batch_travels_alone() -> None:
    assert BatchLimits(max_message_bytes=64 * KIB).batch_bytes == 48 * KIB
    tiny = BatchLimits(max_message_bytes=HEADROOM + 100)
    assert tiny.batch_bytes == 100 < FRAME_COST
    outbox: Outbox[tuple[str, int]] = Outbox(tiny)
    frames = fill(outbox, [0, 0, 50])
    assert all_batches(outbox) == [[frame] for frame in frames]
    assert BatchLimits(max_message_bytes=1000).batch_bytes == 1


@given(
    message=st.integers(HEADROOM + 1024, 8 * 1024 * 1024),
    shares=st.lists(st.floats(0.0, 1.0), max_size=300),
)
def test_every_batch_fits_in_a_message_and_every_frame_leaves_once_in_order(
    message: int, shares: list[float]
) -> None:
    limits = BatchLimits(max_message_bytes=message, max_frames=1000)
    outbox: Outbox[tuple[str, int]] = Outbox(limits)
    frames = fill(outbox, [int(share * limits.max_payload) for share in shares])
    taken = all_batches(outbox)
    assert [frame for batch in taken for frame in batch] == frames
    for batch in taken:
        assert batch
        assert len(batch) <= BATCH_FRAMES
        # several frames share a message; one frame alone may carry max_payload
        assert counted(batch) <= limits.batch_bytes or (
            len(batch) == 1 and batch[0][1] <= limits.max_payload
        )


@given(
    sizes=st.lists(st.integers(0, 2 * 1024 * 1024), max_size=200),
    takes=st.lists(st.booleans(), max_size=200),
)
def test_full_always_says_whether_the_queue_is_at_its_bound_and_batches_always_fit(
    sizes: list[int], takes: list[bool]
) -> None:
    limits = BatchLimits(max_frames=50, max_queued_bytes=8 * 1024 * 1024)
    outbox: Outbox[int] = Outbox(limits)
    for size, take in itertools.zip_longest(sizes, takes, fillvalue=False):
        if size is not False:
            outbox.push(size, int(size))
        if take and outbox:
            batch = outbox.take()
            assert len(batch) == 1 or sum(batch) + FRAME_COST * len(batch) <= limits.batch_bytes
        at_bound = len(outbox) >= 50 or outbox.queued_bytes >= 8 * 1024 * 1024
        assert outbox.full == at_bound
        assert outbox.queued_bytes == sum(outbox.frames) + FRAME_COST * len(outbox)

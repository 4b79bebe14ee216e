"""``wiremesh.runtime.heap.settle``: collect the garbage, freeze what is alive."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from wiremesh.runtime.heap import YOUNG_THRESHOLD, settle


class Cell:
    def __init__(self) -> None:
        self.itself = self  # a cycle: only the collector frees it


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process keeps collecting everything, as before
    gc.set_threshold(*thresholds)


def test_settle_frees_garbage_freezes_what_is_alive_and_collects_less_often() -> None:
    alive, garbage = Cell(), Cell()
    gone = weakref.ref(garbage)
    del garbage

    frozen = settle()

    assert gone() is None
    assert frozen == gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert not any(o is alive for o in gc.get_objects())  # left out of collections
    gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())

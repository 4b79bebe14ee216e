"""``wiremesh.runtime.heap.settle``: collect the garbage, freeze what is alive."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from wiremesh.runtime.heap import settle


class Cell:
    def __init__(self) -> None:
        self.itself = self  # a cycle: only the collector frees it


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process keeps collecting everything


def test_settle_frees_garbage_and_freezes_what_is_alive() -> None:
    alive, garbage = Cell(), Cell()
    gone = weakref.ref(garbage)
    del garbage

    frozen = settle()

    assert gone() is None
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is alive for o in gc.get_objects())  # left out of collections
    gc.unfreeze()
    assert any(o is alive for o in gc.get_objects())

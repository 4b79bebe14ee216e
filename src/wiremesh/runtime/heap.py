"""The garbage collector in a long-running wiremesh process.

CPython's full collection walks every object the process holds, and most of them were
made while it started: modules, classes, the service, gRPC, the SDKs. And a young
collection runs every 700 container allocations, walking every young object still alive:
with many calls in flight, those are the same calls' objects again and again. A busy node,
and more so a traced one (its spans wait a moment for export), pays for both several
times a second, each time pausing the event loop.

:func:`settle` runs once, after the process serves: it collects what is garbage already,
freezes the rest (``gc.freeze``), so that later collections walk only what was made
since, and runs young collections every :data:`YOUNG_THRESHOLD` allocations instead.
Garbage with reference cycles is freed a little later; everything else is freed at once,
as before.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

#: container allocations between young collections once settled (CPython's default: 700)
YOUNG_THRESHOLD = 10_000


def settle() -> int:
    """Collect, leave every object alive now out of later collections, and collect young
    objects less often; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()

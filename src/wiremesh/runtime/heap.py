"""The garbage collector in a long-running wiremesh process.

CPython's full collection walks every object the process holds, and most of them were
made while it started: modules, classes, the service, gRPC, the SDKs. A busy node (and
more so a traced one, whose spans wait a moment before export) makes enough objects that
outlive a young collection to trigger full ones several times a second, each pausing
the event loop for the walk. :func:`settle` runs once, after the process serves: it
collects what is garbage already, then freezes the rest (``gc.freeze``), so that later
collections walk only what was made since.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]


def settle() -> int:
    """Collect, then leave every object alive now out of later collections; the number
    of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

"""A caller's live view of the mesh, kept current by a registry watch.

Calls read :attr:`MeshView.snapshot` (a plain attribute, no await); a background task
replaces it when the registry announces a change. No call ever polls the registry.

While the registry is unreachable the view keeps its last snapshot (no node is dropped,
no session closed); :attr:`MeshView.reachable` says so. When the registry comes back with
no memory of the mesh (a new epoch), the view keeps the nodes it knew for ``grace``
seconds beside the ones that registered again (:class:`~wiremesh.core.carryover.Carryover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from wiremesh.core.carryover import Carryover
from wiremesh.core.defaults import START_TIMEOUT
from wiremesh.core.model import EMPTY, MeshSnapshot
from wiremesh.registry.base import Registry

__all__ = ["DEFAULT_GRACE", "MeshView"]

log = logging.getLogger("wiremesh.registry")

#: seconds a view keeps the nodes of a registry that restarted empty (the default ttl,
#: 1.5 s, and a second for the nodes to find the new registry)
DEFAULT_GRACE = 2.5


class MeshView:
    def __init__(
        self,
        registry: Registry,
        *,
        grace: float = DEFAULT_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.snapshot: MeshSnapshot = EMPTY
        self._carryover = Carryover(grace)
        self._clock = clock
        self._fresh: MeshSnapshot = EMPTY
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[MeshSnapshot, MeshSnapshot], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._regrace: asyncio.TimerHandle | None = None

    @property
    def reachable(self) -> bool:
        """Whether the registry answered the last time it was asked."""
        return self.registry.reachable

    def on_change(self, listener: Callable[[MeshSnapshot, MeshSnapshot], None]) -> None:
        """Call ``listener(old, new)`` after every change."""
        self._listeners.append(listener)

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start watching; returns once the first snapshot has arrived."""
        self._task = asyncio.create_task(self._watch(), name="wiremesh-mesh-view")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            from wiremesh.errors import Unavailable

            await self.close()
            raise Unavailable(f"the registry did not answer within {timeout:g}s") from None

    async def close(self) -> None:
        if self._regrace is not None:
            self._regrace.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(self, predicate: Callable[[MeshSnapshot], bool], timeout: float) -> None:
        """Wait until ``predicate(snapshot)`` holds (tests and start-up ordering)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.snapshot):
                await self._changed.wait()

    async def _watch(self) -> None:
        async for snapshot in self.registry.watch():
            self._fresh = snapshot
            self._show()

    def _show(self) -> None:
        """Show the registry's latest snapshot, with what the carryover still keeps."""
        now = self._clock()
        shown = self._carryover.apply(self._fresh, now)
        if self._carryover.carrying(now):
            if self._regrace is None:
                log.warning(
                    "the registry restarted without the mesh: keeping the %d node(s) it "
                    "knew for %gs while they register again",
                    len(self._carryover.kept),
                    self._carryover.grace,
                )
            else:
                self._regrace.cancel()
            delay = self._carryover.until - now
            self._regrace = asyncio.get_running_loop().call_later(delay, self._end_grace)
        old, self.snapshot = self.snapshot, shown
        self._ready.set()
        for listener in self._listeners:
            try:
                listener(old, shown)
            except Exception:
                log.exception("mesh view listener failed")
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _end_grace(self) -> None:
        self._regrace = None
        self._show()

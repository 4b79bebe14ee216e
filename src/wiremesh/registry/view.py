"""A caller's live view of the mesh, kept current by a registry watch.

Calls read :attr:`MeshView.snapshot` (a plain attribute, no await); a background task
replaces it when the registry announces a change. No call ever polls the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from wiremesh.core.model import EMPTY, MeshSnapshot
from wiremesh.registry.base import Registry

__all__ = ["MeshView"]

log = logging.getLogger("wiremesh.registry")


class MeshView:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.snapshot: MeshSnapshot = EMPTY
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._listeners: list[Callable[[MeshSnapshot, MeshSnapshot], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on_change(self, listener: Callable[[MeshSnapshot, MeshSnapshot], None]) -> None:
        """Call ``listener(old, new)`` after every change."""
        self._listeners.append(listener)

    async def start(self, timeout: float = 10.0) -> None:
        """Start watching; returns once the first snapshot has arrived."""
        self._task = asyncio.create_task(self._watch(), name="wiremesh-mesh-view")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            from wiremesh.errors import Unavailable

            await self.close()
            raise Unavailable(f"the registry did not answer within {timeout:g}s") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_for(self, predicate: Callable[[MeshSnapshot], bool], timeout: float) -> None:
        """Wait until ``predicate(snapshot)`` holds (tests and start-up ordering)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.snapshot))

    async def _watch(self) -> None:
        async for snapshot in self.registry.watch():
            old, self.snapshot = self.snapshot, snapshot
            self._ready.set()
            for listener in self._listeners:
                try:
                    listener(old, snapshot)
                except Exception:
                    log.exception("mesh view listener failed")
            async with self._changed:
                self._changed.notify_all()

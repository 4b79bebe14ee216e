"""The outbox relay: hands committed messages to the broker, then deletes them.

A transaction's messages are rows of ``wm_outbox`` committed with the service's data.
After the commit, the store tells the relay (:meth:`Relay.committed`), which publishes
them and deletes their rows. When the process dies between the commit and the hand-over,
the rows stay; the relay of the next node of the service to start sends them then
(:meth:`Relay.start`). The broker may thus get a message twice (two nodes starting at
once, or a crash between publish and delete): the consumers' inbox drops the copy.
While the broker is unreachable the relay keeps the messages and tries again with
backoff; nothing is lost, the rows are still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence

import sqlalchemy as sa

from wiremesh.core.delivery import retry_delay
from wiremesh.errors import WiremeshError
from wiremesh.messaging.base import Broker, Envelope, Kind
from wiremesh.messaging.store import Store, outbox_table

__all__ = ["Relay"]

log = logging.getLogger("wiremesh.outbox")

#: rows read at once when sending what an earlier run left
_PAGE = 500


class Relay:
    """The outbox relay of one node."""

    def __init__(self, store: Store, broker: Broker, *, timeout: float = 10.0) -> None:
        self.store = store
        self.broker = broker
        self.timeout = timeout
        self._pending: list[Envelope] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._sweep = True
        store.committed = self.committed

    def committed(self, envelopes: list[Envelope]) -> None:
        """Envelopes whose transaction just committed: send them soon."""
        self._pending.extend(envelopes)
        self._idle.clear()
        self._wake.set()

    async def start(self) -> None:
        """Start relaying; first whatever an earlier run left in the outbox."""
        self._sweep = True
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name=f"wiremesh-outbox-{self.store.service}")

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._sweep:
                    await self._send_leftovers()
                    self._sweep = False
                while self._pending:
                    batch = self._pending[:_PAGE]
                    await self._hand_over(batch)
                    del self._pending[: len(batch)]
            except (WiremeshError, sa.exc.SQLAlchemyError, OSError) as exc:
                failures += 1
                delay = retry_delay(failures, 0.2, 5.0, 0.5)
                log.warning(
                    "outbox of %s: %s; trying again in %.1fs", self.store.service, exc, delay
                )
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            failures = 0
            if not self._pending:
                self._idle.set()

    async def _send_leftovers(self) -> None:
        if self.store.is_sqlite and not self.store.path.exists():
            return  # never used: nothing left
        await self.store.prepare()
        query = (
            sa.select(outbox_table)
            .where(outbox_table.c.service == self.store.service)
            .order_by(outbox_table.c.created_at)
            .limit(_PAGE)
        )
        while True:
            async with self.store.engine.connect() as connection:
                rows = (await connection.execute(query)).mappings().all()
            if not rows:
                return
            log.info(
                "outbox of %s: sending %d message(s) left by an earlier run",
                self.store.service,
                len(rows),
            )
            await self._hand_over([_envelope(row) for row in rows])

    async def _hand_over(self, envelopes: Sequence[Envelope]) -> None:
        await self.broker.publish(envelopes, timeout=self.timeout)
        ids = [e.id for e in envelopes]
        async with self.store.engine.begin() as connection:
            await connection.execute(outbox_table.delete().where(outbox_table.c.id.in_(ids)))

    async def close(self, grace: float = 5.0) -> None:
        """Send what is pending (within ``grace`` seconds), then stop; what is not sent
        stays in the outbox for the next start."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


def _envelope(row: sa.RowMapping) -> Envelope:
    headers = row["headers"]
    if isinstance(headers, str):
        headers = json.loads(headers)
    kind: Kind = "command" if row["kind"] == "command" else "event"
    return Envelope(row["id"], kind, row["topic"], bytes(row["body"]), row["codec"], headers)

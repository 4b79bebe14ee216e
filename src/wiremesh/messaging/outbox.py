"""The outbox relay: hands committed messages to the broker, then deletes them.

A transaction's messages are rows of ``wm_outbox`` committed with the service's data.
After the commit, the store tells the relay (:meth:`Relay.committed`), which publishes
them and deletes their rows. While the broker is unreachable the relay keeps the
messages and tries again with backoff; nothing is lost, the rows are still there.

Rows nobody relayed (their node died between the commit and the hand-over, or stopped
before the broker took them) are found by a sweep: every relay sends, when it starts,
whatever its service's outbox holds, then every :data:`SWEEP_EVERY` seconds the rows older
than :data:`SWEEP_AGE` seconds, whichever node wrote them. So while one node of the
service runs, a row is handed over at the latest ``SWEEP_AGE + SWEEP_EVERY`` seconds after
its commit (10 s by default) plus the time the broker takes; younger rows are left to the
relay of the node that wrote them. On many hosts, the hosts' clocks (``created_at``) are
assumed to agree to within a second or so (NTP); a skew adds to that bound.

On PostgreSQL (nodes of a service on several hosts, one database) a relay claims rows
before it sends them: it deletes them in a transaction (``SELECT … FOR UPDATE SKIP LOCKED``
picks the rows, so that rows another relay holds are skipped, never waited for), publishes
them, and commits only once the broker confirmed them. A failed publish rolls the
deletion back and the rows are there for the next try. Two live relays thus never send
the same row. A node that crashes between the broker's confirmation and the commit leaves
the rows, which a sweep sends again: the consumers' inbox drops that copy. A claim waits
at most :data:`CLAIM_TIMEOUT` seconds for the broker, and PostgreSQL ends a claim that
stays idle a second longer (``idle_in_transaction_session_timeout``, set for that
transaction alone): the rows of a relay whose host was cut off mid-claim are free for a
live node's sweep within seconds, not after a TCP keepalive.

On SQLite (one machine) the relay reads, publishes, then deletes, without claiming: two
nodes sweeping at once, or a sweep that finds a row its own relay is still sending (a
hand-over slower than ``SWEEP_AGE``), may send a message twice, and the consumers' inbox
drops the copy there as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from wiremesh.core.defaults import PUBLISH_TIMEOUT
from wiremesh.core.delivery import retry_delay
from wiremesh.errors import WiremeshError
from wiremesh.messaging.base import Broker, Envelope, Kind
from wiremesh.messaging.store import Store

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["CLAIM_TIMEOUT", "PAGE", "SWEEP_AGE", "SWEEP_EVERY", "Relay", "bound_claim", "claim_ids"]

log = logging.getLogger("wiremesh.outbox")

#: most rows a relay reads (or claims) and hands to the broker at once
PAGE = 500
#: seconds between two sweeps of the outbox for rows nobody relayed
SWEEP_EVERY = 5.0
#: age in seconds of the rows a sweep takes; younger ones are their own relay's
SWEEP_AGE = 5.0
#: PostgreSQL: longest wait in seconds for the broker while rows are claimed (a longer
#: publish timeout is cut to this; the relay tries again with backoff)
CLAIM_TIMEOUT = 5.0
#: seconds PostgreSQL waits beyond the claim's timeout before it ends a claim whose relay
#: went silent (its host cut off), which frees the rows for another relay's sweep
CLAIM_MARGIN = 1.0


class Relay:
    """The outbox relay of one node.

    ``sweep_every`` and ``sweep_age`` bound how long a row left by a dead node waits
    (their sum, once a node of the service runs); ``page`` is how many rows go to the
    broker at once.
    """

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        timeout: float = PUBLISH_TIMEOUT,
        sweep_every: float = SWEEP_EVERY,
        sweep_age: float = SWEEP_AGE,
        page: int = PAGE,
    ) -> None:
        self.store = store
        self.broker = broker
        self.timeout = timeout
        self.sweep_every = sweep_every
        self.sweep_age = sweep_age
        self.page = page
        self._claim_timeout = min(timeout, CLAIM_TIMEOUT)
        self._pending: list[Envelope] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        store.committed = self.committed

    def committed(self, envelopes: list[Envelope]) -> None:
        """Envelopes whose transaction just committed: send them soon."""
        self._pending.extend(envelopes)
        self._idle.clear()
        self._wake.set()

    async def start(self) -> None:
        """Start relaying: first whatever the service's outbox holds (rows an earlier run
        or another node left), then every ``sweep_every`` seconds the rows older than
        ``sweep_age``."""
        self._task = asyncio.create_task(self._run(), name=f"wiremesh-outbox-{self.store.service}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        next_sweep = loop.time()
        age: float | None = None  # the first sweep takes rows of any age
        while True:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_sweep):
                        await self._wake.wait()
            self._wake.clear()
            try:
                if loop.time() >= next_sweep:
                    await self._sweep(age)
                    age = self.sweep_age
                    next_sweep = loop.time() + self.sweep_every
                while self._pending:
                    batch = self._pending[: self.page]
                    await self._hand_over(batch)
                    del self._pending[: len(batch)]
            except Exception as exc:
                if not _transient(exc):
                    raise
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

    async def _sweep(self, older_than: float | None) -> None:
        """Send the service's rows older than ``older_than`` seconds (None: all of them),
        page by page."""
        if self.store.is_sqlite and not self.store.path.exists():
            return  # never used: nothing left
        await self.store.prepare()
        import sqlalchemy as sa

        from wiremesh.messaging.store_tables import outbox_table

        query = (
            sa.select(outbox_table)
            .where(outbox_table.c.service == self.store.service)
            .order_by(outbox_table.c.created_at)
            .limit(self.page)
        )
        if older_than is not None:
            query = query.where(outbox_table.c.created_at < time.time() - older_than)
        while True:
            if self.store.is_postgresql:
                sent = await self._claim_and_send(query)
            else:
                async with self.store.engine.connect() as connection:
                    rows = (await connection.execute(query)).mappings().all()
                if rows:
                    await self._publish_then_delete([_envelope(row) for row in rows])
                sent = len(rows)
            if sent:
                log.info(
                    "outbox of %s: sent %d message(s) nobody relayed", self.store.service, sent
                )
            if sent < self.page:
                return

    async def _claim_and_send(self, query: sa.Select[tuple[object, ...]]) -> int:
        """Claim a page of the rows ``query`` selects (skipping rows another relay
        holds), hand them over, and commit their deletion; returns how many."""
        from wiremesh.messaging.store_tables import outbox_table

        claimed = query.with_only_columns(outbox_table.c.id).with_for_update(skip_locked=True)
        picked = claimed.cte("claimed")
        claim = (
            outbox_table.delete().where(outbox_table.c.id == picked.c.id).returning(*outbox_table.c)
        )
        async with self.store.engine.begin() as connection:
            await bound_claim(connection, self._claim_timeout)
            rows = (await connection.execute(claim)).mappings().all()
            if rows:
                rows = sorted(rows, key=lambda row: float(row["created_at"]))
                envelopes = [_envelope(row) for row in rows]
                await self.broker.publish(envelopes, timeout=self._claim_timeout)
        return len(rows)

    async def _hand_over(self, envelopes: Sequence[Envelope]) -> None:
        """Send the envelopes of this node's own transactions."""
        if not self.store.is_postgresql:
            await self._publish_then_delete(envelopes)
            return
        ids = [e.id for e in envelopes]
        async with self.store.engine.begin() as connection:
            await bound_claim(connection, self._claim_timeout)
            mine = await claim_ids(connection, ids)
            # rows gone (another relay's sweep sent them) or held by another relay are
            # that relay's to send
            envelopes = [e for e in envelopes if e.id in mine]
            if envelopes:
                await self.broker.publish(envelopes, timeout=self._claim_timeout)

    async def _publish_then_delete(self, envelopes: Sequence[Envelope]) -> None:
        await self.broker.publish(envelopes, timeout=self.timeout)
        ids = [e.id for e in envelopes]
        from wiremesh.messaging.store_tables import outbox_table

        async with self.store.engine.begin() as connection:
            await connection.execute(outbox_table.delete().where(outbox_table.c.id.in_(ids)))

    async def close(self, grace: float = 5.0) -> None:
        """Send what is pending (within ``grace`` seconds), then stop; what is not sent
        stays in the outbox for a sweep (of this node's next start or of another node)."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


async def bound_claim(connection: AsyncConnection, timeout: float) -> None:
    """Have PostgreSQL end this transaction, and free the rows it claimed, when it stays
    idle longer than the broker is given: a relay whose host was cut off can no longer
    roll back, and its claimed rows must not wait for a TCP keepalive."""
    import sqlalchemy as sa

    limit = int((timeout + CLAIM_MARGIN) * 1000)
    await connection.execute(sa.text(f"SET LOCAL idle_in_transaction_session_timeout = {limit}"))


async def claim_ids(connection: AsyncConnection, ids: Sequence[str]) -> set[str]:
    """Delete, in ``connection``'s transaction, the rows of ``ids`` that exist and no other
    transaction holds (PostgreSQL); returns their ids."""
    import sqlalchemy as sa

    from wiremesh.messaging.store_tables import outbox_table

    picked = (
        sa.select(outbox_table.c.id)
        .where(outbox_table.c.id.in_(ids))
        .with_for_update(skip_locked=True)
        .cte("claimed")
    )
    claim = (
        outbox_table.delete().where(outbox_table.c.id == picked.c.id).returning(outbox_table.c.id)
    )
    return {row[0] for row in await connection.execute(claim)}


def _transient(error: Exception) -> bool:
    """Whether the relay tries again after ``error``: the broker's, the database's (a
    SQLAlchemy error: SQLAlchemy is loaded once a store is used) or the network's."""
    if isinstance(error, WiremeshError | OSError):
        return True
    import sqlalchemy as sa

    return isinstance(error, sa.exc.SQLAlchemyError)


def _envelope(row: sa.RowMapping) -> Envelope:
    headers = row["headers"]
    if isinstance(headers, str):
        headers = json.loads(headers)
    kind: Kind = "command" if row["kind"] == "command" else "event"
    return Envelope(row["id"], kind, row["topic"], bytes(row["body"]), row["codec"], headers)

"""A service's own store: ``self.store``, a SQLAlchemy 2 async database of its own.

By default a SQLite file per service under the data folder
(``.wiremesh/data/<service>/store.db``); ``[services.<name>] store = "postgresql+asyncpg://…"``
for many machines. The engine opens on first use, so a service that never touches its
store never creates a file.

:meth:`Store.transaction` is the one way to write::

    async with self.store.transaction() as tx:
        await tx.execute(orders.insert().values(id=order_id, total=total))
        tx.emit("orders.created", OrderCreated(id=order_id))   # commits with the insert

Two tables of wiremesh's own live next to the service's: ``wm_outbox`` (messages
committed but not yet handed to the broker, see :mod:`.outbox`) and ``wm_inbox`` (the ids
of messages whose handler committed a transaction, so that a redelivered message is
dropped: effects written through the store happen exactly once).

Several nodes of a service, on several hosts, share one PostgreSQL database:

- they create wiremesh's tables (and the service's, through :meth:`Store.create_all`)
  under a PostgreSQL advisory lock (``pg_advisory_xact_lock(SCHEMA_LOCK)``), so that
  nodes starting at once never race on ``CREATE TABLE``: the first creates them, the
  others wait and find them;
- their relays share the outbox, claiming rows with ``FOR UPDATE SKIP LOCKED`` (see
  :mod:`.outbox`);
- each node's engine keeps at most ``pool_size + max_overflow`` connections
  (``[services.<name>] pool_size`` and ``max_overflow``; defaults :data:`POOL_SIZE` and
  :data:`MAX_OVERFLOW`), which the database's ``max_connections`` must allow for every
  node of every service using it. SQLite ignores both.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wiremesh.core.codec import CodecName
from wiremesh.errors import ConfigError
from wiremesh.messaging.base import Envelope, Kind
from wiremesh.messaging.outbound import make_envelope
from wiremesh.runtime.private import private_folder, private_sqlite

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "MAX_OVERFLOW",
    "POOL_SIZE",
    "Duplicate",
    "InboxMark",
    "Store",
    "Transaction",
    "inbox_mark",
]

#: connections a node's engine keeps open to a PostgreSQL store (``pool_size``)
POOL_SIZE = 5
#: connections it may open beyond those under load, closed when returned (``max_overflow``)
MAX_OVERFLOW = 10


class Duplicate(Exception):
    """The message this handler runs for was handled before (its inbox row exists)."""


@dataclass
class InboxMark:
    """The message a handler runs for: its first transaction records it in the inbox."""

    service: str
    handler: str
    message_id: str
    recorded: bool = False


inbox_mark: contextvars.ContextVar[InboxMark | None] = contextvars.ContextVar(
    "wiremesh_inbox_mark", default=None
)


class Transaction:
    """One transaction of the store: run statements on :attr:`connection` (or
    :meth:`execute`), and :meth:`emit` / :meth:`send` messages that commit with them."""

    def __init__(self, connection: AsyncConnection, service: str, sender: str) -> None:
        #: the SQLAlchemy connection; ``AsyncSession(bind=tx.connection)`` for the ORM
        self.connection = connection
        self._service = service
        self._sender = sender
        self.envelopes: list[Envelope] = []

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        """``await tx.execute(stmt)``: shorthand for ``tx.connection.execute``."""
        result: sa.CursorResult[Any] = await self.connection.execute(statement, parameters)
        return result

    def emit(
        self,
        topic: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        """Emit an event when (and only if) this transaction commits. Returns its id.
        ``delay`` (seconds from now, not from the commit) or ``at`` makes it a delayed
        message (see ``Context.emit``)."""
        return self._add("event", topic, payload, codec, headers, delay, at)

    def send(
        self,
        target: str,
        payload: Any = None,
        *,
        codec: CodecName = "msgpack",
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
        at: float | datetime | None = None,
    ) -> str:
        """Send the command ``service.command`` when this transaction commits (``delay``
        and ``at`` as for :meth:`emit`)."""
        return self._add("command", target, payload, codec, headers, delay, at)

    def _add(
        self,
        kind: Kind,
        topic: str,
        payload: Any,
        codec: CodecName,
        headers: Mapping[str, str] | None,
        delay: float | None,
        at: float | datetime | None,
    ) -> str:
        envelope = make_envelope(
            kind, topic, payload, codec, headers, sender=self._sender, delay=delay, at=at
        )
        self.envelopes.append(envelope)
        return envelope.id


class Store:
    """The service's database. ``url`` is a SQLAlchemy async URL; None means the SQLite
    file ``path``. ``pool_size`` and ``max_overflow`` size a PostgreSQL engine's
    connection pool (None: :data:`POOL_SIZE` and :data:`MAX_OVERFLOW`); SQLite ignores
    them."""

    def __init__(
        self,
        url: str | None,
        *,
        path: Path,
        service: str,
        sender: str = "",
        pool_size: int | None = None,
        max_overflow: int | None = None,
    ) -> None:
        self.url = url or f"sqlite+aiosqlite:///{path}"
        self.path = path
        #: the store is the SQLite file ``path`` in the node's data folder (no url given)
        self._own_file = not url
        self.service = service
        self.sender = sender or service
        self.pool_size = POOL_SIZE if pool_size is None else pool_size
        self.max_overflow = MAX_OVERFLOW if max_overflow is None else max_overflow
        if self.pool_size < 1 or self.max_overflow < 0:
            raise ConfigError(
                f"store of {service}: pool_size must be >= 1 and max_overflow >= 0, "
                f"got {self.pool_size} and {self.max_overflow}"
            )
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._preparing = asyncio.Lock()
        #: SQLite has one writer at a time: queueing here beats its busy-wait sleeps
        self._writer: asyncio.Lock | contextlib.nullcontext[None] = (
            asyncio.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        #: told about the envelopes of each committed transaction (the outbox relay)
        self.committed: Callable[[list[Envelope]], None] = lambda envelopes: None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def is_postgresql(self) -> bool:
        return self.url.startswith("postgresql")

    @property
    def opened(self) -> bool:
        """Whether the engine exists (the store was used)."""
        return self._engine is not None

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (made on first use)."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> AsyncEngine:
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        from wiremesh.messaging.store_tables import serialise_sqlite_writers

        try:
            if self.is_sqlite:
                # the file in the data folder is private, its -wal and -shm files too
                if self._own_file:
                    private_sqlite(self.path)
                else:
                    private_folder(self.path.parent)
                engine = create_async_engine(self.url, connect_args={"timeout": 30})
                serialise_sqlite_writers(engine)
                return engine
            return create_async_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=self.pool_size,
                max_overflow=self.max_overflow,
            )
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise ConfigError(f"store url {self.url!r} for {self.service}: {exc}") from None

    async def prepare(self) -> None:
        """Create wiremesh's own tables when missing (done before the first transaction)."""
        if self._ready:
            return
        from wiremesh.messaging.store_tables import metadata

        async with self._preparing:
            if not self._ready:
                await self.create_all(metadata)
                self._ready = True

    async def create_all(self, tables: sa.MetaData) -> None:
        """Create the tables of ``tables`` that are missing, safely while other nodes do
        the same: ``await self.store.create_all(metadata)`` in a service's ``on_start``.

        On PostgreSQL this runs under the advisory lock :data:`SCHEMA_LOCK`, held until
        the transaction that creates the tables commits: ``CREATE TABLE`` run by two nodes
        at once fails in one of them (``pg_type_typname_nsp_index``), ``IF NOT EXISTS`` or
        not, while under the lock the second finds the tables the first created. On SQLite
        the transaction takes the write lock when it begins, which serialises the same.
        """
        import sqlalchemy as sa

        from wiremesh.messaging.store_tables import SCHEMA_LOCK

        async with self._writer, self.engine.begin() as connection:
            if self.is_postgresql:
                await connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}
                )
            await connection.run_sync(tables.create_all)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction: committed when the block ends, rolled back when it raises.

        Inside a message handler, the first transaction also records the message in the
        inbox; when it was recorded before (a redelivery), the block does not run and the
        handler ends: the message is acknowledged without doing its work twice.
        """
        await self.prepare()
        from wiremesh.messaging.store_tables import outbox_table

        async with self._writer, self.engine.begin() as connection:
            mark = inbox_mark.get()
            if mark is not None and not mark.recorded:
                await self._record(connection, mark)
            tx = Transaction(connection, self.service, self.sender)
            yield tx
            if tx.envelopes:
                await connection.execute(
                    outbox_table.insert(),
                    [
                        {
                            "id": e.id,
                            "service": self.service,
                            "kind": e.kind,
                            "topic": e.topic,
                            "body": e.body,
                            "codec": e.codec,
                            "headers": dict(e.headers),
                            "created_at": time.time(),
                        }
                        for e in tx.envelopes
                    ],
                )
        if tx.envelopes:
            self.committed(tx.envelopes)

    async def _record(self, connection: AsyncConnection, mark: InboxMark) -> None:
        from sqlalchemy.exc import IntegrityError

        from wiremesh.messaging.store_tables import inbox_table

        row = {
            "service": mark.service,
            "handler": mark.handler,
            "message_id": mark.message_id,
            "handled_at": time.time(),
        }
        try:  # (a duplicate rolls the whole transaction back: no savepoint needed)
            await connection.execute(inbox_table.insert(), row)
        except IntegrityError:
            raise Duplicate(mark.message_id) from None
        mark.recorded = True

    async def seen(self, handler: str, message_id: str) -> bool:
        """Whether ``handler`` has handled ``message_id`` (its transaction committed)."""
        await self.prepare()
        import sqlalchemy as sa

        from wiremesh.messaging.store_tables import inbox_table

        query = sa.select(inbox_table.c.message_id).where(
            inbox_table.c.service == self.service,
            inbox_table.c.handler == handler,
            inbox_table.c.message_id == message_id,
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    async def forget_handled(self, older_than: float) -> int:
        """Drop inbox rows older than ``older_than`` seconds; returns how many."""
        await self.prepare()
        from wiremesh.messaging.store_tables import inbox_table

        cutoff = time.time() - older_than
        async with self.engine.begin() as connection:
            result = await connection.execute(
                inbox_table.delete().where(
                    inbox_table.c.service == self.service, inbox_table.c.handled_at < cutoff
                )
            )
        return int(result.rowcount)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._ready = False


def __getattr__(name: str) -> Any:
    # wiremesh's own tables, with SQLAlchemy, are loaded when first asked for (a node whose
    # service never opens its store never imports SQLAlchemy): see .store_tables
    if name in ("metadata", "outbox_table", "inbox_table", "SCHEMA_LOCK"):
        from wiremesh.messaging import store_tables

        return getattr(store_tables, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

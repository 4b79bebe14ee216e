"""wiremesh's own tables in a service's store (``wm_outbox``, ``wm_inbox``) and the
SQLite settings of its engine: the part of :mod:`.store` that needs SQLAlchemy, imported
when a store is first used (a node whose service never opens its store never loads
SQLAlchemy, which takes a quarter of a second)."""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "SCHEMA_LOCK",
    "inbox_table",
    "metadata",
    "outbox_table",
    "serialise_sqlite_writers",
]

#: wiremesh's own tables; a service keeps its tables in a ``MetaData`` of its own
metadata = sa.MetaData()

outbox_table = sa.Table(
    "wm_outbox",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("service", sa.String(63), nullable=False, index=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("codec", sa.String(16), nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

inbox_table = sa.Table(
    "wm_inbox",
    metadata,
    sa.Column("service", sa.String(63), primary_key=True),
    sa.Column("handler", sa.String(255), primary_key=True),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("handled_at", sa.Float, nullable=False, index=True),
)

#: the PostgreSQL advisory lock key held while wiremesh's tables are created: the first
#: 8 bytes of the SHA-256 of their names, as a signed bigint (the same on every host)
SCHEMA_LOCK = int.from_bytes(
    hashlib.sha256(",".join(sorted(metadata.tables)).encode()).digest()[:8], "big", signed=True
)


def serialise_sqlite_writers(engine: AsyncEngine) -> None:
    """WAL, full fsync, and ``BEGIN IMMEDIATE``: a transaction takes the write lock when
    it starts, so that two writers (two nodes of a service) wait for each other instead
    of failing to upgrade a read lock."""

    @event.listens_for(engine.sync_engine, "connect")
    def connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
